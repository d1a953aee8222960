"""The one rule for untrusted text in human output (tables, text log lines, CLI messages).

Tenant names come from the host application's table; models, operations, field names and
dead-letter reasons from any producer. Before such a value reaches a terminal or a text log:

- every C0 and C1 control, DEL, line and paragraph separator, and every format character
  (Unicode category Cf: the bidi controls U+202A-U+202E and U+2066-U+2069, LRM/RLM/ALM, the
  zero-width space, joiners and BOM, the soft hyphen) is shown as a visible escape
  (``\\x1b``, ``\\r``, ``\\u202e``), so a value can never move the cursor, end a line, start
  a new row, retitle a window or reorder the text beside it;
- so is every character that draws nothing while not Cf (the Hangul fillers, the combining
  grapheme joiner), and every combining mark past MAX_MARKS in a row (a "Zalgo" flood draws
  over the rows above and below);
- a value is cut by display width (East Asian wide characters count 2 columns, combining
  marks 0: wcwidth's tables), between grapheme clusters and never inside an escape, with an
  ellipsis;
- table columns are padded by display width.

The escaping is idempotent (its output is printable ASCII escapes and the printable characters
it kept), so a line can be passed through :func:`visible` again at the output boundary
(worker.cli.common.say) without changing. A backslash is therefore not doubled: ``\\x1b`` on
screen is either an escaped ESC or those four characters, and the JSON outputs (exact, with
every control escaped by json) tell them apart.

Only the standard library at import; wcwidth (in the worker extra) is imported on first use.
"""

from __future__ import annotations

import csv
import functools
import io
import re
import unicodedata
from collections.abc import Iterable, Iterator, Sequence
from decimal import Decimal

__all__ = [
    "ELLIPSIS",
    "FORMULA_PREFIXES",
    "MAX_MARKS",
    "csv_document",
    "cut",
    "display_width",
    "text_table",
    "visible",
]

#: Appended to a value cut to fit its column (one column wide).
ELLIPSIS = "…"
#: Categories shown escaped: controls (Cc: C0, DEL, C1), format characters (Cf: bidi controls,
#: zero-width characters, BOM, soft hyphen, tags), line and paragraph separators, surrogates.
_ESCAPED = frozenset({"Cc", "Cf", "Zl", "Zp", "Cs"})
_NAMED = {"\t": "\\t", "\n": "\\n", "\r": "\\r"}
#: Splits a shown text into its escapes and single characters (the escapes kept whole).
_ESCAPES = re.compile(r"(\\[tnr]|\\x[0-9a-f]{2}|\\u[0-9a-f]{4}|\\U[0-9a-f]{8}|.)", re.S)


#: Letters and marks that draw nothing (Unicode's default-ignorable code points outside Cf):
#: the Hangul fillers, the combining grapheme joiner, Khmer's inherent vowels. A name made of
#: them looks blank, or like another name; they are shown as escapes too.
_BLANK = frozenset("\u034f\u115f\u1160\u17b4\u17b5\u3164\uffa0")
#: Combining marks (Mn, Me) kept in a row on one character: Vietnamese needs two, Tibetan
#: stacks a few; past this a flood ("Zalgo") would draw over the rows above and below, so
#: the rest are shown as escapes (and counted in the width).
MAX_MARKS = 4
_MARKS = frozenset({"Mn", "Me"})


def _escape(ch: str) -> str:
    if ch in _NAMED:
        return _NAMED[ch]
    code = ord(ch)
    if code <= 0xFF:
        return f"\\x{code:02x}"
    if code <= 0xFFFF:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"


@functools.lru_cache(maxsize=4096)
def _shown(ch: str) -> tuple[str, bool]:
    """`ch` as shown, and whether it is a combining mark kept as it is."""
    category = unicodedata.category(ch)
    if category in _ESCAPED or ch in _BLANK:
        return _escape(ch), False
    return ch, category in _MARKS


def visible(text: str) -> str:
    """`text` with every control, separator and format character, every character that draws
    nothing, and every combining mark past MAX_MARKS in a row shown as an escape."""
    # Plain ASCII text (figures, ids, most names) costs one C-level scan.
    if text.isascii() and text.isprintable():
        return text
    out: list[str] = []
    marks = 0
    for ch in text:
        shown, mark = _shown(ch)
        marks = marks + 1 if mark else 0
        out.append(_escape(ch) if marks > MAX_MARKS else shown)
    return "".join(out)


def _tokens(text: str) -> Iterator[tuple[str, int]]:
    """The shown form of each grapheme cluster of `text`, with its display width."""
    from wcwidth import iter_graphemes, width

    for cluster in iter_graphemes(text):
        shown = visible(cluster)
        if shown == cluster or len(cluster) == 1:
            yield shown, width(shown)
        else:
            # A cluster holding an escape (an emoji's joiners, a control with marks) is no
            # longer drawn as one glyph: it may be cut between its escapes and characters.
            for token in _ESCAPES.split(shown):
                if token:
                    yield token, width(token)


def display_width(text: str) -> int:
    """Columns `visible(text)` takes in a terminal."""
    if text.isascii() and text.isprintable():
        return len(text)  # the common case (figures, ids, plain names): one column each
    from wcwidth import width

    return int(width(visible(text)))


def cut(text: str, max_width: int) -> str:
    """`visible(text)`, cut to at most `max_width` columns (ellipsis included) between grapheme
    clusters: never inside an escape or a wide character."""
    shown = visible(text)
    if len(shown) <= max_width and shown.isascii():
        return shown  # ASCII without controls: one column per character
    out: list[str] = []
    used = 0
    tokens = list(_tokens(text))
    if sum(w for _, w in tokens) <= max_width:
        return shown
    for token, w in tokens:
        if used + w > max_width - 1:
            break
        out.append(token)
        used += w
    return "".join(out) + ELLIPSIS


def _pad(text: str, width: int, right: bool) -> str:
    gap = " " * max(0, width - display_width(text))
    return gap + text if right else text + gap


def text_table(
    header: Sequence[str],
    body: Sequence[Sequence[str]],
    numeric: bool = True,
    max_widths: Sequence[int | None] | None = None,
) -> str:
    """Columns padded to their widest cell by display width; the first left-aligned, the
    others right-aligned when `numeric` (left otherwise). Every cell is shown by the rule
    (:func:`visible`), cut to its column's entry of `max_widths` when given."""
    limits = list(max_widths or [])
    limits += [None] * (len(header) - len(limits))
    rows = [
        [cut(c, limit) if limit else visible(c) for c, limit in zip(row, limits, strict=True)]
        for row in (header, *body)
    ]
    widths = [max(display_width(row[i]) for row in rows) for i in range(len(header))]
    return "\n".join(
        "  ".join(
            _pad(c, w, right=numeric and i > 0)
            for i, (c, w) in enumerate(zip(row, widths, strict=True))
        ).rstrip()
        for row in rows
    )


#: A text cell starting with one of these gets a single quote in front in CSV: OWASP's CSV
#: injection list (= + - @ TAB CR), LF, the full-width forms a spreadsheet may also read as a
#: formula, and the quote itself, so that "drop one leading quote from a text cell" gives the
#: exact value back for every cell.
FORMULA_PREFIXES = (
    "=",
    "+",
    "-",
    "@",
    "\t",
    "\r",
    "\n",
    "\uff1d",
    "\uff0b",
    "\uff0d",
    "\uff20",
    "'",
)


def _csv_cell(value: object, shown: bool) -> object:
    if value is None:
        return ""
    if isinstance(value, int | float | Decimal) and not isinstance(value, bool):
        return value  # a number stays a number (a negative cost is not a formula)
    text = visible(str(value)) if shown else str(value)
    return "'" + text if text.startswith(FORMULA_PREFIXES) else text


def csv_document(
    header: Sequence[str], rows: Iterable[Sequence[object]], *, shown: bool = False
) -> str:
    """RFC 4180 CSV (CRLF line ends) that a spreadsheet cannot be turned against: text cells
    starting with a FORMULA_PREFIXES character get a leading single quote, numbers (int,
    Decimal, float) are written as numbers, and every cell holding a quote, a comma, CR or LF
    is quoted. `shown` also applies the rule of :func:`visible` to text cells (for a terminal:
    the values are then no longer exact).

    defusedcsv was weighed and not used: it writes every cell as text (so -1.5 becomes the
    text '-1.5), misses the TAB and CR prefixes, and rewrites "|" inside a value, so the exact
    value could not be read back by dropping the one quote it adds."""
    buf = io.StringIO()
    # QUOTE_MINIMAL quotes a cell holding the delimiter, the quote character or any character
    # of the line terminator: with "\r\n" that is every cell holding CR or LF.
    writer = csv.writer(buf, lineterminator="\r\n", quoting=csv.QUOTE_MINIMAL)
    writer.writerow([_csv_cell(h, shown) for h in header])
    for row in rows:
        writer.writerow([_csv_cell(c, shown) for c in row])
    return buf.getvalue()
