"""The ``serve`` command line: warm-up, the spawner's entry point and `main`."""

from __future__ import annotations

import json
import os
import _socket
import sys
from .wire import JUDGE_INFRA_EXIT
from .isolation import _lib, claim_uid
from .program import _preset_programs
from .spawner import _Spawner
from .server import Server


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
    # The payload needs nothing beside it, and its directory (``python -I`` puts it first on
    # sys.path before Python 3.11, where -I does not yet imply -P) may be under /tmp or /var/tmp, which every job gets as a writable tmpfs that the
    # judge sees: a module a job wrote there would shadow what a test imports, in the judge.
    # So the directory leaves the path, which the judge, the spawner and the programs inherit.
    here = os.path.dirname(os.path.abspath(__file__))
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != here]
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
