"""Reconciliation of what we metered with the providers' own usage and cost reports
(Anthropic's Admin API, OpenAI's organization API): `ai-usage reconcile`, the daily Beat task,
the `ai-usage check` warning and the drift metric. See docs/reading/reconciliation.md.

Modules: core (measures, statuses, scope, errors), fetch (HTTP, pages, retries, deadline),
shapes (reading the answers), anthropic_reports and openai_reports (each provider's reports
onto our measures), metered (our side), compare (the verdicts), store (the run tables),
run (one run, and the configured daily runs), render (table, JSON, CSV)."""

from worker.ledger.reconcile.core import (
    DRIFT,
    MEASURES,
    PROVIDERS,
    ConfigurationError,
    DeadlineExceeded,
    FetchError,
    ReconcileError,
    Row,
    Scope,
    parse_scope,
)
from worker.ledger.reconcile.run import (
    Options,
    Outcome,
    Reconciliation,
    configured_providers,
    options_from_settings,
    reconcile,
    reconcile_configured,
)
from worker.ledger.reconcile.store import drifting_rows, last_runs, latest_rows

__all__ = [
    "DRIFT",
    "MEASURES",
    "PROVIDERS",
    "ConfigurationError",
    "DeadlineExceeded",
    "FetchError",
    "Options",
    "Outcome",
    "ReconcileError",
    "Reconciliation",
    "Row",
    "Scope",
    "configured_providers",
    "drifting_rows",
    "last_runs",
    "latest_rows",
    "options_from_settings",
    "parse_scope",
    "reconcile",
    "reconcile_configured",
]
