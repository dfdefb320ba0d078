"""Reasoning problems as Gymnasium environments (no torch needed).

>>> import gymnasium as gym, prmgym
>>> env = gym.make("prmgym/ChainArithmetic-v0")
>>> obs, info = env.reset(seed=0)
>>> obs, reward, terminated, truncated, info = env.step(env.unwrapped.format_answer(0))
"""

from prmgym.envs.core import EnvState, ReasoningEnv, extract_answer, is_code_end, step_batch
from prmgym.envs.procedural import ChainArithmetic, Countdown, ProgramSynthesis, countdown_solve
from prmgym.envs.registration import DESCRIPTIONS, make, register_reasoning_env
from prmgym.envs.sources import (
    ANSWER_PREFIX,
    CODE_END,
    HumanEval,
    Jsonl,
    ProceduralSource,
    ReasoningGym,
    TaskList,
    TaskSource,
    format_answer,
    reasoning_gym_names,
    split_of,
)
from prmgym.envs.spaces import CHARSET, ReasoningText
from prmgym.envs.task import Task
from prmgym.envs.trace import PromptTemplate, TraceText, render_trace, step_end_offsets
from prmgym.envs.verifiers import (
    AutoVerifier,
    CodeVerifier,
    CountdownVerifier,
    ExactMatchVerifier,
    FunctionVerifier,
    MathVerifier,
    ReasoningGymVerifier,
    Verdict,
    Verifier,
    make_verifier,
)

__all__ = [
    "ANSWER_PREFIX", "CHARSET", "CODE_END", "AutoVerifier", "ChainArithmetic", "CodeVerifier", "Countdown",
    "CountdownVerifier", "DESCRIPTIONS", "EnvState", "ExactMatchVerifier", "FunctionVerifier", "HumanEval", "Jsonl", "MathVerifier",
    "ProceduralSource", "ProgramSynthesis", "PromptTemplate", "ReasoningEnv", "ReasoningGym", "ReasoningGymVerifier", "ReasoningText",
    "Task", "TaskList", "TaskSource", "TraceText", "Verdict", "Verifier", "countdown_solve", "extract_answer", "format_answer",
    "is_code_end", "make", "make_verifier", "reasoning_gym_names", "register_reasoning_env", "render_trace", "split_of",
    "step_batch", "step_end_offsets",
]
