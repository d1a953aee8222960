"""The mutation check: the conformance suite must catch each framework trap when its mapping is
broken. For each mutation, the cases it concerns are run with AI_USAGE_MUTATION=<name> (applied
by tests/integrations/conftest.py, or by test_openai_agents.py for the Agents model), and must
fail; the same cases are run unbroken by the suite itself.

    python -m tests.integrations.mutations      # from .venv-integrations; `make test-integrations`
"""

from __future__ import annotations

import os
import re
import subprocess
import sys

#: name -> (test file, -k selection): the cases that exercise the trap.
CHECKS = {
    "langchain-cache-creation": ("tests/integrations/test_langchain.py", "anthropic"),
    "litellm-1h-split": ("tests/integrations/test_litellm.py", "anthropic"),
    "agents-model": ("tests/integrations/test_openai_agents.py", ""),
}


def run(name: str, path: str, select: str) -> tuple[int, int]:
    """(failed, passed) of the trap's cases under the mutation."""
    args = [sys.executable, "-m", "pytest", path, "-q", "-p", "no:cacheprovider", "--no-header"]
    if select:
        args += ["-k", select]
    env = {**os.environ, "AI_USAGE_MUTATION": name}
    done = subprocess.run(args, env=env, capture_output=True, text=True, check=False)
    tail = done.stdout.strip().splitlines()[-1] if done.stdout.strip() else done.stderr[-500:]
    failed = re.search(r"(\d+) failed", tail)
    passed = re.search(r"(\d+) passed", tail)
    return (int(failed.group(1)) if failed else 0, int(passed.group(1)) if passed else 0)


def main() -> int:
    missed = []
    for name, (path, select) in CHECKS.items():
        if not os.path.exists(path):
            print(f"{name}: {path} missing", flush=True)
            missed.append(name)
            continue
        failed, passed = run(name, path, select)
        caught = failed > 0
        print(
            f"{name}: {'caught' if caught else 'NOT CAUGHT'} ({failed} failed, {passed} passed)",
            flush=True,
        )
        if not caught:
            missed.append(name)
    if missed:
        print(f"mutation check: not caught: {', '.join(missed)}")
        return 1
    print("mutation check: every trap is caught")
    return 0


if __name__ == "__main__":
    sys.exit(main())
