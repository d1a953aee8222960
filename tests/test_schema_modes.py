"""The three ways to own the schema (docs/ledger/schema.md), on real PostgreSQL, each next to
a host application with an alembic chain of its own (revisions host0001, host0002)."""

from __future__ import annotations

import logging
import os
import re
import subprocess
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from alembic.config import Config
from alembic.util import CommandError
from sqlalchemy import Engine, create_engine, text

from alembic import command
from tests.conftest import HEAD, ROOT, VENV_BIN, new_database
from tests.factories import event
from worker.cli import main
from worker.ledger.db import alembic_config, dispose_engine, migrate, migrations_dir
from worker.ledger.ingest import write_batch
from worker.ledger.pricing import Pricer
from worker.settings import get_settings, normalise_database_url

OUR_TABLES = (
    "ai_usage_logs",
    "ai_usage_dead_letters",
    "ai_usage_monthly_rollups",
    "ai_usage_daily_rollups",
    "ai_usage_user_daily_rollups",
    "ai_usage_rollup_deltas",
    "ai_usage_closed_months",
    "ai_usage_budgets",
    "ai_usage_budget_alerts",
    "ai_usage_reconcile_runs",
    "ai_usage_reconcile_buckets",
    "ai_usage_reconcile_results",
)

HOST_ENV = """
from alembic import context
from sqlalchemy import create_engine, pool

engine = create_engine(context.config.get_main_option("sqlalchemy.url"), poolclass=pool.NullPool)
with engine.connect() as connection:
    context.configure(connection=connection)
    with context.begin_transaction():
        context.run_migrations()
engine.dispose()
"""
# The host's own parent tables: other columns than our stand-ins (no GA columns, a plan).
HOST_CORE = '''
"""host core tables"""
import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import UUID

revision = "host0001"
down_revision = None


def _id():
    return sa.Column("id", UUID(as_uuid=True), primary_key=True,
                     server_default=sa.text("gen_random_uuid()"))


def upgrade():
    op.create_table("tenants", _id(), sa.Column("name", sa.Text, nullable=False),
                    sa.Column("plan", sa.Text, server_default="free"))
    for table in TABLES:
        op.create_table(table, _id(), sa.Column("tenant_id", UUID(as_uuid=True),
                        sa.ForeignKey("tenants.id")))


TABLES = ("users", "assessments", "leads")
'''
HOST_LATER = '''
"""a later host revision, after ours ran"""
import sqlalchemy as sa
from alembic import op

revision = "host0002"
down_revision = "host0001"


def upgrade():
    op.create_table("widgets", sa.Column("id", sa.Integer, primary_key=True))
    op.add_column("tenants", sa.Column("region", sa.Text))
'''


class Host:
    """A host application's alembic project in a folder, pointed at one database."""

    def __init__(self, root: Path, url: str, core: str = HOST_CORE) -> None:
        self.versions = root / "migrations" / "versions"
        self.versions.mkdir(parents=True)
        (root / "migrations" / "env.py").write_text(HOST_ENV)
        (self.versions / "host0001_core.py").write_text(textwrap.dedent(core))
        self.ini = root / "alembic.ini"
        self.ini.write_text(
            "[alembic]\nscript_location = %(here)s/migrations\npath_separator = os\n"
        )
        self.url = url

    def config(self) -> Config:
        cfg = Config(str(self.ini))
        cfg.set_main_option("sqlalchemy.url", normalise_database_url(self.url))
        return cfg

    def upgrade(self, revision: str = "head") -> None:
        command.upgrade(self.config(), revision)

    def add_later_revision(self) -> None:
        (self.versions / "host0002_widgets.py").write_text(HOST_LATER)


def version(engine: Engine, table: str = "alembic_version") -> list[str]:
    with engine.connect() as conn:
        if conn.execute(text("SELECT to_regclass(:t)"), {"t": table}).scalar() is None:
            return []
        return [str(v) for v in conn.execute(text(f"SELECT version_num FROM {table}")).scalars()]


def tables(engine: Engine) -> set[str]:
    with engine.connect() as conn:
        return set(
            conn.execute(text("SELECT tablename FROM pg_tables WHERE schemaname = 'public'"))
            .scalars()
            .all()
        )


def columns(engine: Engine, table: str) -> list[str]:
    with engine.connect() as conn:
        return list(
            conn.execute(
                text(
                    "SELECT column_name FROM information_schema.columns"
                    " WHERE table_name = :t ORDER BY ordinal_position"
                ),
                {"t": table},
            ).scalars()
        )


Cli = Callable[..., tuple[int, str, str]]


@pytest.fixture
def hosted(fresh_database: tuple[str, Engine], tmp_path: Path) -> tuple[str, Engine, Host]:
    """A host application's database: its chain at host0001, its parent tables, nothing ours."""
    url, engine = fresh_database
    host = Host(tmp_path / "host", url)
    host.upgrade()
    return url, engine, host


@pytest.fixture
def ai_usage(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> Iterator[Cli]:
    """`ai-usage ARGS` in this process (the same main() and settings as the command), with
    environment variables set for the call: (exit code, stdout, stderr)."""
    root = logging.getLogger()
    saved = root.handlers[:], root.level

    def run(*argv: str, **env: str) -> tuple[int, str, str]:
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        get_settings.cache_clear()
        dispose_engine()
        try:
            code = main(list(argv))
        finally:
            root.handlers[:], level = saved[0], saved[1]
            root.setLevel(level)
        out = capsys.readouterr()
        return code, out.out, out.err

    yield run
    dispose_engine()
    get_settings.cache_clear()


def test_standalone_owns_the_whole_chain(fresh_database: tuple[str, Engine]) -> None:
    url, engine = fresh_database
    done = migrate(url, "standalone")
    assert (done.before, done.after, done.version_table) == (None, (HEAD,), "alembic_version")
    assert {"tenants", "users", "assessments", "leads", *OUR_TABLES} <= tables(engine)
    assert version(engine) == [HEAD]
    assert "ai_usage_alembic_version" not in tables(engine)
    assert migrate(url, "standalone").before == (HEAD,)  # a rerun changes nothing


def test_host_mode_leaves_the_host_chain_and_tables_alone(
    hosted: tuple[str, Engine, Host], ai_usage: Cli
) -> None:
    url, engine, host = hosted
    host_columns = {t: columns(engine, t) for t in ("tenants", "users", "assessments", "leads")}

    code, out, err = ai_usage("migrate", DATABASE_URL=url, AI_USAGE_SCHEMA="host")
    assert code == 0, err
    assert out.strip() == (
        f"migrated from no revision of ours to {HEAD}"
        " (AI_USAGE_SCHEMA=host, version table ai_usage_alembic_version)"
    )
    assert version(engine) == ["host0001"]  # the host's revision, untouched
    assert version(engine, "ai_usage_alembic_version") == [HEAD]
    assert {t: columns(engine, t) for t in host_columns} == host_columns  # no stand-ins
    assert set(OUR_TABLES) <= tables(engine)

    # Our foreign keys point at the host's tables: an event of a host tenant lands.
    with engine.begin() as conn:
        tenant = conn.execute(text("INSERT INTO tenants (name) VALUES ('h') RETURNING id")).scalar()
    assert tenant is not None
    assert write_batch(engine, [event(tenant)], Pricer()).inserted == 1

    # The host's next release still upgrades, and ours is still at head.
    host.add_later_revision()
    host.upgrade()
    assert version(engine) == ["host0002"] and "widgets" in tables(engine)
    code, out, _ = ai_usage("check", DATABASE_URL=url, AI_USAGE_SCHEMA="host")
    assert f"OK   migrations     at head {HEAD} (ai_usage_alembic_version)" in out.splitlines()
    code, out, _ = ai_usage("migrate", DATABASE_URL=url, AI_USAGE_SCHEMA="host")
    assert code == 0 and out.startswith(f"already at head {HEAD}")

    # A downgrade may remove our tables, never the host's: refused before it starts, or (a
    # relative one, on a host that has the GA columns our stand-in revision would drop) at
    # the first stand-in step, and rolled back whole.
    with engine.begin() as conn:
        conn.execute(text("ALTER TABLE tenants ADD ga_measurement_id text, ADD ga_api_secret text"))
    expected = {t: columns(engine, t) for t in ("tenants", "users", "assessments", "leads")}
    # -10 from head is 9f8e7d6c5b4a, the stand-in of the host's own parent tables.
    for target in ("base", "-10"):
        with pytest.raises(CommandError, match="downgrade no further than a1b2c3d4e5f6"):
            command.downgrade(alembic_config(url, "host"), target)
        assert version(engine, "ai_usage_alembic_version") == [HEAD]
        assert set(OUR_TABLES) <= tables(engine)
        assert {t: columns(engine, t) for t in expected} == expected
    command.downgrade(alembic_config(url, "host"), "a1b2c3d4e5f6")  # ours only: allowed
    assert not set(OUR_TABLES) & tables(engine)
    assert {t: columns(engine, t) for t in expected} == expected


def test_host_mode_refuses_a_database_without_the_parent_tables(
    fresh_database: tuple[str, Engine], tmp_path: Path, ai_usage: Cli
) -> None:
    url, engine = fresh_database
    without_leads = HOST_CORE.replace('("users", "assessments", "leads")', '("users",)')
    Host(tmp_path / "host", url, without_leads).upgrade()
    before = tables(engine)
    code, out, err = ai_usage("migrate", DATABASE_URL=url, AI_USAGE_SCHEMA="host")
    assert code == 1 and out == ""
    assert err.splitlines() == [
        "ai-usage: AI_USAGE_SCHEMA=host: the host database lacks assessments, leads;"
        " ai_usage_logs needs tenants(id, name), users(id), assessments(id), leads(id)"
        " with uuid ids"
    ]
    assert tables(engine) == before and version(engine) == ["host0001"]


def test_standalone_refuses_a_host_database(
    hosted: tuple[str, Engine, Host], ai_usage: Cli
) -> None:
    url, engine, _ = hosted
    before = tables(engine)
    code, _, err = ai_usage("migrate", DATABASE_URL=url)
    assert code == 1
    assert err.strip() == (
        "ai-usage: alembic_version holds revision 'host0001', which is not one of"
        " ai-usage-worker's (a host application's? set AI_USAGE_SCHEMA=host)"
    )
    assert tables(engine) == before and version(engine) == ["host0001"]
    code, out, _ = ai_usage("check", DATABASE_URL=url)
    assert code == 1
    assert (
        "FAIL migrations     alembic_version holds host0001, not a revision of ai-usage-worker"
        " (a host application's? set AI_USAGE_SCHEMA=host)"
    ) in out.splitlines()


def copy_our_revisions(into: Path, only: str | None = None) -> None:
    """Mode (c), as docs/ledger/schema.md says: our revisions from ai_usage_logs on, into the host's
    versions folder, the first one re-parented onto the host's head."""
    for path in sorted(Path(migrations_dir(), "versions").glob("*.py")):
        if "9f8e7d6c5b4a" in path.name or "a1b2c3d4e5f6" in path.name:
            continue
        if only and only not in path.name:
            continue
        body = path.read_text()
        if "b2c3d4e5f6g7" in path.name:
            body = re.sub(r'down_revision = "a1b2c3d4e5f6"', 'down_revision = "host0001"', body)
        (into / path.name).write_text(body)


def test_copied_revisions_run_in_the_host_chain(
    hosted: tuple[str, Engine, Host], ai_usage: Cli
) -> None:
    url, engine, host = hosted
    code, out, _ = ai_usage("check", DATABASE_URL=url, AI_USAGE_SCHEMA="copied")
    assert code == 1 and "FAIL migrations     not migrated (no ai_usage_logs table)" in out

    copy_our_revisions(host.versions, only="b2c3d4e5f6g7")  # the guide's revision alone
    host.upgrade()
    code, out, _ = ai_usage("check", DATABASE_URL=url, AI_USAGE_SCHEMA="copied")
    line = next(x for x in out.splitlines() if " migrations " in x)
    assert code == 1 and line.startswith("FAIL migrations     schema differs from the code: ")
    assert "missing table ai_usage_" in line or "missing column ai_usage_logs." in line

    copy_our_revisions(host.versions)
    host.upgrade()
    assert version(engine) == [HEAD]  # the host's chain, ending in our revisions
    assert "ai_usage_alembic_version" not in tables(engine)
    code, out, _ = ai_usage("check", DATABASE_URL=url, AI_USAGE_SCHEMA="copied")
    assert "OK   migrations     ai_usage_* tables match the code (host's chain)" in out, out
    code, _, err = ai_usage("migrate", DATABASE_URL=url, AI_USAGE_SCHEMA="copied")
    assert code == 2 and "the host application's chain holds our revisions" in err


@pytest.mark.parametrize(
    ("mode", "table"), [("standalone", "alembic_version"), ("host", "ai_usage_alembic_version")]
)
def test_check_says_not_migrated_not_unreachable(
    fresh_database: tuple[str, Engine], ai_usage: Cli, mode: str, table: str
) -> None:
    url, _ = fresh_database
    code, out, _ = ai_usage("check", DATABASE_URL=url, AI_USAGE_SCHEMA=mode)
    lines = out.splitlines()
    assert code == 1
    assert lines[0].startswith("OK   database       reachable")
    assert lines[1] == (
        f"FAIL migrations     not migrated (no {table} table): run `ai-usage migrate`"
    )
    assert not any(line.split()[1] in ("ledger", "dead_letters") for line in lines)


def test_shipped_migrations_are_the_repo_alembic_folder() -> None:
    """One copy: the package's migrations are the checkout's alembic/ (through the symlink in a
    checkout; copied into the wheel by setuptools, which tests/test_wheel.py installs)."""

    shipped = Path(migrations_dir())
    assert shipped.resolve() == (ROOT / "alembic").resolve()
    assert sorted(p.name for p in (shipped / "versions").glob("*.py")) == sorted(
        p.name for p in (ROOT / "alembic" / "versions").glob("*.py")
    )


def test_alembic_in_the_checkout_runs_the_same_chain_and_modes(
    hosted: tuple[str, Engine, Host], pg_server: str
) -> None:
    """`alembic upgrade head` from the repo (its alembic.ini) keeps working, and honours
    AI_USAGE_SCHEMA like `ai-usage migrate`."""

    def alembic_upgrade(url: str, mode: str) -> None:
        out = subprocess.run(
            [str(VENV_BIN / "alembic"), "upgrade", "head"],
            cwd=ROOT, env={**os.environ, "DATABASE_URL": url, "AI_USAGE_SCHEMA": mode},
            capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip
        assert out.returncode == 0, out.stderr

    url, engine, _ = hosted
    alembic_upgrade(url, "host")
    assert version(engine) == ["host0001"]
    assert version(engine, "ai_usage_alembic_version") == [HEAD]
    with new_database(pg_server, "aiu_repo") as own:
        alembic_upgrade(own, "standalone")
        own_engine = create_engine(normalise_database_url(own))
        assert version(own_engine) == [HEAD] and "tenants" in tables(own_engine)
        own_engine.dispose()


def test_check_compares_with_the_packages_head_not_the_cwds_alembic_ini(
    fresh_database: tuple[str, Engine],
    tmp_path: Path,
    ai_usage: Cli,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    url, _ = fresh_database
    migrate(url, "standalone")
    Host(tmp_path / "app", url)  # an application's alembic.ini (head host0001) in the cwd
    monkeypatch.chdir(tmp_path / "app")
    _, out, _ = ai_usage("check", DATABASE_URL=url)
    assert f"OK   migrations     at head {HEAD} (alembic_version)" in out.splitlines(), out
