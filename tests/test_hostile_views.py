"""Issue 26's corpus: hostile strings (terminal escapes, controls, bidi and zero-width
characters, formula prefixes, CR/LF, HTML and script breakers, template syntax, very long and
wide names) sent through a real worker as a hostile producer would, and as tenant names from
the host application's table, then every view produced by the real `ai-usage` command: every
table, CSV (piped and on a terminal), JSON, the worker's text and JSON logs, and the HTML page
in headless Chromium.

Asserted: no raw control, bidi or zero-width character reaches a terminal or a text log; no
row is forged and none hidden; no CSV cell starts a formula, and dropping one leading quote
gives every exact value back; JSON is exact; every chart of the page renders; no injected
markup or script runs."""

from __future__ import annotations

import csv
import functools
import io
import json
import os
import pty
import re
import subprocess
import time
import unicodedata
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from decimal import Decimal
from html import escape
from pathlib import Path

import pytest
import redis
from celery import Celery
from sqlalchemy import Engine, text
from wcwidth import width

from tests.conftest import AI_USAGE, TABLES, WorkerProcess, count_rows, make_tenant, wait_for
from tests.factories import event as factory
from tests.test_html_report import CHROMIUM, chromium, marks, measured
from worker.textsafe import FORMULA_PREFIXES, cut, visible

pytestmark = pytest.mark.e2e

#: What a terminal must never receive raw: controls, format characters (bidi, zero-width),
#: line and paragraph separators.
RAW = frozenset({"Cc", "Cf", "Zl", "Zp", "Cs"})
INJECTED_TITLE = "PWNED"
CORPUS = (
    "legit\rEVIL",
    "\x1b]0;retitled\x07window",
    "\x1b[2J\x1b[Hcleared the screen",
    "\x1b]0;" + "an OSC never terminated, cut at twenty",
    "\x9b31m8-bit CSI\x9b0m",
    "bell\x07 backspace\x08 del\x7f vt\x0b ff\x0c",
    "two\nFAKE ROW   999   999",
    "nel\x85 line\u2028 para\u2029 end",
    "rlo \u202eexe.txt\u202c tail",
    "isolates \u2067evil\u2069 lrm\u200e rlm\u200f alm\u061c",
    "zero\u200bwidth\u200cjoin\u200dbom\ufeffsoft\u00adhyphen",
    '=HYPERLINK("http://evil.example","click")',
    "+1+1",
    "-2+3",
    "@SUM(A1:A9)",
    "\tstarts with TAB",
    "\rstarts with CR",
    "\uff1dfull-width equals",
    "'already quoted",
    '"quotes", and, commas',
    "<!--<script>",
    "</script><script>document.title='PWNED'</script>",
    "<img src=x onerror=\"document.body.setAttribute('data-pwned','1')\">",
    "<svg onload=\"document.title='PWNED'\">",
    "%{y:.9f}",
    "{{x}} ${7*7} %s %(name)s",
    "コンニチハ世界 wide",
    "e\u0301\u0301\u0301 combining",
    "back\\slash \\x1b literal",
)
#: Tenant names: the corpus, and one of the 255 characters the column allows.
TENANT_NAMES = (*CORPUS, "W" * 200 + "\x1b]0;" + "x" * 50)
#: Models and operations: at most 100 characters (the schema's limit).
MODELS = tuple(s[:100] for s in CORPUS)
OPERATIONS = tuple(reversed(MODELS))
#: Extra fields of events that are dead-lettered, each named by its field name.
HOSTILE_FIELDS = (
    "\x1b]0;pwned\x07\nFAKE LOG LINE",
    "\u202eevil\r\x1b[2K",
    "=cmd|' /C calc'!A0",
)

event = functools.partial(factory, input_tokens=120, output_tokens=80)


def raw(out: str, allowed: str = "\n") -> list[str]:
    """The characters of `out` that a terminal must not receive raw."""
    return sorted({repr(c) for c in out if c not in allowed and unicodedata.category(c) in RAW})


def ai_usage(*args: str) -> str:
    """`ai-usage ARGS` as a subprocess (its stdout a pipe), which must succeed."""
    done = subprocess.run([AI_USAGE, *args], capture_output=True, timeout=120, check=False)
    assert done.returncode == 0, (args, done.stderr.decode(errors="replace"))
    assert not raw(done.stderr.decode()), (args, done.stderr)
    return done.stdout.decode("utf-8")


def on_a_terminal(*args: str) -> bytes:
    """`ai-usage ARGS` with its stdout on a pseudo-terminal: the bytes a terminal receives."""
    leader, follower = pty.openpty()
    proc = subprocess.Popen([AI_USAGE, *args], stdout=follower, stderr=subprocess.PIPE)
    os.close(follower)
    chunks = []
    while True:
        try:
            chunk = os.read(leader, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(leader)
    assert proc.wait(120) == 0, proc.stderr.read() if proc.stderr else ""
    return b"".join(chunks)


@dataclass
class World:
    """What the hostile producer and the host application left behind."""

    tenants: dict[uuid.UUID, str]
    month: str
    worker: WorkerProcess
    user_tenant: uuid.UUID


@pytest.fixture(scope="module")
def world(
    engine: Engine, redis_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[World]:
    """One hostile month for every test of this module (a real worker took it in)."""
    with engine.begin() as conn:
        conn.execute(text(f"TRUNCATE {', '.join(TABLES)} CASCADE"))
    client = redis.Redis.from_url(redis_url)
    client.flushdb()
    tenants = {make_tenant(engine, name): name for name in TENANT_NAMES}
    ids = list(tenants)
    with engine.begin() as conn:
        user = conn.execute(
            text("INSERT INTO users (name, tenant_id) VALUES ('u', :t) RETURNING id"),
            {"t": ids[0]},
        ).scalar_one()
    good = [
        event(
            tenant,
            model=MODELS[i % len(MODELS)],
            operation=OPERATIONS[i % len(OPERATIONS)],
            # Every third call is unpriced (no cost, an unknown model): the table's warning
            # line about them must survive every name above it.
            **({} if i % 3 == 0 else {"cost_usd": round(0.01 * (i + 1), 4)}),
            **({"user_id": str(user)} if tenant == ids[0] else {}),
        )
        for i, tenant in enumerate(ids * 2)
    ]
    bad = [event(ids[0], **{name: 1}) for name in HOSTILE_FIELDS]
    bad.append(event(ids[1], model="\x1b]0;pwned\x07" + "m" * 120))  # too long
    log = tmp_path_factory.mktemp("hostile") / "worker.log"
    worker = WorkerProcess({**os.environ, "AI_USAGE_BATCH_MAX_WAIT_MS": "100"}, log).start()
    try:
        producer = Celery("hostile-producer", broker=redis_url, set_as_current=False)
        producer.conf.task_serializer = "json"
        producer.send_task("ai_usage.record_batch", args=[good + bad], queue="ai_usage")
        producer.close()
        # Not messages at all: set aside by the worker, with their reason.
        client.lpush("ai_usage", b"\x1b]0;pwned\x07 not json\r\nFAKE LINE \xe2\x80\xae")
        client.lpush("ai_usage", json.dumps({"\x1b[2J": "</script>", "body": "\u202e"}))
        wait_for(lambda: count_rows(engine) == len(good), 60, what="the hostile events")
        wait_for(lambda: count_rows(engine, "ai_usage_dead_letters") == len(bad), 60)
        wait_for(lambda: client.llen("ai_usage.undecodable") == 2, 60, what="2 set aside")
        client.close()
        ai_usage("rollup")
        for tenant in ids:
            ai_usage("budget", "set", "--tenant", str(tenant), "--usd", "0.05")
        yield World(tenants, time.strftime("%Y-%m", time.gmtime()), worker, ids[0])
    finally:
        worker.stop()


def test_hostile_text_reaches_no_terminal_raw(world: World) -> None:
    n = len(world.tenants)
    # The monthly report: one line per tenant, none forged or hidden, aligned by display width.
    out = ai_usage("report")
    assert not raw(out), raw(out)
    lines = out.rstrip("\n").split("\n")
    rows = lines[2 : 2 + n]
    assert len(lines) == 2 + n + 1, out  # title, header, the rows, the unpriced line
    assert "calls have no known price" in lines[2 + n], out
    for tenant, name in world.tenants.items():
        found = [line for line in rows if f" {str(tenant)[:8]} " in line]
        assert len(found) == 1 and found[0].startswith(cut(name, 20)), (name, found)
    assert len({width(line) for line in lines[1 : 2 + n]}) == 1, "columns not aligned"
    assert "legit\\rEVIL" in out and "rlo \\u202eexe.txt…" in out, out
    for by, keys in (("model", set(MODELS)), ("operation", set(OPERATIONS))):
        out = ai_usage("report", "--by", by)
        assert not raw(out), (by, raw(out))
        lines = out.rstrip("\n").split("\n")
        assert len(lines) == 2 + len(keys) + 1, out  # title, header, rows, unpriced line
        assert len({width(line) for line in lines[1:-1]}) == 1, "columns not aligned"
        for key in keys:
            assert sum(line.startswith(cut(key, 48) + " ") for line in lines[2:-1]) == 1, key
    for args in (("--by", "day"), ("--by", "user", "--tenant", str(world.user_tenant))):
        out = ai_usage("report", *args)
        assert not raw(out), (args, raw(out))
    out = ai_usage("budget", "list")
    assert not raw(out), raw(out)
    assert len(out.rstrip("\n").split("\n")) == 2 + n + 1, out  # title, header, rows, unpriced
    out = ai_usage("dead-letters", "list")
    assert not raw(out), raw(out)
    assert len(out.rstrip("\n").split("\n")) == 3 * (len(HOSTILE_FIELDS) + 1), out
    assert not any(line.startswith("FAKE") for line in out.split("\n")), out
    out = ai_usage("undecodable", "list")
    assert not raw(out), raw(out)
    assert len(out.rstrip("\n").split("\n")) == 1 + 3 * 2, out
    assert not any(line.startswith("FAKE") for line in out.split("\n")), out


def cells(out: str) -> list[list[str]]:
    assert "\r\n" in out and out.endswith("\r\n")
    return list(csv.reader(io.StringIO(out, newline="")))


def exact(cell: str) -> str:
    """A CSV text cell's exact value: the documented read-back (drop one leading quote)."""
    return cell[1:] if cell.startswith("'") else cell


def test_csv_starts_no_formula_and_gives_every_value_back(world: World) -> None:
    rows = cells(ai_usage("report", "--format", "csv"))
    header, body = rows[0], rows[1:]
    assert len(body) == len(world.tenants)
    name_col, cost_col = header.index("tenant_name"), header.index("total_cost_usd")
    for row in body:
        for cell in row:
            assert not cell.startswith(("=", "+", "-", "@", "\t", "\r")), row
        assert exact(row[name_col]) == world.tenants[uuid.UUID(row[0])]
        if row[cost_col]:
            Decimal(row[cost_col])  # a number, not text
        assert int(row[header.index("api_calls")]) == 2
    for by, keys in (("model", MODELS), ("operation", OPERATIONS)):
        rows = cells(ai_usage("report", "--by", by, "--format", "csv"))
        assert {exact(r[0]) for r in rows[1:]} == set(keys)
        assert all(not c.startswith(FORMULA_PREFIXES[:-1]) for r in rows for c in r)
    # On a terminal the cells are shown by the table's rule: still CSV, nothing raw.
    shown = on_a_terminal("report", "--format", "csv").decode()
    assert not raw(shown, allowed="\r\n"), raw(shown, allowed="\r\n")
    assert "legit\\rEVIL" in shown


def test_json_is_exact(world: World) -> None:
    report = json.loads(ai_usage("report", "--format", "json"))
    assert {uuid.UUID(r["tenant_id"]): r["tenant_name"] for r in report["rows"]} == world.tenants
    by_model = json.loads(ai_usage("report", "--by", "model", "--format", "json"))
    assert {r["key"] for r in by_model["rows"]} == set(MODELS)
    budgets = json.loads(ai_usage("budget", "list", "--format", "json"))
    assert {r["tenant_name"] for r in budgets} == set(TENANT_NAMES)
    letters = json.loads(ai_usage("dead-letters", "list", "--format", "json"))
    assert set(HOSTILE_FIELDS) <= {d["field"] for d in letters}
    aside = json.loads(ai_usage("undecodable", "list", "--format", "json"))
    assert len(aside) == 2


def test_the_worker_text_log_shows_every_hostile_value_escaped(world: World) -> None:
    world.worker.stop()
    log = world.worker.log_path.read_text(encoding="utf-8", errors="strict")
    assert not raw(log), raw(log)
    assert "events dead-lettered" in log
    assert not [line for line in log.split("\n") if line.startswith(("FAKE", "\x1b"))]
    assert "set aside an item" in log


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (`make browser`)")
def test_the_html_page_cannot_be_broken_or_spoofed(world: World, tmp_path: Path) -> None:
    page = tmp_path / "hostile.html"
    ai_usage("report", "--html", str(page))
    source = page.read_text(encoding="utf-8")
    # Nothing of a name is markup: the only script elements are the two JSON data blocks.
    assert len(re.findall(r"<script", source)) == 2, re.findall(r"<script[^>]*>", source)
    for breaker in ("<!--<script>", "</script><script>", "<img", "<svg onload", "\u202e"):
        assert breaker not in source, breaker
    # The embedded report is the JSON report, exactly.
    data = re.search(r'<script type="application/json" id="report-data">(.*?)</script>', source)
    assert data is not None
    assert json.loads(data.group(1)) == json.loads(ai_usage("report", "--format", "json"))
    # Each name is isolated, cut, and whole on hover.
    for name in world.tenants.values():
        assert f'<bdi class="name" title="{escape(visible(name))}">' in source, name
    n = len(world.tenants)
    assert marks(source, "chart-tenants") == n and marks(source, "chart-budgets") == n
    assert marks(source, "chart-daily") >= len(MODELS) - len(MODELS) // 3 - 1
    dom = chromium(tmp_path, "--dump-dom", page.as_uri())
    assert dom.returncode == 0, dom.stderr[-2000:]
    for tree in (dom.stdout, measured_dom(tmp_path, page)):
        # The DOM as Chromium serialises it: a name's "<" is &lt; in text and attributes, so a
        # raw "<img" or an attribute set by a handler would be an injected one.
        assert 'data-pwned="1"' not in tree
        assert not re.search(r"<(img|svg)\b[^>]*\bon(error|load)=", tree)
        assert "<img" not in tree
    assert f"<title>AI usage {world.month}</title>" in dom.stdout
    assert "%{y:.9f}" in dom.stdout  # shown as written, never a template
    # Every chart renders (each mark has a box), and no injected script ran even with the
    # page's Content-Security-Policy taken away.
    layout = measured(tmp_path, page)
    assert layout["title"] == f"AI usage {world.month}" and INJECTED_TITLE not in layout["title"]
    for chart in ("chart-tenants", "chart-daily", "chart-budgets"):
        assert layout["charts"][chart]["drawn"] == marks(source, chart), (chart, layout)


def measured_dom(tmp: Path, page: Path) -> str:
    """The DOM of the page's measured copy (no CSP) after Chromium ran it."""
    measured(tmp, page)
    copy = tmp / f"measure-{page.name}"
    dom = chromium(tmp, "--dump-dom", copy.as_uri())
    assert dom.returncode == 0, dom.stderr[-2000:]
    return dom.stdout


# Last: its `db` fixture empties the tables the module's world is in.
def test_the_worker_json_log_stays_exact(
    db: Engine, redis_url: str, start_worker: Callable[..., WorkerProcess]
) -> None:
    tenant = make_tenant(db, "json-log tenant")
    worker = start_worker({"AI_USAGE_LOG_FORMAT": "json"})
    producer = Celery("hostile-producer", broker=redis_url, set_as_current=False)
    producer.conf.task_serializer = "json"
    bad = [event(tenant, **{name: 1}) for name in HOSTILE_FIELDS]
    producer.send_task("ai_usage.record_batch", args=[bad], queue="ai_usage")
    producer.close()
    wait_for(lambda: count_rows(db, "ai_usage_dead_letters") == len(bad), 60)
    worker.stop()
    log = worker.log_path.read_text(encoding="utf-8")
    assert not raw(log), raw(log)  # json escapes every control
    records = [json.loads(line) for line in log.split("\n") if line.startswith("{")]
    summary = [r for r in records if "events dead-lettered" in r["message"]]
    assert summary, records[-5:]
    # The JSON record holds the first reason exactly as the dead letter stores it.
    with db.connect() as conn:
        first = conn.execute(
            text("SELECT error FROM ai_usage_dead_letters WHERE field = :f"),
            {"f": HOSTILE_FIELDS[0]},
        ).scalar_one()
    assert HOSTILE_FIELDS[0] in first
    assert any(first[:300] in r["message"] for r in summary), summary
