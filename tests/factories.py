"""The one factory of test events. Each module names its own defaults (its model, its date)
with `functools.partial(event, ...)`; a test's keyword arguments replace or add fields."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any


def event(tenant: uuid.UUID | str, **fields: Any) -> dict[str, Any]:
    """A valid usage event in its JSON (message) form, with a fresh id, created now."""
    e: dict[str, Any] = {
        "id": str(uuid.uuid4()),
        "tenant_id": str(tenant),
        "operation": "generate_assessment",
        "model": "claude-3-5-sonnet-20241022",
        "input_tokens": 1000,
        "output_tokens": 2000,
        "created_at": dt.datetime.now(dt.UTC).isoformat(),
    }
    e.update(fields)
    return e
