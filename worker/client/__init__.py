"""The client room: what an application imports to record usage events.

    from worker.client import UsageClient

Light on purpose: no Celery, SQLAlchemy or worker settings are imported here.
"""

from worker.client.errors import InvalidEvent
from worker.client.publisher import UsageClient
from worker.client.responses import CallUsage, read_usage
from worker.client.tracking import UsageTracker, extract_usage

__all__ = [
    "CallUsage",
    "InvalidEvent",
    "UsageClient",
    "UsageTracker",
    "extract_usage",
    "read_usage",
]
