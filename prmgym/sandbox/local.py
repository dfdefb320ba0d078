"""`LocalSandbox`: the embedded default backend. Needs only Linux (and root for full isolation).

Each worker is a warm fork server (``python -I <harness payload> serve``) that pre-imports the harness
and common stdlib modules and forks a fresh, single-use process tree per job: new network, PID,
mount and IPC namespaces, a private tmpfs ``/tmp`` as the work dir, a uid of its own (one per
worker, so one job's process count cannot starve another's), rlimits, an empty environment and
a deadline enforced by a process outside the job's tree. See the ``harness`` package for the protocol and
docs/sandbox.md for what is and is not isolated.

>>> from prmgym.sandbox import Job, LocalSandbox
>>> with LocalSandbox(workers=1) as sb:
...     r = sb.run(Job("def add(a, b):\\n    return a + b", tests=("assert candidate(2, 3) == 5",),
...                    entry_point="add", timeout_s=3))
>>> r.status, r.tests_passed, r.tests_total
('passed', 1, 1)
"""

from __future__ import annotations

import json
import os
import queue
import select
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Sequence

from prmgym.sandbox import harness
from prmgym.sandbox.base import ExecResult, Job, Sandbox, close_at_exit

# the file the fork servers run: None is the harness payload, written once per process at start-up
# (`harness.payload_path`); tests point it at wrappers
HARNESS_PATH: Path | str | None = None


def _cpu_lock_dir() -> str:
    if os.getuid() == 0 and os.path.isdir("/run"):
        return "/run/prmgym-sandbox-cpus"
    return os.path.join(tempfile.gettempdir(), f"prmgym-sandbox-cpus-{os.getuid()}")


def claim_cpus(n: int, cpus: Sequence[int], lock_dir: str | None = None) -> list[tuple[int, int]]:
    """Pick a CPU for each of ``n`` workers: the CPU of ``cpus`` that the fewest live workers hold,
    counted over every sandbox on this host, in any process (two one-worker sandboxes, e.g. two Ray
    actors on one machine, land on different CPUs instead of both on the first).

    Each claim is an exclusive ``flock`` on a file ``cpu<C>-<slot>.lock`` under ``lock_dir``, held
    through the returned fd until it is closed (the kernel drops it when the process dies, however
    it dies). Returns ``[(cpu, fd), ...]``; the picks of concurrent callers are serialised by a lock
    on the directory itself."""
    import fcntl

    lock_dir = lock_dir or _cpu_lock_dir()
    os.makedirs(lock_dir, mode=0o700, exist_ok=True)
    guard = os.open(os.path.join(lock_dir, ".pick"), os.O_CREAT | os.O_RDWR | os.O_CLOEXEC, 0o600)
    claims: list[tuple[int, int]] = []
    try:
        fcntl.flock(guard, fcntl.LOCK_EX)
        held: dict[int, set[int]] = {c: set() for c in cpus}  # cpu -> slots some live worker holds
        for name in os.listdir(lock_dir):
            if not (name.startswith("cpu") and name.endswith(".lock")):
                continue
            try:
                cpu, slot = (int(x) for x in name[3:-5].split("-"))
            except ValueError:
                continue
            path = os.path.join(lock_dir, name)
            fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                os.unlink(path)  # nobody holds it: a dead worker's (safe: pickers hold the guard)
            except OSError:
                held.setdefault(cpu, set()).add(slot)
            finally:
                os.close(fd)
        for _ in range(n):
            cpu = min(cpus, key=lambda c: len(held[c]))  # ties: the first in order
            slot = next(s for s in range(len(held[cpu]) + 1) if s not in held[cpu])
            fd = os.open(os.path.join(lock_dir, f"cpu{cpu}-{slot}.lock"), os.O_CREAT | os.O_RDWR | os.O_CLOEXEC, 0o600)
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            held[cpu].add(slot)
            claims.append((cpu, fd))
        return claims
    except BaseException:
        for _, fd in claims:
            os.close(fd)
        raise
    finally:
        os.close(guard)


class SandboxInfraError(RuntimeError):
    """A worker failed (died, broke the protocol, missed the host deadline). Never the program's fault."""


class _Worker:
    """One fork server process and the pipes to it. Used by one thread at a time."""

    def __init__(self, uid_base: int | None, namespaces: str, warm: bool, cpu: int | None = None,
                 startup_timeout: float = 30.0):
        self.uid_base, self.namespaces, self.warm, self.cpu = uid_base, namespaces, warm, cpu
        self.startup_timeout = startup_timeout
        self.proc: subprocess.Popen | None = None
        self.hello: dict = {}
        self.jobs_served = 0
        self.start()

    def start(self) -> None:
        cmd = [sys.executable, "-I", str(HARNESS_PATH or harness.payload_path()), "serve", "--namespaces", self.namespaces]
        if self.uid_base is not None:
            cmd += ["--uid-base", str(self.uid_base)]
        if not self.warm:
            cmd.append("--no-warm")
        if self.cpu is not None:
            cmd += ["--cpu", str(self.cpu)]
        self._stderr = tempfile.TemporaryFile()  # the server's own errors (it writes none normally)
        self.proc = subprocess.Popen(
            cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._stderr, close_fds=True,
            env={"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8"}, cwd="/",
        )
        try:
            self.hello = self._read_frame(time.monotonic() + self.startup_timeout)
        except SandboxInfraError as e:
            message = self.server_stderr() or "no message"
            self.kill()
            raise SandboxInfraError(f"{e}: {message}") from None
        if self.hello.get("hello") != harness.PROTOCOL:
            self.kill()
            raise SandboxInfraError(f"fork server spoke an unknown protocol: {self.hello!r}")

    @property
    def uid(self) -> int | None:
        """The uid this worker's jobs run as (claimed by the server; None when not root)."""
        return self.hello.get("uid")

    def _close_stderr(self) -> None:
        try:
            self._stderr.close()
        except (OSError, AttributeError):
            pass

    def server_stderr(self, limit: int = 4000) -> str:
        """The last ``limit`` characters the fork server wrote to its stderr."""
        try:
            self._stderr.seek(0)
            return self._stderr.read().decode("utf-8", "replace")[-limit:].strip()
        except (OSError, ValueError, AttributeError):
            return ""

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            try:
                self.proc.kill()
            except OSError:
                pass
            self.proc.wait()
        if self.proc is not None:
            for f in (self.proc.stdin, self.proc.stdout):
                try:
                    f.close()
                except OSError:
                    pass
        self._close_stderr()

    def restart(self) -> None:
        self.kill()
        self.start()

    def _read_some(self, n: int, deadline: float) -> bytes:
        """Up to ``n`` bytes (at least one) from the server, waiting until ``deadline``."""
        fd = self.proc.stdout.fileno()
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise SandboxInfraError("the fork server missed the host deadline")
            if select.select([fd], [], [], remaining)[0]:
                b = os.read(fd, n)
                if not b:
                    raise SandboxInfraError(f"the fork server exited (code {self.proc.poll()})")
                return b

    def _read_frame(self, deadline: float) -> dict:
        """One ``u32 n`` + n bytes JSON frame. The server sends nothing unasked and writes each
        frame at once, so the first read usually holds all of it."""
        data = self._read_some(1 << 16, deadline)
        while len(data) < 4:
            data += self._read_some(4 - len(data), deadline)
        n = int.from_bytes(data[:4], "little")
        body = [data[4:]]
        got = len(data) - 4
        while got < n:
            b = self._read_some(n - got, deadline)
            body.append(b)
            got += len(b)
        if got > n:
            raise SandboxInfraError("the fork server wrote more than one frame")
        return json.loads(b"".join(body))

    def run(self, request: bytes, timeout_s: float) -> dict:
        if self.proc is None or self.proc.poll() is not None:
            self.start()
        try:
            harness._write_all(self.proc.stdin.fileno(), request)
        except OSError as e:
            raise SandboxInfraError(f"could not send the job to the fork server: {e}") from None
        # the server enforces the job deadline itself; this is the backstop if the server hangs
        result = self._read_frame(time.monotonic() + timeout_s + 15.0)
        self.jobs_served += 1
        return result


class LocalSandbox(Sandbox):
    """Run jobs in fresh, isolated process trees forked from warm local workers.

    Args:
        workers: number of warm fork servers (= parallel jobs in ``run_batch``); default cpu count.
        uid_base: when running as root, each worker runs its jobs as a uid of its own: the first
            uid from ``uid_base`` on that no other live worker (of any sandbox, in any process)
            holds, claimed with a lock file under ``/run/prmgym-sandbox-uids``. No passwd entry
            is needed. Ignored when not root (jobs run as the current user).
        namespaces: ``"auto"`` (use Linux namespaces when permitted, else fall back and say so
            in ``ExecResult.details["isolation"]``), ``"on"`` (fail if unavailable) or ``"off"``.
        output_limit: bytes of stdout + stderr kept; more ends the job with ``output_limit``.
        nproc, nofile, fsize_mb, workdir_mb: rlimits (processes+threads, open files, largest
            file) and the size of the private tmpfs work dir.
        warm: pre-import common stdlib modules in the fork servers (faster jobs).
        pin_cpus: keep each worker (its server, judge and every job it forks) on one CPU of this
            process's allowed set: the CPU the fewest live workers of any sandbox on this host
            hold (`claim_cpus`), so workers spread over the CPUs whether they belong to one
            sandbox or to many (e.g. one-worker sandboxes in several Ray actors). A job's judge and program take
            turns on every call; on one CPU each turn is a local switch instead of a cross-CPU
            wake-up (the gain, measured by benchmarks/sandbox_throughput.py, is in docs/sandbox.md).
            Programs may still change their own affinity.

    Example:
        >>> sb = LocalSandbox(workers=2)
        >>> [r.status for r in sb.run_batch([Job("x = 1", tests=("assert x == 1",)),
        ...                                  Job("x = 1", tests=("assert x == 2",))])]
        ['passed', 'failed']
        >>> sb.close()
    """

    def __init__(self, workers: int | None = None, *, uid_base: int = 61000, namespaces: str = "auto",
                 output_limit: int = 1 << 20, nproc: int = 64, nofile: int = 128, fsize_mb: int = 16,
                 workdir_mb: int = 64, warm: bool = True, pin_cpus: bool = True):
        if not sys.platform.startswith("linux"):
            raise RuntimeError("LocalSandbox needs Linux (namespaces, prctl, pidfd); use DockerSandbox elsewhere")
        if namespaces not in ("auto", "on", "off"):
            raise ValueError(f"namespaces must be 'auto', 'on' or 'off', got {namespaces!r}")
        n = workers if workers is not None else (os.cpu_count() or 1)
        if n < 1:
            raise ValueError(f"workers must be >= 1, got {n}")
        if output_limit < 1024:
            raise ValueError(f"output_limit must be >= 1024 bytes, got {output_limit}")
        if not 1000 <= uid_base <= 2**31 - 20000:
            raise ValueError(f"uid_base must start an unprivileged uid range (>= 1000), got {uid_base}")
        if nproc < 4:
            raise ValueError(f"nproc must be >= 4 (the harness needs 2 processes), got {nproc}")
        self.limits = {"output_limit": int(output_limit), "nproc": int(nproc), "nofile": int(nofile),
                       "fsize_mb": int(fsize_mb), "workdir_mb": int(workdir_mb)}
        root = os.getuid() == 0
        self._closed = False
        self._workers: list[_Worker] = []
        self._free: queue.Queue[_Worker] = queue.Queue()
        self._pool: ThreadPoolExecutor | None = None
        self._lock = threading.Lock()
        self._cpu_claims: list[int] = []  # fds holding this sandbox's CPU claims
        close_at_exit(self)  # a script that forgets close() leaves no fork server behind
        try:
            picks: list[int | None] = [None] * n
            if pin_cpus:
                claims = claim_cpus(n, sorted(os.sched_getaffinity(0)))
                self._cpu_claims = [fd for _, fd in claims]
                picks = [cpu for cpu, _ in claims]
            for cpu in picks:
                w = _Worker(uid_base if root else None, namespaces, warm, cpu)
                self._workers.append(w)
                self._free.put(w)
        except BaseException:
            self.close()
            raise

    @property
    def isolation(self) -> dict:
        """What the host allowed (namespaces, uid switch), as probed by the first worker."""
        return dict(self._workers[0].hello.get("isolation", {})) if self._workers else {}

    def _request(self, job: Job) -> bytes:
        header = dict(self.limits, timeout_s=float(job.timeout_s), memory_mb=int(job.memory_mb))
        return harness.encode_request({"code": job.code, "tests": list(job.tests), "entry_point": job.entry_point,
                                       "stdin": job.stdin}, header)

    def run(self, job: Job) -> ExecResult:
        if self._closed:
            raise RuntimeError("this LocalSandbox is closed; create a new one")
        if not isinstance(job, Job):
            raise TypeError(f"LocalSandbox.run takes a prmgym.sandbox.Job, got {type(job).__name__}")
        request = self._request(job)
        failures: list[str] = []
        for _attempt in range(2):  # infrastructure failures are retried once
            worker = self._free.get()
            try:
                try:
                    out = worker.run(request, job.timeout_s)
                except SandboxInfraError as e:
                    failures.append(str(e))
                    try:
                        worker.restart()
                    except Exception as e2:  # noqa: BLE001  (reported below; next attempt restarts again)
                        failures.append(f"restart failed: {e2}")
                    continue
                except Exception as e:  # noqa: BLE001
                    failures.append(f"{type(e).__name__}: {e}")
                    worker.kill()
                    continue
            finally:
                self._free.put(worker)
            if out.get("status") == "sandbox_error":
                failures.append(str(out.get("details", {}).get("infra", "sandbox_error")))
                continue
            res = ExecResult(**{k: out[k] for k in ("status", "tests_passed", "tests_total", "exit_code", "signal",
                                                     "stdout", "stderr", "truncated", "wall_s", "cpu_s", "details")})
            if failures:
                res.details["retried_after"] = failures
            return res
        return ExecResult(status="sandbox_error", tests_total=len(job.tests),
                          details={"infra": failures, "attempts": 2})

    def run_batch(self, jobs: Sequence[Job]) -> list[ExecResult]:
        jobs = list(jobs)
        if not jobs:
            return []
        with self._lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(max_workers=len(self._workers), thread_name_prefix="prmgym-sandbox")
        return list(self._pool.map(self.run, jobs))

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._pool is not None:
            self._pool.shutdown(wait=True)
        for w in self._workers:
            w.kill()
        for fd in self._cpu_claims:
            os.close(fd)
        self._cpu_claims = []

    def __del__(self):  # best effort; explicit close() / `with` is the contract
        try:
            self.close()
        except Exception:  # noqa: BLE001
            pass


__all__ = ["LocalSandbox", "SandboxInfraError", "claim_cpus"]
