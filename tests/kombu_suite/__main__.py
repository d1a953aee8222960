"""`python -m tests.kombu_suite` (`make kombu-suite`): kombu's own Redis transport tests, from
the sdist of the installed kombu version (downloaded once from the package registry into
.cache/), run against worker.consumer.transport through tests/kombu_suite/plugin.py."""

from __future__ import annotations

import subprocess
import sys
import tarfile
from importlib.metadata import version
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def main() -> int:
    kombu = version("kombu")
    cache = ROOT / ".cache" / "kombu-suite"
    source = cache / f"kombu-{kombu}"
    if not (source / "t" / "unit" / "transport" / "test_redis.py").exists():
        cache.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps",
             "--no-binary", ":all:", "--dest", str(cache), f"kombu=={kombu}"],
            check=True,
        )  # fmt: skip
        with tarfile.open(cache / f"kombu-{kombu}.tar.gz") as archive:
            archive.extractall(cache, filter="data")
    print(f"kombu {kombu}'s t/unit/transport/test_redis.py against worker.consumer.transport")
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "tests.kombu_suite.plugin", "-p",
         "no:cacheprovider", "-q", "-W", "ignore", "t/unit/transport/test_redis.py"],
        cwd=source,
        env={**__import__("os").environ, "PYTHONPATH": str(ROOT)},
        check=False,
    ).returncode  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
