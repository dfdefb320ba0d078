"""Tool steps (prmgym.envs.tools): code cells run in the sandbox, their output is a tool segment."""

from __future__ import annotations

import gymnasium as gym
import pytest

import prmgym  # noqa: F401  (registers the envs)
from prmgym.envs import Task, TaskList, make
from prmgym.envs.episodes import run_episodes
from prmgym.envs.tools import (
    CELL_DONE,
    TOOL_OUTPUT_CHARS,
    ToolEnv,
    ToolEnvState,
    ToolMath,
    cell_code,
    cell_program,
    hand_steps,
    split_tool_step,
    tool_examples,
    tool_output,
)
from prmgym.envs.verifiers import MathVerifier
from prmgym.sandbox import Job, LocalSandbox


@pytest.fixture(scope="module")
def sandbox():
    sb = LocalSandbox(workers=1)
    yield sb
    sb.close()


def _env(sandbox, **kw):
    return make("prmgym/ToolMath-v0", sandbox=sandbox, **kw).unwrapped


def cell(code: str) -> str:
    return f"```python {code}```"


def test_cell_parsing():
    assert cell_code("```python print(1)```") == "print(1)"
    assert cell_code("```python\nfor i in range(2):\n    print(i)\n```") == "for i in range(2):\n    print(i)"
    assert cell_code("  ```python x = 1```  ") == "x = 1"
    assert cell_code("```python```") is None and cell_code("```python   ```") is None
    assert cell_code("print(1)") is None and cell_code("```python print(1)") is None and cell_code("Answer: 3") is None
    # a claimed output block is not part of the cell
    assert cell_code("```python print(1)```\n```output\n99\n```") == "print(1)"
    assert split_tool_step("```python print(1)```\n```output\na\nb\n```") == ("```python print(1)```", "a\nb")


def test_expert_replay_reaches_reward_1_on_100_tasks(sandbox):
    env = _env(sandbox, difficulty=2)
    tasks = ToolMath(difficulty=2).tasks("train", 100)
    families = set()
    for task in tasks:
        obs, info = env.reset(options={"task": task})
        for step in task.expert_steps:
            obs, reward, term, trunc, info = env.step(step)
        assert term and reward == 1.0 and info["verdict"].correct, (task.prompt, obs)
        # the last cell printed the answer, and the observation shows it as a tool segment
        assert f"```output\n{task.answer}\n```\n" in obs
        families.add(task.metadata["family"])
    assert families == {"expr", "sumsq", "powmod"}  # sumsq needs the state of an earlier cell


def test_reasoning_gym_tasks_replay_their_cells_to_reward_1(sandbox):
    env = _env(sandbox, difficulty=3)
    tasks = ToolMath(families=("chain_sum", "basic_arithmetic")).tasks("train", 100)
    families, divisions = set(), 0
    for task in tasks:
        assert task.expert_steps[0].startswith("```python print(") and len(task.expert_steps) == 2
        obs, info = env.reset(options={"task": task})
        for step in task.expert_steps:
            obs, reward, term, trunc, info = env.step(step)
        assert term and reward == 1.0 and info["verdict"].correct, (task.prompt, obs)
        assert f"```output\n{task.answer}\n```\n" in obs  # the answer is what the cell printed
        families.add(task.metadata["family"])
        divisions += "round(" in task.expert_steps[0]
    assert families == {"chain_sum", "basic_arithmetic"} and divisions > 0
    # the dataset's own question and answer, split like every ToolMath task
    assert any(t.prompt.startswith("Calculate ") for t in tasks)
    assert not {t.prompt for t in tasks} & {t.prompt for t in ToolMath(difficulty=3).tasks("test", 100)}
    assert {t.metadata["family"] for t in ToolMath(difficulty=3).tasks("train", 60)} == {
        "expr", "sumsq", "powmod", "chain_sum", "basic_arithmetic"}


def test_wrong_cell_output_is_what_the_sandbox_printed(sandbox):
    env = _env(sandbox)
    env.reset(seed=0)
    for code in ("print('partial'); 1/0", "import no_such_module", "x = [1, 2][5]", "print('a\\nb'); raise ValueError('bad value')"):
        direct = sandbox.run(Job(code, timeout_s=5))
        assert direct.status == "runtime_error"
        printed = direct.stdout.rstrip("\n")
        expected = (printed + "\n" if printed else "") + direct.stderr.strip().splitlines()[-1]
        obs, reward, term, trunc, info = env.step(cell(code))
        assert info["tool"].output == expected and info["tool"].status == "runtime_error"
        assert obs.endswith(f"```output\n{expected}\n```\n") and reward == 0.0 and not term
    _, _, _, _, info = env.step(cell("print(1 +)"))
    assert info["tool"].output.startswith("SyntaxError: ")
    # a wrong computation is simply its (wrong) output; the answer decides the reward
    env.reset(options={"task": Task(id="t", prompt="Compute 6*7.", answer="42")})
    _, _, _, _, info = env.step(cell("print(6*8)"))
    assert info["tool"].output == "48"
    assert env.step("Answer: 48")[1] == 0.0


def test_state_is_earlier_cells_and_set_state_branches_without_rerun(sandbox):
    env = _env(sandbox)
    env.reset(seed=0)
    env.step(cell("x = 6"))
    env.step(cell("1/0"))  # an earlier error does not stop later cells
    env.step(cell("y = x * 7"))
    snap = env.get_state()
    assert isinstance(snap, ToolEnvState) and [c for c, _ in snap.cells] == ["x = 6", "1/0", "y = x * 7"]
    runs = env.tool_runs
    obs_a, *_ = env.step(cell("print(y + 1)"))
    assert obs_a.endswith("```output\n43\n```\n")
    env.set_state(snap)
    obs_b, _, _, _, info = env.step(cell("print(y - 1)"))
    assert obs_b.endswith("```output\n41\n```\n") and env.tool_runs == runs + 2
    env.set_state(snap)  # branching back costs nothing; the same cell again comes from the cache
    obs_c, _, _, _, info = env.step(cell("print(y + 1)"))
    assert obs_c == obs_a and not info["tool"].ran and env.tool_runs == runs + 2
    with pytest.raises(TypeError, match="ToolEnvState"):
        env.set_state(snap.env)


def test_replaying_stored_steps_reuses_outputs_and_replaces_claimed_ones(sandbox):
    env = _env(sandbox)
    env.reset(seed=1)
    env.step(cell("print(2**10)"))
    stored = env.steps[-1]
    assert stored == "```python print(2**10)```\n```output\n1024\n```"
    runs = env.tool_runs
    env.reset(seed=1)
    _, _, _, _, info = env.step(stored)  # a stored step (e.g. a partial-state prefix) replays from the cache
    assert env.steps[-1] == stored and not info["tool"].ran and env.tool_runs == runs
    env.reset(seed=1)
    env.step("```python print(3)```\n```output\n999\n```")  # a claimed output is replaced by the real one
    assert env.steps[-1] == "```python print(3)```\n```output\n3\n```"


def test_output_cut_and_limits(sandbox):
    env = _env(sandbox, tool_output_chars=60, tool_timeout_s=1.0, max_steps=10)
    env.reset(seed=0)
    _, _, _, _, info = env.step(cell("print('z' * 100)"))
    assert info["tool"].output == "z" * 60 + "\n...[40 more characters]"
    _, _, _, _, info = env.step(cell("while True: pass"))
    assert info["tool"].status == "timeout" and info["tool"].output == "TimeoutError: the cell ran longer than 1s"
    # the cell that timed out is not re-run before later cells (it would stop them too)
    _, _, _, _, info = env.step(cell("print('after')"))
    assert info["tool"].output == "after"
    # a cell that ends the interpreter says so and does not stop later cells
    for code in ("import sys; print('bye'); sys.exit(0)", "import os; os._exit(0)"):
        _, _, _, _, info = env.step(cell(code))
        assert info["tool"].status == "exited" and info["tool"].output.endswith("SystemExit: the cell ended the interpreter")
    _, _, _, _, info = env.step(cell("print('still here')"))
    assert info["tool"].output == "still here"
    assert TOOL_OUTPUT_CHARS == 512 and make("prmgym/ToolMath-v0", sandbox=sandbox).unwrapped.tool_output_chars == 512


def test_tool_output_of_each_status():
    from prmgym.sandbox.base import ExecResult

    assert tool_output(ExecResult("passed", stdout="7\n\n" + CELL_DONE)) == "7"
    assert tool_output(ExecResult("memory"), memory_mb=64) == "MemoryError: the cell used more than 64 MB"
    assert tool_output(ExecResult("output_limit", stdout="AAAA")).endswith("[output limit reached: the cell was stopped]")
    assert tool_output(ExecResult("sandbox_error")).startswith("SandboxError")
    assert "exec(compile('print(1)', '<cell>', 'exec'), _g)" in cell_program([], "print(1)")
    assert tool_output(ExecResult("passed", stdout="7\n")) == "7\nSystemExit: the cell ended the interpreter"


def test_run_episodes_keeps_tool_steps_and_counts_sandbox_runs(sandbox):
    from prmgym.models.policy import Proposal

    class Scripted:
        def propose(self, observations, n=1, stop="\n", max_new_tokens=64, temperature=1.0, top_p=1.0, seed=None):
            out = []
            for obs in observations:
                text = cell("print(6*7)") if "```output" not in obs else "Answer: 42"
                ids = [ord(c) for c in text + "\n"]
                out.append([Proposal(text, ids, [-0.1] * len(ids), "stop", len(ids), len(obs)) for _ in range(n)])
            return out

    task = Task(id="t", prompt="Compute 6*7.", answer="42")
    envs = [_env(sandbox) for _ in range(2)]
    trajs, stats = run_episodes(envs, Scripted(), [task], group_size=2, seed=0)
    t = trajs[0]
    assert t.correct and t.steps == ["```python print(6*7)```\n```output\n42\n```", "Answer: 42"]
    assert t.step_observations[1] == "Compute 6*7.\n```python print(6*7)```\n```output\n42\n```\n"
    assert t.text() == t.last_observation
    assert stats.sandbox == 2  # one run per env (each env has its own cache)


def test_bad_arguments_say_what_to_do(sandbox):
    with pytest.raises(ValueError, match="sandbox must be"):
        make("prmgym/ToolMath-v0", sandbox="podman")
    with pytest.raises(ValueError, match="tool_timeout_s"):
        make("prmgym/ToolMath-v0", tool_timeout_s=0)
    with pytest.raises(ValueError, match="families"):
        ToolMath(families=("calculus",))
    with pytest.raises(ValueError, match="tool_output_chars"):
        ToolEnv(TaskList(train=[Task(id="a", prompt="1+1?", answer="2")]), MathVerifier(), sandbox=sandbox, tool_output_chars=0)


def test_check_env_and_registration():
    from gymnasium.utils.env_checker import check_env

    assert "prmgym/ToolMath-v0" in gym.registry
    check_env(gym.make("prmgym/ToolMath-v0").unwrapped)


def test_tool_examples_put_outputs_on_the_prompt_side_only(sandbox):
    env = _env(sandbox, difficulty=2)
    tasks = ToolMath(difficulty=2, families=("sumsq",)).tasks("train", 3)
    pairs = tool_examples(env, tasks)
    assert len(pairs) == 3 * 3  # two cells and the answer per task
    for k, (prompt, completion) in enumerate(pairs):
        assert "```output" not in completion and completion.endswith("\n")
        assert prompt.count("```output") == k % 3  # every earlier cell's output is context
    assert pairs[2][0].endswith(f"```output\n{tasks[0].answer}\n```\n") and pairs[2][1] == f"Answer: {tasks[0].answer}\n"
    with pytest.raises(TypeError, match="ToolEnv"):
        tool_examples(make("prmgym/ChainArithmetic-v0"), tasks)


def test_no_tool_traces_are_the_same_problems_by_hand(sandbox):
    with_tools, by_hand = ToolMath().tasks("test", 50), ToolMath(tools=False).tasks("test", 50)
    assert [t.prompt for t in with_tools] == [t.prompt for t in by_hand]
    env = _env(sandbox, source_kwargs={"tools": False})
    for t in by_hand:
        assert not any("```" in s for s in t.expert_steps)
        env.reset(options={"task": t})
        for s in t.expert_steps:
            _, reward, *_ = env.step(s)
        assert reward == 1.0
    assert hand_steps("2+3*4-5") == (["3*4=12", "2+12=14", "14-5=9"], 9)
    with pytest.raises(ValueError, match="expr"):
        ToolMath(difficulty=2, tools=False)


def test_code_envs_gain_a_run_on_an_example_step(sandbox):
    from prmgym.envs.procedural import ProgramSynthesis

    env = make("prmgym/ProgramSynthesis-v0", tools=True, sandbox=sandbox).unwrapped
    for task in env.source.tasks("train", 30):
        assert task.expert_steps[-2] == "```python print(f(1))```"
        env.reset(options={"task": task})
        for step in task.expert_steps:
            obs, reward, term, trunc, info = env.step(step)
            if info["tool"] is not None:  # the program so far, run on the example
                assert info["tool"].output == str(ProgramSynthesis.run(list(task.metadata["ops"]), 1))
        assert term and reward == 1.0 and info["verdict"].details["tests_passed"] == len(task.tests)
        assert "print(f(1))" not in env.program()  # the cell is not part of the submitted program
    # a cell sees the program and nothing of the hidden tests
    task = env.source.tasks("train", 1)[0]
    env.reset(options={"task": task})
    env.step(task.expert_steps[0])
    _, _, _, _, info = env.step("```python print(sorted(k for k in globals() if not k.startswith('__')))```")
    assert info["tool"].output == "['f']"
    _, _, _, _, info = env.step("```python print(f(undefined_name))```")
    assert info["tool"].output == "NameError: name 'undefined_name' is not defined"


def test_humaneval_example_cells_run_before_the_submission(sandbox):
    env = make("prmgym/HumanEval-v0", tools=True, sandbox=sandbox).unwrapped
    tasks = [t for t in env.source.tasks("test") if "```python" in t.expert_steps[-2]][:15]
    assert len(tasks) == 15
    for task in tasks:
        env.reset(options={"task": task})
        for step in task.expert_steps:
            _, reward, term, _, info = env.step(step)
            if info["tool"] is not None:
                assert info["tool"].status == "passed" and info["tool"].output
        assert term and reward == 1.0
