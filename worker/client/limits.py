"""The contract's limits, shared by the schema (worker.client.events) and its fast path
(worker.client.fast) without importing either."""

from __future__ import annotations

import datetime as dt

#: PostgreSQL INTEGER's upper bound: token counts and durations must fit the column.
INT_MAX = 2_147_483_647
#: An event dated further ahead than this is rejected (clock skew is tolerated up to it).
FUTURE_TOLERANCE = dt.timedelta(minutes=5)
#: Keys that are fields of their own, so never usage details.
TOKEN_FIELDS = ("input_tokens", "output_tokens", "cache_read_tokens", "cache_write_tokens")
#: At most this many usage_details keys in one event.
MAX_USAGE_DETAILS = 32
