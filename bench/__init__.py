"""Benchmark harness of issue 5: `python -m bench` (`make bench`, `make bench ARGS=--quick`).

One run, against one PostgreSQL and one Redis, measures the write limit of ai_usage_logs, a
naive one-task-per-event Celery baseline, the pipeline (producer-batched and single-event
messages), the request-path cost of the client, rollups and reports, and the worker's memory.
It prints a table and writes every figure to bench/results/latest.json.
"""
