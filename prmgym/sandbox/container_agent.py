"""The runner inside each `DockerSandbox` container (standard library only; PID 1).

It wraps the verdict harness shared with `LocalSandbox` (``harness.Server.run``: a fork per
job, the per-run secret, the deadline, the verdict) and adds what a long-lived, reused
container needs between jobs:

* kill every process the job left behind (``kill(-1, SIGKILL)`` from PID 1 reaches all of
  them; daemonized children included) and count them, so the host can replace the container;
* wipe the writable directories (``/tmp``, ``/work``, ``/dev/shm``) so no job sees another's files;
* notice an out-of-memory kill from the container's memory cgroup and report ``memory``.

The agent is non-dumpable (same-uid jobs cannot ptrace it or open ``/proc/1/fd``) and, as PID 1
of the container's PID namespace, cannot be signalled by the jobs it runs.

Wire protocol on the container's stdin (the host writes through ``docker attach``); every byte
is ASCII so Docker's detach-key sequence can never occur:
    request  = 8 hex digits n, n bytes of header JSON, 8 hex digits m, m bytes of payload JSON
               header = ``{"id": k, "op": "ping"}`` (m = 0) or ``{"id": k, ...harness limits}``;
               payload = the harness's job JSON (code, tests, entry_point, stdin).
    response = one JSON line on stdout: ``{"id": k, "op": "pong", ...}`` or
               ``{"id": k, "op": "result", "result": {ExecResult fields}, "health": {...}}``.
"""

from __future__ import annotations

import ctypes
import json
import os
import resource
import signal
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import harness  # noqa: E402  (the file next to this one in /opt/prmgym)

PROTOCOL = 1
WIPE_DIRS = ("/tmp", "/work", "/dev/shm")
_OOM_FILES = ("/sys/fs/cgroup/memory/memory.oom_control", "/sys/fs/cgroup/memory.events")


def _read_exact(fd: int, n: int) -> bytes:
    chunks, got = [], 0
    while got < n:
        b = os.read(fd, n - got)
        if not b:
            raise EOFError("stdin closed")
        chunks.append(b)
        got += len(b)
    return b"".join(chunks)


def _read_into(fd: int, buf: bytearray, n: int) -> memoryview:
    """Read exactly n bytes straight into ``buf`` (no intermediate copies of the payload)."""
    view = memoryview(buf)[:n]
    got = 0
    while got < n:
        k = os.readv(fd, [view[got:]])
        if k == 0:
            view.release()
            raise EOFError("stdin closed")
        got += k
    return view


def _send(obj: dict) -> None:
    data = json.dumps(obj, ensure_ascii=True, separators=(",", ":")).encode() + b"\n"
    view = memoryview(data)
    while view:
        view = view[os.write(1, view):]


def oom_kills() -> int | None:
    """The memory cgroup's OOM-kill counter (cgroup v1 or v2), or None if not visible."""
    for path in _OOM_FILES:
        try:
            with open(path) as f:
                for line in f:
                    key, _, value = line.partition(" ")
                    if key == "oom_kill":
                        return int(value)
        except (OSError, ValueError):
            continue
    return None


def other_pids() -> list[int]:
    me = os.getpid()
    return [int(p) for p in os.listdir("/proc") if p.isdigit() and int(p) != me]


def sweep() -> int:
    """Kill every other process in the container; returns how many were found."""
    found = other_pids()
    for _ in range(100):
        if not other_pids():
            break
        try:
            os.kill(-1, signal.SIGKILL)
        except ProcessLookupError:
            pass
        reap()
        time.sleep(0.002)
    reap()
    return len(found)


def reap() -> None:
    """Collect every exited child without blocking (the harness's reaper)."""
    harness.Server._reap_orphans()


def _rm_contents(root: str) -> None:
    try:
        entries = list(os.scandir(root))
    except OSError:
        return
    for e in entries:
        try:
            if e.is_dir(follow_symlinks=False):
                try:
                    os.chmod(e.path, 0o700)
                except OSError:
                    pass
                _rm_contents(e.path)
                os.rmdir(e.path)
            else:
                os.unlink(e.path)
        except OSError:
            pass


def wipe() -> bool:
    """Empty the writable directories; True if they are all empty afterwards."""
    clean = True
    for d in WIPE_DIRS:
        if not os.path.isdir(d):
            continue
        _rm_contents(d)
        try:
            if os.listdir(d):
                clean = False
        except OSError:
            clean = False
    return clean


_RLIMITS = tuple(getattr(resource, n) for n in dir(resource) if n.startswith("RLIMIT_"))


def own_state() -> dict:
    """What a same-uid job could change about this agent from outside (prlimit, renice,
    sched_setaffinity); compared after every job, and the container is replaced if it differs."""
    state = {f"rlimit{r}": resource.getrlimit(r) for r in _RLIMITS}
    state["nice"] = os.getpriority(os.PRIO_PROCESS, 0)
    try:
        state["affinity"] = sorted(os.sched_getaffinity(0))
    except OSError:
        pass
    return state


def _set_dumpable(flag: int) -> None:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(harness.PR_SET_DUMPABLE, flag, 0, 0, 0)
    except OSError:
        pass


def main() -> int:
    _set_dumpable(0)
    signal.signal(signal.SIGINT, signal.SIG_DFL)  # PID 1: default dispositions cannot be triggered by jobs
    harness._warm_up()
    # One judge per job: the sweep after each job kills every other process of this uid, and
    # a judge that outlived its job would be one of them (and counted as left behind).
    server = harness.Server(uid=None, namespaces="auto", workdir_root="/work", in_fd=0, out_fd=1,
                            persistent_judge=False)
    baseline = own_state()
    buf = bytearray()
    while True:
        try:
            n = int(_read_exact(0, 8), 16)
            header = json.loads(_read_exact(0, n))
            m = int(_read_exact(0, 8), 16)
            if len(buf) < m:
                buf = bytearray(m)
            payload = _read_into(0, buf, m)
        except (EOFError, ValueError):
            return 0
        rid = header.get("id")
        if header.get("op") == "ping":
            payload.release()
            _send({"id": rid, "op": "pong", "protocol": PROTOCOL, "harness": harness.PROTOCOL,
                   "pid": os.getpid(), "uid": os.getuid(), "python": sys.version.split()[0],
                   "isolation": server.isolation, "oom_kills": oom_kills()})
            continue
        # Prepared before the job runs: a job can lower this agent's limits (prlimit: address
        # space, open files, processes), after which even building a reply may fail. Sending
        # these bytes needs no allocation and no new descriptor.
        fallback = _FALLBACK % (json.dumps(rid).encode(), int(header.get("n_tests", 0)))
        try:
            _serve_one(server, header, payload, m, baseline, rid)
        except BaseException:  # noqa: BLE001  (whatever broke, answer and let the host replace us)
            try:
                view = memoryview(fallback)
                while view:
                    view = view[os.write(1, view):]
            except BaseException:  # noqa: BLE001
                return 1


_FALLBACK = (
    b'{"id":%s,"op":"result","result":{"status":"failed","tests_passed":0,"tests_total":%d,'
    b'"details":{"agent_error":"the container agent could not finish its checks after this job '
    b'(its limits were lowered from inside the container?)"}},'
    b'"health":{"leftover_processes":1,"clean":false,"oom":false,"agent_tampered":["unknown"]}}\n'
)


def _serve_one(server, header: dict, payload, m: int, baseline: dict, rid) -> None:
    oom_before = oom_kills()
    t0 = time.monotonic()
    try:
        result = server.run(header, payload)
    except Exception as e:  # the harness itself failed: infrastructure (unless the job tampered, below)
        result = server._infra(f"{type(e).__name__}: {e}", time.monotonic())
    finally:
        payload[:] = bytes(m)  # zero the job so later forks do not inherit it
        payload.release()
    t1 = time.monotonic()
    leftover = sweep()
    ipc_left = harness.Server._clean_ipc()  # System V IPC objects would reach the next job in this container
    clean = wipe()
    changed = sorted(k for k, v in own_state().items() if baseline.get(k) != v)
    oom_after = oom_kills()
    t2 = time.monotonic()
    oom = oom_before is not None and oom_after is not None and oom_after > oom_before
    details = result.setdefault("details", {})
    if oom and result.get("status") not in ("passed", "timeout"):
        details["oom_killed"] = True
        result["status"] = "memory"
    elif result.get("status") == "sandbox_error" and changed:
        # The job lowered this agent's limits (prlimit) and the harness tripped over them.
        result["status"] = "failed"
        result["tests_total"] = int(header.get("n_tests", 0))
        details["agent_tampered"] = changed
        details["harness_failed"] = details.pop("infra", "")
    elif result.get("status") == "sandbox_error" and "without a status" in str(details.get("infra", "")):
        # The reaper (a fork of this agent) vanished without a word. In a container nothing
        # but the job can do that: the engine kills the whole container (and this agent),
        # an OOM kill is counted above, and the reaper's own failures are reported as
        # "reaper_error". All processes here share one uid, so the program can signal the
        # reaper: that is the program's doing, not an infrastructure failure.
        result["status"] = "failed"
        result["tests_total"] = int(header.get("n_tests", 0))
        details["harness_killed"] = details.pop("infra")
    _send({"id": rid, "op": "result", "result": result,
           "health": {"leftover_processes": leftover, "clean": clean and not changed, "oom": oom,
                      "ipc_objects_removed": ipc_left,
                      "agent_tampered": changed,
                      "harness_s": round(t1 - t0, 6), "cleanup_s": round(t2 - t1, 6)}})


if __name__ == "__main__":
    sys.exit(main())
