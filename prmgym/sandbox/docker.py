"""`DockerSandbox`: untrusted code in a pool of warm, locked-down Docker containers.

Each container runs one long-lived runner, ``container_agent.py``, as its PID 1. The host
talks to it over the container's attached stdin/stdout (length-prefixed ASCII JSON in, one
JSON line out; no ``docker exec`` and no ``docker run`` per job). For each job the agent forks the verdict
harness shared with `LocalSandbox`, enforces the deadline, then kills every process the job
left behind and wipes the writable directories before it answers.

Container settings (see ``DockerSandbox.container_config``): no network, memory limit equal
to memory+swap limit, pids limit, CPU quota, read-only root, small ``tmpfs`` work dirs, all
capabilities dropped, ``no-new-privileges``, an unprivileged uid, logging off, and labels
``prmgym.sandbox=1`` plus the owner's host/pid/start time. Containers whose owner process is
gone are removed when a new `DockerSandbox` starts.

The host enforces its own deadline too: if the agent does not answer within
``timeout_s + grace_s`` the container is killed and replaced. A container is also replaced
after a timeout, an out-of-memory kill, a job that left processes or files behind, or
``max_jobs_per_container`` jobs. An infrastructure failure (the container dies mid-job, the
engine errors) is retried once on a fresh container and otherwise reported as
``sandbox_error``.

>>> from prmgym.sandbox.base import Job
>>> from prmgym.sandbox.docker import DockerSandbox
>>> with DockerSandbox(pool_size=2) as sb:                       # doctest: +SKIP
...     sb.run(Job("def f(x):\\n    return x + 1", tests=("assert candidate(1) == 2",), entry_point="f")).status
'passed'
"""

from __future__ import annotations

import dataclasses
import json
import os
import queue
import socket
import struct
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Sequence

from prmgym.sandbox import harness
from prmgym.sandbox.base import ExecResult, Job, Sandbox, close_at_exit
from prmgym.sandbox.engine import DockerUnavailableError, docker_client  # noqa: F401  (re-exported)

LABEL = "prmgym.sandbox"
SANDBOX_UID = 10001
PROTOCOL = 1

def _proc_start_time(pid: int) -> str | None:
    """Start time of ``pid`` in clock ticks since boot (detects pid reuse), or None if gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read().decode(errors="replace")
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]


class _Broken(Exception):
    """The container or the connection to it failed (an infrastructure error)."""


class _HostTimeout(Exception):
    """The agent did not answer before the host-side deadline."""


class _Container:
    """One warm container and the attached stdin/stdout channel to its agent."""

    def __init__(self, owner: "DockerSandbox") -> None:
        self.owner = owner
        self.jobs_served = 0
        self.container = None
        self._sock = None
        self._raw = bytearray()  # bytes from the attach stream, still multiplexed
        self._out = bytearray()  # demultiplexed agent stdout
        self._err = bytearray()  # demultiplexed agent stderr (diagnostics only)
        self._next_id = 0
        client = owner._client
        try:
            self.uid = owner._next_uid()
            self.container = client.containers.create(owner.image, **owner.container_config(self.uid))
            owner._track(self.container.id)
            self.container.start()
            sock = client.api.attach_socket(
                self.container.id, params={"stdin": 1, "stdout": 1, "stderr": 1, "stream": 1}
            )
            self._sock = getattr(sock, "_sock", sock)
            self._sock_holder = sock  # keeps the HTTP response (and TLS socket) alive
            hello = self.request({"op": "ping"}, b"", time.monotonic() + owner.start_timeout_s)
        except BaseException:
            self.destroy(wait=True)
            raise
        if hello.get("op") != "pong" or hello.get("protocol") != PROTOCOL or hello.get("harness") != harness.PROTOCOL:
            self.destroy(wait=True)
            raise _Broken(f"unexpected greeting from the container agent: {hello!r}")
        self.info = hello

    @property
    def id(self) -> str:
        return self.container.id if self.container is not None else ""

    def request(self, header: dict, payload: bytes, deadline: float) -> dict:
        """Send one request (see container_agent.py) and wait for its answer until ``deadline``."""
        self._next_id += 1
        header = dict(header, id=self._next_id)
        h = json.dumps(header, ensure_ascii=True, separators=(",", ":")).encode()
        if not payload.isascii():
            raise ValueError("the payload must be ASCII JSON (json.dumps with ensure_ascii=True)")
        frame = b"%08x" % len(h) + h + b"%08x" % len(payload) + payload
        try:
            self._sock.sendall(frame)
        except OSError as exc:
            raise _Broken(f"cannot write to the container agent: {exc}") from exc
        while True:
            reply = self._read_line(deadline)
            if reply.get("id") == header["id"]:
                return reply

    def _read_line(self, deadline: float) -> dict:
        while True:
            nl = self._out.find(b"\n")
            if nl >= 0:
                line = bytes(self._out[:nl])
                del self._out[: nl + 1]
                try:
                    return json.loads(line)
                except ValueError as exc:
                    raise _Broken(f"garbled message from the container agent: {line[:200]!r}") from exc
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise _HostTimeout()
            try:
                self._sock.settimeout(remaining)
                chunk = self._sock.recv(1 << 16)
            except socket.timeout:
                raise _HostTimeout() from None
            except OSError as exc:
                raise _Broken(f"connection to the container agent failed: {exc}") from exc
            if not chunk:
                err = self._err.decode(errors="replace")[-2000:]
                raise _Broken("the container agent exited" + (f"; its stderr: {err}" if err else ""))
            self._raw += chunk
            self._demux()

    def _demux(self) -> None:
        # Docker's attach stream without a tty: 8-byte header (stream, 0, 0, 0, big-endian size).
        while len(self._raw) >= 8:
            stream = self._raw[0]
            (size,) = struct.unpack(">I", self._raw[4:8])
            if len(self._raw) < 8 + size:
                return
            payload = bytes(self._raw[8 : 8 + size])
            del self._raw[: 8 + size]
            if stream == 1:
                self._out += payload
            else:
                self._err += payload
                del self._err[:-8192]

    def destroy(self, wait: bool = False) -> None:
        """Kill and remove the container (in the background unless ``wait``)."""
        try:
            if self._sock is not None:
                self._sock.close()
        except OSError:
            pass
        self._sock = None
        if self.container is not None:
            self.owner._remove(self.container.id, wait=wait)
            self.container = None



class DockerSandbox(Sandbox):
    """Runs jobs in a pool of warm Docker containers (see the module docstring).

    Args:
        pool_size: number of containers (= jobs in parallel); default: number of CPUs.
        image: image ref; default ``prmgym-sandbox:<digest of the runner files>`` as built by
            ``prmgym sandbox build-image [--offline]``.
        memory_mb: container memory limit (memory = memory+swap). A job's own ``memory_mb``
            (an address-space limit set by the harness) is capped at ``memory_mb - 128``.
        cpus: CPU quota per container (``nano_cpus``).
        pids_limit: processes + threads per container.
        tmpfs_mb: size of each writable tmpfs (``/tmp``, ``/work``).
        max_jobs_per_container: replace a container after this many jobs.
        grace_s: the host-side deadline is ``job.timeout_s + grace_s`` (the harness in the
            container enforces ``timeout_s`` itself and gives up at ``timeout_s + 5``).
        start_timeout_s: how long a new container may take to answer its first ping.
        uid_base: containers run as uids ``uid_base .. uid_base + 9999`` in turn (no passwd
            entry needed), so one container's processes never count against another's
            ``RLIMIT_NPROC``.
        output_limit, nproc, nofile, fsize_mb: the harness's per-job limits, as in `LocalSandbox`.
        warm: start the whole pool now (in parallel) instead of on first use.

    Example (needs a running engine and the image)::

        >>> with DockerSandbox(pool_size=2) as sb:                          # doctest: +SKIP
        ...     [r.status for r in sb.run_batch([Job("x = 1", tests=("assert x == 1",)),
        ...                                      Job("x = 1", tests=("assert x == 2",))])]
        ['passed', 'failed']
    """

    def __init__(
        self,
        pool_size: int | None = None,
        *,
        image: str | None = None,
        memory_mb: int = 1024,
        cpus: float = 1.0,
        pids_limit: int = 128,
        tmpfs_mb: int = 64,
        max_jobs_per_container: int = 500,
        grace_s: float = 8.0,
        start_timeout_s: float = 30.0,
        uid_base: int = 70000,
        output_limit: int = 1 << 20,
        nproc: int = 64,
        nofile: int = 128,
        fsize_mb: int = 16,
        warm: bool = True,
    ) -> None:
        if pool_size is not None and pool_size < 1:
            raise ValueError(f"pool_size must be >= 1, got {pool_size}")
        if memory_mb < 256:
            raise ValueError(f"memory_mb must be >= 256 (the agent, the harness and Python need it), got {memory_mb}")
        if cpus <= 0:
            raise ValueError(f"cpus must be > 0, got {cpus}")
        if pids_limit < 16:
            raise ValueError(f"pids_limit must be >= 16 (the agent and harness use 4 processes per job), got {pids_limit}")
        if max_jobs_per_container < 1:
            raise ValueError(f"max_jobs_per_container must be >= 1, got {max_jobs_per_container}")
        if output_limit < 1024:
            raise ValueError(f"output_limit must be >= 1024 bytes, got {output_limit}")
        if nproc < 4:
            raise ValueError(f"nproc must be >= 4 (the harness needs 2 processes), got {nproc}")
        if not 1000 <= uid_base <= 2**31 - 20000:
            raise ValueError(f"uid_base must be an unprivileged uid range start (>= 1000), got {uid_base}")
        self._client = docker_client()
        if image is None:
            from prmgym.sandbox.image import default_image

            image = default_image()
        self.image = image
        self._check_image()
        self.pool_size = pool_size or os.cpu_count() or 1
        self.memory_mb = memory_mb
        self.cpus = cpus
        self.pids_limit = pids_limit
        self.tmpfs_mb = tmpfs_mb
        self.max_jobs_per_container = max_jobs_per_container
        self.grace_s = grace_s
        self.start_timeout_s = start_timeout_s
        self.uid_base = uid_base
        self.limits = {
            "output_limit": int(output_limit),
            "nproc": int(nproc),
            "nofile": int(nofile),
            "fsize_mb": int(fsize_mb),
            "workdir_mb": int(tmpfs_mb),
        }
        self._owner_labels = {
            LABEL: "1",
            f"{LABEL}.owner_host": socket.gethostname(),
            f"{LABEL}.owner_pid": str(os.getpid()),
            f"{LABEL}.owner_start": _proc_start_time(os.getpid()) or "",
        }
        self._lock = threading.Lock()
        self._uid_counter = 0
        self._live: set[str] = set()  # ids of containers this sandbox created and not yet removed
        self._removers: list[threading.Thread] = []
        self._spawners: list[threading.Thread] = []  # replacements being started in the background
        self._pool: ThreadPoolExecutor | None = None
        self._closed = False
        self.stats = {"containers_started": 0, "recycled": 0, "retries": 0, "stale_removed": 0}
        self.stats["stale_removed"] = self.remove_stale_containers()
        self._slots: queue.Queue = queue.Queue()
        close_at_exit(self)  # a script that forgets close() still exits promptly and removes its containers
        slots: list = [None] * self.pool_size
        if warm:
            with ThreadPoolExecutor(self.pool_size) as ex:
                futures = [ex.submit(self._spawn) for _ in slots]
                errors = []
                for i, fut in enumerate(futures):
                    try:
                        slots[i] = fut.result()
                    except Exception as exc:
                        errors.append(exc)
            if errors:
                for c in slots:
                    if c is not None:
                        c.destroy(wait=True)
                raise errors[0]
        for c in slots:
            self._slots.put(c)

    # ------------------------------------------------------------------ configuration
    def _check_image(self) -> None:
        import docker

        try:
            self._client.images.get(self.image)
        except docker.errors.ImageNotFound:
            raise DockerUnavailableError(
                f"the sandbox image {self.image} is missing. Build it with "
                "`prmgym sandbox build-image --offline` (assembles a Debian root file system with "
                "debootstrap; needs root) or `prmgym sandbox build-image` where a registry is reachable."
            ) from None

    def _next_uid(self) -> int:
        with self._lock:
            uid = self.uid_base + self._uid_counter % 10000
            self._uid_counter += 1
        return uid

    def container_config(self, uid: int = SANDBOX_UID) -> dict:
        """Keyword arguments for ``client.containers.create`` (the isolation settings)."""
        from docker.types import LogConfig, Ulimit

        mem = f"{self.memory_mb}m"
        tmp_opts = f"rw,nosuid,nodev,noexec,size={self.tmpfs_mb}m"
        return dict(
            command=["python3", "-I", "-u", "/opt/prmgym/container_agent.py"],
            stdin_open=True,
            tty=False,
            detach=True,
            network_mode="none",
            mem_limit=mem,
            memswap_limit=mem,
            pids_limit=self.pids_limit,
            nano_cpus=int(self.cpus * 1e9),
            read_only=True,
            tmpfs={
                "/tmp": f"{tmp_opts},mode=1777",
                "/work": f"{tmp_opts},mode=0700,uid={uid},gid={uid}",
            },
            shm_size=f"{min(self.tmpfs_mb, 16)}m",
            ipc_mode="private",
            cap_drop=["ALL"],
            security_opt=["no-new-privileges"],
            user=f"{uid}:{uid}",
            working_dir="/work",
            environment={"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8"},
            ulimits=[Ulimit(name="core", soft=0, hard=0), Ulimit(name="nofile", soft=1024, hard=1024)],
            log_config=LogConfig(type=LogConfig.types.NONE),
            labels=dict(self._owner_labels),
            init=False,
        )

    # ------------------------------------------------------------------ containers
    def _track(self, cid: str) -> None:
        with self._lock:
            self._live.add(cid)
            self.stats["containers_started"] += 1

    def _remove(self, cid: str, wait: bool = False) -> None:
        def remove() -> None:
            try:
                self._client.api.remove_container(cid, force=True)
            except Exception:  # already gone, or the engine is going away; nothing to clean
                pass
            with self._lock:
                self._live.discard(cid)

        if wait or self._closed or sys.is_finalizing():
            remove()  # once closed (and at interpreter exit) nothing may be left to a background thread
            return
        t = threading.Thread(target=remove, daemon=True, name="prmgym-docker-rm")
        with self._lock:
            self._removers = [r for r in self._removers if r.is_alive()] + [t]
        try:
            t.start()
        except RuntimeError:  # the interpreter is shutting down and starts no more threads
            remove()

    def _spawn(self) -> _Container:
        try:
            return _Container(self)
        except (_Broken, _HostTimeout) as exc:
            raise DockerUnavailableError(f"a sandbox container did not start: {exc}") from exc

    def _respawn_slot(self) -> None:
        try:
            container = self._spawn()
        except Exception:
            container = None  # the next job that takes this slot retries the start and reports it
        if self._closed and container is not None:
            container.destroy()
            container = None
        self._slots.put(container)

    def _start_respawn(self) -> None:
        t = threading.Thread(target=self._respawn_slot, daemon=True, name="prmgym-docker-spawn")
        with self._lock:
            self._spawners = [s for s in self._spawners if s.is_alive()] + [t]
        try:
            t.start()
        except RuntimeError:  # interpreter shutting down: the slot stays empty, the sandbox is closing
            self._slots.put(None)

    def remove_stale_containers(self) -> int:
        """Remove prmgym sandbox containers whose owner process (on this host) is gone."""
        host = socket.gethostname()
        removed = 0
        # The low-level listing carries the labels without inspecting each container, so a
        # container removed meanwhile (by its owner) cannot make the sweep fail.
        for c in self._client.api.containers(all=True, filters={"label": f"{LABEL}=1"}):
            labels = c.get("Labels") or {}
            if labels.get(f"{LABEL}.owner_host") != host:
                continue  # another machine's (or container's) sandbox: its pids mean nothing here
            try:
                pid = int(labels.get(f"{LABEL}.owner_pid", ""))
            except ValueError:
                pid = -1
            start = _proc_start_time(pid) if pid > 0 else None
            alive = start is not None and start == labels.get(f"{LABEL}.owner_start", start)
            if not alive:
                try:
                    self._client.api.remove_container(c["Id"], force=True)
                    removed += 1
                except Exception:  # removed concurrently
                    pass
        return removed

    def containers(self) -> list[str]:
        """Ids of the containers this sandbox currently owns."""
        with self._lock:
            return sorted(self._live)

    # ------------------------------------------------------------------ jobs
    def run(self, job: Job) -> ExecResult:
        if self._closed:
            raise RuntimeError("this DockerSandbox is closed; create a new one")
        if not isinstance(job, Job):
            raise TypeError(f"DockerSandbox.run takes a prmgym.sandbox.Job, got {type(job).__name__}")
        result = self._attempt(job)
        if result.status == "sandbox_error":  # infrastructure: one retry on a fresh container
            with self._lock:
                self.stats["retries"] += 1
            first = result.details.get("infra", "")
            result = self._attempt(job)
            result.details["retried_after"] = [first]
        return result

    def run_batch(self, jobs: Sequence[Job]) -> list[ExecResult]:
        jobs = list(jobs)
        if not jobs:
            return []
        with self._lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(self.pool_size, thread_name_prefix="prmgym-docker")
        return list(self._pool.map(self.run, jobs))

    def _request(self, job: Job) -> tuple[dict, bytes, int]:
        memory_mb = min(int(job.memory_mb), self.memory_mb - 128)
        limits = dict(self.limits, timeout_s=float(job.timeout_s), memory_mb=memory_mb)
        frame = harness.encode_request(
            {"code": job.code, "tests": list(job.tests), "entry_point": job.entry_point, "stdin": job.stdin}, limits
        )
        (n,) = struct.unpack("<I", frame[:4])
        header = json.loads(frame[4 : 4 + n])
        payload = frame[8 + n :]
        return header, payload, memory_mb

    def _attempt(self, job: Job) -> ExecResult:
        header, payload, memory_mb = self._request(job)
        container = self._slots.get()
        recycle = False
        t0 = time.monotonic()
        try:
            if container is None:
                container = self._spawn()
            reply = container.request(header, payload, time.monotonic() + job.timeout_s + self.grace_s)
            container.jobs_served += 1
            if reply.get("op") != "result" or not isinstance(reply.get("result"), dict):
                raise _Broken(f"the container agent answered {reply!r:.300}")
            res = reply["result"]
            result = ExecResult(**{k: res[k] for k in _RESULT_FIELDS if k in res})
            health = reply.get("health") or {}
            result.details["container"] = container.id[:12]
            iso = result.details.setdefault("isolation", {})
            if isinstance(iso, dict):  # the container's namespaces, shared by its jobs (swept between jobs)
                iso.update(backend="docker", network_namespace=True, pid_namespace=True, mount_namespace=True,
                           read_only_root=True, uid=container.uid)
            result.details["leftover_processes"] = int(health.get("leftover_processes", 0))
            result.details["agent_s"] = {k: health[k] for k in ("harness_s", "cleanup_s") if k in health}
            if health.get("agent_tampered"):  # the job changed the agent's limits/priority: replace it
                result.details["agent_tampered"] = health["agent_tampered"]
            if memory_mb != job.memory_mb:
                result.details["memory_mb_capped"] = memory_mb
            recycle = (
                result.status in ("timeout", "memory", "sandbox_error")
                or result.details["leftover_processes"] > 0
                or not health.get("clean", False)
                or bool(health.get("oom"))
                or container.jobs_served >= self.max_jobs_per_container
            )
            return result
        except _HostTimeout:
            recycle = True
            return ExecResult(
                status="timeout",
                tests_total=len(job.tests),
                wall_s=time.monotonic() - t0,
                details={"enforced_by": "host", "container": container.id[:12] if container else ""},
            )
        except Exception as exc:  # _Broken, engine/API errors, a container that would not start
            recycle = True
            return ExecResult(
                status="sandbox_error",
                tests_total=len(job.tests),
                wall_s=time.monotonic() - t0,
                details={"infra": f"{type(exc).__name__}: {exc}"},
            )
        finally:
            if recycle and container is not None:
                container.destroy()
                container = None
                with self._lock:
                    self.stats["recycled"] += 1
            if self._closed and container is not None:
                container.destroy()
                container = None
            if recycle and not self._closed:
                # Start the replacement in the background; the slot returns once it is warm.
                self._start_respawn()
            else:
                self._slots.put(container)

    def close(self) -> None:
        """Remove every container of this sandbox. Safe to call twice.

        Also runs at interpreter exit for a sandbox that was never closed (``close_at_exit``),
        so ``sys.exit`` or an uncaught exception neither hangs nor leaves containers behind.
        """
        if self._closed:
            return
        self._closed = True
        if self._pool is not None:
            self._pool.shutdown(wait=True)
        with self._lock:
            spawners = list(self._spawners)
        for t in spawners:  # a replacement being started is removed by its own thread once closed
            t.join(timeout=self.start_timeout_s)
        while True:
            try:
                c = self._slots.get_nowait()
            except queue.Empty:
                break
            if c is not None and c._sock is not None:
                try:
                    c._sock.close()
                except OSError:
                    pass
        self._remove_all(self.containers())
        with self._lock:
            removers = list(self._removers)
        for t in removers:
            t.join(timeout=30)

    def _remove_all(self, cids: list[str]) -> None:
        """Remove containers in parallel, or one by one where no thread can start (at exit)."""
        threads = []
        for cid in cids:
            t = threading.Thread(target=self._remove, args=(cid, True), daemon=True, name="prmgym-docker-rm")
            if sys.is_finalizing():
                self._remove(cid, wait=True)
                continue
            try:
                t.start()
            except RuntimeError:  # the interpreter is shutting down and starts no more threads
                self._remove(cid, wait=True)
                continue
            threads.append(t)
        for t in threads:
            t.join(timeout=30)

    def __del__(self) -> None:  # a sandbox garbage-collected unclosed; close() / `with` is the contract
        try:
            if not getattr(self, "_closed", True) and hasattr(self, "_slots"):
                self.close()
        except Exception:
            pass


_RESULT_FIELDS = tuple(f.name for f in dataclasses.fields(ExecResult))
