"""ReasoningEnv, procedural sources, verifiers, registration and bad-input errors."""

from __future__ import annotations

import json
import subprocess
import sys

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.error import ResetNeeded
from gymnasium.utils.env_checker import check_env

import prmgym  # noqa: F401  (registers)
from prmgym.envs import (
    CHARSET,
    ChainArithmetic,
    Countdown,
    CountdownVerifier,
    DESCRIPTIONS,
    EnvState,
    ExactMatchVerifier,
    Jsonl,
    MathVerifier,
    ProgramSynthesis,
    ReasoningEnv,
    Task,
    TaskList,
    countdown_solve,
    extract_answer,
    make,
    register_reasoning_env,
    render_trace,
)
from prmgym.envs.spaces import ReasoningText



@pytest.fixture
def jsonl_file(tmp_path):
    path = tmp_path / "probs.jsonl"
    lines = [{"prompt": f"What is {i} + {i}?", "answer": 2 * i, "expert_steps": [f"{i}+{i}={2*i}", f"Answer: {2*i}"]}
             for i in range(20)]
    lines[0]["split"] = "test"
    lines[1]["split"] = "train"
    path.write_text("\n".join(json.dumps(x) for x in lines) + "\n\n")
    return path


# ----------------------------------------------------------------------------- conformance
ALL_IDS = sorted(i for i in gym.registry if i.startswith("prmgym/"))


def _kwargs(env_id, jsonl_file):
    return {"path": str(jsonl_file)} if env_id == "prmgym/Jsonl-v0" else {}


def _solution_step(task):
    """The whole expert solution as ONE step (answer step, or code body + end marker)."""
    if task.is_code:
        return "\n".join(task.expert_steps[:-1]) + "\n" + task.expert_steps[-1]
    return task.expert_steps[-1]


def test_all_six_ids_are_covered():
    assert len(ALL_IDS) >= 6


@pytest.mark.parametrize("env_id", ALL_IDS)
def test_check_env_passes(env_id, jsonl_file):
    env = gym.make(env_id, **_kwargs(env_id, jsonl_file))
    check_env(env.unwrapped)
    env.close()


@pytest.mark.parametrize("env_id", ALL_IDS)
def test_make_vec_steps(env_id, jsonl_file):
    envs = gym.make_vec(env_id, num_envs=2, **_kwargs(env_id, jsonl_file))
    obs, infos = envs.reset(seed=0)
    assert len(obs) == 2 and all(isinstance(o, str) for o in obs)
    tasks = infos["task"]
    assert [o for o in obs] == [t.prompt + "\n" for t in tasks]
    obs, rew, term, trunc, infos = envs.step(("# a first step", "# another step"))
    assert not term.any() and (rew == 0).all()
    assert obs[0].endswith("# a first step\n")
    obs, rew, term, trunc, infos = envs.step(tuple(_solution_step(t) for t in tasks))
    assert term.all() and rew.min() > 0.0
    envs.close()


def test_every_registered_prmgym_id_is_described():
    ids = [i for i in gym.registry if i.startswith("prmgym/")]
    assert set(ids) >= {"prmgym/ChainArithmetic-v0", "prmgym/Countdown-v0", "prmgym/ReasoningGym-v0",
                        "prmgym/Jsonl-v0", "prmgym/ProgramSynthesis-v0", "prmgym/HumanEval-v0", "prmgym/ToolMath-v0"}
    assert all(i in DESCRIPTIONS for i in ids)


def test_cli_envs_lists_ids(capsys):
    out = subprocess.run([sys.executable, "-m", "prmgym.cli", "envs"], capture_output=True, text=True, check=True).stdout
    lines = [line for line in out.splitlines() if line.startswith("prmgym/")]
    assert len(lines) == 7 and any("Countdown-v0" in line for line in lines) and any("ToolMath-v0" in line for line in lines)


def test_cli_demo_runs():
    out = subprocess.run([sys.executable, "-m", "prmgym.cli", "demo", "--seed", "2"], capture_output=True, text=True, check=True).stdout
    assert "expert return: 1.000" in out and "wrong submission" in out and "reward=0.000" in out


def test_envs_import_without_torch():
    code = (
        "import sys; sys.modules['torch'] = None\n"
        "import gymnasium as gym, prmgym\n"
        "from prmgym.envs import *\n"
        "import prmgym.envs.cli, prmgym.envs.cli_demo\n"
        "env = gym.make('prmgym/ChainArithmetic-v0'); obs, info = env.reset(seed=0)\n"
        "for s in info['task'].expert_steps: out = env.step(s)\n"
        "assert out[1] == 1.0\n"
        "env = gym.make('prmgym/ProgramSynthesis-v0'); env.reset(seed=0)\n"
        "assert 'torch' not in [m for m in sys.modules if sys.modules[m] is not None]\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


# ----------------------------------------------------------------------------- env semantics
def test_observation_is_render_trace_and_info_keys():
    env = gym.make("prmgym/ChainArithmetic-v0")
    obs, info = env.reset(seed=5)
    task = info["task"]
    assert obs == render_trace(task.prompt, [], "\n") and info["steps"] == () and info["verdict"] is None
    obs, r, te, tr, info = env.step("1+1=2\n")  # one trailing delimiter stripped
    assert obs == render_trace(task.prompt, ["1+1=2"]) and info["steps"] == ("1+1=2",) and r == 0.0
    assert info["task"] is task and info["answer"] is None


def test_expert_replay_earns_one_on_many_procedural_tasks():
    replayed = 0
    for env_id, difficulty in [("prmgym/ChainArithmetic-v0", d) for d in (1, 2, 3)] + [("prmgym/Countdown-v0", d) for d in (1, 2, 3)]:
        env = gym.make(env_id, difficulty=difficulty, max_steps=12)
        u = env.unwrapped
        n = 40 if difficulty < 3 else 15
        for split in ("train", "test"):
            for task in u.source.tasks(split, n, seed=1):
                env.reset(options={"task": task})
                for s in task.expert_steps:
                    obs, r, te, tr, info = env.step(s)
                assert te and not tr and r == 1.0, (task, info)
                # a wrong final answer earns less
                env.reset(options={"task": task})
                wrong = "Answer: " + (str(int(task.answer) + 1) if env_id.endswith("Arithmetic-v0") else task.answer)
                _, r_wrong, te, _, _ = env.step(wrong)
                assert te and r_wrong < 1.0
                replayed += 1
    assert replayed == 380


def test_default_difficulty_is_small():
    for src in (ChainArithmetic(), Countdown()):
        for t in src.tasks("train", 200):
            assert len(t.prompt) < 80, t.prompt
            assert 2 <= len(t.expert_steps) <= 5
            assert max(len(s) for s in t.expert_steps) < 25, t.expert_steps


def test_same_seed_same_task_and_different_seeds_differ():
    env = gym.make("prmgym/Countdown-v0")
    a = env.reset(seed=123)[1]["task"]
    b = env.reset(seed=123)[1]["task"]
    assert a == b
    prompts = {env.reset(seed=s)[1]["task"].prompt for s in range(20)}
    assert len(prompts) > 10
    src = ChainArithmetic()
    assert src.tasks("train", 30, seed=4) == src.tasks("train", 30, seed=4)
    assert src.tasks("train", 30, seed=4) != src.tasks("train", 30, seed=5)


def test_asking_for_more_distinct_tasks_than_exist():
    src = Countdown()  # difficulty 1 holds a few thousand distinct train problems
    with pytest.raises(ValueError, match="distinct train tasks found for n=6000; lower n or raise the difficulty"):
        src.tasks("train", 6000)
    got = src.tasks("train", 6000, at_most=True)
    assert 1000 < len(got) < 6000 and len({t.prompt for t in got}) == len(got)
    assert got[:50] == src.tasks("train", 50)  # the same draw order: a prefix of the full list


def test_at_most_on_a_finite_source(jsonl_file):
    src = Jsonl(jsonl_file)
    n = len(src.tasks("all"))
    with pytest.raises(ValueError, match=f"asked for n=500 tasks but split 'all' holds {n}"):
        src.tasks("all", 500)
    assert src.tasks("all", 500, at_most=True) == src.tasks("all", n)


@pytest.mark.parametrize("src", [ChainArithmetic(), Countdown(), ProgramSynthesis(), ChainArithmetic(difficulty=2)])
def test_splits_are_disjoint(src):
    train = {t.prompt for s in range(3) for t in src.tasks("train", 300, seed=s)}
    test = {t.prompt for s in range(3) for t in src.tasks("test", 150, seed=s)}
    assert train and test and not (train & test)
    env = ReasoningEnv(src, MathVerifier() if not isinstance(src, ProgramSynthesis) else ExactMatchVerifier(), "test")
    if not isinstance(src, ProgramSynthesis):
        sampled = {env.reset(seed=s)[1]["task"].prompt for s in range(50)}
        assert not (sampled & train)


def test_truncation_at_max_steps_and_length():
    env = gym.make("prmgym/ChainArithmetic-v0", max_steps=3)
    env.reset(seed=0)
    for i in range(3):
        obs, r, te, tr, info = env.step(f"thinking {i}")
    assert tr and not te and r == 0.0 and info["verdict"] is None
    with pytest.raises(ResetNeeded, match="reset"):
        env.step("more")
    env = gym.make("prmgym/ChainArithmetic-v0", max_step_chars=10, max_chars=25)
    obs, _ = env.reset(seed=0)
    obs, r, te, tr, info = env.step("x" * 50)
    assert tr and info["steps"] == ("x" * 10,) and obs in env.observation_space
    env.reset(seed=0)
    env.step("a" * 9)
    env.step("b" * 9)
    obs, r, te, tr, info = env.step("Answer: 5")  # would pass max_chars=25: cut, truncated, not verified
    assert tr and not te and r == 0.0 and len(obs) - len(info["task"].prompt) - 1 <= 25


def test_answer_step_and_delimiter_policy():
    assert extract_answer("  Answer:   4/5 ") == "4/5"
    assert extract_answer("The Answer: 4") is None
    env = gym.make("prmgym/ChainArithmetic-v0").unwrapped
    env.reset(seed=0)
    assert env.format_answer(12) == "Answer: 12"
    obs, r, te, tr, info = env.step("first line\nsecond line")  # kept as ONE step
    assert info["steps"] == ("first line\nsecond line",) and not te


def test_bad_inputs_have_clear_errors():
    env = gym.make("prmgym/ChainArithmetic-v0")
    with pytest.raises(ResetNeeded, match="reset"):
        env.unwrapped.step("1+1=2")
    env.reset(seed=0)
    with pytest.raises(TypeError, match="action must be a str"):
        env.unwrapped.step(42)
    with pytest.raises(TypeError, match="Task"):
        env.reset(options={"task": "What is 2+2?"})
    with pytest.raises(ValueError, match="unknown reset option"):
        env.reset(options={"tsak": None})
    with pytest.raises(ValueError, match="valid splits: train, test"):
        gym.make("prmgym/ChainArithmetic-v0", split="validation")
    with pytest.raises(ValueError, match="difficulty must be one of"):
        gym.make("prmgym/Countdown-v0", difficulty=9)
    with pytest.raises(ValueError, match="valid: difficulty"):
        ChainArithmetic(max_oprand=4)
    with pytest.raises(ValueError, match="pass n > 0"):
        ChainArithmetic().tasks("train")
    with pytest.raises(gym.error.Error, match="ChainArithmetik"):
        gym.make("prmgym/ChainArithmetik-v0")
    with pytest.raises(gym.error.Error, match="Registered reasoning envs: prmgym/ChainArithmetic-v0, .*HumanEval-v0"):
        prmgym.envs.make("prmgym/Arithmetic-v0")
    assert prmgym.envs.make("prmgym/Countdown-v0").unwrapped.source.name == "countdown"
    with pytest.raises(ValueError, match="path="):
        gym.make("prmgym/Jsonl-v0")
    with pytest.raises(ValueError, match="empty task set"):
        TaskList(train=[Task(id="a", prompt="p", answer="1")]).tasks("test")


def test_spaces_admit_task_and_model_characters():
    env = gym.make("prmgym/ChainArithmetic-v0")
    assert isinstance(env.observation_space, ReasoningText)
    for s in ["2 + 2 = 4.", "x ≤ 3 → ✅", "tab\tand\nnewline", "emoji 😻 and tag \U000E0110", "Ünïcödé ∫ dx"]:
        assert s in env.action_space
    assert "\ud800" not in env.action_space
    assert all(c in env.action_space for c in CHARSET)
    assert env.action_space.sample() in env.action_space


def test_get_set_state_branching_is_exact():
    env = gym.make("prmgym/ChainArithmetic-v0").unwrapped
    obs0, info = env.reset(seed=7)
    task = info["task"]
    env.step(task.expert_steps[0])
    snap = env.get_state()
    assert isinstance(snap, EnvState) and snap.steps == (task.expert_steps[0],)
    # branch 1: the expert continuation
    for s in task.expert_steps[1:]:
        obs1, r1, te1, _, _ = env.step(s)
    # branch 2: a wrong answer from the same snapshot
    env.set_state(snap)
    assert env.steps == snap.steps
    obs2, r2, te2, _, info2 = env.step("Answer: -1")
    assert te1 and te2 and r1 == 1.0 and r2 == 0.0
    assert obs2 == render_trace(task.prompt, [task.expert_steps[0], "Answer: -1"])
    # back to the snapshot after termination: can step again
    env.set_state(snap)
    obs3, r3, te3, _, _ = env.step(task.expert_steps[1])
    assert not te3 or r3 == 1.0
    with pytest.raises(TypeError, match="get_state"):
        env.set_state((task, ()))


def test_render_modes():
    env = gym.make("prmgym/ChainArithmetic-v0", render_mode="ansi")
    _, info = env.reset(seed=0)
    env.step(info["task"].expert_steps[0])
    text = env.render()
    assert info["task"].prompt in text and "[1] " + info["task"].expert_steps[0] in text
    with pytest.raises(ValueError, match="render_mode"):
        gym.make("prmgym/ChainArithmetic-v0", render_mode="rgb_array")


def test_verdict_cache_reuses_scores():
    calls = []

    class Counting(ExactMatchVerifier):
        def score(self, task, text):
            calls.append(text)
            return super().score(task, text)

    env = ReasoningEnv(ChainArithmetic(), Counting())
    _, info = env.reset(seed=1)
    snap = env.get_state()
    for _ in range(3):
        env.set_state(snap)
        env.step(f"Answer: {info['task'].answer}")
    assert len(calls) == 1


# ----------------------------------------------------------------------------- verifiers
@pytest.mark.parametrize("gold,pred,ok", [
    ("\\boxed{3/4}", "0.75", True),
    ("0.75", "\\boxed{3/4}", True),
    ("3/4", "\\frac{3}{4}", True),
    ("-5", "- 5", True),
    ("-5", "5", False),
    ("32", "32.0", True),
    ("32", " 32 ", True),
    ("1/2", "0.5", True),
    ("12", "x = 12", True),
    ("7", "$7$", True),
    ("3", "4", False),
    ("2\\sqrt{2}", "\\sqrt{8}", True),
    ("0.333", "1/3", False),
    ("10", "", False),
    ("12", "1,2", False),
    ("1000", "1,000", True),
    ("32", "32.", True),
    ("-3", "\u22123", True),
    ("5", "five", False),
    ("Paris", " Paris", True),
    ("Paris", "Rome", False),
])
def test_math_verifier_equivalence(gold, pred, ok):
    v = MathVerifier().score(Task(id="m", prompt="p", answer=gold), pred)
    assert v.correct is ok and v.reward == float(ok)


def test_exact_match_verifier():
    t = Task(id="e", prompt="p", answer="Paris")
    assert ExactMatchVerifier().score(t, " Paris ").correct
    assert not ExactMatchVerifier().score(t, "paris").correct
    assert ExactMatchVerifier(case_sensitive=False).score(t, "paris").correct


def test_countdown_verifier_rules():
    t = Task(id="c", prompt="Use 3 4 6 ...", answer="18", metadata={"numbers": (3, 4, 6)})
    v = CountdownVerifier()
    assert v.score(t, "3*4+6").correct
    assert v.score(t, "(6 × 4) - 3 - 3 + 0").reward == 0.0  # wrong numbers
    assert v.score(t, "6*3").reward == 0.0  # 4 unused
    assert v.score(t, "18").reward == 0.0  # bare target
    assert v.score(t, "3*4+6 = 18").correct
    assert v.score(t, "__import__('os')").reward == 0.0
    assert v.score(t, "6/(4-4)").reward == 0.0
    assert "evaluates to" in v.score(t, "3+4+6").details["reason"]
    assert countdown_solve((3, 4, 6), 18) is not None and countdown_solve((1, 1, 1), 50) is None


# ----------------------------------------------------------------------------- JSONL
def test_jsonl_source_splits_and_replay(jsonl_file):
    src = Jsonl(jsonl_file)
    train, test, all_ = src.tasks("train"), src.tasks("test"), src.tasks("all")
    assert len(train) + len(test) == len(all_) == 20
    assert not {t.id for t in train} & {t.id for t in test}
    assert "probs/1" in {t.id for t in test}  # line 1 has "split": "test"
    env = gym.make("prmgym/Jsonl-v0", path=str(jsonl_file), split="all")
    for t in all_:
        env.reset(options={"task": t})
        for s in t.expert_steps:
            _, r, te, _, _ = env.step(s)
        assert te and r == 1.0


@pytest.mark.parametrize("line,message", [
    ('{"prompt": "2+2?", "answer": "4"', ":2: invalid JSON"),
    ('["prompt", "answer"]', ":2: expected a JSON object"),
    ('{"answer": "4"}', ':2: missing or non-string "prompt"'),
    ('{"prompt": "2+2?"}', ':2: needs "answer"'),
    ('{"prompt": "2+2?", "answer": "4", "tests": [1]}', ':2: "tests" must be a list of strings'),
    ('{"prompt": "2+2?", "answer": "4", "split": "dev"}', ':2: "split" must be'),
])
def test_jsonl_malformed_line_names_file_and_line(tmp_path, line, message):
    p = tmp_path / "bad.jsonl"
    p.write_text('{"prompt": "1+1?", "answer": "2"}\n' + line + "\n")
    with pytest.raises(ValueError) as e:
        Jsonl(p)
    assert str(p) in str(e.value) and message in str(e.value)


def test_jsonl_empty_and_missing(tmp_path):
    p = tmp_path / "empty.jsonl"
    p.write_text("\n\n")
    with pytest.raises(ValueError, match="empty task set"):
        Jsonl(p)
    with pytest.raises(FileNotFoundError, match="nope.jsonl"):
        Jsonl(tmp_path / "nope.jsonl")
    p.write_text('{"prompt": "1+1?", "answer": "2", "split": "train"}\n')
    with pytest.raises(ValueError, match="empty task set"):
        Jsonl(p).tasks("test")


# ----------------------------------------------------------------------------- user envs
def test_register_reasoning_env_helper():
    src = TaskList(train=[Task(id="u1", prompt="Capital of France?", answer="Paris")],
                   test=[Task(id="u2", prompt="Capital of Italy?", answer="Rome")])
    register_reasoning_env("testlab/Capitals-v0", src, "exact", description="capitals", max_steps=4)
    env = gym.make("testlab/Capitals-v0", split="test")
    obs, info = env.reset(seed=0)
    assert obs == "Capital of Italy?\n" and env.unwrapped.max_steps == 4
    assert env.step("Answer: Rome")[1] == 1.0
    check_env(gym.make("testlab/Capitals-v0").unwrapped)
    envs = gym.make_vec("testlab/Capitals-v0", num_envs=2)
    envs.reset(seed=0)
    assert envs.step(("Answer: Paris", "Answer: Rome"))[1].tolist() == [1.0, 0.0]
    assert DESCRIPTIONS["testlab/Capitals-v0"] == "capitals"
    with pytest.raises(ValueError, match="already registered with a different spec"):
        register_reasoning_env("testlab/Capitals-v0", src)
    with pytest.raises(ValueError, match="unknown verifier"):
        register_reasoning_env("testlab/Other-v0", src, "fuzzy")
    with pytest.raises(ValueError, match="disjoint"):
        TaskList(train=[Task(id="a", prompt="q", answer="1")], test=[Task(id="b", prompt="q", answer="1")])


def test_env_rejects_wrong_constructor_arguments():
    with pytest.raises(TypeError, match="TaskSource"):
        ReasoningEnv([Task(id="a", prompt="p", answer="1")], MathVerifier())
    with pytest.raises(TypeError, match="Verifier"):
        ReasoningEnv(ChainArithmetic(), 42)
    with pytest.raises(TypeError, match="neither a score function"):  # score(task, text) functions are welcome
        ReasoningEnv(ChainArithmetic(), lambda t, x, y: 1.0)
    with pytest.raises(ValueError, match="max_steps"):
        ReasoningEnv(ChainArithmetic(), MathVerifier(), max_steps=0)


def test_sample_uses_env_rng():
    env = ReasoningEnv(ChainArithmetic(), MathVerifier())
    env.reset(seed=3)
    first = [env.reset()[1]["task"].id for _ in range(5)]
    env.reset(seed=3)
    again = [env.reset()[1]["task"].id for _ in range(5)]
    assert first == again
    rng = np.random.default_rng(0)
    assert ChainArithmetic().sample("train", rng).prompt


def test_async_make_vec_carries_any_unicode_through_shared_memory():
    envs = gym.make_vec("prmgym/ReasoningGym-v0", task="emoji_mystery", size=100, num_envs=2, vectorization_mode="async")
    try:
        obs, infos = envs.reset(seed=0)
        assert [o for o in obs] == [t.prompt + "\n" for t in infos["task"]]
        assert any(ord(c) > 0xFFFF for o in obs for c in o)  # supplementary-plane characters survive
        obs, rew, term, trunc, infos = envs.step(("step 😻 ≤ ∫", "Answer: nope"))
        assert obs[0].endswith("step 😻 ≤ ∫\n") and term.tolist() == [False, True]
    finally:
        envs.close()


def test_math_verifier_works_off_the_main_thread():
    from concurrent.futures import ThreadPoolExecutor

    v = MathVerifier()
    t = Task(id="m", prompt="p", answer="\\boxed{3/4}")
    with ThreadPoolExecutor(2) as ex:
        results = list(ex.map(lambda x: v.score(t, x).correct, ["0.75", "\\frac{3}{4}", "0.7"]))
    assert results == [True, True, False]


@pytest.mark.parametrize("module", ["core", "sources", "spaces", "verifiers", "registration", "task", "trace", "tools"])
def test_docstring_examples_run(module):
    import doctest
    import importlib

    result = doctest.testmod(importlib.import_module(f"prmgym.envs.{module}"))
    assert result.attempted > 0 and result.failed == 0


@pytest.mark.slow
def test_math_verifier_pathological_answer_off_main_thread_does_not_hang():
    import threading

    v = MathVerifier()
    t = Task(id="m", prompt="p", answer="\\frac{1}{2}")
    out = []
    th = threading.Thread(target=lambda: out.append(v.score(t, "10^10000000")), daemon=True)
    th.start()
    th.join(120)
    assert out and out[0].reward == 0.0  # math-verify's timeout ran in the helper process
    th = threading.Thread(target=lambda: out.append(v.score(t, "\\frac{2}{4}")), daemon=True)
    th.start()
    th.join(60)
    assert out[1].correct  # and the helper still serves


_CELL = """
import random
from prmgym.envs import ProceduralSource, Task, TaskList, format_answer, register_reasoning_env

class Double(ProceduralSource):
    name = "double"

    def generate(self, rng: random.Random) -> Task:
        x = rng.randint(1, 9)
        return Task(id="d", prompt=f"Double {x}.", answer=str(OFFSET + 2 * x), expert_steps=(format_answer(str(OFFSET + 2 * x)),))

register_reasoning_env("testlab/Double-v0", Double, "exact", description="double a digit", max_steps=3)
register_reasoning_env("testlab/Fixed-v0", TaskList(train=[Task(id="f", prompt="1+1?", answer="2")]), "exact")
"""


def test_running_the_same_registration_cell_twice_is_a_no_op_and_a_changed_one_says_how_to_fix():
    env_ids = ("testlab/Double-v0", "testlab/Fixed-v0")
    try:
        exec(_CELL.replace("OFFSET", "0"), {"__name__": "__main__"})
        first = {i: gym.registry[i] for i in env_ids}
        exec(_CELL.replace("OFFSET", "0"), {"__name__": "__main__"})  # the notebook cell, run again
        assert all(gym.registry[i] is first[i] for i in env_ids)
        env = make("testlab/Double-v0")
        env.reset(seed=0)
        assert env.step(env.unwrapped.task.expert_steps[0])[1] == 1.0
        with pytest.raises(ValueError) as err:  # the cell edited: the class computes another answer
            exec(_CELL.replace("OFFSET", "1"), {"__name__": "__main__"})
        msg = str(err.value)
        assert "'testlab/Double-v0' is already registered with a different spec" in msg
        assert "replace=True" in msg and "'testlab/Double-v1'" in msg
        assert gym.registry["testlab/Double-v0"] is first["testlab/Double-v0"]  # nothing changed
        with pytest.raises(ValueError, match="different spec"):  # other data under the same id
            register_reasoning_env("testlab/Fixed-v0", TaskList(train=[Task(id="f", prompt="1+1?", answer="3")]), "exact")
        register_reasoning_env("testlab/Fixed-v0", TaskList(train=[Task(id="f", prompt="1+1?", answer="3")]), "exact",
                               replace=True)
        env = make("testlab/Fixed-v0")
        env.reset(seed=0)
        assert env.step("Answer: 3")[1] == 1.0
    finally:
        for i in env_ids:
            gym.registry.pop(i, None)
            DESCRIPTIONS.pop(i, None)


def test_builtin_envs_register_through_register_reasoning_env_and_again_is_a_no_op():
    from prmgym.envs import registration

    ids = [i for i in gym.registry if i.startswith("prmgym/")]
    assert len(ids) >= 6
    for i in ids:  # every built-in carries the spec register_reasoning_env records, and a description
        assert getattr(gym.registry[i], "prmgym_spec", None) is not None and DESCRIPTIONS[i]
    before = {i: gym.registry[i] for i in ids}
    with open(registration.__file__) as f:
        builtins = f.read().split("# " + "-" * 77 + " the built-in envs")[1]
    assert builtins.count("register_reasoning_env(") == len(ids)  # all of them, in one place
    exec(builtins, vars(registration))  # every built-in registration again, as a module reload runs them
    assert all(gym.registry[i] is before[i] for i in ids)
    with pytest.raises(ValueError, match="different spec"):
        register_reasoning_env("prmgym/Countdown-v0", builder="prmgym.envs.registration:make_chain_arithmetic")
    with pytest.raises(TypeError, match="either source= .* or builder="):
        register_reasoning_env("testlab/Both-v0", ChainArithmetic(), builder=registration.make_countdown)


def test_make_names_an_unknown_keyword_and_lists_the_ones_the_env_takes():
    with pytest.raises(TypeError) as err:
        make("prmgym/Countdown-v0", dificulty=2)
    msg = str(err.value)
    assert msg.startswith("prmgym/Countdown-v0 takes no keyword 'dificulty'; it takes: split, difficulty,")
    assert "max_steps" in msg  # the ReasoningEnv keywords every builder passes on
    assert make("prmgym/Countdown-v0", difficulty=2, max_steps=3).unwrapped.max_steps == 3
    with pytest.raises(TypeError, match="env id string"):
        make(3)
