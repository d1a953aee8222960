"""The stable entry point `celery -A worker.celery_app worker|beat`: the app lives in
`worker.consumer.app`."""

from worker.consumer.app import app

__all__ = ["app"]
