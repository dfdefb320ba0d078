"""C: the program process. Its isolation setup (namespaces, mounts, uid, rlimits) and the loop that
runs the candidate's code and answers the judge's calls; `_fork_program` makes one."""

from __future__ import annotations

import builtins
import ctypes
import json
import marshal
import os
import signal
import sys
from .wire import (
    PROGRAM_SETUP_EXIT, _BIG_INT, _PLAIN, _SCALARS, _close_fds_except, _short, _wipe, _write_all,
    dumps_compact, encode_plain, recv_trusted, send_msg,
)
from .isolation import (
    CLONE_NEWIPC, CLONE_NEWNET, CLONE_NEWNS, CLONE_NEWPID, MS_NODEV, MS_NOEXEC, MS_NOSUID, PR_SET_NAME,
    PR_SET_NO_NEW_PRIVS, PR_SET_PDEATHSIG, SCRATCH_DIRS, _drop_privileges, _lib, _set_limits, mount, prctl,
    prepare_mounts, set_process_name, unshare,
)


def _to_plain(value, depth: int = 0):
    """Best-effort conversion of well-known numeric containers (numpy) to plain data, in C.

    Whatever C sends is validated again in the judge, so this only widens what honest programs may
    return; it cannot make a dishonest value compare equal."""
    t = type(value)
    if t in _PLAIN and t not in (tuple, list, dict, set, frozenset):
        return value
    if depth > 200:
        return value
    if t is list:
        return [_to_plain(v, depth + 1) for v in value]
    if t is tuple:
        return tuple(_to_plain(v, depth + 1) for v in value)
    if t is dict:
        return {_to_plain(k, depth + 1): _to_plain(v, depth + 1) for k, v in value.items()}
    if t in (set, frozenset):
        return t(_to_plain(v, depth + 1) for v in value)
    if getattr(t, "__module__", "").split(".")[0] == "numpy" and hasattr(value, "tolist"):
        return value.tolist()
    return value


def _program_main(rpc_in: int, rpc_out: int) -> None:
    """Runs in C after privileges are dropped. Never returns. J sends the program compiled
    (compiling in this fresh process would cost it copy-on-write faults all over the parser),
    with the text of the warnings the compiler gave; or dismisses C when it did not compile."""
    try:
        msg = recv_trusted(rpc_in)
    except BaseException:
        os._exit(3)
    if msg[0] != "code":
        _program_quit()
    _, compiled, warned = msg
    ns = {"__name__": "__main__", "__builtins__": builtins}
    if warned:
        try:
            sys.stderr.write(warned)
        except BaseException:
            pass
    try:
        exec(compiled, ns)
    except SystemExit as e:
        if e.code is None or e.code == 0:
            send_msg(rpc_out, ["exited0"])
            _program_wait_quit(rpc_in)
        _program_failed(rpc_in, rpc_out, e)
    except BaseException as e:
        _program_failed(rpc_in, rpc_out, e)
    _program_serve(ns, rpc_in, rpc_out)


def _program_failed(rpc_in: int, rpc_out: int, e: BaseException) -> None:
    """The program raised at top level: show the traceback, tell the judge, wait to be dismissed."""
    import traceback

    tb = _short("".join(traceback.format_exception(type(e), e, e.__traceback__.tb_next)))
    try:
        sys.stderr.write(tb)
        sys.stderr.flush()
    except BaseException:
        pass
    send_msg(rpc_out, ["runtime_error", type(e).__name__, tb])
    _program_wait_quit(rpc_in)


_MUTABLE = (list, dict, set)
_NOT_PLAIN = ("the program returned a value that is not plain data "
              "(None/bool/int/float/complex/str/bytes/tuple/list/dict/set/frozenset)")


def _program_serve(ns: dict, rpc_in: int, rpc_out: int) -> None:
    names = {}
    for name, value in list(ns.items()):
        if not isinstance(name, str) or name.startswith("__"):
            continue
        if callable(value) and not isinstance(value, type(sys)):
            names[name] = "callable"
            continue
        try:
            text = dumps_compact(encode_plain(_to_plain(value))).decode()
            if len(text) < (1 << 20):
                names[name] = (text,)
        except BaseException:
            pass
    send_msg(rpc_out, ["ready", encode_plain(names)])
    while True:
        try:
            msg = recv_trusted(rpc_in)
        except BaseException:
            os._exit(4)
        if msg[0] == "quit":
            _program_quit()
        try:
            _, name, args, kwargs = msg
            # in-place changes of list/dict/set arguments are copied back; noticed by comparing
            # marshal.dumps before and after
            mutable = any(type(a) in _MUTABLE for a in args)
            before = marshal.dumps(args) if mutable else None
            result = ns[name](*args, **kwargs)
            try:
                t = type(result)
                value = (result if t in _SCALARS or (t is int and -_BIG_INT <= result < _BIG_INT)
                         else encode_plain(_to_plain(result)))
                after = encode_plain(args) if mutable and marshal.dumps(args) != before else None
            except (TypeError, ValueError):
                raise TypeError(_NOT_PLAIN) from None
            reply = ["ret", value, after]
        except BaseException as e:  # includes SystemExit from sys.exit() inside the candidate
            reply = ["exc", type(e).__name__, _short(str(e))]
        try:
            send_msg(rpc_out, reply)
        except BaseException:
            os._exit(5)


def _program_wait_quit(rpc_in: int) -> None:
    try:
        while recv_trusted(rpc_in)[0] != "quit":
            pass
    except BaseException:
        os._exit(4)
    _program_quit()


def _program_quit() -> None:
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except BaseException:
            pass
    os._exit(0)


def _job_stdio() -> None:
    """Point sys.stdin/stdout/stderr at fds 0-2 (now the job's), line-buffered. The server's own
    stream objects already wrap those fds and were never used (it speaks through os.read and
    os.write), so they are reused: building new ones costs page faults in every job."""
    for fd, name, mode in ((0, "stdin", "r"), (1, "stdout", "w"), (2, "stderr", "w")):
        stream = getattr(sys, name)
        try:
            if stream.fileno() != fd:
                raise ValueError
            if fd:
                stream.reconfigure(line_buffering=True)
        except (AttributeError, ValueError, OSError):
            setattr(sys, name, open(fd, mode, closefd=False, buffering=1 if fd else -1))


def _program_signals_and_stdio() -> None:
    for s in (signal.SIGINT, signal.SIGTERM, signal.SIGALRM, signal.SIGCHLD):
        signal.signal(s, signal.SIG_DFL)
    _job_stdio()


_PROGRAM_PRESET: dict | None = None


def _preset_programs() -> None:
    """In the exec'd spawner, once: apply to itself what every program it forks would otherwise
    set up again after the fork (each costs copy-on-write faults there): an empty environment,
    no_new_privs (the spawner never execs), default signal dispositions and line-buffered
    stdout/stderr (never written by the spawner). The programs inherit all of it."""
    global _PROGRAM_PRESET
    os.environ.clear()
    prctl(PR_SET_NO_NEW_PRIVS, 1)
    _program_signals_and_stdio()
    _PROGRAM_PRESET = {"name": ctypes.create_string_buffer(b"prmgym-program")}


def _program_process(cfg: dict, lim: dict, fds: dict, payload) -> None:
    """C: the program process of one job (forked by Z, or by S in the Docker agent). Never returns.

    When the host allows it, it was forked as PID 1 of a new PID namespace. When the server has
    prepared the worker's mounts (``fresh_tmp``), C only enters the work dir; otherwise, as root,
    C gives itself new mount and IPC namespaces and a fresh tmpfs work dir, mounts a /proc that
    shows only the job, writes what it applied on the setup pipe, then drops to the job's uid, sets
    its rlimits, clears its environment and runs the program (`_program_main`). The setup pipe
    is closed before any untrusted code runs; if the setup fails, C reports why there and
    exits, and the job is an infrastructure failure (`sandbox_error`)."""
    notes: dict = {}
    setup_w = fds["setup_w"]
    preset = _PROGRAM_PRESET  # what the spawner already applied to itself (`_preset_programs`)
    try:
        if preset:
            _lib().prctl(PR_SET_NAME, preset["name"], 0, 0, 0)
        else:
            set_process_name("prmgym-program")
        os.setsid()  # a session and process group of its own
        _wipe(payload)  # our copy only: the program must not find the tests in memory
        iso = cfg["isolation"]
        use_ns = bool(cfg["pidns"])
        use_mounts = use_ns and iso.get("mounts")
        prepared = bool(cfg.get("prepared"))  # S already sits in a private read-only mount ns + empty net ns
        workdir = cfg.get("workdir")
        # fresh: S mounted this job's /tmp and scratch dirs in its own mount namespace, and its IPC
        # namespace is the worker's own, emptied after every job: nothing to unshare here
        fresh = bool(cfg.get("fresh_tmp"))
        if use_ns and not fresh:
            try:
                unshare(CLONE_NEWNS | CLONE_NEWIPC | (0 if prepared else CLONE_NEWNET))
            except OSError as e:
                use_ns = use_mounts = False
                notes["namespaces_error"] = str(e)
        elif cfg.get("pidns_error"):
            notes["namespaces_error"] = cfg["pidns_error"]
        if not use_ns and cfg["namespaces"] and iso.get("netns") and not prepared:
            try:
                unshare(CLONE_NEWNET)
                notes["netns"] = True
            except OSError as e:
                notes["netns_error"] = str(e)
        if use_mounts and fresh:
            notes.update(cfg.get("prepared_notes") or {})
            workdir = "/tmp/work"
        elif use_mounts:
            try:
                if prepared:
                    notes.update(cfg.get("prepared_notes") or {})
                else:
                    prepare_mounts(cfg["expose"], notes)
                mount("tmpfs", "/tmp", "tmpfs", MS_NOSUID | MS_NODEV,
                      f"size={int(lim['workdir_mb'])}m,nr_inodes=4096,mode=1777")
                for d in SCRATCH_DIRS:
                    if os.path.isdir(d) and not os.path.islink(d):
                        mount("tmpfs", d, "tmpfs", MS_NOSUID | MS_NODEV, "size=1m,nr_inodes=256,mode=1777")
                workdir = "/tmp/work"
                os.mkdir(workdir, 0o700)
                try:  # C is PID 1 of the new namespace: a /proc that shows only the job
                    mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
                except OSError:
                    pass
            except OSError as e:
                notes["mounts_error"] = str(e)
                use_mounts = False
        if workdir is None:
            raise OSError("no work directory: mounts failed and the server made none")
        if cfg["uid"] is not None and not fresh:  # (S made a fresh work dir for the job's uid)
            os.chown(workdir, cfg["uid"], cfg["uid"])
        notes.update(pidns=use_ns, mountns=bool(use_mounts))
        os.chdir(workdir)
        # (a /dev/null of its own: one shared open file would carry flags and flock()s between jobs)
        os.dup2(fds["stdin_r"] if fds.get("stdin_r") is not None else os.open(os.devnull, os.O_RDONLY), 0)
        os.dup2(fds["out_w"], 1)
        os.dup2(fds["err_w"], 2)
        rpc_in, rpc_out = fds["prog_r"], fds["prog_w"]
        _close_fds_except([0, 1, 2, rpc_in, rpc_out, setup_w])
        if not preset:
            os.environ.clear()
        _set_limits(lim, float(lim["timeout_s"]))
        _drop_privileges(cfg["uid"])
        if not preset:
            prctl(PR_SET_NO_NEW_PRIVS, 1)
        # (non-dumpable, as dropping root left it: its /proc/self/mem, which holds freed copies of
        # the server's memory, stays closed to the program; its forks that do not exec are then
        # hidden from the job's /proc like every process the job's uid may not trace)
        _lib().prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)  # dies with the server (best effort)
        if not preset:
            _program_signals_and_stdio()
        notes["ok"] = True
        _write_all(setup_w, dumps_compact(notes))  # (json's C encoder: few objects touched in C)
        os.close(setup_w)
    except BaseException as e:
        try:
            import traceback

            os.write(setup_w, json.dumps({"ok": False, "error": _short("".join(traceback.format_exception(e))),
                                          **notes}).encode())
        except BaseException:
            pass
        os._exit(PROGRAM_SETUP_EXIT)
    _program_main(rpc_in, rpc_out)
    os._exit(0)


def _reset_pidns(own_pidns: int) -> None:
    if _lib().setns(own_pidns, CLONE_NEWPID) != 0:
        # our next children would land in a dead job's namespace: this process cannot go on
        e = ctypes.get_errno()
        try:
            os.write(2, f"prmgym sandbox: setns back to its PID namespace failed: {os.strerror(e)}\n".encode())
        finally:
            os._exit(1)


def _fork_program(own_pidns: int | None, cfg: dict, lim: dict, fds: dict, payload) -> int:
    """Fork C, as PID 1 of a new PID namespace when the host allows it; returns its pid."""
    cfg["pidns"], cfg["pidns_error"] = False, None
    if own_pidns is not None:
        try:
            unshare(CLONE_NEWPID)  # our next child is PID 1 of a new namespace
            cfg["pidns"] = True
        except OSError as e:
            cfg["pidns_error"] = str(e)
    try:
        pid = os.fork()
    except BaseException:
        if cfg["pidns"]:
            _reset_pidns(own_pidns)
        raise
    if pid == 0:
        try:
            _program_process(cfg, lim, fds, payload)
        finally:
            os._exit(PROGRAM_SETUP_EXIT)
    if cfg["pidns"]:
        _reset_pidns(own_pidns)
    return pid
