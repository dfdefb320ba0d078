"""The wire: limits and constants, the framed messages between the harness's processes, the
plain-data encoding the judge accepts from a program, and `encode_request` for the host side."""

from __future__ import annotations

import ctypes
import json
import marshal
import os
import _socket
import struct


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


def encode_request(job: dict, limits: dict) -> bytes:
    """Frame one job for a server. ``job`` has code/tests/entry_point/stdin; ``limits`` the header."""
    tests = list(job.get("tests") or [])
    header = dict(limits)
    header["n_tests"] = len(tests)
    header["stdin"] = job.get("stdin")  # the program's input: S feeds it, so it travels in the header
    payload = json.dumps({"code": job["code"], "tests": tests, "entry_point": job.get("entry_point")}).encode()
    h = json.dumps(header).encode()
    return struct.pack("<I", len(h)) + h + struct.pack("<I", len(payload)) + payload
