"""J: the judge, a long-lived fork of the server that runs the tests (never untrusted code) with
the program's callables as stubs, and reports each step under the job's secret nonce."""

from __future__ import annotations

import builtins
import json
import marshal
import os
import resource
import signal
import _socket
import struct
import time
from .wire import (
    JUDGE_INFRA_EXIT, MAGIC, _MAX_TEXT, _close_fds_except, _read_exact, _recv_frame, _send_frame, _short,
    _write_all, encode_plain, loads_plain, recv_fds, send_trusted,
)
from .isolation import (
    CLONE_NEWNET, PR_SET_DUMPABLE, PR_SET_NO_NEW_PRIVS, PR_SET_PDEATHSIG, _drop_privileges, prctl,
    set_process_name, unshare,
)


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
