"""One reconciliation: fetch the provider's reports, store them, compare with our rows, store
the verdicts; and the daily run of every configured provider (the Beat task's body)."""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import httpx2
from sqlalchemy import Engine

from worker.ledger.reconcile import anthropic_reports, openai_reports, store
from worker.ledger.reconcile.compare import Judging, judge
from worker.ledger.reconcile.core import (
    DRIFT,
    PROVIDERS,
    ConfigurationError,
    ProviderReport,
    ReconcileError,
    Row,
    Scope,
    parse_scope,
)
from worker.ledger.reconcile.fetch import ReportClient
from worker.ledger.reconcile.metered import load_metered
from worker.settings import Settings

log = logging.getLogger(__name__)

#: The longest range one run covers (a run's pages and rows stay small).
MAX_DAYS = 92


@dataclass
class Options:
    """What a run needs besides the range: the key, where to ask, how to judge."""

    #: Never in the repr (a traceback with locals, a log line of the options).
    admin_key: str = field(repr=False)
    base_url: str
    scope: Scope = field(default_factory=Scope)
    tolerance_pct: Decimal = Decimal("0.5")
    lag_hours: Decimal = Decimal(48)
    deadline_s: float = 120.0
    #: Tests: an httpx2 transport and a sleep function (a real run uses neither).
    transport: httpx2.BaseTransport | None = None
    sleep: Callable[[float], None] | None = None


@dataclass
class Reconciliation:
    """A finished run."""

    run_id: int
    provider: str
    first: dt.date
    last: dt.date
    scope: Scope
    rows: list[Row]
    raw_results: int

    def drifting(self) -> list[Row]:
        """Rows under_metered, over_metered or price_mismatch."""
        return [r for r in self.rows if r.status in DRIFT]

    def as_dict(self) -> dict[str, Any]:
        """The JSON output of `ai-usage reconcile --format json`."""
        return {
            "provider": self.provider,
            "from": self.first.isoformat(),
            "to": self.last.isoformat(),
            "scope": self.scope.as_dict(),
            "run_id": self.run_id,
            "rows": [r.as_dict() for r in self.rows],
        }

    def drift_by_measure(self) -> dict[str, float]:
        """(metered - reported) / reported per measure over the judged rows (0 when both are
        0): the ai_usage_reconcile_drift_ratio gauge."""
        sums: dict[str, list[Decimal]] = {}
        for r in self.rows:
            if r.status in ("provisional", "not_covered") or r.reported is None:
                continue
            pair = sums.setdefault(r.measure, [Decimal(0), Decimal(0)])
            pair[0] += r.metered or 0
            pair[1] += r.reported
        return {
            m: float((ours - theirs) / theirs) if theirs else (0.0 if not ours else 1.0)
            for m, (ours, theirs) in sums.items()
        }


def reconcile(
    engine: Engine,
    provider: str,
    first: dt.date,
    last: dt.date,
    options: Options,
    now: dt.datetime | None = None,
) -> Reconciliation:
    """Reconcile `provider` over [first, last] (UTC days, inclusive). Raises
    ConfigurationError before anything is fetched, FetchError when the reports could not be
    read (the run is then recorded as failed)."""
    if provider not in PROVIDERS:
        raise ConfigurationError(f"--provider must be one of {', '.join(PROVIDERS)}")
    if last < first:
        raise ConfigurationError(f"--to ({last}) is before --from ({first})")
    if (last - first).days + 1 > MAX_DAYS:
        raise ConfigurationError(f"--from/--to cover at most {MAX_DAYS} days")
    options.scope.check(provider)
    now = now or dt.datetime.now(dt.UTC)
    if first > now.date():
        raise ConfigurationError(f"--from ({first}) is in the future")
    with engine.begin() as conn:
        run_id = store.start_run(
            conn, provider, first, last, options.scope, options.tolerance_pct, options.lag_hours
        )
    judging = Judging(options.tolerance_pct, dt.timedelta(hours=float(options.lag_hours)), now)
    try:
        report = _fetch(provider, first, last, options)
        with engine.begin() as conn:
            saved = store.save_raw(conn, run_id, report.raw)
            rows = judge(provider, load_metered(conn, provider, first, last), report, judging)
            store.save_rows(conn, run_id, provider, rows)
            store.finish_run(conn, run_id)
    except Exception as exc:
        # A run never stays `running`: its error is recorded (the messages carry no key).
        message = str(exc) if isinstance(exc, ReconcileError) else first_line(exc)
        try:
            with engine.begin() as conn:
                store.finish_run(conn, run_id, message)
        except Exception:
            log.warning("reconcile run %d: could not record its failure", run_id)
        raise
    return Reconciliation(run_id, provider, first, last, options.scope, rows, saved)


def first_line(exc: BaseException) -> str:
    """`Type: first line of the message`, for a run's error column."""
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0][:300]}" if lines else type(exc).__name__


def _fetch(provider: str, first: dt.date, last: dt.date, options: Options) -> ProviderReport:
    anthropic = provider == "anthropic"
    headers = (anthropic_reports if anthropic else openai_reports).headers(options.admin_key)
    extra: dict[str, Any] = {"sleep": options.sleep} if options.sleep else {}
    with ReportClient(
        provider,
        options.base_url,
        headers,
        deadline_s=options.deadline_s,
        transport=options.transport,
        **extra,
    ) as client:
        if anthropic:
            return anthropic_reports.fetch(client, first, last, options.scope)
        return openai_reports.fetch(client, first, last, options.scope)


def options_from_settings(
    settings: Settings,
    provider: str,
    *,
    scope: Scope | None = None,
    tolerance_pct: float | None = None,
    lag_hours: float | None = None,
) -> Options:
    """A run's options from the settings (ANTHROPIC_ADMIN_API_KEY, OPENAI_ADMIN_KEY, the base
    URLs, AI_USAGE_RECONCILE_*), each overridable. ConfigurationError names what is missing."""
    if provider == "anthropic":
        secret, variable, base = (
            settings.anthropic_admin_api_key,
            "ANTHROPIC_ADMIN_API_KEY",
            settings.anthropic_base_url,
        )
    else:
        secret, variable, base = (
            settings.openai_admin_key,
            "OPENAI_ADMIN_KEY",
            settings.openai_base_url,
        )
    key = secret.get_secret_value().strip() if secret is not None else ""
    if not key:
        raise ConfigurationError(
            f"{variable} is not set: reconciling {provider} needs an admin key"
        )
    if not base.startswith(("https://", "http://")):
        raise ConfigurationError(f"{provider.upper()}_BASE_URL must be an http(s) URL")
    tolerance = settings.reconcile_tolerance_pct if tolerance_pct is None else tolerance_pct
    lag = settings.reconcile_lag_hours if lag_hours is None else lag_hours
    return Options(
        admin_key=key,
        base_url=base,
        scope=scope if scope is not None else parse_scope(settings.reconcile_scope, provider),
        tolerance_pct=Decimal(str(tolerance)),
        lag_hours=Decimal(str(lag)),
        deadline_s=settings.reconcile_deadline_s,
    )


@dataclass
class Outcome:
    """What the daily run did for one provider."""

    provider: str
    result: Reconciliation | None = None
    error: str | None = None


def configured_providers(settings: Settings) -> list[str]:
    """AI_USAGE_RECONCILE_PROVIDERS as a list."""
    return [p.strip() for p in settings.reconcile_providers.split(",") if p.strip()]


def reconcile_configured(
    engine: Engine, settings: Settings, now: dt.datetime | None = None
) -> list[Outcome]:
    """Reconcile each provider of AI_USAGE_RECONCILE_PROVIDERS over the last
    AI_USAGE_RECONCILE_DAYS days, ending yesterday (UTC). One provider's failure is logged and
    recorded; the others still run."""
    now = now or dt.datetime.now(dt.UTC)
    last = now.date() - dt.timedelta(days=1)
    first = last - dt.timedelta(days=settings.reconcile_days - 1)
    out: list[Outcome] = []
    for provider in configured_providers(settings):
        try:
            options = options_from_settings(settings, provider)
            done = reconcile(engine, provider, first, last, options, now)
        except ReconcileError as exc:
            log.error("reconcile %s %s..%s failed: %s", provider, first, last, exc)
            out.append(Outcome(provider, error=str(exc)))
            continue
        log.info(
            "reconciled %s %s..%s: %d rows, %d drifting (run %d)",
            provider,
            first,
            last,
            len(done.rows),
            len(done.drifting()),
            done.run_id,
        )
        out.append(Outcome(provider, result=done))
    return out
