"""Env prompt templates (through gym.make kwargs) and plain score functions as verifiers."""

import gymnasium as gym
import pytest
from gymnasium.utils.env_checker import check_env

import prmgym  # noqa: F401  (registers the envs)
from prmgym.envs import FunctionVerifier, MathVerifier, PromptTemplate, Task, TaskList, Verdict, make, register_reasoning_env
from prmgym.envs.core import ReasoningEnv

TEMPLATE = {"system": "You add numbers.", "instruction": "One step per line, then 'Answer: N'.",
            "examples": [{"prompt": "1+1?", "steps": ["1 + 1 = 2", "Answer: 2"]}]}


def test_template_through_gym_make():
    env = gym.make("prmgym/ChainArithmetic-v0", prompt_template=TEMPLATE)
    obs, info = env.reset(seed=0)
    task = info["task"]
    assert obs.startswith("You add numbers.\n\n1+1?\nOne step per line")
    assert obs.endswith(task.prompt + "\nOne step per line, then 'Answer: N'.\n")
    assert obs.prompt == task.prompt and obs.template == PromptTemplate(**TEMPLATE)
    obs2, *_ = env.step(task.expert_steps[0])
    assert obs2 == obs + task.expert_steps[0] + "\n" and obs2.steps == (task.expert_steps[0],)
    plain, _ = gym.make("prmgym/ChainArithmetic-v0").reset(seed=0)
    assert plain == task.prompt + "\n" and plain.template is None
    check_env(gym.make("prmgym/ChainArithmetic-v0", prompt_template=TEMPLATE).unwrapped, skip_render_check=True)


def test_bad_template_is_refused_clearly():
    with pytest.raises(ValueError, match="unknown prompt_template key"):
        make("prmgym/ChainArithmetic-v0", prompt_template={"sytem": "x"})
    with pytest.raises(TypeError, match="examples"):
        PromptTemplate(examples=[("q", "not a list")])


def _tasks():
    return TaskList(train=[Task(id="a", prompt="1+1?", answer="2"), Task(id="b", prompt="2+2?", answer="4")])


def test_score_function_is_a_verifier():
    def half_credit(task, text):
        return 1.0 if text.strip() == task.answer else 0.5

    register_reasoning_env("fmttest/Score-v0", _tasks(), half_credit, replace=True)
    env = make("fmttest/Score-v0")
    _, info = env.reset(seed=0)
    task = info["task"]
    _, r, term, _, info = env.step(f"Answer: {task.answer}")
    assert (r, term, info["verdict"].correct) == (1.0, True, True)
    env.reset(seed=0)
    _, r, _, _, info = env.step("Answer: 99")
    assert (r, info["verdict"].correct) == (0.5, False)
    assert isinstance(env.unwrapped.verifier, FunctionVerifier)
    # directly on the env, a Verdict-returning function too
    env = ReasoningEnv(_tasks(), lambda task, text: Verdict(0.25, False, {"why": "test"}))
    env.reset(seed=0)
    assert env.step("Answer: 3")[1] == 0.25


def test_factories_still_work_and_bad_callables_fail_at_registration():
    register_reasoning_env("fmttest/Factory-v0", _tasks(), MathVerifier, replace=True)
    assert isinstance(make("fmttest/Factory-v0").unwrapped.verifier, MathVerifier)
    with pytest.raises(TypeError, match="neither a score function"):
        register_reasoning_env("fmttest/Bad-v0", _tasks(), lambda task, text, extra: 1.0)
    register_reasoning_env("fmttest/BadFactory-v0", _tasks(), lambda: 1.0, replace=True)
    with pytest.raises(TypeError, match="returned float, not a prmgym.envs.Verifier"):
        make("fmttest/BadFactory-v0")
    env = ReasoningEnv(_tasks(), lambda task, text: "yes")
    env.reset(seed=0)
    with pytest.raises(TypeError, match="must return a float"):
        env.step("Answer: 2")
