"""Code environments: ProgramSynthesis-v0, HumanEval-v0, Jsonl code tasks, CodeVerifier."""

from __future__ import annotations

import json

import gymnasium as gym
import pytest

import prmgym  # noqa: F401
from prmgym.envs import CodeVerifier, HumanEval, ProgramSynthesis, Task
from prmgym.sandbox.base import ExecResult, Job, Sandbox


class FakeSandbox(Sandbox):
    """Runs OUR OWN trusted test programs in-process (no isolation): counts passing tests."""

    def __init__(self, fail_infra: bool = False):
        self.fail_infra = fail_infra
        self.jobs: list[Job] = []
        self.batches: list[int] = []

    def run(self, job: Job) -> ExecResult:
        self.jobs.append(job)
        if self.fail_infra:
            return ExecResult("sandbox_error", tests_total=len(job.tests))
        ns: dict = {}
        try:
            exec(compile(job.code, "<program>", "exec"), ns)
        except SyntaxError:
            return ExecResult("compile_error", tests_total=len(job.tests))
        except Exception:
            return ExecResult("runtime_error", tests_total=len(job.tests))
        if job.entry_point:
            ns["candidate"] = ns.get(job.entry_point)
        passed = 0
        for t in job.tests:
            try:
                exec(t, dict(ns))
                passed += 1
            except Exception:
                pass
        status = "passed" if passed == len(job.tests) else "failed"
        return ExecResult(status, tests_passed=passed, tests_total=len(job.tests))

    def run_batch(self, jobs):
        self.batches.append(len(jobs))
        return [self.run(j) for j in jobs]


def _replay(env, task, steps):
    env.reset(options={"task": task})
    for s in steps:
        obs, r, te, tr, info = env.step(s)
        if te or tr:
            break
    return r, te, tr, info


# ----------------------------------------------------------------------------- with a fake sandbox
def test_program_synthesis_expert_replay_and_broken_programs_with_fake_sandbox():
    box = FakeSandbox()
    for difficulty in (1, 2, 3):
        env = gym.make("prmgym/ProgramSynthesis-v0", difficulty=difficulty, sandbox=box)
        u = env.unwrapped
        for task in u.source.tasks("train", 40, seed=difficulty):
            r, te, tr, info = _replay(env, task, task.expert_steps)
            assert te and not tr and r == 1.0 and info["verdict"].correct, info
            assert info["answer"] == task.metadata["code_prefix"] + "\n" + "\n".join(task.expert_steps[:-1]) + "\n"
            r, te, _, info = _replay(env, task, ["    return 10**6", "```"])
            assert te and r < 1.0 and not info["verdict"].correct
            r, te, _, info = _replay(env, task, ["    x = (", "```"])
            assert te and r == 0.0 and info["verdict"].details["status"] == "compile_error"
    job = box.jobs[0]
    assert job.entry_point == "f" and len(job.tests) == 4 and all(t.startswith("assert f(") for t in job.tests)


def test_code_end_marker_forms_and_format_answer():
    box = FakeSandbox()
    env = gym.make("prmgym/ProgramSynthesis-v0", sandbox=box).unwrapped
    _, info = env.reset(seed=0)
    task = info["task"]
    body = "\n".join(task.expert_steps[:-1])
    step = env.format_answer(body)
    assert step == body + "\n```"
    _, r, te, _, _ = env.step(step)  # whole body + marker in one step
    assert te and r == 1.0
    env.reset(seed=0)
    _, r, te, _, _ = env.step("    return x")  # not finished: no marker yet
    assert not te and r == 0.0
    _, r, te, _, _ = env.step("  ```  ")  # marker with surrounding whitespace
    assert te
    env.reset(seed=0)
    _, r, te, _, _ = env.step("Answer: 5")  # code tasks do not end on an answer step
    assert not te


def test_fraction_reward_and_binary_option(tmp_path):
    p = tmp_path / "code.jsonl"
    p.write_text(json.dumps({
        "prompt": "Write inc(x) returning x + 1.", "tests": ["assert inc(1) == 2", "assert inc(-1) == 0", "assert inc(5) == 6"],
        "entry_point": "inc", "code_prefix": "def inc(x):", "expert_steps": ["    return x + 1", "```"], "split": "train",
    }) + "\n" + json.dumps({"prompt": "1+1?", "answer": "2", "split": "train"}) + "\n")
    box = FakeSandbox()
    env = gym.make("prmgym/Jsonl-v0", path=str(p), sandbox=box)
    code_task, math_task = env.unwrapped.source.tasks("train")
    r, te, _, info = _replay(env, code_task, ["    return x + 1 if x < 3 else 0", "```"])
    assert te and r == pytest.approx(2 / 3) and not info["verdict"].correct
    assert info["verdict"].details["tests_passed"] == 2 and info["verdict"].details["fraction"] == pytest.approx(2 / 3)
    r, te, _, info = _replay(env, code_task, code_task.expert_steps)
    assert r == 1.0 and info["verdict"].correct
    r, te, _, info = _replay(env, math_task, ["Answer: 2"])  # mixed file: the math line uses the math verifier
    assert r == 1.0
    binary = CodeVerifier(sandbox=box, reward="binary")
    prog = "def inc(x):\n    return x + 1 if x < 3 else 0\n"
    assert binary.score(code_task, prog).reward == 0.0


def test_sandbox_error_is_flagged_and_not_cached():
    box = FakeSandbox(fail_infra=True)
    env = gym.make("prmgym/ProgramSynthesis-v0", sandbox=box).unwrapped
    _, info = env.reset(seed=1)
    task = info["task"]
    snap = env.get_state()
    for _ in range(2):
        env.set_state(snap)
        _, r, te, _, info = env.step(env.format_answer("\n".join(task.expert_steps[:-1])))
        assert te and r == 0.0 and info["verdict"].details["sandbox_error"] is True
    assert len(box.jobs) == 2  # a sandbox_error verdict is retried next time, never cached


def test_score_batch_uses_run_batch():
    box = FakeSandbox()
    tasks = ProgramSynthesis().tasks("test", 6)
    progs = [t.metadata["code_prefix"] + "\n" + "\n".join(t.expert_steps[:-1]) + "\n" for t in tasks]
    progs[2] = "def f(x):\n    return None\n"
    verdicts = CodeVerifier(sandbox=box).score_batch(tasks, progs)
    assert box.batches == [6]
    assert [v.correct for v in verdicts] == [True, True, False, True, True, True]


def test_code_env_errors():
    with pytest.raises(ValueError, match="unknown sandbox 'dockr'"):
        gym.make("prmgym/ProgramSynthesis-v0", sandbox="dockr")
    with pytest.raises(TypeError, match="Sandbox instance"):
        gym.make("prmgym/HumanEval-v0", sandbox=object())
    with pytest.raises(ValueError, match="only a 'test' split"):
        gym.make("prmgym/HumanEval-v0", split="train")
    with pytest.raises(ValueError, match="no tests"):
        CodeVerifier(sandbox=FakeSandbox()).score(Task(id="x", prompt="p", answer="1"), "print(1)")


def test_humaneval_source_reads_all_problems():
    src = HumanEval()
    tasks = src.tasks("test")
    assert len(tasks) == 164 and tasks[0].id == "HumanEval/0"
    for t in tasks:
        assert t.is_code and t.expert_steps[-1] == "```" and t.metadata["entry_point"] in t.tests[0]
        assert not t.prompt.endswith("\n")


def test_humaneval_replay_with_fake_sandbox():
    box = FakeSandbox()
    env = gym.make("prmgym/HumanEval-v0", sandbox=box)
    tasks = env.unwrapped.source.tasks("test", 12, seed=0)
    for task in tasks:
        r, te, tr, info = _replay(env, task, task.expert_steps)
        assert te and r == 1.0, task.id
        r, te, tr, info = _replay(env, task, ["    return None", "```"])
        assert te and r == 0.0


# ----------------------------------------------------------------------------- with the real LocalSandbox
local = pytest.importorskip("prmgym.sandbox.local")


@pytest.fixture(scope="module")
def local_box():
    box = local.LocalSandbox(workers=1)
    yield box
    box.close()


def test_program_synthesis_with_local_sandbox(local_box):
    env = gym.make("prmgym/ProgramSynthesis-v0", difficulty=2, sandbox=local_box)
    for task in env.unwrapped.source.tasks("test", 15, seed=0):
        r, te, _, info = _replay(env, task, task.expert_steps)
        assert te and r == 1.0, info["verdict"]
        r, te, _, info = _replay(env, task, ["    import sys; sys.exit(0)", "```"])
        assert te and r == 0.0 and not info["verdict"].correct


def test_humaneval_canonical_and_broken_with_local_sandbox(local_box):
    src = HumanEval()
    tasks = src.tasks("test", 20, seed=1)
    ver = CodeVerifier(sandbox=local_box)
    good = [t.metadata["code_prefix"] + "\n" + "\n".join(t.expert_steps[:-1]) + "\n" for t in tasks]
    assert all(v.correct and v.reward == 1.0 for v in ver.score_batch(tasks, good))
    broken = [t.metadata["code_prefix"] + "\n    return None\n" for t in tasks]
    assert not any(v.correct for v in ver.score_batch(tasks, broken))


@pytest.mark.slow
def test_all_164_humaneval_expert_traces_pass_in_the_env(local_box):
    env = gym.make("prmgym/HumanEval-v0", sandbox=local_box)
    failures = []
    for task in env.unwrapped.source.tasks("test"):
        r, te, _, info = _replay(env, task, task.expert_steps)
        if not (te and r == 1.0):
            failures.append((task.id, info["verdict"] and info["verdict"].details))
    assert not failures, failures[:3]


# ----------------------------------------------------------------------------- with the Docker sandbox
@pytest.mark.docker
def test_program_synthesis_with_docker_sandbox():
    import os

    try:
        from prmgym.sandbox.docker import docker_client
        from prmgym.sandbox.image import default_image

        docker_client(timeout=30).images.get(default_image())
    except Exception as exc:  # engine unreachable or image missing
        if os.environ.get("PRMGYM_REQUIRE_DOCKER") == "1":
            pytest.fail(f"PRMGYM_REQUIRE_DOCKER=1 but the Docker sandbox is unavailable: {exc}")
        pytest.skip(f"Docker sandbox unavailable: {exc}")
    env = gym.make("prmgym/ProgramSynthesis-v0", sandbox="docker")
    for task in env.unwrapped.source.tasks("test", 5, seed=0):
        r, te, _, info = _replay(env, task, task.expert_steps)
        assert te and r == 1.0, info["verdict"]
        r, te, _, info = _replay(env, task, ["    return None", "```"])
        assert te and r == 0.0


def test_code_env_with_a_custom_delimiter_still_writes_newline_programs():
    box = FakeSandbox()
    env = gym.make("prmgym/ProgramSynthesis-v0", sandbox=box, delimiter="<step>").unwrapped
    _, info = env.reset(seed=2)
    task = info["task"]
    for s in task.expert_steps:
        obs, r, te, _, info = env.step(s + "<step>")
    assert te and r == 1.0
    assert obs == task.prompt + "<step>" + "".join(s + "<step>" for s in task.expert_steps)
    assert info["answer"] == task.metadata["code_prefix"] + "\n" + "\n".join(task.expert_steps[:-1]) + "\n"
    env.reset(seed=2)
    _, r, te, _, _ = env.step(env.format_answer("\n".join(task.expert_steps[:-1])))
    assert te and r == 1.0


def test_step_batch_verifies_code_submissions_in_one_batch():
    from prmgym.envs import step_batch

    box = FakeSandbox()
    envs = [gym.make("prmgym/ProgramSynthesis-v0", sandbox=box) for _ in range(4)]
    verifier = CodeVerifier(sandbox=box)
    for e in envs:  # one verifier object shared by the pool, as a vector env factory would do
        e.unwrapped.verifier = verifier
    tasks = [e.reset(seed=i)[1]["task"] for i, e in enumerate(envs)]
    bodies = ["\n".join(t.expert_steps[:-1]) for t in tasks]
    bodies[1] = "    return None"
    actions = [e.unwrapped.format_answer(b) for e, b in zip(envs, bodies)]
    actions[3] = "    x = x + 0"  # does not end the episode: nothing to verify
    results = step_batch(envs, actions)
    assert box.batches == [3] and len(box.jobs) == 3  # one parallel batch, no second run in step()
    assert [r[1] for r in results] == [1.0, 0.0, 1.0, 0.0]
    assert [r[2] for r in results] == [True, True, True, False]
    # the same as stepping one by one
    for i, e in enumerate(envs):
        e.reset(seed=i)
    assert [e.step(a)[1:3] for e, a in zip(envs, actions)] == [r[1:3] for r in results]
    with pytest.raises(ValueError, match="one action per env"):
        step_batch(envs, actions[:2])


def test_missing_entry_point_verdict_names_it_and_what_was_defined(local_box):
    task = Task(id="sub/0", prompt="Write sub(a, b).", tests=("assert candidate(3, 1) == 2", "assert sub(1, 1) == 0"),
                metadata={"entry_point": "sub"})
    ver = CodeVerifier(sandbox=local_box)
    program = "import math\n\ndef add(a, b):\n    return a + b\n\nclass Helper:\n    pass\n"
    for v in (ver.score(task, program), ver.score_batch([task], [program])[0]):
        assert not v.correct and v.reward == 0.0
        assert "does not define 'sub'" in v.details["reason"]
        assert "it defines: math, add, Helper" in v.details["reason"]
        errors = v.details["test_errors"]  # the judge's per-test errors reach the env's verdict
        assert [e["test"] for e in errors] == [0, 1] and all("sub" in e["msg"] for e in errors)
    # a program that defines the function gets no such reason, and keeps its failed test's error
    v = ver.score(task, "def sub(a, b):\n    return a + b\n")
    assert not v.correct and "reason" not in v.details
    assert [e["test"] for e in v.details["test_errors"]] == [0, 1]
    assert ver.score(task, "def sub(a, b):\n    return a - b\n").correct


def test_missing_entry_point_reason_is_not_given_when_the_name_is_bound_or_unrelated():
    from prmgym.envs.verifiers import missing_entry_point

    err = [{"msg": "KeyError: \"'sub'\""}]
    assert missing_entry_point("from operator import sub\n", "sub", err) is None
    assert missing_entry_point("sub = lambda a, b: a - b\n", "sub", err) is None
    assert missing_entry_point("def add(a, b):\n    return a + b\n", "sub", [{"msg": "AssertionError"}]) is None
    assert missing_entry_point("def (:\n", "sub", err) is None  # does not parse: the compile error says it
    assert "nothing at module level" in missing_entry_point("print(1)\n", "sub", err)


def test_task_refuses_a_bare_string_of_tests_or_steps_and_says_how_to_wrap_it():
    with pytest.raises(TypeError, match=r"tests must be a sequence of strings.*16 characters.*tests=\('assert f\(1\) == 1',\)"):
        Task(id="t", prompt="p", tests="assert f(1) == 1")
    with pytest.raises(TypeError, match=r"expert_steps must be a sequence of strings.*expert_steps=\('Answer: 5',\)"):
        Task(id="t", prompt="p", answer="5", expert_steps="Answer: 5")
    with pytest.raises(TypeError, match=r"tests\[1\] must be a string, got int"):
        Task(id="t", prompt="p", tests=["assert f(1) == 1", 2])
    t = Task(id="t", prompt="p", tests=["assert f(1) == 1"], expert_steps=["Answer: 5"])
    assert t.tests == ("assert f(1) == 1",) and t.expert_steps == ("Answer: 5",)


def test_jsonl_takes_a_single_string_of_tests_as_one_test(tmp_path):
    from prmgym.envs import Jsonl

    check = "def check(candidate):\n    assert candidate(1) == 2\n    assert candidate(2) == 3\n\ncheck(inc)\n"
    path = tmp_path / "p.jsonl"
    path.write_text(json.dumps({"prompt": "inc", "tests": check, "entry_point": "inc", "split": "train"}) + "\n")
    (task,) = Jsonl(str(path)).tasks("train")
    assert task.tests == (check,)
    v = CodeVerifier(sandbox=FakeSandbox()).score(task, "def inc(x):\n    return x + 1\n")
    assert v.correct and v.details["tests_total"] == 1
