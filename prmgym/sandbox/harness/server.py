"""S: the server. One warm worker: per job it sets up the program and the judge, supervises them
to the deadline, and turns what they left into the result."""

from __future__ import annotations

import ctypes
import json
import os
import _socket
import struct
import sys
import time
from .wire import (
    DEFAULT_LIMITS, JUDGE_INFRA_EXIT, MAGIC, PROTOCOL, _read_all, _read_exact, _short, _socketpair,
    _write_all, send_fds,
)
from .isolation import (
    CLONE_NEWIPC, CLONE_NEWNET, CLONE_NEWNS, MS_NODEV, MS_NOEXEC, MS_NOSUID, PR_SET_CHILD_SUBREAPER,
    SCRATCH_DIRS, _child_alive, _kill_and_reap, _kill_tree, _lib, _pidfd_or_none, _reap_children, cpu_limits,
    mount, prctl, prepare_mounts, probe_isolation, set_process_name, umount, unshare,
)
from .program import _fork_program
from .judge import _judge_process
from .verdict import _parse_reports, _verdict
from .spawner import _DirectChild, _JUDGE_MAX_JOBS, _SO_SNDBUFFORCE, _Spawner


class _JobRun:
    """One job's state, passed from `Server._start_job` to `_supervise` to `_verdict_of`."""

    __slots__ = ("lim", "n_tests", "stdin_data", "t0", "iso", "own_workdir", "judge", "cfg", "child", "nonce", "sock",
                 "job_view", "judge_lost", "sock_fd", "setup_r", "out_r", "err_r", "stdin_w", "status", "killed",
                 "judge_status", "ended_at", "out", "err", "report", "output_exceeded", "open_r", "stdin_view")


def _payload_bytes() -> bytes:
    """The harness as one self-contained module (the payload the spawner runs): this very file
    when the harness runs as the payload (a server started by LocalSandbox, the Docker agent's
    ``import harness``), else built from the package's modules."""
    if __spec__ is not None and __spec__.parent:  # (imported as prmgym.sandbox.harness.server)
        from .payload import source

        return source().encode()
    with open(os.path.abspath(__file__), "rb") as f:
        return f.read()


class Server:
    """One warm worker. ``serve()`` answers frames on ``in_fd``/``out_fd`` until EOF.

    ``judge_uid``: the uid of the judge process (default: ``uid``); a uid other than the jobs'
    keeps the judge out of their reach even without a PID namespace. ``persistent_judge``:
    keep one judge for many jobs (it is replaced after any job it could not finish normally);
    False starts one per job (the Docker agent, whose sweep after each job kills every process)."""

    def __init__(self, uid: int | None, namespaces: str = "auto", workdir_root: str | None = None,
                 in_fd: int = 0, out_fd: int = 1, judge_uid: int | None = None, persistent_judge: bool = True):
        if os.getuid() != 0:
            uid = judge_uid = None  # cannot switch users; run as ourselves
        self.uid = uid
        self.judge_uid = judge_uid if judge_uid is not None else uid
        self.persistent_judge = persistent_judge
        self.in_fd, self.out_fd = in_fd, out_fd
        self.workdir_root = workdir_root  # None: tempfile.gettempdir(), looked up when first needed
        iso = probe_isolation(uid) if namespaces != "off" else {"namespaces": False, "netns": False}
        if namespaces == "on" and not iso.get("namespaces"):
            raise SystemExit(f"namespaces were required but unshare failed: {iso.get('namespaces_error')}")
        self.isolation = iso
        self.prepared, self.prepared_notes = False, {}
        _lib()  # load libc once here, not in every forked job
        self.namespaces = namespaces != "off"
        expose = {sys.base_prefix, sys.prefix}  # the Python installation jobs import from
        expose.update(p for p in sys.path if p and os.path.isdir(p))
        self.expose = sorted(expose)
        self.scratch = [d for d in SCRATCH_DIRS if os.path.isdir(d) and not os.path.islink(d)]
        self.shared_mounts = False  # jobs use this server's prepared mount namespace (see enter_namespaces)
        self._tmp_mounts: list[str] = []
        self._tmp_size: int | None = None  # MB of the /tmp tmpfs in _tmp_mounts
        self._own_pidns = None  # our PID namespace, to return to after forking a job into a new one
        if self.namespaces and iso.get("namespaces"):
            try:
                self._own_pidns = os.open("/proc/self/ns/pid", os.O_RDONLY | os.O_CLOEXEC)
            except OSError as e:
                self.isolation["pidns_error"] = str(e)
        self._judge: dict | None = None
        self._spawner: _Spawner | None = None
        self.warm = True  # the spawner pre-imports _PROGRAM_WARM_MODULES (serve --no-warm turns it off)
        self._serving = False  # serve(): programs come from a spawner, never from this server
        # the payload's source, read now (enter_namespaces may hide its path): the spawner runs it
        self._source = _payload_bytes()
        self._code_fd: int | None = None  # the compiled source, marshalled into a memfd (`_Spawner`)
        try:
            prctl(PR_SET_CHILD_SUBREAPER, 1)
        except OSError:
            pass

    def enter_namespaces(self) -> bool:
        """Move this server (not just its jobs) into a private mount namespace with a read-only
        tree and an empty network namespace, once, so that each job only needs new PID, IPC and
        mount namespaces (the mount table it copies is then already prepared). Only for a
        dedicated server process (``serve`` mode): it changes the calling process."""
        iso = self.isolation
        if not (self.namespaces and iso.get("namespaces") and iso.get("mounts")):
            return False
        notes: dict = {}
        try:
            unshare(CLONE_NEWNS | CLONE_NEWNET | CLONE_NEWIPC)
        except OSError as e:
            self.isolation["prepare_error"] = str(e)
            return False
        try:
            prepare_mounts(self.expose, notes)
        except OSError as e:  # jobs then do the full setup themselves, in copies of this namespace
            self.isolation["prepare_error"] = str(e)
            return False
        self.prepared, self.prepared_notes = True, notes
        try:  # jobs share this namespace (one at a time): a /proc that shows a job only its own uid's processes
            mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, "hidepid=2")
            self.shared_mounts = True
        except OSError as e:  # each job then makes a mount namespace and a /proc of its own
            self.isolation["shared_mounts_error"] = str(e)
        return True

    def _fresh_tmp(self, size_mb: int) -> bool:
        """Give the next job an empty tmpfs on /tmp (with a new work dir) and on each scratch
        dir, in this server's own private mount namespace, which its jobs share one at a time.
        The mounts are kept from the last job when `_empty_tmp` proved that job left them empty
        and the size is the same; otherwise they are made anew."""
        try:
            if not (self._tmp_mounts and self._tmp_size == size_mb):
                self._release_tmp()
                mount("tmpfs", "/tmp", "tmpfs", MS_NOSUID | MS_NODEV, f"size={size_mb}m,nr_inodes=4096,mode=1777")
                self._tmp_mounts.append("/tmp")
                for d in self.scratch:
                    mount("tmpfs", d, "tmpfs", MS_NOSUID | MS_NODEV, "size=1m,nr_inodes=256,mode=1777")
                    self._tmp_mounts.append(d)
                self._tmp_size = size_mb
            os.mkdir("/tmp/work", 0o700)
            if self.uid is not None:
                os.chown("/tmp/work", self.uid, self.uid)
            return True
        except OSError as e:
            self.isolation["fresh_tmp_error"] = str(e)
            self._release_tmp()
            return False

    def _empty_tmp(self) -> None:
        """After a job whose processes are all gone: keep the worker's tmpfs mounts for the next
        job if the job left nothing in them but its empty work dir (removed here), which
        `statvfs` proves (no inode but each root, no data); otherwise unmount them all, and the
        next job gets new ones. Unmounting costs an RCU grace period per mount (about 0.5 ms
        each here, on the critical path), so jobs that write no files skip it; a job cannot
        leave anything, not even inode numbers that count its files, to the next."""
        try:
            os.rmdir(os.path.join(self._tmp_mounts[0], "work"))  # /tmp/work
            for d in self._tmp_mounts:
                st = os.statvfs(d)
                if st.f_files - st.f_ffree != 1 or st.f_bfree != st.f_blocks:
                    raise OSError(f"the job left files in {d}")
        except OSError:
            self._release_tmp()

    @staticmethod
    def _clean_ipc() -> int:
        """Remove every System V shared memory segment, message queue and semaphore set in this
        server's IPC namespace (its jobs', one at a time; POSIX queues are ruled out by
        RLIMIT_MSGQUEUE = 0 and POSIX shm lives in the per-job /dev/shm). Returns how many."""
        n = 0
        for kind in ("shm", "msg", "sem"):
            try:  # (os-level: a buffered open costs twice the system calls, in every job)
                fd = os.open(f"/proc/sysvipc/{kind}", os.O_RDONLY)
                try:
                    lines = _read_all(fd).splitlines()[1:]
                finally:
                    os.close(fd)
            except OSError:
                continue
            for line in lines:
                try:
                    ident = int(line.split()[1])
                except (IndexError, ValueError):
                    continue
                lib = _lib()
                if kind == "shm":
                    lib.shmctl(ctypes.c_int(ident), ctypes.c_int(0), None)  # IPC_RMID
                elif kind == "msg":
                    lib.msgctl(ctypes.c_int(ident), ctypes.c_int(0), None)
                else:
                    lib.semctl(ctypes.c_int(ident), ctypes.c_int(0), ctypes.c_int(0))
                n += 1
        return n

    def _release_tmp(self) -> None:
        """Unmount the worker's /tmp and scratch tmpfs mounts (lazily: a process of the job that
        is still alive after an abnormal end keeps only its detached copy)."""
        self._tmp_size = None
        while self._tmp_mounts:
            d = self._tmp_mounts.pop()
            try:
                umount(d)
            except OSError:
                pass

    def hello(self) -> dict:
        return {"hello": PROTOCOL, "pid": os.getpid(), "uid": self.uid, "judge_uid": self.judge_uid,
                "isolation": self.isolation}

    def serve(self) -> None:
        import gc

        set_process_name("prmgym-sandbox")
        gc.collect()
        gc.freeze()  # forked children then do not copy every page just to run the collector
        self._serving = True
        self.start_spawner(before_any_job=True)
        self._send(self.hello())
        buf = bytearray()
        while True:
            try:
                (n,) = struct.unpack("<I", _read_exact(self.in_fd, 4))
                header = json.loads(_read_exact(self.in_fd, n))
                if header.get("op") == "ping":
                    self._send({"op": "pong", **self.hello()})
                    continue
                (m,) = struct.unpack("<I", _read_exact(self.in_fd, 4))
            except EOFError:
                return
            if len(buf) < m:
                buf = bytearray(m)
            view = memoryview(buf)[:m]
            got = 0
            while got < m:
                k = os.readv(self.in_fd, [view[got:]])
                if k == 0:
                    return
                got += k
            try:
                result = self.run(header, view)
            except Exception as e:  # the server's own failure: infrastructure
                import traceback

                result = {"status": "sandbox_error", "details": {"infra": _short(traceback.format_exc())},
                          "error": str(e)}
            finally:
                view[:] = bytes(m)  # zero the payload so later forks do not inherit it
                view.release()
            self._send(result)

    def _send(self, obj: dict) -> None:
        data = json.dumps(obj).encode()
        _write_all(self.out_fd, struct.pack("<I", len(data)) + data)

    # -- the judge ------------------------------------------------------------------------------
    def _judge_alive(self) -> bool:
        j = self._judge
        if j is not None and _child_alive(j["pid"], j["pidfd"]):
            return True
        self.stop_judge()
        return False

    def _start_judge(self) -> dict:
        self.stop_judge()
        ours, theirs = _socketpair(_socket.SOCK_STREAM)
        # room for many records: the server reads them lazily (see `run`); every small write
        # is charged at its full buffer size, so the default fills after a few hundred tests
        for opt in (_SO_SNDBUFFORCE, _socket.SO_SNDBUF):  # (the first needs root)
            try:
                theirs.setsockopt(_socket.SOL_SOCKET, opt, 32 << 20)
                break
            except OSError:
                continue
        pid = os.fork()
        if pid == 0:
            try:
                ours.detach()
                _judge_process(theirs.detach(), self.judge_uid,
                               bool(self.namespaces and self.isolation.get("netns", self.isolation.get("namespaces"))
                                    and not self.prepared and os.getuid() == 0))
            finally:
                os._exit(JUDGE_INFRA_EXIT)
        theirs.close()
        ours.setblocking(False)
        self._judge = {"pid": pid, "pidfd": _pidfd_or_none(pid), "sock": ours, "jobs": 0}
        return self._judge

    def stop_judge(self) -> int | None:
        """Kill and reap the judge (if any); returns its wait status when we reaped it."""
        j, self._judge = self._judge, None
        if j is None:
            return None
        status = _kill_and_reap(j["pid"])  # not reaped yet, so the pid is still the judge's
        j["sock"].close()
        if j["pidfd"] is not None:
            os.close(j["pidfd"])
        return status

    def _fork_program(self, cfg: dict, lim: dict, fds: dict, payload) -> int:
        return _fork_program(self._own_pidns, cfg, lim, fds, payload)

    def start_spawner(self, before_any_job: bool = False) -> None:
        """Start the spawner (`_Spawner`), which from then on forks every program. This server
        then never forks per job, so its own work during a job costs no copy-on-write faults,
        and no program is a copy of its memory (which holds earlier jobs' records). If the
        fresh interpreter cannot start, ``isolation["spawner_error"]`` says why; before any job
        the spawner is then a fork of this server (which has held no job yet); later the error
        is raised (the job becomes a ``sandbox_error``, and the next job tries again)."""
        if self._spawner is not None:
            self._spawner.stop()
            self._spawner = None
        # the tmpfs mounts kept from the last job cover /tmp and the scratch dirs (/var/tmp...),
        # where the interpreter may live (a venv in a clone under /var/tmp): the exec must see the
        # tree the first spawner saw, so they go (the next job mounts new ones)
        self._release_tmp()
        try:
            self._spawner = _Spawner(self)
            self.isolation["spawner"] = "exec"
        except (OSError, RuntimeError) as e:
            self.isolation["spawner_error"] = _short(str(e))
            if not before_any_job:
                raise
            self._spawner = _Spawner(self, fresh=False)
            self.isolation["spawner"] = "fork"

    # -- one job --------------------------------------------------------------------------------
    def run(self, header: dict, payload) -> dict:
        """Run one job; ``payload`` is the job JSON (bytes-like). Returns the result dict."""
        job = self._start_job(header, payload)
        self._supervise(job)
        return self._verdict_of(job)

    def _start_job(self, header: dict, payload) -> "_JobRun":
        """Setup: the limits, a live spawner and judge, the pipes; the program forked (by the
        spawner) and the job handed to the judge with a fresh nonce."""
        import tempfile

        lim = {**DEFAULT_LIMITS, **{k: v for k, v in header.items() if k in DEFAULT_LIMITS}}
        n_tests = int(header.get("n_tests", -1))
        stdin_data = header.get("stdin")
        stdin_data = stdin_data.encode() if isinstance(stdin_data, str) else b""
        if self._serving and (self._spawner is None or not self._spawner.alive()):
            self.start_spawner()  # (before the job's clock starts; raises if it cannot)
        t0 = time.monotonic()
        iso = self.isolation
        own_workdir = None
        if not (self.namespaces and iso.get("namespaces") and iso.get("mounts")):
            own_workdir = tempfile.mkdtemp(prefix="prmgym-job-", dir=self.workdir_root)
        # (a judge is replaced after many jobs: what it compiled, e.g. names interned for good on
        # Python 3.12, must not grow without end)
        judge = (self._judge if self._judge_alive() and self._judge["jobs"] < _JUDGE_MAX_JOBS
                 else self._start_judge())
        fds: dict = {}
        fds["prog_r"], judge_w = os.pipe()   # judge -> program
        judge_r, fds["prog_w"] = os.pipe()   # program -> judge
        setup_r, fds["setup_w"] = os.pipe()
        out_r, fds["out_w"] = os.pipe()
        err_r, fds["err_w"] = os.pipe()
        fds["stdin_r"], stdin_w = os.pipe() if stdin_data else (None, None)
        cfg = {"uid": self.uid, "isolation": iso, "namespaces": self.namespaces, "workdir": own_workdir,
               "expose": self.expose, "prepared": self.prepared, "prepared_notes": self.prepared_notes,
               "fresh_tmp": (self.shared_mounts and self._own_pidns is not None
                             and self._fresh_tmp(int(lim["workdir_mb"])))}
        try:
            if self._spawner is not None:
                child = self._spawner.spawn(cfg, lim, fds)
            else:
                child = _DirectChild(self._fork_program(cfg, lim, fds, payload))
        except BaseException:
            for fd in (judge_w, judge_r, setup_r, out_r, err_r, stdin_w):
                if fd is not None:
                    os.close(fd)
            if cfg["fresh_tmp"]:
                self._release_tmp()
            raise
        finally:
            for v in fds.values():
                if v is not None:
                    os.close(v)
        # no process of the job ever holds it: programs are copies of the spawner (which never
        # sees it) or, without one, forks of this server made before it is drawn
        nonce = os.urandom(16).hex()
        sock = judge["sock"]
        job_view = memoryview(payload)
        judge_lost = None
        try:
            head = json.dumps({"nonce": nonce, "size": len(job_view), "memory_mb": int(lim["memory_mb"])}).encode()
            send_fds(sock, struct.pack("<I", len(head)) + head, [judge_w, judge_r])
        except OSError as e:
            judge_lost = f"could not hand the job to the judge: {e}"
            job_view = job_view[:0]
        os.close(judge_w)
        os.close(judge_r)
        judge["jobs"] += 1
        sock_fd = sock.fileno()
        if len(job_view):  # usually all of it fits in the socket's buffer: no turn of the loop for it
            try:
                job_view = job_view[os.write(sock_fd, job_view):]
            except (BlockingIOError, InterruptedError):
                pass
            except OSError:
                job_view = job_view[:0]
        for fd in (out_r, err_r, setup_r) + ((stdin_w,) if stdin_w is not None else ()):
            os.set_blocking(fd, False)
        j = _JobRun()
        j.lim = lim
        j.n_tests = n_tests
        j.stdin_data = stdin_data
        j.t0 = t0
        j.iso = iso
        j.own_workdir = own_workdir
        j.judge = judge
        j.cfg = cfg
        j.child = child
        j.nonce = nonce
        j.sock = sock
        j.job_view = job_view
        j.judge_lost = judge_lost
        j.sock_fd = sock_fd
        j.setup_r = setup_r
        j.out_r = out_r
        j.err_r = err_r
        j.stdin_w = stdin_w
        return j

    def _supervise(self, j: "_JobRun") -> None:
        """Supervision: feed the judge and stdin, read the output (to its cap), take the judge's
        records, and end the program at the deadline, at the output cap, when the judge is lost
        or when it ignores the judge's quit; until both the program and the judge are done."""
        import select

        t0, lim, child, judge = j.t0, j.lim, j.child, j.judge
        sock, sock_fd, job_view, judge_lost = j.sock, j.sock_fd, j.job_view, j.judge_lost
        stdin_data, stdin_w, out_r, err_r = j.stdin_data, j.stdin_w, j.out_r, j.err_r
        nonce = j.nonce
        stdin_view = memoryview(stdin_data)
        out, err, report = bytearray(), bytearray(), bytearray()
        end_marker = MAGIC + b" " + nonce.encode() + b' {"k": "end"'
        cap = int(lim["output_limit"])
        output_exceeded = False
        killed, killed_at = None, 0.0
        # (setup_r is not watched: C writes its one small report and closes the pipe before any
        # untrusted code runs; it is read once C has ended, which saves a wake-up or two per job)
        open_r = {out_r: out, err_r: err}
        deadline = t0 + float(lim["timeout_s"])
        status = None  # the program's wait status
        judge_done = judge_lost is not None  # the judge wrote the end record (or is gone)
        judge_status = None
        ended_at = None
        judged_at = t0
        scan = 0

        def drain() -> None:
            """Take what the judge has written (its records are read lazily: while the program
            runs the server wakes for them only every 0.25 s, see below)."""
            nonlocal judge_done, judge_lost, judged_at, judge_status, scan
            while not judge_done:
                try:
                    chunk = sock.recv(1 << 16)
                except (BlockingIOError, InterruptedError):
                    return
                except OSError:
                    chunk = b""
                if not chunk:
                    judge_status = self.stop_judge()
                    judge_done, judge_lost, judged_at = True, "the judge closed its socket", time.monotonic()
                    return
                if len(report) + len(chunk) <= (64 << 20):
                    report.extend(chunk)
                if report.endswith(b"\n") and report.find(end_marker, max(scan - len(end_marker), 0)) >= 0:
                    judge_done, judged_at = True, time.monotonic()
                scan = len(report)

        while True:
            now = time.monotonic()
            if killed is None and now >= deadline and (status is None or not judge_done):
                killed, killed_at = "timeout", now
                child.kill()
            if killed is not None and not judge_done:
                drain()  # the records of the tests that finished before the kill count
                if not judge_done:
                    judge_status = self.stop_judge()  # it may be inside a test: replace it
                    judge_done, judge_lost, judged_at = True, judge_lost or f"killed ({killed})", now
            if judge_lost and killed is None:  # no judge left to answer the program: end it
                killed, killed_at = "judge_lost", now
                child.kill()
            if status is None and judge_done and killed is None and now - judged_at > 2.0:
                killed, killed_at = "no_exit", now  # the program ignores the judge's quit
                child.kill()
            if status is None and killed is not None and now - killed_at > 10.0:
                break  # the program ignores SIGKILL (stuck in the kernel?): give up on it
            if status is not None and judge_done and (not open_r or now - ended_at > 0.2):
                break  # writers that escaped the kill are not waited for
            rlist = list(open_r)
            if not judge_done:
                # the judge's socket is watched once the program has ended (or once 16 KB of
                # records came: a job with many tests streams them); until then its few writes
                # would each wake the server for nothing. They are drained on every wake-up and
                # at least every 0.25 s, so a program that ignores the judge's quit is noticed.
                if status is not None or killed is not None or len(report) >= (16 << 10):
                    rlist.append(sock_fd)
                if judge["pidfd"] is not None:
                    rlist.append(judge["pidfd"])
            if status is None:
                rlist += child.fds
            wlist = ([sock_fd] if len(job_view) and not judge_done else []) + ([stdin_w] if stdin_w is not None else [])
            if killed is not None or judge_done:
                wait = 0.05
            else:
                wait = max(0.0, deadline - now)
                if status is None:
                    wait = min(wait, 0.25)
            if (status is None and not child.fds) or judge["pidfd"] is None:
                wait = min(wait, 0.005)
            r, w, _ = select.select(rlist, wlist, [], min(wait, 1.0))
            if sock_fd in w:
                try:
                    job_view = job_view[os.write(sock_fd, job_view[:65536]):]
                except (BlockingIOError, InterruptedError):
                    pass
                except OSError:
                    job_view = job_view[:0]
            if stdin_w is not None and stdin_w in w:
                try:
                    stdin_view = stdin_view[os.write(stdin_w, stdin_view[:65536]):]
                except (BlockingIOError, InterruptedError):
                    pass
                except OSError:  # the program closed its stdin
                    stdin_view = stdin_view[:0]
                if not len(stdin_view):
                    os.close(stdin_w)
                    stdin_w = None
            for fd in r:
                if fd not in open_r:
                    continue
                try:
                    chunk = os.read(fd, 1 << 16)
                except (BlockingIOError, InterruptedError):
                    continue
                if not chunk:
                    del open_r[fd]
                    os.close(fd)
                    continue
                target = open_r[fd]
                target += chunk[:max(cap + 1 - (len(out) + len(err)), 0)]
                if len(out) + len(err) > cap and killed is None:
                    output_exceeded, killed, killed_at = True, "output_limit", time.monotonic()
                    child.kill()
            if not judge_done:
                drain()
            if not judge_done and judge["pidfd"] is not None and judge["pidfd"] in r:
                # the judge died (`drain` above has taken its last records)
                judge_status = self.stop_judge()
                judge_done, judge_lost, judged_at = True, "the judge died", time.monotonic()
            if status is None and child.poll(r):
                status, ended_at = (child.status if child.status is not None else -1), time.monotonic()
        j.status = status
        j.killed = killed
        j.judge_status = judge_status
        j.judge_lost = judge_lost
        j.ended_at = ended_at
        j.out = out
        j.err = err
        j.report = report
        j.output_exceeded = output_exceeded
        j.open_r = open_r
        j.stdin_w = stdin_w
        j.job_view = job_view
        j.stdin_view = stdin_view

    def _verdict_of(self, j: "_JobRun") -> dict:
        """Verdict: close the job's pipes, clean up after it (its processes, work dir, mounts,
        IPC objects, a judge that did not finish), and turn the judge's records and the
        program's exit status into the result dict."""
        import shutil

        t0, lim, n_tests, iso = j.t0, j.lim, j.n_tests, j.iso
        own_workdir, judge, cfg, child = j.own_workdir, j.judge, j.cfg, j.child
        nonce, setup_r, status, killed = j.nonce, j.setup_r, j.status, j.killed
        judge_status, judge_lost, ended_at, out = j.judge_status, j.judge_lost, j.ended_at, j.out
        err, report, output_exceeded, open_r = j.err, j.report, j.output_exceeded, j.open_r
        stdin_w, job_view, stdin_view = j.stdin_w, j.job_view, j.stdin_view
        wall = (ended_at or time.monotonic()) - t0
        cap = int(lim["output_limit"])
        for fd in list(open_r):
            os.close(fd)
        try:  # (non-blocking: empty if C never wrote it, or is stuck with the pipe open)
            setup_data = os.read(setup_r, 1 << 16)
        except OSError:
            setup_data = b""
        os.close(setup_r)
        if stdin_w is not None:
            os.close(stdin_w)
        job_view.release()
        stdin_view.release()
        child.close()
        records, tampered = _parse_reports(bytes(report), nonce, n_tests)
        try:
            setup = json.loads(bytes(setup_data)) if setup_data else {}
            setup = setup if isinstance(setup, dict) else {}
        except ValueError:
            setup = {}
        if own_workdir is not None or killed or status != 0:
            # no PID namespace to end the tree, or an abnormal end: kill the program's process
            # group (it has its own session) and what is left of the uid
            _kill_tree(child.pid, self.uid)
        if own_workdir is not None:
            shutil.rmtree(own_workdir, ignore_errors=True)
        if cfg["fresh_tmp"]:
            if status is not None and not child.lost:
                self._empty_tmp()
            else:  # processes of the job may be alive (the spawner was lost, or SIGKILL did not end them)
                self._release_tmp()
            self._clean_ipc()
        if judge_lost is None and (tampered or not any(r["k"] == "end" for r in records)):
            judge_status, judge_lost = self.stop_judge(), "it did not finish the job"
        if not self.persistent_judge and self._judge is not None:
            self.stop_judge()
        self._reap_orphans()
        state, tests_passed, details = _verdict(
            records, tampered, {"program_status": status if status != -1 else None, "killed": killed,
                                "judge_status": judge_status, "judge_lost": judge_lost, "setup": setup,
                                "spawner_lost": child.lost,
                                # (the kernel kills at the hard CPU limit; its clock ticks, so a little early counts)
                                "cpu_limit_hit": child.cpu >= cpu_limits(float(lim["timeout_s"]))[1] - 0.05},
            max(n_tests, 0), output_exceeded)
        truncated = output_exceeded
        stdout = bytes(out)
        stderr = bytes(err)
        if len(stdout) + len(stderr) > cap:
            truncated = True
            stderr = stderr[: max(cap - len(stdout), 0)]
            stdout = stdout[:cap]
        details["isolation"] = {
            "network_namespace": bool(setup.get("pidns") or setup.get("netns") or self.prepared),
            "pid_namespace": bool(setup.get("pidns")),
            "mount_namespace": bool(setup.get("mountns")),
            "readonly_root": bool(setup.get("readonly_root")),
            "uid": self.uid if self.uid is not None else os.getuid(),
        }
        for k in ("namespaces_error", "mounts_error", "netns_error", "readonly_root_error"):
            if k in setup:
                details["isolation"][k] = setup[k]
            elif k in iso:  # what the start-up probe found (e.g. unshare not permitted)
                details["isolation"][k] = iso[k]
        if not self.namespaces:
            details["isolation"]["namespaces_error"] = "disabled (namespaces='off')"
        details["judge"] = {"pid": judge["pid"], "jobs": judge["jobs"]}
        if judge_lost:
            details["judge"]["replaced"] = judge_lost
        if killed:
            details["killed"] = killed
        exit_code = os.waitstatus_to_exitcode(status) if status not in (None, -1) else None
        return {
            "status": state,
            "tests_passed": tests_passed,
            "tests_total": max(n_tests, 0),
            "exit_code": exit_code if (exit_code is not None and exit_code >= 0) else None,
            "signal": -exit_code if (exit_code is not None and exit_code < 0) else None,
            "stdout": stdout.decode("utf-8", "replace"),
            "stderr": stderr.decode("utf-8", "replace"),
            "truncated": truncated,
            "wall_s": round(wall, 6),
            "cpu_s": round(child.cpu, 6),
            "details": details,
        }

    def _infra(self, msg: str, t0: float) -> dict:
        return {"status": "sandbox_error", "tests_passed": 0, "tests_total": 0, "exit_code": None,
                "signal": None, "stdout": "", "stderr": "", "truncated": False,
                "wall_s": time.monotonic() - t0, "cpu_s": 0.0, "details": {"infra": msg}}

    _reap_orphans = staticmethod(_reap_children)  # (the Docker agent's reaper too)
