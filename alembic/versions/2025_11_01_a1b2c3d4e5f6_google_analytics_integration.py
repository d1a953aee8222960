"""Google Analytics integration: GA4 measurement settings on tenants.

Revision ID: a1b2c3d4e5f6
Revises: 9f8e7d6c5b4a
Create Date: 2025-11-01
"""

from __future__ import annotations

import sqlalchemy as sa

from alembic import op

revision = "a1b2c3d4e5f6"
down_revision = "9f8e7d6c5b4a"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("tenants", sa.Column("ga_measurement_id", sa.String(32), nullable=True))
    op.add_column("tenants", sa.Column("ga_api_secret", sa.String(255), nullable=True))


def downgrade() -> None:
    op.drop_column("tenants", "ga_api_secret")
    op.drop_column("tenants", "ga_measurement_id")
