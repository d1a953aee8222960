"""`ai-usage partitions list|ensure|create`: the months' partitions of ai_usage_logs in the
partitioned layout (docs/ledger/scale.md)."""

from __future__ import annotations

import argparse
import json
from typing import Any

from worker.cli.common import EXIT_OK, UsageError, database, positive_int, say


def register(sub: Any) -> None:
    from worker.cli.report import month

    pa = sub.add_parser("partitions", help="the monthly partitions of ai_usage_logs")
    pas = pa.add_subparsers(dest="partitions_command", required=True)
    pl = pas.add_parser("list", help="the partitions, by month")
    pl.add_argument("--format", choices=("table", "json"), default="table")
    pl.set_defaults(handler=list_command)
    pe = pas.add_parser(
        "ensure", help="make the missing partitions from the previous month to N months ahead"
    )
    pe.add_argument("--ahead", type=positive_int, default=3, help="months ahead (3)")
    pe.set_defaults(handler=ensure_command)
    pc = pas.add_parser("create", help="make one month's partition (refused for a closed month)")
    pc.add_argument("month", type=month, help="YYYY-MM")
    pc.set_defaults(handler=create_command)


def list_command(args: argparse.Namespace) -> int:
    from worker.ledger.layout import log_layout
    from worker.ledger.partitions import list_partitions

    engine = database()
    with engine.connect() as conn:
        layout = log_layout(conn)
    parts = list_partitions(engine)
    if args.format == "json":
        say(json.dumps({"layout": layout, "partitions": [p.as_dict() for p in parts]}, indent=2))
        return EXIT_OK
    if layout == "plain":
        say("ai_usage_logs is not partitioned (the plain layout): no partitions")
        return EXIT_OK
    if not parts:
        say("no partitions: run `ai-usage partitions ensure`")
    for p in parts:
        pending = "  (detach pending: the next prune finishes it)" if p.detach_pending else ""
        say(f"{p.name}  {p.bounds}{pending}")
    return EXIT_OK


def ensure_command(args: argparse.Namespace) -> int:
    from worker.ledger.layout import log_layout
    from worker.ledger.partitions import ensure_partitions

    engine = database()
    with engine.connect() as conn:
        if log_layout(conn) == "plain":
            say("ai_usage_logs is not partitioned (the plain layout): nothing to do")
            return EXIT_OK
    made = ensure_partitions(engine, args.ahead)
    if made:
        say("made " + ", ".join(f"{m:%Y-%m}" for m in made))
    else:
        say("every partition from the previous month on is there already")
    return EXIT_OK


def create_command(args: argparse.Namespace) -> int:
    from worker.ledger.layout import partition_name
    from worker.ledger.partitions import PartitionError, create_partition

    try:
        made = create_partition(database(), args.month)
    except PartitionError as exc:
        raise UsageError(str(exc)) from None
    name = partition_name(args.month)
    say(f"made {name}" if made else f"{name} exists already")
    return EXIT_OK
