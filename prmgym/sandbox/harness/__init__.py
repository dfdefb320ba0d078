"""The in-sandbox harness: runs one untrusted program and decides its verdict outside it.

Standard library only. A package of parts (``wire``, ``isolation``, ``program``, ``judge``,
``verdict``, ``spawner``, ``server``, ``main``), joined into one self-contained module, the
payload (``payload.source()``), that runs as a standalone script (``python -I harness.py
serve``): the same payload serves the local backend (a root fork server on the host, started from
the file ``payload.path()`` writes at start-up) and the Docker backend (``/opt/prmgym/harness.py``
in the image, written when the image is built). Nothing here imports the rest of prmgym.

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

import json  # noqa: F401  (the old single module's namespace had them)
import sys  # noqa: F401

from . import isolation, judge, main as _main_module, program, server, spawner, verdict, wire
from .payload import path as payload_path, source as payload_source  # noqa: F401

# One namespace with every name of the parts, as the payload has it (the host side and the tests
# use `harness.encode_request`, `harness.PROTOCOL`, `harness.Server`, ...). Rebinding a name here
# does not reach the parts.
for _part in (wire, isolation, program, judge, verdict, spawner, server, _main_module):
    globals().update({k: v for k, v in vars(_part).items() if not k.startswith("__")})
del _part
