"""The rule for untrusted text (worker.textsafe), the text log's formatter, and the HTML page's
pieces that hold names (the JSON script element, the "metered vs provider" section), on any
text hypothesis makes and on the issue's worst cases."""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
import logging
import re
import sys
import unicodedata
import uuid
from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from wcwidth import width

from worker.ledger.htmlpage import MAX_RECONCILIATION_ROWS, json_for_script, render_page
from worker.ledger.htmlreport import PageData
from worker.logs import TRACE_PREFIX, JsonFormatter, RedactingFormatter
from worker.textsafe import (
    ELLIPSIS,
    FORMULA_PREFIXES,
    MAX_MARKS,
    csv_document,
    cut,
    text_table,
    visible,
)

RAW = frozenset({"Cc", "Cf", "Zl", "Zp", "Cs"})
# Any code point, the escaped ones made likely.
hostile = st.text(
    st.one_of(
        st.characters(codec="utf-8"),
        st.sampled_from("\x1b\x07\r\n\t\x00\x7f\x85\x9b\u202e\u2066\u200b\u200d\ufeff\u2028"),
        st.sampled_from("=+-@'\"\\,;<>&コ\u0301\u3164\U0001f469"),
    ),
    max_size=60,
)


def raw(text: str, allowed: str = "") -> list[str]:
    return [c for c in text if c not in allowed and unicodedata.category(c) in RAW]


@settings(max_examples=300, deadline=None)
@given(hostile)
def test_visible_leaves_nothing_raw_and_is_idempotent(text: str) -> None:
    shown = visible(text)
    assert not raw(shown)
    assert visible(shown) == shown
    flood = re.search(rf"[\u0300-\u036f]{{{MAX_MARKS + 1}}}", text)
    blank = re.search("[\u034f\u115f\u1160\u3164\uffa0]", text)
    if text.isprintable() and not flood and not blank:
        assert shown == text  # plain text is untouched


@settings(max_examples=300, deadline=None)
@given(hostile, st.integers(min_value=2, max_value=40))
def test_cut_fits_its_width_and_never_splits_an_escape(text: str, columns: int) -> None:
    shown = cut(text, columns)
    assert not raw(shown)
    assert width(shown) <= columns
    if shown != visible(text):
        assert shown.endswith(ELLIPSIS)
        kept = shown[: -len(ELLIPSIS)]
        assert visible(text).startswith(kept)
        # Cut between escapes: what was kept is whole escapes and characters (a backslash in
        # the text itself may be followed by anything: it is not an escape).
        if "\\" not in text:
            assert not re.search(r"\\(x[0-9a-f]{0,1}|u[0-9a-f]{0,3}|U[0-9a-f]{0,7})$", kept)


def test_cut_counts_wide_characters_and_combining_marks() -> None:
    assert cut("コンニチハ世界", 7) == "コンニ" + ELLIPSIS
    assert width(cut("コンニチハ世界", 7)) == 7
    assert cut("e\u0301" * 10, 10) == "e\u0301" * 10  # 10 columns: fits whole
    assert cut("\x1b]0;" + "x" * 40, 20) == "\\x1b]0;" + "x" * 12 + ELLIPSIS


def test_cut_keeps_what_fits_of_a_cluster_that_holds_an_escape() -> None:
    # A family emoji is one grapheme cluster whose joiners are shown as \u200d: 30 columns in
    # all. Cut to 20 it kept nothing but the ellipsis; it keeps the escapes that fit.
    family = "\U0001f469\u200d\U0001f469\u200d\U0001f467\u200d\U0001f466 fam"
    shown = cut(family, 20)
    assert shown == "\U0001f469\\u200d\U0001f469\\u200d\U0001f467" + ELLIPSIS
    assert width(shown) <= 20


@pytest.mark.parametrize("filler", ["\u115f", "\u1160", "\u3164", "\uffa0", "\u034f"])
def test_characters_that_draw_nothing_are_escaped(filler: str) -> None:
    # Hangul fillers and the combining grapheme joiner are letters or marks (not Cf) but draw
    # nothing: a name made of them looks blank, or like another name with a space.
    name = f"admin{filler}{filler}"
    assert visible(name) == f"admin\\u{ord(filler):04x}\\u{ord(filler):04x}"
    assert visible(visible(name)) == visible(name)
    assert visible("\u2800") == "\u2800"  # braille blank: a symbol, drawn as an empty cell


def test_a_flood_of_combining_marks_is_escaped_past_four() -> None:
    # Zalgo: marks stacked on one letter draw over the rows above and below in a terminal.
    # Up to four (Vietnamese needs two, Tibetan stacks a few) stay; the rest are escapes, so
    # the table's width counts them and nothing is drawn outside the row.
    flood = "e" + "\u0301" * 50
    shown = visible(flood)
    assert shown == "e" + "\u0301" * 4 + "\\u0301" * 46
    assert visible(shown) == shown
    assert visible("Vi\u1ec7t e\u0302\u0301") == "Vi\u1ec7t e\u0302\u0301"
    assert width(cut(flood * 200, 20)) <= 20
    table = text_table(["name", "n"], [[flood, "1"], ["plain", "2"]], max_widths=[24])
    assert "\u0301" * 5 not in table


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(hostile, st.integers(0, 10**9)), min_size=1, max_size=6))
def test_a_table_has_one_line_per_row_and_aligned_columns(rows: list[tuple[str, int]]) -> None:
    out = text_table(("name", "calls"), [(name, str(n)) for name, n in rows])
    lines = out.split("\n")
    assert len(lines) == 1 + len(rows)
    assert not raw(out, allowed="\n")
    assert len({width(line) for line in lines}) == 1  # the last column is right-aligned


@settings(max_examples=300, deadline=None)
@given(st.lists(hostile.filter(lambda t: "\x00" not in t), min_size=1, max_size=5))
def test_csv_starts_no_formula_and_one_quote_dropped_gives_the_value(cells: list[str]) -> None:
    out = csv_document(["text", "number"], [[c, Decimal("-1.5")] for c in cells])
    rows = list(csv.reader(io.StringIO(out, newline="")))
    assert len(rows) == 1 + len(cells)
    for row, cell in zip(rows[1:], cells, strict=True):
        assert not row[0].startswith(("=", "+", "-", "@", "\t", "\r"))
        assert (row[0][1:] if row[0].startswith("'") else row[0]) == cell
        assert row[1] == "-1.5"  # a negative number stays a number, never quoted as text


def test_csv_quotes_every_cell_with_cr_or_lf_and_ends_lines_with_crlf() -> None:
    out = csv_document(["a", "b"], [["x\ry", "z\nw"], [None, 3]])
    assert out == 'a,b\r\n"x\ry","z\nw"\r\n,3\r\n'
    assert csv_document(["a"], [["'q"], ["\uff1d1"]]) == "a\r\n''q\r\n'\uff1d1\r\n"
    assert "'" in FORMULA_PREFIXES  # what makes the read-back exact
    shown = csv_document(["a"], [["\x1b]0;x\x07\r\n"]], shown=True)
    assert shown == "a\r\n\\x1b]0;x\\x07\\r\\n\r\n"


def _record(message: str, *args: object, exc: bool = False) -> logging.LogRecord:
    exc_info = None
    if exc:
        try:
            raise ValueError("boom\n2026-01-01 00:00:00 ERROR forged: \x1b[2Jline")
        except ValueError:
            exc_info = sys.exc_info()
    return logging.LogRecord("worker.x", logging.WARNING, __file__, 1, message, args, exc_info)


def test_a_text_log_record_is_one_line_and_its_traceback_is_fenced() -> None:
    formatter = RedactingFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    line = formatter.format(
        _record("dead-lettered: %s", "\x1b]0;pwned\x07\nFAKE LOG LINE \u202e redis://u:pw@h/0")
    )
    assert "\n" not in line and not raw(line)
    assert "\\x1b]0;pwned\\x07\\nFAKE LOG LINE \\u202e redis://u:***@h/0" in line
    out = formatter.format(_record("failed", exc=True)).split("\n")
    assert re.match(r"\d{4}-\d\d-\d\d ", out[0]) and len(out) > 2
    assert all(line.startswith(TRACE_PREFIX) for line in out[1:]), out
    assert not raw("\n".join(out), allowed="\n")


def test_a_json_log_record_holds_the_exact_text() -> None:
    text = "\x1b]0;pwned\x07\nFAKE \u202e"
    line = JsonFormatter().format(_record("reason: %s", text))
    assert "\n" not in line and not raw(line)
    assert json.loads(line)["message"] == f"reason: {text}"


def test_json_for_a_script_element_cannot_end_it_and_parses_back() -> None:
    value = {"name": "</script><!--<script>&\u2028\u2029", "n": [1, "x"]}
    text = json_for_script(value)
    assert not re.search(r"[<>&\u2028\u2029]", text)
    assert json.loads(text) == value


def _page_data(**kwargs: object) -> PageData:
    base: dict[str, object] = {
        "month": dt.date(2026, 11, 1),
        "tenant": None,
        "report": {"month": "2026-11", "pending_tenant_months": 0, "rows": []},
        "daily": {},
        "days": [],
        "budgets": [],
        "unpriced_calls": 0,
        "generated_at": dt.datetime(2026, 12, 1, tzinfo=dt.UTC),
    }
    base.update(kwargs)
    return PageData(**base)  # type: ignore[arg-type]


def test_the_reconciliation_section_says_when_none_has_run() -> None:
    nothing: tuple[list[dict[str, object]] | None, ...] = (None, [])
    for rows in nothing:
        page = render_page(_page_data(), rows)
        assert 'id="reconciliation-none"' in page and "No reconciliation run yet" in page
        assert 'id="reconciliation-table"' not in page


def test_the_reconciliation_section_shows_hostile_rows_as_text_differences_first() -> None:
    rows = [
        {
            "provider": "openai",
            "day": dt.date(2026, 11, d),
            "model": f"gpt-4o-{d}",
            "measure": "input_tokens",
            "metered": 100,
            "reported": 100,
            "status": "ok",
        }
        for d in range(1, 29)
    ] * 20
    rows.append(
        {
            "provider": "</script><script>document.title='PWNED'</script>",
            "day": "2026-11-02",
            "model": "\u202eevil\x1b]0;x\x07",
            "measure": "cost_usd",
            "metered": Decimal("1.50"),
            "reported": "1.25",
            "status": "<b>mismatch</b>",
        }
    )
    page = render_page(_page_data(), rows)
    table = page.split('id="reconciliation-table"', 1)[1].split("</table>", 1)[0]
    first = table.split("<tr>")[2]  # after the header: the row that differs comes first
    assert '<td class="differs">1.50</td>' in first and "1.25" in first
    assert "&lt;/script&gt;&lt;script&gt;" in first and "\\u202eevil\\x1b]0;x\\x07" in first
    assert "&lt;b&gt;mismatch&lt;/b&gt;" in first
    assert table.count("<tr>") == 1 + MAX_RECONCILIATION_ROWS
    assert f"{len(rows)} rows, 1 that drift" in page
    data = re.search(r'id="reconciliation-data">(.*?)</script>', page)
    assert data is not None and len(json.loads(data.group(1))) == MAX_RECONCILIATION_ROWS
    assert len(re.findall(r"<script", page)) == 2


def test_an_empty_month_draws_no_empty_chart() -> None:
    page = render_page(_page_data(tenant=uuid.uuid4()))
    assert page.count("No usage rolled up for this month yet.") == 2
    assert "No budget set" in page
