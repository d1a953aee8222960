"""Interpreter settings for the worker's ingest process, measured on the bench
(docs/performance): the consumer thread prepares batches in Python while the writer thread waits on
PostgreSQL, and the two contend for the GIL.

- `gc.freeze()` once started: the tens of thousands of objects of Celery, kombu, SQLAlchemy and
  genai-prices' price data never change, yet every full collection walked them;
- a higher generation-0 threshold: a 2,000-event batch allocates tens of thousands of short-lived
  objects, and the default (700) ran a collection every few events;
- a shorter switch interval: when PostgreSQL answers, the writer thread waits for the GIL for up
  to the interval (5 ms by default) while the consumer thread prepares the next batch.
"""

from __future__ import annotations

import gc
import logging
import sys

from worker.settings import Settings

log = logging.getLogger(__name__)

_done = False


def tune(settings: Settings) -> None:
    """Apply the settings once per process (AI_USAGE_GC_FREEZE, AI_USAGE_GC_THRESHOLD,
    AI_USAGE_SWITCH_INTERVAL_MS; 0 leaves Python's default)."""
    global _done
    if _done:
        return
    _done = True
    if settings.gc_threshold:
        _, second, third = gc.get_threshold()
        gc.set_threshold(settings.gc_threshold, second, third)
    if settings.gc_freeze:
        gc.collect()
        gc.freeze()
    if settings.switch_interval_ms:
        sys.setswitchinterval(settings.switch_interval_ms / 1000)
    log.info(
        "runtime: gc threshold %s, %d objects frozen, switch interval %.2f ms",
        gc.get_threshold(),
        gc.get_freeze_count(),
        sys.getswitchinterval() * 1000,
    )
