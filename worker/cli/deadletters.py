"""`ai-usage dead-letters list|replay`."""

from __future__ import annotations

import argparse
import json
from typing import Any

from worker.cli.common import EXIT_FAILED, EXIT_OK, UsageError, database, positive_int, say

#: Columns a dead letter's field name, and its reason and payload, are cut to in the list (the
#: JSON format holds them whole).
FIELD_WIDTH = 40
TEXT_WIDTH = 300


def register(sub: Any) -> None:
    dl = sub.add_parser("dead-letters", help="events that could not be stored")
    dls = dl.add_subparsers(dest="dl_command", required=True)
    dll = dls.add_parser("list", help="show dead letters with payload, reason and time")
    dll.add_argument("--limit", type=positive_int, default=100)
    dll.add_argument("--format", choices=("table", "json"), default="table")
    dll.set_defaults(handler=list_command)
    dlr = dls.add_parser("replay", help="retry dead letters; what lands is removed")
    grp = dlr.add_mutually_exclusive_group(required=True)
    grp.add_argument("--id", type=positive_int, nargs="+", dest="ids")
    grp.add_argument("--all", action="store_true")
    dlr.set_defaults(handler=replay_command)


def list_command(args: argparse.Namespace) -> int:
    from worker.ledger.deadletters import list_dead_letters
    from worker.textsafe import cut

    rows = list_dead_letters(database(), args.limit)
    if args.format == "json":
        say(
            json.dumps(
                [
                    {
                        "id": r.id,
                        "event_id": r.event_id,
                        "payload": r.payload,
                        "error": r.error,
                        "field": r.field,
                        "attempts": r.attempts,
                        "created_at": r.created_at.isoformat(),
                        "last_attempt_at": r.last_attempt_at.isoformat(),
                    }
                    for r in rows
                ],
                indent=2,
            )
        )
        return EXIT_OK
    if not rows:
        say("no dead letters")
    for r in rows:
        # Field, reason and payload are a producer's text: each shown by the rule on its own
        # line (worker.textsafe), so none can end its line or forge the next entry.
        say(
            f"#{r.id}  {r.last_attempt_at:%Y-%m-%d %H:%M:%S}  attempts={r.attempts}"
            f"  field={cut(r.field or '-', FIELD_WIDTH)}\n    reason:  {cut(r.error, TEXT_WIDTH)}"
            f"\n    payload: {cut(r.payload, TEXT_WIDTH)}"
        )
    return EXIT_OK


def replay_command(args: argparse.Namespace) -> int:
    from worker.ledger.deadletters import missing_ids, replay
    from worker.ledger.pricing import default_pricer

    engine = database()
    if args.ids:
        missing = missing_ids(engine, args.ids)
        if missing:
            raise UsageError("no dead letter with id " + ", ".join(map(str, missing)))
    result = replay(engine, default_pricer(), None if args.all else args.ids)
    say(
        f"replayed: {result.landed} landed, {result.already_stored} were already stored,"
        f" {result.still_failing} still failing (kept, with their new reason)"
    )
    return EXIT_OK if result.still_failing == 0 else EXIT_FAILED
