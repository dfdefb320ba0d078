"""A LocalSandbox the script never closes: the interpreter still exits promptly and leaves no
fork server (nor any of its judges or programs) behind. The DockerSandbox twin of this test is in
tests/test_sandbox_docker.py."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

_FORGETS_CLOSE = """
import os, sys
from prmgym.sandbox import Job, LocalSandbox
sb = LocalSandbox(workers=2)
ok = [r.status for r in sb.run_batch([Job("x = 1", tests=("assert x == 1",))] * 4)]  # starts the batch pool's threads
pids = []
for w in sb._workers:
    pids.append(w.proc.pid)
    with open(f"/proc/{w.proc.pid}/task/{w.proc.pid}/children") as f:
        pids += [int(p) for p in f.read().split()]
print(ok.count("passed"), *pids, flush=True)
if sys.argv[1] == "exit":
    sys.exit(1)
raise RuntimeError("the script died without closing its sandbox")
"""


def run_until_exit(args: list[str], env: dict | None = None, timeout_s: float = 60) -> tuple[list[str], int, float, str]:
    """Run a child script that prints one line when its jobs ran, then ends on its own.
    Returns that line's words, the exit code, the seconds from the line to the exit, stderr."""
    child = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        line = child.stdout.readline().split()  # the jobs ran; from here the script only ends
        t0 = time.monotonic()
        code = child.wait(timeout=timeout_s)
        exit_s = time.monotonic() - t0
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    return line, code, exit_s, child.stderr.read()


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/status") as f:
            return next(line for line in f if line.startswith("State:")).split()[1] != "Z"
    except (OSError, StopIteration):
        return False


@pytest.mark.parametrize("ending", ["exit", "raise"])
def test_a_local_sandbox_never_closed_exits_promptly_and_leaves_no_server(ending):
    env = dict(os.environ, PYTHONPATH=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    line, code, exit_s, err = run_until_exit([sys.executable, "-c", _FORGETS_CLOSE, ending], env)
    assert line and line[0] == "4", err
    servers = [int(p) for p in line[1:]]
    assert len(servers) >= 2, line  # two fork servers (and their helpers)
    assert code == 1, err
    assert exit_s < 10, f"the interpreter took {exit_s:.1f} s to exit"
    if ending == "raise":
        assert "the script died without closing its sandbox" in err
    deadline = time.monotonic() + 5
    while any(_alive(p) for p in servers) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not [p for p in servers if _alive(p)], "server processes outlived the script"


def test_close_at_exit_closes_every_open_sandbox_and_tolerates_a_failing_close(monkeypatch):
    import weakref

    from prmgym.sandbox import base

    monkeypatch.setattr(base, "_OPEN", weakref.WeakSet())  # leave the session's own sandboxes alone
    closed = []

    class Box(base.Sandbox):
        def __init__(self, fail: bool) -> None:
            self.fail = fail
            base.close_at_exit(self)

        def run(self, job):
            raise NotImplementedError

        def close(self) -> None:
            closed.append(self)
            if self.fail:
                raise OSError("engine gone")

    boxes = [Box(True), Box(False)]
    base._close_open_sandboxes()  # what atexit runs
    assert sorted(map(id, closed)) == sorted(map(id, boxes))  # the failing one did not stop the other
