"""The manual (docs/) is checked, not trusted:

- every `ai-usage` command and option (read from the CLI's argparse tree) is documented, and
  every `ai-usage ...` written in the manual or the README exists, with options of its own;
- every `AI_USAGE_*` variable the code reads (any string constant of worker/ that is such a
  name: the settings' aliases, the client's and the demo's own reads) is documented, every one
  documented exists, and the defaults in the configuration table are the code's;
- the code blocks marked to run are run: a Markdown comment line `<!-- run -->` right before a
  fence. A `python` block of `>>>` lines is a doctest (its output compared); another `python`
  block runs as a script in a fresh interpreter (`<!-- run: lands N -->`: a real worker is
  running and exactly N rows land, no dead letter); a `bash` block is a list of `ai-usage`
  commands, each of which must exit 0. They run against this run's PostgreSQL and Redis:
  `redis://localhost:6379/0` in a block is replaced by the test Redis, and every UUID a block
  names is created as a tenant first.

Pages merged from other branches are picked up as they are: the checks read all of docs/.
Nothing here touches the network; mkdocs itself is not needed (`make docs` builds the site).
"""

from __future__ import annotations

import argparse
import ast
import doctest
import os
import re
import shlex
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy import Engine, text

from tests.conftest import AI_USAGE, ROOT, WorkerProcess, count_rows, wait_for
from worker.cli import build_parser
from worker.settings import Settings

DOCS = ROOT / "docs"
PAGES = sorted(DOCS.rglob("*.md"))
#: What an `ai-usage` command line in the manual may be written with besides its own options.
GLOBAL_OPTIONS = {"--debug", "--help"}
SETTING = re.compile(r"\bAI_USAGE_[A-Z0-9_]*[A-Z0-9]\b")
UUID = re.compile(r"\b[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\b")
#: The broker URL a reader's copy of a block talks to; the test's Redis replaces it.
READER_REDIS = "redis://localhost:6379/0"


def manual() -> str:
    return "\n".join(p.read_text() for p in PAGES)


# --- `ai-usage` commands ---------------------------------------------------------------------


def commands() -> dict[tuple[str, ...], set[str]]:
    """Every command path of `ai-usage` (`("budget", "set")`) -> its long options."""
    out: dict[tuple[str, ...], set[str]] = {}

    def walk(parser: argparse.ArgumentParser, path: tuple[str, ...]) -> None:
        out[path] = {o for a in parser._actions for o in a.option_strings if o.startswith("--")} - {
            "--help"
        }
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, child in action.choices.items():
                    walk(child, (*path, name))

    walk(build_parser(), ())
    return out


def written_commands(source: str) -> Iterator[str]:
    """Each `ai-usage ...` the Markdown `source` writes: in code spans, and in fenced blocks
    (from `ai-usage` to the end of the line or a comment)."""
    fence = False
    for line in source.splitlines():
        if line.lstrip().startswith("```"):
            fence = not fence
            continue
        if fence:
            for found in re.finditer(r"(?:^|[\s:$(])(ai-usage(?![\w-])(?:\s[^#]*)?)", line):
                yield found.group(1).strip()
        else:
            for span in re.findall(r"`([^`]+)`", line):
                command = re.search(r"(?:^|\s)(ai-usage(?:\s.*)?)$", span)
                if command:
                    yield command.group(1).strip()


def resolve(line: str, known: dict[tuple[str, ...], set[str]]) -> tuple[tuple[str, ...], str]:
    """The command path `line` names, or ((), why not)."""
    words = [w for w in line.split()[1:] if not w.startswith("--")]
    path: tuple[str, ...] = ()
    for word in words:
        if not re.fullmatch(r"[a-z][a-z-]*", word):  # `...`, `ID`, `[--month`: arguments
            break
        if (*path, word) in known:
            path = (*path, word)
        elif any(p[: len(path)] == path and len(p) > len(path) for p in known) and not path:
            return (), f"`{line}`: no command {word!r}"
        else:
            break
    return path, ""


def test_every_command_and_option_is_documented() -> None:
    missing = []
    for path, options in commands().items():
        if not path:
            continue
        name = "ai-usage " + " ".join(path)
        pages = [p for p in PAGES if re.search(re.escape(name) + r"\b", p.read_text())]
        if not pages:
            missing.append(name)
            continue
        documented = "\n".join(p.read_text() for p in pages)
        missing += [f"{name} {o}" for o in sorted(options) if not re.search(o + r"\b", documented)]
    # An option counts as documented on a page that names its command.
    assert missing == []


def test_every_documented_command_and_option_exists() -> None:
    known = commands()
    wrong = []
    for page in [*PAGES, ROOT / "README.md"]:
        for line in written_commands(page.read_text()):
            path, why = resolve(line, known)
            if why:
                wrong.append(f"{page.relative_to(ROOT)}: {why}")
                continue
            for option in re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", line):
                if option not in known[path] | GLOBAL_OPTIONS:
                    wrong.append(f"{page.relative_to(ROOT)}: `{line}`: no option {option}")
    assert wrong == []


def test_the_command_reader_sees_what_is_written() -> None:
    md = (
        "Run `ai-usage budget set --tenant ID --usd 5`.\n```\nrelease: ai-usage migrate  # x\n```\n"
    )
    assert list(written_commands(md)) == [
        "ai-usage budget set --tenant ID --usd 5",
        "ai-usage migrate",
    ]
    known = commands()
    assert resolve("ai-usage budget set --usd 5", known) == (("budget", "set"), "")
    assert resolve("ai-usage nosuch", known)[1]


# --- AI_USAGE_* settings ---------------------------------------------------------------------


def settings_read_by_the_code() -> set[str]:
    """Every string constant of worker/ that is an AI_USAGE_* name, and every settings alias."""
    found: set[str] = set()
    for path in (ROOT / "worker").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if (
                isinstance(node, ast.Constant)
                and isinstance(node.value, str)
                and SETTING.fullmatch(node.value)
            ):
                found.add(node.value)
    for field in Settings.model_fields.values():
        if isinstance(field.validation_alias, str) and field.validation_alias.startswith("AI_"):
            found.add(field.validation_alias)
    return found


def test_every_setting_the_code_reads_is_documented() -> None:
    read = settings_read_by_the_code()
    assert {"AI_USAGE_BROKER_URL", "AI_USAGE_RUN_DIR", "AI_USAGE_SCHEMA"} <= read
    assert sorted(read - set(SETTING.findall(manual()))) == []


def test_every_documented_setting_exists() -> None:
    read = settings_read_by_the_code()
    unknown = [
        f"{page.relative_to(ROOT)}: {name}"
        for page in [*PAGES, ROOT / "README.md", ROOT / ".env.example"]
        for name in sorted(set(SETTING.findall(page.read_text())) - read)
    ]
    assert unknown == []


def configuration_table() -> dict[str, str]:
    """`AI_USAGE_*` -> the default its row in docs/running/configuration.md states."""
    rows = re.findall(
        r"^\| `(AI_USAGE_[A-Z0-9_]+)` \| ([^|]+) \|",
        (DOCS / "running/configuration.md").read_text(),
        re.M,
    )
    return {name: default.strip() for name, default in rows}


def test_the_configuration_table_states_the_code_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    table = configuration_table()
    aliases = {
        f.validation_alias: name
        for name, f in Settings.model_fields.items()
        if isinstance(f.validation_alias, str) and f.validation_alias.startswith("AI_USAGE_")
    }
    # A setting documented on another page only (as a merged branch's may be) has no row to
    # check; test_every_setting_the_code_reads_is_documented covers it. A row must be right.
    assert len(set(aliases) & set(table)) >= 20, "the table lost its rows"
    for variable in [*os.environ]:
        if variable.startswith("AI_USAGE_"):
            monkeypatch.delenv(variable)
    wrong = []
    for variable, field in aliases.items():
        if variable not in table:
            continue
        default = Settings.model_fields[field].get_default(call_default_factory=True)
        stated = table[variable]
        if stated == "unset":
            if default is not None:
                wrong.append(f"{variable}: unset in the table, {default!r} in the code")
            continue
        if stated == "empty":
            if default != "":
                wrong.append(f"{variable}: empty in the table, {default!r} in the code")
            continue
        monkeypatch.setenv(variable, stated.strip("`"))
        value = getattr(Settings(_env_file=None), field)
        monkeypatch.delenv(variable)
        if value != default:
            wrong.append(f"{variable}: {stated} in the table, {default!r} in the code")
    assert wrong == []


# --- runnable blocks -------------------------------------------------------------------------


@dataclass
class Block:
    page: Path
    line: int
    language: str
    marker: str
    code: str

    @property
    def id(self) -> str:
        return f"{self.page.relative_to(DOCS)}:{self.line}"

    @property
    def lands(self) -> int | None:
        m = re.fullmatch(r"run: lands (\d+)", self.marker)
        return int(m.group(1)) if m else None


def runnable_blocks(pages: list[Path] = PAGES) -> list[Block]:
    """The fenced blocks right after a `<!-- run ... -->` line."""
    blocks = []
    for page in pages:
        lines = page.read_text().splitlines()
        for i, line in enumerate(lines):
            marker = re.fullmatch(r"<!--\s*(run(?::[^>]*)?)\s*-->", line.strip())
            if not marker:
                continue
            fence = lines[i + 1].strip() if i + 1 < len(lines) else ""
            assert fence.startswith("```"), f"{page}:{i + 1}: a run marker must precede a fence"
            end = next(j for j in range(i + 2, len(lines)) if lines[j].strip() == "```")
            blocks.append(
                Block(
                    page,
                    i + 2,
                    fence.strip("`").split()[0] if fence.strip("`") else "",
                    marker.group(1).strip(),
                    "\n".join(lines[i + 2 : end]) + "\n",
                )
            )
    return blocks


BLOCKS = runnable_blocks()


def test_the_manual_has_blocks_of_each_kind() -> None:
    kinds = {(b.language, b.lands is not None, ">>>" in b.code) for b in BLOCKS}
    assert {("python", True, False), ("python", False, True), ("bash", False, False)} <= kinds
    for block in BLOCKS:
        assert block.language in ("python", "bash"), f"{block.id}: cannot run {block.language!r}"
        assert block.marker == "run" or block.lands is not None, f"{block.id}: {block.marker!r}"


@pytest.fixture
def doc_world(db: Engine, redis_url: str) -> Iterator[dict[str, str]]:
    """What a block assumes: its tenants exist; the environment names this run's servers."""
    with db.begin() as conn:
        for block in BLOCKS:
            for tenant in UUID.findall(block.code):
                conn.execute(
                    text(
                        "INSERT INTO tenants (id, name) VALUES (:id, 'Docs') ON CONFLICT DO NOTHING"
                    ),
                    {"id": tenant},
                )
    yield {**os.environ, "AI_USAGE_BROKER_URL": redis_url, "PYTHONPATH": str(ROOT)}


def run(argv: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        argv, env=env, cwd=cwd, capture_output=True, text=True, timeout=120, check=False
    )


def prepared(block: Block, redis_url: str) -> str:
    return block.code.replace(READER_REDIS, redis_url)


@pytest.mark.parametrize("block", [b for b in BLOCKS if ">>>" in b.code], ids=lambda b: b.id)
def test_doctest_blocks(block: Block, doc_world: dict[str, str], redis_url: str) -> None:
    test = doctest.DocTestParser().get_doctest(
        prepared(block, redis_url), {}, block.id, str(block.page), block.line
    )
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
    runner.run(test)
    assert runner.summarize(verbose=False).failed == 0


@pytest.mark.parametrize("block", [b for b in BLOCKS if b.language == "bash"], ids=lambda b: b.id)
def test_command_blocks(block: Block, doc_world: dict[str, str], redis_url: str) -> None:
    for raw in prepared(block, redis_url).splitlines():
        line = raw.split(" #", 1)[0].strip()
        if not line or line.startswith("#"):
            continue
        words = shlex.split(line)
        assert words[0] == "ai-usage", f"{block.id}: only `ai-usage` commands run here: {line}"
        out = run([AI_USAGE, *words[1:]], doc_world, ROOT)
        assert out.returncode == 0, f"{block.id}: `{line}` exited {out.returncode}: {out.stderr}"


@pytest.mark.e2e
@pytest.mark.parametrize(
    "block",
    [b for b in BLOCKS if b.language == "python" and ">>>" not in b.code],
    ids=lambda b: b.id,
)
def test_script_blocks(
    block: Block, doc_world: dict[str, str], redis_url: str, db: Engine, tmp_path: Path
) -> None:
    worker = None
    if block.lands is not None:
        worker = WorkerProcess(
            {**doc_world, "AI_USAGE_BATCH_MAX_WAIT_MS": "100"}, tmp_path / "worker.log"
        ).start()
    try:
        before = count_rows(db)
        out = run([sys.executable, "-c", prepared(block, redis_url)], doc_world, tmp_path)
        assert out.returncode == 0, f"{block.id}: {out.stderr}"
        if block.lands is not None:
            expected = before + block.lands
            wait_for(lambda: count_rows(db) >= expected, 60, what=f"{block.lands} rows")
            time.sleep(1)  # a row past the count would have landed by now: exactly N, not >= N
            assert count_rows(db) == expected
            assert count_rows(db, "ai_usage_dead_letters") == 0
    finally:
        if worker is not None:
            worker.stop()


def test_run_markers_are_read(tmp_path: Path) -> None:
    page = tmp_path / "p.md"
    page.write_text(
        "x\n<!-- run: lands 2 -->\n```python\nprint(1)\n```\n<!-- run -->\n```bash\nai-usage check\n```\n"
    )
    blocks = runnable_blocks([page])
    assert [(b.language, b.lands, b.code) for b in blocks] == [
        ("python", 2, "print(1)\n"),
        ("bash", None, "ai-usage check\n"),
    ]
