"""Z: the spawner, a fresh interpreter that forks every program (or a fork of the server made
before any job), and the server's handles on a program (`_DirectChild`, `_SpawnedChild`)."""

from __future__ import annotations

import json
import marshal
import os
import signal
import _socket
import struct
import sys
import time
from .wire import JUDGE_INFRA_EXIT, _close_fds_except, _socketpair, _write_all, recv_fds, send_fds
from .isolation import (
    PR_SET_CHILD_SUBREAPER, PR_SET_PDEATHSIG, _child_alive, _kill_and_reap, _lib, _pidfd_or_none,
    _reap_children, prctl, set_process_name,
)
from .program import _fork_program


class _DirectChild:
    """A program process this server forked itself."""

    def __init__(self, pid: int):
        self.pid, self.status, self.cpu, self.lost = pid, None, 0.0, None
        self.pidfd = _pidfd_or_none(pid)
        self.fds = [self.pidfd] if self.pidfd is not None else []
        self._reaped = False

    def poll(self, ready) -> bool:
        """True once the program has exited (its status and CPU time are then set)."""
        if self._reaped:
            return True
        if self.pidfd is not None and self.pidfd not in ready:
            return False
        try:
            done, st, ru = os.wait4(self.pid, os.WNOHANG)
        except ChildProcessError:
            done, st, ru = self.pid, None, None
        if done:
            self._reaped, self.status = True, st
            self.cpu = (ru.ru_utime + ru.ru_stime) if ru else 0.0
        return self._reaped

    def kill(self) -> None:
        """SIGKILL the program (PID 1 of its namespace: the kernel then kills everything in it)
        and its process group. Its pid is named only while it is not reaped; the group id stays
        valid while members remain."""
        if not self._reaped:
            try:
                self._signal_program()
            except OSError:
                pass
        try:
            os.killpg(self.pid, signal.SIGKILL)
        except OSError:
            pass

    def _signal_program(self) -> None:
        os.kill(self.pid, signal.SIGKILL)

    def close(self) -> None:
        if self.pidfd is not None:
            os.close(self.pidfd)
            self.pidfd = None


class _SpawnedChild(_DirectChild):
    """A program process forked by the spawner: killed through a pidfd the spawner passed us,
    its exit status sent by the spawner, which reaps it. The spawner's two messages (the pid
    with a pidfd, then the exit) are read as they come, in `poll`: the server does not wait
    for the fork before handing the job to the judge; `kill` waits for the pid if need be."""

    def __init__(self, spawner: "_Spawner"):
        self.pid, self.status, self.cpu, self.lost = None, None, 0.0, None
        self.pidfd, self._spawner, self._reaped = None, spawner, False
        self.fds = [spawner.sock.fileno()]

    def _lose(self, why: str) -> None:
        self.lost = why
        self._spawner.stop()  # (closes the socket: no longer one of our fds to watch)
        self._reaped, self.status, self.cpu, self.fds = True, None, 0.0, []

    def _read(self) -> bool:
        """Take one message from the spawner; False if none is there yet."""
        try:
            data, fds = recv_fds(self._spawner.sock, 1 << 12, 1)
        except (BlockingIOError, InterruptedError):
            return False
        except OSError:
            data, fds = b"", []
        if self.pid is None:  # the pid (and its pidfd) first
            if len(data) == _SPAWNED.size:
                (self.pid,) = _SPAWNED.unpack(data)
                self.pidfd = fds[0] if fds else None
                return True
            for fd in fds:
                os.close(fd)
            self._lose("the spawner exited" if not data else f"the spawner broke its protocol ({data[:200]!r})")
            return True
        pid, status, cpu = _EXITED.unpack(data) if len(data) == _EXITED.size else (None, None, 0.0)
        for fd in fds:
            os.close(fd)
        if pid != self.pid:
            self._lose(f"the spawner died or broke its protocol ({data[:200]!r})")
        else:
            self._reaped, self.status, self.cpu = True, status, cpu
        return True

    def poll(self, ready) -> bool:
        if self._reaped or self.fds[0] not in ready:
            return self._reaped
        while not self._reaped and self._read():
            pass
        return self._reaped

    def kill(self) -> None:
        if self.pid is None and not self._reaped:
            import select

            deadline = time.monotonic() + 10.0
            while self.pid is None and not self._reaped:
                left = deadline - time.monotonic()
                if left <= 0 or not select.select(self.fds, [], [], left)[0]:
                    self._lose("the spawner did not answer within 10 s")
                    break
                self._read()
        if self.pid is not None:
            super().kill()

    def _signal_program(self) -> None:  # not our child: only its pidfd names it safely
        if self.pidfd is not None:
            signal.pidfd_send_signal(self.pidfd, signal.SIGKILL)


# The spawner's interpreter (python -I -S -c): loads this module from the server's compiled copy
# (compiling 2000 lines would leave megabytes of freed parser memory in it, and in every program
# it forks) and runs `_spawner_main`.
_SPAWNER_BOOT = """import marshal, os, sys
fd = int(sys.argv[1]); code = marshal.loads(os.pread(fd, os.fstat(fd).st_size, 0)); os.close(fd)
mod = type(sys)("prmgym_harness"); mod.__file__ = "<prmgym harness>"; sys.modules[mod.__name__] = mod
exec(code, mod.__dict__); del code
mod._spawner_main(sys.argv[2:])
"""


# the spawner's replies: the program's pid (with its pidfd), then (pid, wait status, CPU seconds)
_SPAWNED, _EXITED = struct.Struct("<i"), struct.Struct("<iid")

_SO_SNDBUFFORCE = 32  # (Linux; not in the socket module)
_JUDGE_MAX_JOBS = 10000

# job config keys that are the server's settings, not the job's: `_Spawner.spawn` sends them only
# when they differ from what it sent last
_STATIC_CFG = ("uid", "isolation", "namespaces", "expose", "prepared", "prepared_notes")


class _Spawner:
    """The server's spawner process: a fresh interpreter (``python -I -S -c _SPAWNER_BOOT``) that
    the server forks and execs before any job, root like it and in its namespaces, with the
    server's ``sys.path`` and the programs' warm modules (or, if that cannot start before the
    first job, a fork of the server: ``fresh=False``). For each job the server sends it the job's config
    and the program's pipe ends (SCM_RIGHTS, a SOCK_SEQPACKET pair); it forks the program
    (`_fork_program`), answers with the program's pid and a pidfd for it, reaps it and reports
    its exit status and CPU time. It never sees a payload, a record or a secret, and since it was
    exec'd, no memory of the server (which has held them) is in it or in any program: programs
    are copies of this small process (about half the server's memory), which makes each fork
    and exit cheaper."""

    def __init__(self, server: "Server", fresh: bool = True):
        self._static: dict | None = None  # the part of the job config last sent (`spawn`)
        ours, theirs = _socketpair(_socket.SOCK_SEQPACKET)
        if fresh and server._code_fd is None:
            server._code_fd = os.memfd_create("prmgym-harness", os.MFD_CLOEXEC)
            _write_all(server._code_fd, marshal.dumps(compile(server._source, "<prmgym harness>", "exec")))
            server._source = None
            _lib().malloc_trim(0)  # the compiler's freed memory
        argv = [sys.executable, "-I", "-S", "-c", _SPAWNER_BOOT, str(server._code_fd), str(theirs.fileno()),
                str(server._own_pidns if server._own_pidns is not None else -1),
                json.dumps({"path": sys.path, "warm": server.warm})] if fresh else []
        pid = os.fork()
        if pid == 0:
            try:
                ours.close()
                if not fresh:  # a copy of the server made before any job
                    _Spawner._main(server._own_pidns, theirs)
                os.set_inheritable(theirs.fileno(), True)
                os.set_inheritable(server._code_fd, True)
                if server._own_pidns is not None:
                    os.set_inheritable(server._own_pidns, True)
                # (LD_BIND_NOW: the dynamic linker resolves every symbol now, in the spawner, not
                # at first use in each program, where each lookup costs copy-on-write faults; the
                # spawner empties its environment before any program, see `_preset_programs`)
                os.execve(sys.executable, argv, {**os.environ, "LD_BIND_NOW": "1"})
            except OSError as e:  # (the interpreter is not where it was: say so to the server)
                theirs.send(f"exec: {e}".encode()[:512])
            finally:
                os._exit(JUDGE_INFRA_EXIT)
        theirs.close()
        self.pid, self.sock, self.pidfd = pid, ours, _pidfd_or_none(pid)
        import select

        ready = select.select([ours], [], [], 30.0)[0] and ours.recv(600)
        if ready != b"ready":
            self.stop()
            raise RuntimeError("the spawner did not start" + ("" if ready is not False else " within 30 s")
                               + (f": {ready[6:].decode(errors='replace')}" if ready and ready.startswith(b"exec: ")
                                  else " (its error, if any, is on the server's stderr)"))

    @staticmethod
    def _main(own_pidns: int | None, sock) -> None:
        set_process_name("prmgym-spawner")
        parent = os.getppid()
        try:
            prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
            prctl(PR_SET_CHILD_SUBREAPER, 1)  # orphans of programs without a PID namespace come to us
        except OSError:
            pass
        if os.getppid() != parent:
            os._exit(0)
        devnull = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(devnull, fd)
        keep = [0, 1, 2, sock.fileno()] + ([own_pidns] if own_pidns is not None else [])
        _close_fds_except(keep)
        sock.send(b"ready")
        static: dict = {}
        # (the loop runs after every fork, when each page it writes costs a fault: marshal from the
        # server, struct replies, few objects)
        while True:
            data, fds = recv_fds(sock, 1 << 16, 8)
            if not data:
                os._exit(0)
            req = marshal.loads(data)  # from the server, which never runs untrusted code
            static = req.get("static", static)
            names = req["fds"]
            if len(fds) != len(names):
                raise RuntimeError(f"expected {len(names)} descriptors, got {len(fds)}")
            child_fds = dict(zip(names, fds))
            child_fds.setdefault("stdin_r", None)
            cfg = {**static, **req["cfg"]}
            try:
                pid = _fork_program(own_pidns, cfg, req["lim"], child_fds, None)
            finally:
                for fd in fds:
                    os.close(fd)
            pidfd = [fd for fd in (_pidfd_or_none(pid),) if fd is not None]
            send_fds(sock, _SPAWNED.pack(pid), pidfd)
            for fd in pidfd:
                os.close(fd)
            _, status, ru = os.wait4(pid, 0)
            sock.send(_EXITED.pack(pid, status, ru.ru_utime + ru.ru_stime))
            if not cfg["pidns"]:  # (in its own PID namespace nothing of the job outlives it)
                _reap_children()

    def spawn(self, cfg: dict, lim: dict, fds: dict) -> _SpawnedChild:
        names = [k for k, v in fds.items() if v is not None]
        req = {"cfg": {k: v for k, v in cfg.items() if k not in _STATIC_CFG}, "lim": lim, "fds": names}
        static = {k: cfg[k] for k in _STATIC_CFG}
        if static != self._static:  # the server's settings: sent again only when they change
            req["static"] = static
        self.sock.setblocking(True)
        try:
            send_fds(self.sock, marshal.dumps(req), [fds[k] for k in names])
            self._static = marshal.loads(marshal.dumps(static))  # (an exact copy: later changes are noticed)
        except (OSError, ValueError) as e:
            self.stop()
            raise RuntimeError(f"the spawner failed: {e}") from None
        finally:
            if self.sock.fileno() >= 0:
                self.sock.setblocking(False)
        return _SpawnedChild(self)

    def alive(self) -> bool:
        return self.sock.fileno() >= 0 and _child_alive(self.pid, self.pidfd)

    def stop(self) -> None:
        if self.sock.fileno() >= 0:
            self.sock.close()
        _kill_and_reap(self.pid)
        if self.pidfd is not None:
            os.close(self.pidfd)
            self.pidfd = None
