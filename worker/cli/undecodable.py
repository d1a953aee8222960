"""`ai-usage undecodable list|clear`: the items set aside from the ingest queue, with reasons."""

from __future__ import annotations

import argparse
import json
from typing import Any

from worker.cli.common import EXIT_OK, Unreachable, first_line, positive_int, say


def register(sub: Any) -> None:
    un = sub.add_parser("undecodable", help="items set aside from the ingest queue")
    uns = un.add_subparsers(dest="un_command", required=True)
    ul = uns.add_parser("list", help="show them, newest first, with their reasons")
    ul.add_argument("--limit", type=positive_int, default=20)
    ul.add_argument("--format", choices=("table", "json"), default="table")
    ul.set_defaults(handler=list_command)
    uc = uns.add_parser("clear", help="delete them (after their producer is fixed)")
    uc.set_defaults(handler=clear_command)


def _client() -> Any:
    import redis

    from worker.settings import get_settings, redact_url

    url = get_settings().broker_url
    client = redis.Redis.from_url(url, socket_connect_timeout=3, socket_timeout=10)
    try:
        client.ping()
    except redis.RedisError as exc:
        raise Unreachable(f"broker {redact_url(url)} unreachable: {first_line(exc)}") from None
    return client


def _key() -> str:
    from worker.client.envelope import QUEUE
    from worker.consumer.items import undecodable_key

    return undecodable_key(QUEUE)


def list_command(args: argparse.Namespace) -> int:
    from worker.textsafe import cut

    client = _client()
    raw = client.lrange(_key(), 0, args.limit - 1)
    total = int(client.llen(_key()))
    records: list[dict[str, Any]] = []
    for item in raw:
        try:
            record = json.loads(item)
        except ValueError:
            record = None
        if not isinstance(record, dict):  # written by something else than this worker
            record = {"reason": "(not a set-aside record)", "item": repr(item)[:2000]}
        records.append(record)
    if args.format == "json":
        say(json.dumps(records, indent=2))
        return EXIT_OK
    say(f"{total} items set aside in {_key()}" + (f", the newest {len(raw)}:" if raw else ""))
    for r in records:
        # Every field is text from the queue: shown by the rule (worker.textsafe), each on its
        # own line, so none can end its line or forge the next record.
        item = r.get("item") or f"(base64) {r.get('item_base64', '')}"
        say(
            f"- {cut(str(r.get('set_aside_at', '?')), 40)}  {cut(str(r.get('queue', '?')), 60)}"
            f"\n    reason: {cut(str(r.get('reason', '?')), 300)}"
            f"\n    item:   {cut(str(item), 300)}"
        )
    return EXIT_OK


def clear_command(args: argparse.Namespace) -> int:
    client = _client()
    pipe = client.pipeline()
    pipe.llen(_key())
    pipe.delete(_key())
    count, _ = pipe.execute()
    say(f"cleared {count} items from {_key()}")
    return EXIT_OK
