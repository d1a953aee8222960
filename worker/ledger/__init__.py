"""The ledger room: the database side (models, migrations helper, the batch writer, pricing,
rollups, report, dead letters). Knows nothing of Celery or kombu."""
