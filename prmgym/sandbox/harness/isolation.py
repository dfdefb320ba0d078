"""Isolation pieces used by S, J and C: libc calls (unshare, mount, prctl), privileges and
rlimits, the mount allowlist, the start-up probe, killing and reaping, the servers' uid locks."""

from __future__ import annotations

import ctypes
import json
import os
import resource
import signal
import time
from .wire import _read_all


CLONE_NEWNS, CLONE_NEWIPC, CLONE_NEWNET, CLONE_NEWPID = 0x00020000, 0x08000000, 0x40000000, 0x20000000
MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_BIND, MS_REC, MS_PRIVATE = 2, 4, 8, 4096, 16384, 1 << 18
MNT_DETACH = 2
PR_SET_PDEATHSIG, PR_SET_DUMPABLE, PR_SET_CHILD_SUBREAPER, PR_SET_NO_NEW_PRIVS = 1, 4, 36, 38
PR_SET_NAME = 15

_libc = None


def _lib():
    global _libc
    if _libc is None:
        try:
            _libc = ctypes.CDLL("libc.so.6", use_errno=True)
        except OSError:
            from ctypes import util  # (imports shutil, subprocess, tempfile: only when libc.so.6 is not found)

            _libc = ctypes.CDLL(util.find_library("c"), use_errno=True)
    return _libc


def _check(ret: int, what: str) -> None:
    if ret != 0:
        e = ctypes.get_errno()
        raise OSError(e, f"{what}: {os.strerror(e)}")


def unshare(flags: int) -> None:
    _check(_lib().unshare(flags), "unshare")


def mount(src: str | None, target: str, fstype: str | None, flags: int, data: str | None = None) -> None:
    enc = lambda s: None if s is None else s.encode()  # noqa: E731
    _check(_lib().mount(enc(src), enc(target), enc(fstype), ctypes.c_ulong(flags), enc(data)), f"mount {target}")


def umount(target: str, flags: int = MNT_DETACH) -> None:
    _check(_lib().umount2(target.encode(), ctypes.c_int(flags)), f"umount {target}")


SCRATCH_DIRS = ("/dev/shm", "/var/tmp", "/run/lock", "/run/shm")  # world-writable: private tmpfs per job
_SYS_mount_setattr, _AT_RECURSIVE, _MOUNT_ATTR_RDONLY, _AT_FDCWD = 442, 0x8000, 0x1, -100


def mount_setattr_rdonly(path: str) -> None:
    """Make ``path`` and every mount below it read-only (mount_setattr(2), Linux >= 5.12)."""
    attr = (ctypes.c_uint64 * 4)(_MOUNT_ATTR_RDONLY, 0, 0, 0)
    ret = _lib().syscall(ctypes.c_long(_SYS_mount_setattr), ctypes.c_int(_AT_FDCWD), path.encode(),
                         ctypes.c_uint(_AT_RECURSIVE), ctypes.byref(attr), ctypes.c_size_t(32))
    _check(ret, f"mount_setattr {path}")


def prctl(option: int, arg: int = 0) -> None:
    _check(_lib().prctl(ctypes.c_int(option), ctypes.c_ulong(arg), ctypes.c_ulong(0), ctypes.c_ulong(0),
                        ctypes.c_ulong(0)), f"prctl({option})")


def set_process_name(name: str) -> None:
    """Name this process in ``ps``/``top``/``perf`` (prctl PR_SET_NAME; 15 bytes kept). Best effort."""
    buf = ctypes.create_string_buffer(name.encode()[:15])  # prctl copies it; NUL-terminated
    try:
        prctl(PR_SET_NAME, ctypes.addressof(buf))
    except OSError:
        pass


def _drop_privileges(uid: int | None) -> None:
    if uid is None:
        return
    os.setgroups([])
    os.setresgid(uid, uid, uid)
    os.setresuid(uid, uid, uid)


def _setl(res: int, value: int, hard_value: int | None = None) -> None:
    """Soft limit ``value``, hard limit ``hard_value`` (default: the same)."""
    hard_value = value if hard_value is None else hard_value
    try:
        resource.setrlimit(res, (value, hard_value))
    except (ValueError, OSError):  # above the hard limit (not root): the hard limit
        soft, hard = resource.getrlimit(res)
        if hard != resource.RLIM_INFINITY:
            value, hard_value = min(value, hard), min(hard_value, hard)
        resource.setrlimit(res, (value, hard_value))


def cpu_limits(timeout_s: float) -> tuple[int, int]:
    """The program's RLIMIT_CPU (soft, hard) in seconds: a backstop a second past the wall-clock
    deadline (which the server enforces, and which a single-threaded program cannot outrun, so
    the deadline wins that race), SIGXCPU at the soft limit, SIGKILL a second later. A program
    ended by either timed out (`_verdict`), also when its threads outran the wall clock."""
    soft = int(timeout_s + 0.999) + 1
    return soft, soft + 1


def _set_limits(lim: dict, cpu_s: float) -> None:
    _setl(resource.RLIMIT_AS, int(lim["memory_mb"]) << 20)
    _setl(resource.RLIMIT_CPU, *cpu_limits(cpu_s))
    _setl(resource.RLIMIT_FSIZE, int(lim["fsize_mb"]) << 20)
    _setl(resource.RLIMIT_NOFILE, int(lim["nofile"]))
    _setl(resource.RLIMIT_NPROC, int(lim["nproc"]))
    _setl(resource.RLIMIT_CORE, 0)
    _setl(resource.RLIMIT_MSGQUEUE, 0)  # no POSIX message queues (SysV IPC objects are removed after each job)


# An allowlist, not a blocklist: every top-level directory that is not part of the operating
# system (a checkout in /farm/ci, data in /old_root, ...) and every directory of /var but the
# scratch ones is covered by an empty tmpfs; only the Python installation is bound back.
SYSTEM_DIRS = frozenset(("/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/usr", "/etc", "/dev",
                         "/proc", "/sys", "/run", "/tmp", "/var"))
VAR_KEEP = frozenset(("/var/tmp", "/var/run", "/var/lock"))


def host_data_dirs(root: str = "/") -> list[str]:
    """The directories a job must not read: all of ``root``'s subdirectories outside
    ``SYSTEM_DIRS``, and those of ``/var`` outside ``VAR_KEEP``. Symlinks are skipped (their
    targets are judged by their own paths)."""
    out = []
    for parent, keep in ((root, SYSTEM_DIRS), (os.path.join(root, "var"), VAR_KEEP)):
        try:
            names = os.listdir(parent)
        except OSError:
            continue
        for name in names:
            d = os.path.join(parent, name)
            key = "/" + os.path.relpath(d, root)
            if key not in keep and os.path.isdir(d) and not os.path.islink(d):
                out.append(d)
    return sorted(out)


def _hidden_ancestor(path: str, hide=frozenset()) -> str | None:
    """The highest ancestor of ``path`` that is in ``hide`` or that other users cannot traverse."""
    parts = os.path.abspath(path).split(os.sep)
    for i in range(2, len(parts) + 1):
        p = os.sep.join(parts[:i]) or os.sep
        if p in hide:
            return p
        try:
            if not os.stat(p).st_mode & 0o001:
                return p
        except OSError:
            return None
    return None


def _expose(paths: list[str], stage: str, hide=()) -> None:
    """In a private mount namespace: put an empty tmpfs over every directory of ``hide`` and
    over each non-traversable ancestor of ``paths``, then bind-mount only ``paths`` back (e.g.
    /root/.pyenv/... under /root 0700, or a virtualenv under /home)."""
    hide = frozenset(os.path.abspath(d) for d in hide)
    paths = [os.path.abspath(p) for p in paths if os.path.isdir(p)]
    groups: dict[str, list[str]] = {}
    for d in hide:  # hide these unless a needed path is the directory itself or above it
        if (os.path.isdir(d) and not os.path.islink(d)
                and not any(p == d or d.startswith(p.rstrip(os.sep) + os.sep) for p in paths)):
            groups.setdefault(d, [])
    for p in paths:
        top = _hidden_ancestor(p, hide)
        if top and top != p and (top not in hide or top in groups):
            groups.setdefault(top, []).append(p)
    n = 0
    for top, inner in sorted(groups.items()):
        inner = [p for p in inner if not any(p != q and p.startswith(q + os.sep) for q in inner)]
        staged = []
        for p in inner:
            s = os.path.join(stage, f"s{n}")
            n += 1
            os.mkdir(s)
            mount(p, s, None, MS_BIND | MS_REC)
            staged.append((p, s))
        mount("tmpfs", top, "tmpfs", MS_NOSUID | MS_NODEV, "mode=0755,size=1m")
        for p, s in staged:
            os.makedirs(p, exist_ok=True)
            mount(s, p, None, MS_BIND | MS_REC)
            umount(s)
            os.rmdir(s)


def prepare_mounts(expose: list[str], notes: dict) -> None:
    """In a fresh mount namespace: make it private, hide non-traversable directories except the
    ``expose`` paths, and remount the whole tree read-only (noted in ``notes``)."""
    mount(None, "/", None, MS_REC | MS_PRIVATE)
    mount("tmpfs", "/tmp", "tmpfs", MS_NOSUID | MS_NODEV, "size=1m,mode=0700")
    stage = "/tmp/.stage"
    os.mkdir(stage, 0o700)
    _expose(expose, stage, host_data_dirs())
    umount("/tmp")
    try:  # the whole tree read-only; jobs mount fresh writable tmpfs where writing is expected
        mount_setattr_rdonly("/")
        notes["readonly_root"] = True
    except OSError as e:
        notes["readonly_root_error"] = str(e)


def probe_isolation(uid: int | None) -> dict:
    """What this host allows: namespaces, uid switch. Runs the checks in a throwaway child."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        info = {}
        try:
            unshare(CLONE_NEWNS | CLONE_NEWNET | CLONE_NEWPID | CLONE_NEWIPC)
            info["namespaces"] = True
        except OSError as e:
            info["namespaces"] = False
            info["namespaces_error"] = str(e)
            try:
                unshare(CLONE_NEWNET)
                info["netns"] = True
            except OSError:
                info["netns"] = False
        if info["namespaces"]:
            try:
                mount(None, "/", None, MS_REC | MS_PRIVATE)
                mount("tmpfs", "/tmp", "tmpfs", MS_NOSUID | MS_NODEV, "size=1m")
                info["mounts"] = True
            except OSError as e:
                info["mounts"] = False
                info["mounts_error"] = str(e)
        try:
            _drop_privileges(uid)
            info["uid"] = os.getuid()
        except OSError as e:
            info["uid"] = os.getuid()
            info["uid_error"] = str(e)
        os.write(w, json.dumps(info).encode())
        os._exit(0)
    os.close(w)
    data = _read_all(r)
    os.close(r)
    os.waitpid(pid, 0)
    return json.loads(data or b"{}")


def _kill_tree(pid: int | None, uid: int | None) -> None:
    """Kill the job's process group (``pid`` is its reaped leader: the group id stays valid
    while members remain; None if the spawner was lost before it told the pid) and, when the
    job has a uid of its own and we are root, every process of that uid (``kill(-1)`` as that
    uid, repeated until a /proc scan finds none). With a PID namespace the program is its PID 1,
    so killing it ends everything in the namespace."""
    try:
        if pid is not None:
            os.killpg(pid, signal.SIGKILL)
    except OSError:
        pass
    if uid is not None and os.getuid() == 0 and uid != 0:
        for _ in range(20):
            k = os.fork()
            if k == 0:
                try:
                    os.setresuid(uid, uid, uid)
                    os.kill(-1, signal.SIGKILL)  # every process of this uid (not us, not init)
                except BaseException:
                    pass
                os._exit(0)
            os.waitpid(k, 0)
            time.sleep(0.0005)
            _reap_children()  # killed orphans of the job are re-parented to us (subreaper)
            if not _live_processes_of(uid):
                break


def _live_processes_of(uid: int) -> list[int]:
    """Pids whose real uid is ``uid`` and that are not zombies (a /proc scan)."""
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/status", "rb") as f:
                text = f.read(2048)
        except OSError:
            continue
        state = uids = None
        for line in text.split(b"\n"):
            if line.startswith(b"State:"):
                state = line.split()[1:2]
            elif line.startswith(b"Uid:"):
                uids = line.split()[1:2]
                break
        if uids and int(uids[0]) == uid and state != [b"Z"]:
            found.append(int(name))
    return found


def _pidfd_or_none(pid: int) -> int | None:
    """A pidfd for our unreaped child ``pid`` (None where the kernel has no pidfd_open)."""
    try:
        return os.pidfd_open(pid)
    except OSError:
        return None


def _child_alive(pid: int, pidfd: int | None) -> bool:
    """Whether our child ``pid`` is still running (reaps nothing when a pidfd answers)."""
    if pidfd is not None:
        import select

        return not select.select([pidfd], [], [], 0)[0]
    try:
        return os.waitpid(pid, os.WNOHANG)[0] == 0
    except ChildProcessError:
        return False


def _kill_and_reap(pid: int) -> int | None:
    """SIGKILL our unreaped child ``pid`` and reap it; its wait status (None if already reaped)."""
    try:
        os.kill(pid, signal.SIGKILL)
    except OSError:
        pass
    try:
        return os.waitpid(pid, 0)[1]
    except ChildProcessError:
        return None


def _reap_children() -> None:
    while True:
        try:
            if os.waitpid(-1, os.WNOHANG)[0] == 0:
                return
        except ChildProcessError:
            return




UID_LOCK_DIR = "/run/prmgym-sandbox-uids"


def claim_uid(base: int, span: int = 10000, lock_dir: str | None = None) -> tuple[int, int]:
    """Take the first uid in ``[base, base + span)`` that no other live server holds.

    Each uid has a lock file in a root-only directory; the server keeps an exclusive ``flock`` on
    it for its lifetime (the kernel drops it when the process dies, however it dies). Returns
    ``(uid, fd)``; keep ``fd`` open. The fd is close-on-exec and closed in every job process."""
    import fcntl

    if lock_dir is None and os.path.isdir("/run"):
        lock_dir = UID_LOCK_DIR
    elif lock_dir is None:
        import tempfile

        lock_dir = os.path.join(tempfile.gettempdir(), "prmgym-sandbox-uids")
    os.makedirs(lock_dir, mode=0o700, exist_ok=True)
    for uid in range(base, base + span):
        fd = os.open(os.path.join(lock_dir, f"{uid}.lock"), os.O_CREAT | os.O_RDWR | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return uid, fd
        except OSError:
            os.close(fd)
    raise RuntimeError(f"no free sandbox uid in [{base}, {base + span}): too many sandbox servers running")
