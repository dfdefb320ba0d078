"""The in-sandbox harness: runs one untrusted program and decides its verdict outside it.

Standard library only and runnable as a standalone script (``python -I harness.py serve``),
so the same file serves the local backend (a root fork server on the host) and the Docker
backend (a runner inside a container). Nothing here imports prmgym.

Processes of one worker
-----------------------
::

    S  server        long-lived, warm (pre-imported stdlib, gc.freeze), root when available, in a
    |                private read-only mount namespace, an empty network namespace and an IPC
    |                namespace of its own (emptied after every job), with tmpfs mounts on /tmp and
    |                the scratch dirs (kept while jobs leave them empty, else remade). Reads job
    |                frames; per job it makes the work dir /tmp/work, has Z fork C, hands the job
    |                to J, feeds stdin, enforces the wall-clock deadline and the output cap,
    |                decides the verdict from J's records and C's exit status.
    +- J  judge      forked once (and again after any job it could not finish: a timeout, the
    |                output cap, lost records); a uid of its own (neither root nor the jobs'),
    |                non-dumpable, no new privileges, cannot fork. Runs the *tests*; never runs
    |                untrusted code. In S's PID namespace: nothing in a job can see, signal or
    |                trace it.
    +- Z  spawner    a fresh interpreter S starts (fork + exec, ``python -I -S``) before any job:
       |             holds nothing of S's memory. Forks every C, passes S a pidfd, reaps C.
       |             If the fresh interpreter cannot start, Z is a fork of S made before any job:
       |             a serving S never forks programs itself (the Docker agent, which keeps one
       |             judge per job and sweeps its container after each, does).
       +- C program  one per job, forked by Z as PID 1 of a new PID namespace (unshare, fork,
                     setns back); when it exits the kernel ends every process left in the
                     namespace. Drops to the worker's job uid, rlimits, empty environment, no
                     network, cwd = /tmp/work; runs the *candidate code* and answers J's calls
                     over two pipes.

The tests never run in the process that runs the candidate. J compiles the program (a fresh C
would pay copy-on-write faults all over the parser) and sends C the code object; J executes
each test source in a fresh namespace whose ``candidate`` (and every other top-level callable
of the program, e.g. HumanEval's ``encode_cyclic``) is a stub that sends the call's arguments
to C and returns C's result. J's messages to C are `marshal` (C only runs what J sends); what C
sends back is JSON in a tagged form (`encode_plain`), which J decodes with json's scanner and an
object hook that accepts only the tags of exact plain builtin types (None, bool, int, float,
complex, str, bytes, tuple, list, dict, set, frozenset, recursively), so objects whose
``__eq__`` is always true, patched builtins, a patched ``unittest`` or ``assert`` helper in C
cannot influence a comparison made in J, and no byte C writes reaches `marshal` or `pickle` in
the long-lived judge. Arguments are checked to be plain data before they are sent (as
`marshal` they keep their aliasing: ``candidate(x, x)`` gets one list twice). Top-level plain values of the
program (``x = 3``) are copied to the test namespace too. In-place mutation of list/dict/set
arguments is copied back. An exception raised by the candidate is re-raised in J as the builtin
exception of the same name (or ``RemoteError``). A program that exits or dies makes every
remaining test fail.

Protocol (server stdin/stdout; all integers little-endian)
----------------------------------------------------------
* On start the server writes one frame: ``{"hello": PROTOCOL, "uid", "judge_uid", "isolation": {...}}``.
* Request: ``u32 n`` + header JSON (n bytes) + ``u32 m`` + payload JSON (m bytes); the
  ``Server.run(header, payload)`` method takes the same two parts (used by the Docker agent).
  header = ``{"timeout_s", "memory_mb", "output_limit"(bytes), "nproc", "nofile",
  "fsize_mb", "workdir_mb", "n_tests", "stdin": str|null}`` (missing limits take
  `DEFAULT_LIMITS`) or ``{"op": "ping"}``. Build it with `encode_request`.
  payload = ``{"code": str, "tests": [str, ...], "entry_point": str|null}``.
  S never parses the payload: it copies it to J over their socket and zeroes its buffer after
  the job; C zeroes its inherited copy before anything else, so no program finds the tests.
* Response: ``u32 n`` + result JSON with exactly the fields of ``ExecResult``:
  ``status, tests_passed, tests_total, exit_code, signal, stdout, stderr, truncated, wall_s,
  cpu_s, details``.

The per-run secret
------------------
For each job S draws a fresh 128-bit nonce (``os.urandom``) and sends it to J with the job,
over a socket C never had. No process that runs untrusted code ever holds it: C is a copy of Z,
which never sees it (or, without Z, a fork of S made before the nonce is drawn). J writes one
line per event back on that socket, ``start`` at once and the others in as few writes as the
verdict allows (`_Reports`); S reads them once C has ended, and drains them at least every
0.25 s before::

    PRMGYM1 <nonce hex> <json>\n      json.k in {"start", "code", "test", "end"}

(plus ``PRMGYM1 infra {...}`` error text, informational only). S accepts only well-formed lines
carrying this job's nonce, in order: ``start``, ``code``, one ``test`` per expected test
(indices 0..n-1, once each), ``end``. Anything else marks the run as tampered (failed), and a
judge that did not finish a job cleanly is replaced before the next. A job passes only if every
expected test reported success, the ``end`` record is present and the program exited 0 when
dismissed. Stdout is never a channel. ``sandbox_error`` needs J's exit code
`JUDGE_INFRA_EXIT`, J never starting the job, or C failing its setup before any untrusted code
ran (reported on a pipe C closes before it runs the program): none of these can the program
cause.

Statuses: passed, failed, timeout, memory, output_limit, runtime_error, compile_error,
sandbox_error (the harness itself failed; the caller retries once).
"""

from __future__ import annotations

import builtins
import ctypes
import json
import marshal
import os
import resource
import signal
import _socket
import struct
import sys
import time

# select, shutil, tempfile and traceback are imported where they are used: the spawner runs this
# module too, and every module it holds makes every program's fork and exit dearer (each loaded
# extension adds mappings the kernel copies and tears down per job).

PROTOCOL = 1
MAGIC = b"PRMGYM1"
DEFAULT_LIMITS = {
    "timeout_s": 10.0,
    "memory_mb": 512,
    "output_limit": 1 << 20,   # bytes of stdout + stderr
    "nproc": 64,               # processes + threads of the sandbox uid
    "nofile": 128,
    "fsize_mb": 16,            # largest file the program may write
    "workdir_mb": 64,          # size of the private /tmp (tmpfs) when a mount namespace is used
}
PLAIN_TYPES = (type(None), bool, int, float, complex, str, bytes, tuple, list, dict, set, frozenset)
_PLAIN = frozenset(PLAIN_TYPES)
JUDGE_INFRA_EXIT = 70  # the judge (J) exits with this only when the harness itself failed
PROGRAM_SETUP_EXIT = 71  # the program process (C) exits with this when its setup failed (before any untrusted code)
_MAX_TEXT = 4000  # characters of an error message kept in a record

# ---------------------------------------------------------------------------------------------
# libc helpers (ctypes): unshare, mount, prctl
# ---------------------------------------------------------------------------------------------
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


# ---------------------------------------------------------------------------------------------
# small I/O helpers
# ---------------------------------------------------------------------------------------------
def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


def _read_exact(fd: int, n: int) -> bytes:
    chunks, got = [], 0
    while got < n:
        b = os.read(fd, min(n - got, 1 << 20))
        if not b:
            raise EOFError("pipe closed")
        chunks.append(b)
        got += len(b)
    return b"".join(chunks)


def _read_all(fd: int) -> bytes:
    chunks = []
    while True:
        b = os.read(fd, 1 << 16)
        if not b:
            return b"".join(chunks)
        chunks.append(b)


# Unix sockets through the C module: socket.py would bring selectors, select and array into the
# spawner, and from there into every program (more memory and mappings per fork and exit).
def _socketpair(kind: int):
    return _socket.socketpair(_socket.AF_UNIX, kind)


def send_fds(sock, data: bytes, fds) -> None:
    """One message with ``fds`` attached (SCM_RIGHTS)."""
    anc = [(_socket.SOL_SOCKET, _socket.SCM_RIGHTS, struct.pack(f"{len(fds)}i", *fds))] if fds else []
    sock.sendmsg([data], anc)


def recv_fds(sock, bufsize: int, maxfds: int) -> tuple[bytes, list[int]]:
    """One message and the descriptors attached to it (at most ``maxfds``)."""
    data, anc, flags, _addr = sock.recvmsg(bufsize, _socket.CMSG_LEN(maxfds * 4))
    fds: list[int] = []
    for level, kind, cdata in anc:
        if level == _socket.SOL_SOCKET and kind == _socket.SCM_RIGHTS:
            n = len(cdata) // 4
            fds.extend(struct.unpack(f"{n}i", cdata[:n * 4]))
    if flags & (_socket.MSG_TRUNC | _socket.MSG_CTRUNC):
        for fd in fds:
            os.close(fd)
        raise OSError(f"a message on the socket was cut short (more than {bufsize} bytes or {maxfds} descriptors)")
    return data, fds


# Values the program sends the judge are JSON in a tagged form (the judge sends the program
# marshal, which only the program loads): every JSON object on the wire is a one-key tag (``{"t": [...]}`` a tuple, ``{"d": [[k, v], ...]}`` a dict, ``"s"``/``"f"``
# sets, ``"b"`` bytes, ``"c"`` complex, ``"i"`` a big int), and `json.loads` with `_untag` as its
# object hook rebuilds exactly the plain builtin value, rejecting anything else. The judge
# parses what the program wrote only this way, never with `marshal` or `pickle`: the judge
# lives across jobs, so nothing a program sends may be able to corrupt it.
_BIG_INT = 1 << 63
_SCALARS = frozenset((str, float, bool, type(None)))
_SEQ_TAGS = {"t": tuple, "s": set, "f": frozenset}


def encode_plain(value, depth: int = 0):
    """Plain builtin data -> a JSON-able form that `loads_plain` reverses exactly. Raises
    TypeError for anything else (a subclass of a builtin included)."""
    t = type(value)
    if t in _SCALARS:
        return value
    if t is int:
        return value if -_BIG_INT <= value < _BIG_INT else {"i": format(value, "x")}
    if depth > 400:
        raise TypeError("value is nested too deeply")
    d = depth + 1
    if t is list or t is tuple or t is set or t is frozenset:
        items = [v if (type(v) in _SCALARS or (type(v) is int and -_BIG_INT <= v < _BIG_INT))
                 else encode_plain(v, d) for v in value]
        return items if t is list else {"t" if t is tuple else "s" if t is set else "f": items}
    if t is dict:
        return {"d": [[encode_plain(k, d), encode_plain(v, d)] for k, v in value.items()]}
    if t is bytes:
        return {"b": value.hex()}
    if t is complex:
        return {"c": [value.real, value.imag]}
    raise TypeError(f"value of type {t.__name__} is not plain data")


def _untag(obj: dict):
    """`json.loads` object hook: one tagged value (its contents are already decoded)."""
    if len(obj) == 1:
        ((tag, x),) = obj.items()
        if tag in _SEQ_TAGS and type(x) is list:
            return _SEQ_TAGS[tag](x)
        if tag == "d" and type(x) is list:
            out = {}
            for pair in x:
                if type(pair) is not list or len(pair) != 2:
                    raise ValueError("malformed dict entry")
                out[pair[0]] = pair[1]
            return out
        if tag == "b" and type(x) is str:
            return bytes.fromhex(x)
        if tag == "c" and type(x) is list and len(x) == 2 and all(type(v) in (int, float) for v in x):
            return complex(x[0], x[1])
        if tag == "i" and type(x) is str and len(x) <= (1 << 22):
            return int(x, 16)
    raise ValueError("malformed value")


_json_str = json.encoder.encode_basestring_ascii  # str -> a quoted JSON string (C)
_DECODER = json.JSONDecoder(object_hook=_untag)  # built once: json.loads(..., object_hook=) builds one per call
_ENCODER = json.JSONEncoder(separators=(",", ":"))


# the C scanner and encoder behind `_DECODER` and `_ENCODER`, called directly: the json module's
# Python wrappers around them cost more than they do on the small messages of a call
_SCAN = json.scanner.c_make_scanner(_DECODER) if json.scanner.c_make_scanner else None
_C_ENCODE = (json.encoder.c_make_encoder(None, _ENCODER.default, _json_str, None, ":", ",", False, False, True)
             if json.encoder.c_make_encoder else None)


def dumps_compact(obj) -> bytes:
    """``obj`` (already in the tagged form) -> compact JSON, as ``_ENCODER`` writes it."""
    if _C_ENCODE is None:
        return _ENCODER.encode(obj).encode()
    return "".join(_C_ENCODE(obj, 0)).encode()


def loads_plain(data) -> object:
    """JSON text (str or UTF-8 bytes) in the tagged form -> the plain value. Raises
    ValueError/TypeError (e.g. an unhashable set element or dict key) on anything else."""
    text = data if type(data) is str else bytes(data).decode("utf-8")
    if _SCAN is None:
        return _DECODER.decode(text)
    try:
        value, end = _SCAN(text, 0)
    except StopIteration as e:
        raise ValueError(f"malformed JSON at character {e.value}") from None
    if end != len(text):
        raise ValueError(f"extra data after the JSON value at character {end}")
    return value


def _send_frame(fd: int, data: bytes) -> None:
    """``u32 n`` + the n bytes of ``data`` (`_recv_frame` reads it)."""
    _write_all(fd, struct.pack("<I", len(data)) + data)


def send_msg(fd: int, msg: list) -> None:
    _send_frame(fd, dumps_compact(msg))


def send_trusted(fd: int, msg: list) -> None:
    """J -> C only: a message in `marshal` (C reads it with `recv_trusted`; J never loads what
    C sends with anything but `recv_msg`). It can carry a code object: J compiles the program."""
    _send_frame(fd, marshal.dumps(msg))


def recv_trusted(fd: int) -> list:
    """C's side of `send_trusted`."""
    return marshal.loads(_recv_frame(fd, 1 << 40))


def recv_msg(fd: int, limit: int = 1 << 30) -> list:
    """One message: a JSON array whose first item is the operation name (a str)."""
    msg = loads_plain(_recv_frame(fd, limit))
    if type(msg) is not list or not msg or type(msg[0]) is not str:
        raise ValueError("not a message")
    return msg


def _recv_frame(fd: int, limit: int) -> bytes:
    """The body of one ``u32 n`` + n bytes frame. The two sides take turns (one message in
    flight), so a small message usually arrives in one read."""
    data = os.read(fd, 1 << 16)
    if len(data) < 4:
        if not data:
            raise EOFError("pipe closed")
        data += _read_exact(fd, 4 - len(data))
    (n,) = struct.unpack("<I", data[:4])
    if n > limit:
        raise ValueError(f"message of {n} bytes exceeds the limit of {limit}")
    body = data[4:]
    if len(body) < n:
        body += _read_exact(fd, n - len(body))
    elif len(body) > n:
        raise ValueError("bytes after the message: the other side broke the turn-taking")
    return body


def _close_fds_except(keep) -> None:
    keep = sorted(set(keep))
    lo = 0
    for fd in keep:
        if fd > lo:
            os.closerange(lo, fd)
        lo = fd + 1
    os.closerange(lo, 1 << 16)


def _short(text: str) -> str:
    return text if len(text) <= _MAX_TEXT else text[:_MAX_TEXT] + "...[truncated]"


# ---------------------------------------------------------------------------------------------
# C: the program process: running the candidate and answering the judge
# ---------------------------------------------------------------------------------------------
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


# ---------------------------------------------------------------------------------------------
# J: the judge (a long-lived fork of S; never runs untrusted code)
# ---------------------------------------------------------------------------------------------
class RemoteError(Exception):
    """The program raised an exception whose type is not a builtin exception."""


class ProgramDied(BaseException):
    """The program process exited or broke the call protocol; no further test can run."""


class _Diverged(BaseException):
    """A replayed test (`_explain_failure`) made a call its first run did not make."""


class _Judge:
    def __init__(self, rpc_in: int, rpc_out: int, limit: int):
        self.rpc_in, self.rpc_out, self.limit = rpc_in, rpc_out, limit
        self.dead: str | None = None
        self.errors: list[str] = []  # exception type names reported by the program
        # the current test's calls, (request, answer) as the bytes that crossed the pipes, and
        # while a failed test is replayed, the calls left to answer from them (`_explain_failure`)
        self.log: list = []
        self.replay: list | None = None

    def recv(self, raw: list | None = None) -> list:
        try:
            data = _recv_frame(self.rpc_in, self.limit)
            msg = loads_plain(data)
            if type(msg) is not list or not msg or type(msg[0]) is not str:
                raise ValueError("not a message")
            if raw is not None:
                raw.append(data)
            return msg
        except MemoryError:
            raise
        except EOFError as e:
            self.dead = self.dead or f"program stopped answering ({e})"
        except BaseException as e:  # noqa: BLE001  (malformed data, an over-long message, ...)
            self.dead = self.dead or f"program broke the call protocol ({type(e).__name__}: {_short(str(e))})"
        raise ProgramDied(self.dead)

    def call(self, name: str, args: tuple, kwargs: dict):
        if self.dead:
            raise ProgramDied(self.dead)
        try:
            if kwargs and any(type(k) is not str for k in kwargs):
                raise TypeError("keyword names must be str")
            encode_plain(args)  # (raises unless plain data: what marshal sends must be no more)
            if kwargs:
                encode_plain(kwargs)
            data = marshal.dumps(["call", name, args, kwargs])
        except (ValueError, TypeError, RecursionError) as e:
            raise TypeError(f"arguments passed to the program must be plain data: {e}") from None
        if self.replay is not None:  # the program is not asked again: its first answer is decoded anew
            if not self.replay or self.replay[0][0] != data:
                raise _Diverged
            msg = loads_plain(self.replay.pop(0)[1])
        else:
            try:
                _send_frame(self.rpc_out, data)
            except OSError:
                self.dead = "program stopped answering (pipe closed)"
                raise ProgramDied(self.dead) from None
            raw: list = []
            msg = self.recv(raw)  # already decoded: plain data only, or the recv failed
            self.log.append((data, raw[0]))
        if msg[0] == "ret" and len(msg) == 3:
            if msg[2] is not None:
                _sync_args(args, msg[2])
            return msg[1]
        if msg[0] == "exc" and len(msg) == 3 and type(msg[1]) is str and type(msg[2]) is str:
            if self.replay is None:
                self.errors.append(msg[1][:100])
            cls = getattr(builtins, msg[1], None)
            if isinstance(cls, type) and issubclass(cls, Exception):
                raise cls(msg[2])
            raise RemoteError(f"{msg[1][:100]}: {msg[2]}")
        self.dead = "program broke the call protocol"
        raise ProgramDied(self.dead)

    def stub(self, name: str):
        judge = self

        def remote(*args, **kwargs):
            return judge.call(name, args, kwargs)

        remote.__name__ = remote.__qualname__ = name
        return remote


def _sync_args(args: tuple, new) -> None:
    if type(new) is not tuple or len(new) != len(args):
        return
    for old, fresh in zip(args, new):
        if type(old) is list and type(fresh) is list:
            old[:] = fresh
        elif type(old) is dict and type(fresh) is dict:
            old.clear()
            old.update(fresh)
        elif type(old) is set and type(fresh) is set:
            old.clear()
            old.update(fresh)


class _Reports:
    """The judge's records of one job, written to the server in as few writes (server wake-ups)
    as the verdict allows. ``start`` goes out at once, before the program gets its code: from
    then on a death of the judge is not infrastructure (the program may have caused it).
    Everything before test i goes out before test i begins, so a job killed inside a test keeps
    the results of the tests before it; the rest goes with ``end``, which is written before the
    program is dismissed. (While the program runs the server does not wake for these writes.)"""

    def __init__(self, fd: int, nonce: str):
        self.fd, self.prefix, self.pending = fd, MAGIC + b" " + nonce.encode() + b" ", []

    def add(self, **record) -> None:
        self.pending.append(self.prefix + json.dumps(record).encode() + b"\n")

    def flush(self) -> None:
        if self.pending:
            data, self.pending = b"".join(self.pending), []
            _write_all(self.fd, data)


_TEST_CODE: dict = {}  # (index, source) -> code object, in the long-lived judge
_TEST_CODE_MAX = 512
_EXPLAIN = "__prmgym_assert__"  # the name of `_assert_message` in each test's namespace


def _assert_message(left, op: str, right, left_src: str, right_src: str) -> str:
    """The message of a failed bare ``assert`` (see `_explained_asserts`), as pytest writes it:
    ``assert 5 == 6 (where 5 = candidate(2, 3))``. The values are the test's own or plain data
    the program sent (decoded by `loads_plain`); their text is cut short, and a value whose
    text cannot be made (an int too long to print) is named by its type."""
    import reprlib

    shown = reprlib.Repr()
    shown.maxstring = shown.maxother = shown.maxlong = 160
    shown.maxlist = shown.maxtuple = shown.maxset = shown.maxfrozenset = shown.maxdict = 12

    def text(v) -> str:
        try:
            return shown.repr(v)
        except BaseException:  # noqa: BLE001
            return f"<{type(v).__name__}>"

    lt = text(left)
    parts = [f"assert {lt}" if op is None else f"assert {lt} {op} {text(right)}"]
    wheres = [f"{t} = {src}" for t, src, v in ((lt, left_src, left), (op and text(right), right_src, right))
              if src and t and src != t]
    return _short(parts[0] + (f" (where {', '.join(wheres)})" if wheres else ""))


def _explained_asserts(src: str, filename: str):
    """The test compiled with each bare ``assert`` (one without a message) rewritten so that a
    failure names the compared values: ``assert a OP b`` becomes ``l = a; r = b; if not (l OP
    r): raise AssertionError(message)``, any other ``assert x`` ``v = x; if not v: raise ...``.
    Each operand is evaluated exactly once, in the order Python evaluates it, so the program
    gets the same calls as before. None when the source cannot be rewritten (it is then
    compiled as it is, and a syntax error reported as before)."""
    import ast

    ops = {ast.Eq: "==", ast.NotEq: "!=", ast.Lt: "<", ast.LtE: "<=", ast.Gt: ">", ast.GtE: ">=",
           ast.Is: "is", ast.IsNot: "is not", ast.In: "in", ast.NotIn: "not in"}

    lines = src.splitlines(keepends=True)

    def seg(e) -> str:  # (ast.get_source_segment splits the whole source on every call)
        if e.lineno != e.end_lineno:
            return ""
        line = lines[e.lineno - 1].encode()  # (offsets are in UTF-8 bytes)
        return line[e.col_offset:e.end_col_offset].decode("utf-8", "replace")

    def rewrite(node, n: int) -> list:
        at = {"lineno": node.lineno, "col_offset": node.col_offset, "end_lineno": node.end_lineno,
              "end_col_offset": node.end_col_offset}  # (set here: ast.fix_missing_locations walks the whole tree)
        load, store = ast.Load(), ast.Store()
        left, right = ast.Name(f"__prmgym_l{n}", load, **at), ast.Name(f"__prmgym_r{n}", load, **at)
        t = node.test
        if isinstance(t, ast.Compare) and len(t.ops) == 1 and type(t.ops[0]) in ops:
            values = [(left.id, t.left), (right.id, t.comparators[0])]
            cond = ast.Compare(left, t.ops, [right], **at)
            args = [left, ast.Constant(ops[type(t.ops[0])], **at), right, ast.Constant(seg(t.left), **at),
                    ast.Constant(seg(t.comparators[0]), **at)]
        else:
            values, cond = [(left.id, t)], left
            args = [left, ast.Constant(None, **at), ast.Constant(None, **at), ast.Constant(seg(t), **at),
                    ast.Constant("", **at)]
        out = [ast.Assign([ast.Name(name, store, **at)], value, **at) for name, value in values]
        message = ast.Call(ast.Name(_EXPLAIN, load, **at), args, [], **at)
        error = ast.Call(ast.Name("AssertionError", load, **at), [message], [], **at)
        out.append(ast.If(ast.UnaryOp(ast.Not(), cond, **at), [ast.Raise(error, None, **at)], [], **at))
        return out

    count = [0]

    def walk(body: list) -> list:  # statements only: an assert is never inside an expression
        out = []
        for node in body:
            if isinstance(node, ast.Assert) and node.msg is None:
                count[0] += 1
                out.extend(rewrite(node, count[0]))
                continue
            for field in ("body", "orelse", "finalbody", "handlers", "cases"):
                inner = getattr(node, field, None)
                if inner and isinstance(inner[0], ast.stmt):
                    setattr(node, field, walk(inner))
                elif inner:  # except handlers, match cases: their bodies
                    for h in inner:
                        h.body = walk(h.body)
            out.append(node)
        return out

    try:
        tree = ast.parse(src, filename)
        tree.body = walk(tree.body)
        if not count[0]:
            return None
        return compile(tree, filename, "exec", dont_inherit=True)
    except (SyntaxError, ValueError, TypeError, RecursionError, MemoryError):
        return None


def _compiled_test(src: str, i: int):
    """A test's code object, compiled once per judge: RL samples many completions per problem
    (a GRPO group), whose jobs carry the same tests. Code objects are immutable and every run
    gets a fresh namespace, so sharing one between jobs shares no state."""
    key = (i, src)
    code = _TEST_CODE.get(key)
    if code is None:
        code = compile(src, f"<test {i}>", "exec", dont_inherit=True)
        if len(src) > (1 << 16):
            return code  # big tests are not kept
        if len(_TEST_CODE) >= _TEST_CODE_MAX:
            del _TEST_CODE[next(iter(_TEST_CODE))]  # the oldest
        _TEST_CODE[key] = code
    return code


def _describe(e: BaseException) -> str:
    """``Type: message`` of a test's exception, shortened. Formatting it can itself fail (the
    message may hold a value of the program's, e.g. an int too long to print): the judge must
    not fail with it."""
    try:
        return _short(f"{type(e).__name__}: {e}")
    except BaseException:  # noqa: BLE001
        return f"{type(e).__name__} (its message could not be formatted)"


def _compile_program(source: str) -> tuple:
    """The program's code object and the text of the compiler's warnings (as C would have
    printed them on its stderr), or ``(("compile_error", type, message), "")``. Compiled here in
    the long-lived judge, where the parser's memory is already its own; like the tests, without
    the harness's own ``from __future__`` features."""
    import warnings

    global _PRISTINE_WARNING_FILTERS
    if _PRISTINE_WARNING_FILTERS is None:  # (the first job: no test has run in this judge yet)
        _PRISTINE_WARNING_FILTERS = list(warnings.filters)
    shown: list = []
    size = [0]

    def show(message, category, filename, lineno, file=None, line=None) -> None:
        if size[0] < _MAX_TEXT:  # (a program can make the compiler warn without end)
            text = warnings.formatwarning(message, category, filename, lineno, None)
            shown.append(text)
            size[0] += len(text)

    try:
        with warnings.catch_warnings():
            warnings.filters[:] = _PRISTINE_WARNING_FILTERS  # (tests may have changed them)
            warnings.showwarning = show
            code = compile(source, "<program>", "exec", dont_inherit=True)
        return code, _short("".join(shown))
    except BaseException as e:  # SyntaxError, ValueError (null bytes), RecursionError, MemoryError
        try:
            return ("compile_error", type(e).__name__, _short(str(e))), ""
        except BaseException:  # noqa: BLE001
            return ("compile_error", type(e).__name__, "(the message could not be formatted)"), ""


_PRISTINE_WARNING_FILTERS: list | None = None


def _explain_failure(judge: _Judge, src: str, i: int, ns: dict) -> str | None:
    """The values behind a test's failed bare ``assert``, found by running the test once more
    with its asserts rewritten (`_explained_asserts`) and every call to the program answered
    from the first run's answers, which the judge kept as the bytes it received (decoded anew,
    so nothing the first run changed leaks into the second). The program is not asked again
    and runs nothing more. Returns the message of the same failure, or None when the second
    run took another path (another call, another outcome: e.g. unseeded random inputs)."""
    code = _explained_asserts(src, f"<test {i}>")
    if code is None:
        return None
    ns[_EXPLAIN] = _assert_message
    judge.replay = list(judge.log)
    try:
        exec(code, ns)
    except AssertionError as e:
        if not judge.replay and e.args and type(e.args[0]) is str and e.args[0].startswith("assert "):
            return e.args[0]
    except BaseException:  # noqa: BLE001  (_Diverged, or the test failed otherwise this time)
        pass
    finally:
        judge.replay = None
    return None


def _judge_job(job: dict, nonce: str, report_fd: int, rpc_in: int, rpc_out: int, limit: int) -> None:
    """Judge one job: send the code to the program, run each test here with the program's
    callables as stubs, report every step on ``report_fd``, then dismiss the program. The
    program's exit status is collected by the server (from the spawner, which forked it)."""
    reports = _Reports(report_fd, nonce)
    reports.add(k="start")
    reports.flush()
    judge = _Judge(rpc_in, rpc_out, limit)
    tests = job.get("tests") or []
    entry = job.get("entry_point")
    ns_base: dict = {}
    values: dict = {}
    ready = False
    compiled, warned = _compile_program(job["code"])
    try:
        if type(compiled) is not tuple:
            try:
                send_trusted(rpc_out, ["code", compiled, warned])
            except OSError as e:
                judge.dead = f"program stopped answering ({e})"
                raise ProgramDied(judge.dead) from None
            msg = judge.recv()
        else:  # ("compile_error", type, message): C is dismissed below without running anything
            msg = list(compiled)
        op = msg[0]
        if op == "ready" and len(msg) == 2 and type(msg[1]) is dict:
            ready = True
            for name, spec in msg[1].items():
                if type(name) is not str:
                    continue
                if spec == "callable":
                    ns_base[name] = judge.stub(name)
                elif type(spec) is tuple and len(spec) == 1 and type(spec[0]) is str:
                    values[name] = spec[0]
            reports.add(k="code", ok=True)
        elif op in ("compile_error", "runtime_error") and len(msg) == 3 and type(msg[1]) is str and type(msg[2]) is str:
            reports.add(k="code", ok=False, kind=op, type=msg[1][:100], msg=_short(msg[2]))
        elif op == "exited0" and not tests:  # a script that ends with sys.exit(0): fine when there is nothing to test
            reports.add(k="code", ok=True, exited=True)
        elif op == "exited0":
            reports.add(k="code", ok=False, kind="runtime_error", type="SystemExit",
                    msg="the program exited (sys.exit(0)) before the tests could run")
        else:
            judge.dead = "program broke the call protocol"
            raise ProgramDied(judge.dead)
    except ProgramDied as e:
        if tests:
            reports.add(k="code", ok=False, kind="died", type="ProgramDied", msg=str(e))
        else:  # no tests: the program's exit status decides (the server has it)
            reports.add(k="code", ok=True, exited=True)
    except MemoryError:
        reports.add(k="code", ok=False, kind="runtime_error", type="MemoryError",
                msg="the judge ran out of memory reading the program's namespace")
    if ready:
        if entry:
            ns_base["candidate"] = judge.stub(entry)

        def fresh_ns() -> dict:
            ns = {"__name__": "__main__", "__builtins__": builtins}
            for name, text in values.items():
                try:
                    ns[name] = loads_plain(text)  # a fresh copy for every test
                except Exception:  # noqa: BLE001
                    pass
            ns.update(ns_base)
            return ns

        for i, src in enumerate(tests):
            ns = fresh_ns()
            reports.flush()
            judge.log = []
            t_test = time.monotonic()
            try:
                exec(_compiled_test(src, i), ns)
                reports.add(k="test", i=i, ok=True)
            except BaseException as e:  # noqa: BLE001  (a test's outcome, whatever it is)
                text = None
                if type(e) is AssertionError and not e.args and not judge.dead and time.monotonic() - t_test < 1.0:
                    text = _explain_failure(judge, src, i, fresh_ns())
                reports.add(k="test", i=i, ok=False, type=type(e).__name__,
                            msg=_short(f"AssertionError: {text}") if text else _describe(e))
    else:
        for i in range(len(tests)):
            reports.add(k="test", i=i, ok=False, type="NotRun", msg="the program did not load")
    reports.add(k="end", died=judge.dead, program_errors=judge.errors[:50])
    reports.flush()
    try:  # dismiss the program; the server collects its exit status
        send_trusted(rpc_out, ["quit"])
    except OSError:
        pass


def _judge_process(sock_fd: int, uid: int | None, isolate_net: bool) -> None:
    """J: the worker's judge, forked once from the server (and again after a job it could not
    finish). Never returns. It drops to a uid of its own (not the jobs' uid), turns
    non-dumpable and cannot fork; it never runs untrusted code. Each job arrives on ``sock_fd``
    as a header carrying the two pipe ends to that job's program (SCM_RIGHTS) and the payload;
    the records go back on the same socket."""
    code = JUDGE_INFRA_EXIT
    nonce = "-"
    try:
        set_process_name("prmgym-judge")
        os.setsid()
        devnull = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(devnull, fd)
        _close_fds_except([0, 1, 2, sock_fd])
        os.chdir("/")
        if isolate_net:  # the server did not already move itself into an empty network namespace
            try:
                unshare(CLONE_NEWNET)
            except OSError:
                pass
        parent = os.getppid()
        # what `_explained_asserts` and `_assert_message` import, loaded while the judge can still
        # read the Python installation (its own uid may not, e.g. under /root without namespaces)
        import ast  # noqa: F401
        import reprlib  # noqa: F401

        _drop_privileges(uid)
        for res, value in ((resource.RLIMIT_NPROC, 0), (resource.RLIMIT_FSIZE, 0), (resource.RLIMIT_CORE, 0)):
            try:
                resource.setrlimit(res, (value, value))
            except (ValueError, OSError):
                pass
        prctl(PR_SET_NO_NEW_PRIVS, 1)
        prctl(PR_SET_DUMPABLE, 0)
        try:
            prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        except OSError:
            pass
        if os.getppid() != parent:  # the server died before the death signal was armed
            os._exit(0)
        signal.signal(signal.SIGPIPE, signal.SIG_IGN)
        sock = _socket.socket(fileno=sock_fd)
        page = os.sysconf("SC_PAGE_SIZE")
        while True:
            data, fds = recv_fds(sock, 4, 2)
            if not data:
                os._exit(0)  # the server closed the socket
            if len(data) < 4:
                data += _read_exact(sock_fd, 4 - len(data))
            (n,) = struct.unpack("<I", data)
            header = json.loads(_read_exact(sock_fd, n))
            nonce = header["nonce"]
            if len(fds) != 2:
                raise RuntimeError(f"expected the program's two pipe ends, got {len(fds)} descriptors")
            rpc_out, rpc_in = fds
            job = json.loads(_read_exact(sock_fd, int(header["size"])))
            with open("/proc/self/statm", "rb") as f:
                vm = int(f.read().split()[0]) * page
            try:  # room for the program's values on top of what the judge already maps
                resource.setrlimit(resource.RLIMIT_AS, (vm + (int(header["memory_mb"]) << 20),
                                                        resource.getrlimit(resource.RLIMIT_AS)[1]))
            except (ValueError, OSError):
                pass
            _judge_job(job, nonce, sock_fd, rpc_in, rpc_out, int(header["memory_mb"]) << 20)
            del job
            os.close(rpc_in)
            os.close(rpc_out)
    except BaseException as e:  # a harness failure: report it as infrastructure
        try:
            import traceback

            os.write(sock_fd, MAGIC + b" infra " + json.dumps({"k": "infra", "msg": _short(
                "".join(traceback.format_exception(e)))}).encode() + b"\n")
        except BaseException:
            pass
    os._exit(code)


# ---------------------------------------------------------------------------------------------
# isolation pieces used by S, J and C
# ---------------------------------------------------------------------------------------------
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


# ---------------------------------------------------------------------------------------------
# C: the program process (a fork of Z, or of S in the Docker agent): isolation setup, then the program
# ---------------------------------------------------------------------------------------------
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


# ---------------------------------------------------------------------------------------------
# S: the server
# ---------------------------------------------------------------------------------------------
def _verdict(records: list, tampered: str | None, status: dict, n_tests: int,
             output_exceeded: bool) -> tuple[str, int, dict]:
    """Decide (status, tests_passed, details) from the judge's records, the program's wait
    status (collected by the server) and what the server saw of the judge and the setup."""
    details: dict = {}
    by_kind: dict = {}
    test_ok = [False] * n_tests
    for rec in records:
        by_kind.setdefault(rec["k"], []).append(rec)
    for rec in by_kind.get("test", []):
        if rec.get("ok") is True:
            test_ok[rec["i"]] = True
        elif len(details.setdefault("test_errors", [])) < 20:
            details["test_errors"].append({"test": rec["i"], "type": rec.get("type"), "msg": rec.get("msg")})
    passed_n = sum(test_ok)
    end = (by_kind.get("end") or [None])[0]
    code = (by_kind.get("code") or [None])[0]
    ps = status.get("program_status")
    prog_exit = os.waitstatus_to_exitcode(ps) if ps is not None else None
    js = status.get("judge_status")
    judge_exit = os.waitstatus_to_exitcode(js) if js is not None else None
    setup = status.get("setup") or {}
    if tampered:
        details["tampered"] = tampered
    if end:
        details["program_errors"] = end.get("program_errors", [])
        if end.get("died"):
            details["program_died"] = end["died"]
    if output_exceeded:
        return "output_limit", passed_n, details
    if status.get("killed") == "timeout":
        return "timeout", passed_n, details
    if status.get("spawner_lost"):  # the process that forks programs died: nothing the program did
        details["infra"] = status["spawner_lost"]
        return "sandbox_error", passed_n, details
    if setup.get("ok") is not True:  # the program process failed before any untrusted code ran
        details["infra"] = setup.get("error") or f"the program process ended during its setup (exit {prog_exit})"
        return "sandbox_error", passed_n, details
    if judge_exit == JUDGE_INFRA_EXIT or (not tampered and not by_kind.get("start")):
        # the judge's own failure (an exit code the program cannot cause), or it never began the job
        details["infra"] = ((by_kind.get("infra") or [{}])[0].get("msg") or status.get("judge_lost")
                            or "the judge process failed")
        return "sandbox_error", passed_n, details
    if tampered:
        return "failed", passed_n, details
    if prog_exit == -signal.SIGXCPU or (prog_exit == -signal.SIGKILL and status.get("cpu_limit_hit")):
        return "timeout", passed_n, details
    if end is None:
        details["judge_lost"] = status.get("judge_lost")
        if code is None:
            return "runtime_error", passed_n, details
        return "failed", passed_n, details
    errors = set(end.get("program_errors") or [])
    if code and code.get("exited"):  # nothing to test: the program's own exit status is the verdict
        if prog_exit == 0 and n_tests == 0:
            return "passed", 0, details
        details["error"] = {"kind": "runtime_error", "type": "Exit",
                            "msg": f"the program ended with exit status {prog_exit}"}
        return "runtime_error", 0, details
    if code and not code.get("ok"):
        details["error"] = {"kind": code.get("kind"), "type": code.get("type"), "msg": code.get("msg")}
        if code.get("kind") == "compile_error":
            return "compile_error", 0, details
        if code.get("type") == "MemoryError" or "MemoryError" in errors:
            return "memory", 0, details
        return "runtime_error", 0, details
    clean = prog_exit == 0 and not end.get("died")
    if all(test_ok) and clean and len(by_kind.get("test", [])) == n_tests:
        return "passed", passed_n, details
    if "MemoryError" in errors:
        return "memory", passed_n, details
    return "failed", passed_n, details


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
            _write_all(server._code_fd, marshal.dumps(compile(server._source, os.path.abspath(__file__), "exec")))
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
        # this file's source, read now (enter_namespaces may hide its path): the spawner runs it
        with open(os.path.abspath(__file__), "rb") as f:
            self._source = f.read()
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
        import select
        import shutil
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
        wall = (ended_at or time.monotonic()) - t0
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


def _wipe(buf) -> None:
    """Zero a payload buffer in place (bytearray / writable memoryview, or bytes via its C buffer)."""
    if isinstance(buf, (bytearray, memoryview)) and not (isinstance(buf, memoryview) and buf.readonly):
        buf[:] = bytes(len(buf))
        return
    if isinstance(buf, bytes) and len(buf) > 1:
        ctypes.pythonapi.PyBytes_AsString.restype = ctypes.c_void_p
        ctypes.pythonapi.PyBytes_AsString.argtypes = [ctypes.py_object]
        ctypes.memset(ctypes.pythonapi.PyBytes_AsString(buf), 0, len(buf))  # only in a forked child's copy
        return
    if isinstance(buf, memoryview) and buf.readonly and isinstance(buf.obj, bytes):
        _wipe(buf.obj)


def _parse_reports(data: bytes, nonce: str, n_tests: int) -> tuple[list, str | None]:
    """Accept only well-formed, nonce'd records in the expected order."""
    records: list = []
    tampered = None
    expect_test = 0
    stage = "start"
    for line in data.split(b"\n"):
        if not line:
            continue
        parts = line.split(b" ", 2)
        if len(parts) == 3 and parts[0] == MAGIC and parts[1] == b"infra":  # message only; the
            # verdict sandbox_error needs the judge's exit code JUDGE_INFRA_EXIT
            try:
                rec = json.loads(parts[2])
                if rec.get("k") == "infra":
                    records.append({"k": "infra", "msg": str(rec.get("msg", ""))})
                    continue
            except ValueError:
                pass
        if len(parts) != 3 or parts[0] != MAGIC or parts[1] != nonce.encode():
            tampered = tampered or "a report line without the run's secret"
            continue
        try:
            rec = json.loads(parts[2])
        except ValueError:
            tampered = tampered or "a malformed report line"
            continue
        k = rec.get("k") if isinstance(rec, dict) else None
        if k == "start" and stage == "start":
            stage = "code"
        elif k == "code" and stage == "code":
            stage = "test"
        elif k == "test" and stage == "test" and rec.get("i") == expect_test and expect_test < n_tests:
            expect_test += 1
        elif k == "end" and stage == "test" and expect_test == n_tests:
            stage = "done"
        else:
            tampered = tampered or f"an out-of-order report record ({k!r})"
            continue
        records.append(rec)
    return records, tampered


# ---------------------------------------------------------------------------------------------
# client helpers (used by the backends on the host side)
# ---------------------------------------------------------------------------------------------
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


def encode_request(job: dict, limits: dict) -> bytes:
    """Frame one job for a server. ``job`` has code/tests/entry_point/stdin; ``limits`` the header."""
    tests = list(job.get("tests") or [])
    header = dict(limits)
    header["n_tests"] = len(tests)
    header["stdin"] = job.get("stdin")  # the program's input: S feeds it, so it travels in the header
    payload = json.dumps({"code": job["code"], "tests": tests, "entry_point": job.get("entry_point")}).encode()
    h = json.dumps(header).encode()
    return struct.pack("<I", len(h)) + h + struct.pack("<I", len(payload)) + payload


# What the tests (in the judge) and the programs may import for free. Each module the spawner
# holds makes every program's fork and exit dearer (its objects are pages the kernel copies and
# tears down; an extension module adds mappings, about 50 us per job each here), so rarely used
# ones (hashlib, decimal, datetime, statistics, cmath, array, dataclasses) are left to import, and
# programs do not get the modules that mostly tests use (random, copy, threading: HumanEval's
# tests import random and copy, its solutions neither; a program that does pays about 1 ms).
_WARM_MODULES = ("math", "re", "collections", "itertools", "functools", "heapq", "bisect", "string",
                 "random", "typing", "json", "copy", "operator", "io", "abc", "contextlib", "struct",
                 "enum", "textwrap", "numbers", "traceback", "threading")
_PROGRAM_WARM_MODULES = tuple(m for m in _WARM_MODULES if m not in ("random", "copy", "threading"))


_SERVE_USAGE = """usage: harness.py serve [--uid UID | --uid-base UID] [--judge-uid UID]
                        [--namespaces {auto,on,off}] [--workdir-root DIR] [--no-warm] [--cpu N]

Answer job frames on stdin/stdout (the fork server of one LocalSandbox worker).
  --uid UID          uid for jobs when running as root
  --uid-base UID     instead of --uid: take the first free uid from UID on (a lock per uid, held
                     while this server lives), so servers of different sandboxes never share one
  --judge-uid UID    uid for the judge (default: with --uid-base a second free uid, else --uid)
  --namespaces M     auto (use them when permitted), on (fail without them) or off
  --workdir-root DIR where work dirs go when there is no mount namespace
  --no-warm          do not pre-import common stdlib modules
  --cpu N            run this server, its judge and its jobs on CPU N only (sched_setaffinity)
"""


def _parse_serve_args(argv: list[str]) -> dict:
    """The ``serve`` command line. Parsed by hand: argparse would load shutil and its compression
    modules into the server, and from there into the spawner and every program."""
    if not argv or argv[0] != "serve":
        raise SystemExit(_SERVE_USAGE + "\nerror: the only command is 'serve'")
    opts = {"uid": None, "uid_base": None, "judge_uid": None, "namespaces": "auto", "workdir_root": None,
            "no_warm": False, "cpu": None}
    ints = {"--uid": "uid", "--uid-base": "uid_base", "--judge-uid": "judge_uid", "--cpu": "cpu"}
    args = list(argv[1:])
    while args:
        flag = args.pop(0)
        if flag in ("-h", "--help"):
            sys.stdout.write(_SERVE_USAGE)
            raise SystemExit(0)
        if flag == "--no-warm":
            opts["no_warm"] = True
            continue
        if flag not in ints and flag not in ("--namespaces", "--workdir-root"):
            raise SystemExit(_SERVE_USAGE + f"\nerror: unknown option {flag!r}")
        if not args:
            raise SystemExit(_SERVE_USAGE + f"\nerror: {flag} needs a value")
        value = args.pop(0)
        if flag in ints:
            try:
                opts[ints[flag]] = int(value)
            except ValueError:
                raise SystemExit(_SERVE_USAGE + f"\nerror: {flag} takes an integer, got {value!r}") from None
        elif flag == "--namespaces":
            if value not in ("auto", "on", "off"):
                raise SystemExit(_SERVE_USAGE + f"\nerror: --namespaces must be auto, on or off, got {value!r}")
            opts["namespaces"] = value
        else:
            opts["workdir_root"] = value
    return opts


def _warm_up(modules: tuple = _WARM_MODULES) -> None:
    import importlib

    for name in modules:
        try:
            importlib.import_module(name)
        except ImportError:
            pass
    # the first compile() of an interpreter builds the ~120 AST node types (about 2 ms): once
    # here, not in every job
    compile("pass", "<warm>", "exec")


def _spawner_main(argv: list[str]) -> int:
    sock_fd, pidns_fd, conf = int(argv[0]), int(argv[1]), json.loads(argv[2])
    sys.argv[:] = [""]  # what programs see (not this bootstrap's arguments)
    sys.path[:] = conf["path"]
    import site  # -S: no path changes, no .pth files; the builtins site would add
    site.setquit(); site.setcopyright(); site.sethelper()
    if conf["warm"]:
        _warm_up(_PROGRAM_WARM_MODULES)
    _preset_programs()
    import gc
    gc.collect()
    gc.freeze()
    _lib().malloc_trim(0)
    sock = _socket.socket(fileno=sock_fd)
    try:
        _Spawner._main(pidns_fd if pidns_fd >= 0 else None, sock)
    finally:
        os._exit(JUDGE_INFRA_EXIT)


def main(argv: list[str] | None = None) -> int:
    args = _parse_serve_args(sys.argv[1:] if argv is None else list(argv))
    if not args["no_warm"]:
        _warm_up()
    uid, judge_uid = args["uid"], args["judge_uid"]
    if uid is None and args["uid_base"] is not None and os.getuid() == 0:
        uid, _lock_fd = claim_uid(args["uid_base"])  # the locks live as long as this process
        if judge_uid is None:  # the judge gets a uid of its own: no job can signal it or count against it
            judge_uid, _judge_lock_fd = claim_uid(args["uid_base"])
    server = Server(uid, args["namespaces"], args["workdir_root"], judge_uid=judge_uid)
    server.warm = not args["no_warm"]
    if args["cpu"] is not None:
        try:  # inherited by the judge, the spawner and every job process
            os.sched_setaffinity(0, {args["cpu"]})
            server.isolation["cpu"] = args["cpu"]
        except OSError as e:
            server.isolation["cpu_error"] = str(e)
    server.enter_namespaces()
    server.serve()
    return 0


if __name__ == "__main__":
    sys.exit(main())
