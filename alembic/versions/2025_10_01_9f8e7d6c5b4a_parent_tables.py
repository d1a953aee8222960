"""Parent tables: tenants, users, assessments, leads.

Revision ID: 9f8e7d6c5b4a
Revises:
Create Date: 2025-10-01
"""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

from alembic import op

revision = "9f8e7d6c5b4a"
down_revision = None
branch_labels = None
depends_on = None


def _common() -> list[sa.Column[object]]:
    return [
        sa.Column(
            "id",
            postgresql.UUID(as_uuid=True),
            server_default=sa.text("gen_random_uuid()"),
            nullable=False,
        ),
        sa.Column("name", sa.String(255), nullable=False),
        sa.Column(
            "created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False
        ),
    ]


def upgrade() -> None:
    op.create_table("tenants", *_common(), sa.PrimaryKeyConstraint("id", name="pk_tenants"))
    for table in ("users", "assessments", "leads"):
        op.create_table(
            table,
            *_common(),
            sa.Column("tenant_id", postgresql.UUID(as_uuid=True), nullable=False),
            sa.ForeignKeyConstraint(
                ["tenant_id"],
                ["tenants.id"],
                name=f"fk_{table}_tenant_id_tenants",
                ondelete="CASCADE",
            ),
            sa.PrimaryKeyConstraint("id", name=f"pk_{table}"),
        )
        op.create_index(f"ix_{table}_tenant_id", table, ["tenant_id"])


def downgrade() -> None:
    for table in ("leads", "assessments", "users"):
        op.drop_index(f"ix_{table}_tenant_id", table_name=table)
        op.drop_table(table)
    op.drop_table("tenants")
