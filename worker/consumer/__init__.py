"""The consumer room: the Celery worker on Celery's and kombu's public seams (the app and its
configuration, the Redis transport, the batching, the tasks). Imports the ledger, never the
other way round."""
