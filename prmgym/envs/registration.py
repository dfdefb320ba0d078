"""Registers prmgym's environments with Gymnasium (runs on ``import prmgym``).

    prmgym/ChainArithmetic-v0   gym.make(id, split=, difficulty=, max_steps=, ...)
    prmgym/Countdown-v0         gym.make(id, split=, difficulty=, ...)
    prmgym/ReasoningGym-v0      gym.make(id, task="chain_sum", **dataset_config)
    prmgym/Jsonl-v0             gym.make(id, path="problems.jsonl", verifier="math"|"exact")
    prmgym/ProgramSynthesis-v0  gym.make(id, difficulty=, sandbox="local"|"docker"|Sandbox)
    prmgym/HumanEval-v0         gym.make(id, sandbox="local"|"docker"|Sandbox)

Every builder also takes the `ReasoningEnv` keywords (``delimiter``, ``max_steps``,
``max_step_chars``, ``max_chars``, ``render_mode``, ...). `register_reasoning_env` adds
your own env in a few lines.
"""

from __future__ import annotations

from typing import Any, Callable

from gymnasium.envs.registration import register, registry

from prmgym.envs.core import ReasoningEnv
from prmgym.envs.sources import TaskSource

#: id -> one-line description (shown by ``prmgym envs``)
DESCRIPTIONS: dict[str, str] = {
    "prmgym/ChainArithmetic-v0": "chain of + - * (/) evaluated left to right, one operation per step; difficulty=1..3",
    "prmgym/Countdown-v0": "reach a target with + - * / using each given number once, one operation per step; difficulty=1..3",
    "prmgym/ReasoningGym-v0": "any reasoning-gym dataset: task='chain_sum' plus its config, scored by its own score_answer",
    "prmgym/Jsonl-v0": "your own problems from a JSONL file (path=...): prompt + answer, or prompt + tests for code",
    "prmgym/ProgramSynthesis-v0": "write a small Python function one line per step; hidden tests run in a sandbox",
    "prmgym/HumanEval-v0": "the 164 HumanEval problems, one completion line per step; tests run in a sandbox",
}


def make_chain_arithmetic(split: str = "train", difficulty: int = 1, test_fraction: float = 0.2,
                          source_kwargs: dict | None = None, **env_kwargs: Any) -> ReasoningEnv:
    from prmgym.envs.procedural import ChainArithmetic
    from prmgym.envs.verifiers import MathVerifier

    env_kwargs.setdefault("max_steps", 10)
    return ReasoningEnv(ChainArithmetic(difficulty, test_fraction, **(source_kwargs or {})), MathVerifier(), split, **env_kwargs)


def make_countdown(split: str = "train", difficulty: int = 1, test_fraction: float = 0.2,
                   source_kwargs: dict | None = None, **env_kwargs: Any) -> ReasoningEnv:
    from prmgym.envs.procedural import Countdown
    from prmgym.envs.verifiers import CountdownVerifier

    env_kwargs.setdefault("max_steps", 10)
    return ReasoningEnv(Countdown(difficulty, test_fraction, **(source_kwargs or {})), CountdownVerifier(), split, **env_kwargs)


_ENV_KEYS = ("delimiter", "max_steps", "max_step_chars", "max_chars", "max_prompt_chars",
             "answer_prefix", "code_end", "render_mode", "verdict_cache")


def make_reasoning_gym(task: str = "chain_sum", split: str = "train", size: int = 10_000,
                       test_fraction: float = 0.2, **kwargs: Any) -> ReasoningEnv:
    """Keywords that are not `ReasoningEnv` options go to the reasoning-gym dataset config."""
    from prmgym.envs.sources import ReasoningGym
    from prmgym.envs.verifiers import ReasoningGymVerifier

    env_kwargs = {k: kwargs.pop(k) for k in list(kwargs) if k in _ENV_KEYS}
    env_kwargs.setdefault("max_steps", 16)
    source = ReasoningGym(task, size=size, test_fraction=test_fraction, **kwargs)
    return ReasoningEnv(source, ReasoningGymVerifier(source.dataset), split, **env_kwargs)


def make_jsonl(path: str | None = None, split: str = "train", verifier: Any = "math", sandbox: Any = "local",
               test_fraction: float = 0.2, **env_kwargs: Any) -> ReasoningEnv:
    """``verifier`` judges answer lines ("math", "exact" or a Verifier); lines with tests run in ``sandbox``."""
    from prmgym.envs.sources import Jsonl
    from prmgym.envs.verifiers import AutoVerifier, make_verifier

    if path is None:
        raise ValueError("prmgym/Jsonl-v0 needs path=: gym.make('prmgym/Jsonl-v0', path='problems.jsonl')")
    return ReasoningEnv(Jsonl(path, test_fraction), AutoVerifier(answer=make_verifier(verifier), sandbox=sandbox), split, **env_kwargs)


def make_program_synthesis(split: str = "train", difficulty: int = 1, sandbox: Any = "local", reward: str = "fraction",
                           timeout_s: float = 10.0, test_fraction: float = 0.2, source_kwargs: dict | None = None,
                           **env_kwargs: Any) -> ReasoningEnv:
    from prmgym.envs.procedural import ProgramSynthesis
    from prmgym.envs.verifiers import CodeVerifier

    env_kwargs.setdefault("max_steps", 10)
    src = ProgramSynthesis(difficulty, test_fraction, code_end=env_kwargs.get("code_end", "```"), **(source_kwargs or {}))
    return ReasoningEnv(src, CodeVerifier(sandbox=sandbox, reward=reward, timeout_s=timeout_s), split, **env_kwargs)


def make_humaneval(split: str = "test", sandbox: Any = "local", reward: str = "fraction", timeout_s: float = 10.0,
                   **env_kwargs: Any) -> ReasoningEnv:
    from prmgym.envs.sources import HumanEval
    from prmgym.envs.verifiers import CodeVerifier

    env_kwargs.setdefault("max_steps", 64)
    src = HumanEval(code_end=env_kwargs.get("code_end", "```"))
    src.tasks(split)  # an unknown split raises the message that says what to use instead
    return ReasoningEnv(src, CodeVerifier(sandbox=sandbox, reward=reward, timeout_s=timeout_s), split, **env_kwargs)


register(id="prmgym/ChainArithmetic-v0", entry_point="prmgym.envs.registration:make_chain_arithmetic")
register(id="prmgym/Countdown-v0", entry_point="prmgym.envs.registration:make_countdown")
register(id="prmgym/ReasoningGym-v0", entry_point="prmgym.envs.registration:make_reasoning_gym")
register(id="prmgym/Jsonl-v0", entry_point="prmgym.envs.registration:make_jsonl")
register(id="prmgym/ProgramSynthesis-v0", entry_point="prmgym.envs.registration:make_program_synthesis")
register(id="prmgym/HumanEval-v0", entry_point="prmgym.envs.registration:make_humaneval")


def register_reasoning_env(
    id: str,
    source: TaskSource | Callable[[], TaskSource],
    verifier: Any = "math",
    description: str = "",
    **env_defaults: Any,
) -> None:
    """Register your own reasoning env: ``gym.make(id)`` then builds a `ReasoningEnv`.

    Args:
        id: the Gymnasium id, e.g. ``"mylab/Units-v0"``.
        source: a `TaskSource` instance, or a zero-argument callable returning one
            (called once per ``gym.make``; use it when the source is heavy or not picklable).
        verifier: a `Verifier` instance, a zero-argument callable returning one, or a name:
            ``"math"``, ``"exact"``, ``"countdown"``, ``"code"``, ``"auto"``.
        description: one line shown by ``prmgym envs``.
        **env_defaults: default `ReasoningEnv` keywords (``split``, ``max_steps``, ...);
            ``gym.make(id, **kw)`` overrides them.

    >>> from prmgym.envs import TaskList, Task
    >>> register_reasoning_env("demo/Add-v0", TaskList(train=[Task(id="a", prompt="1+1?", answer="2")]), "exact")
    >>> import gymnasium as gym
    >>> env = gym.make("demo/Add-v0")
    >>> env.reset(seed=0)[0]
    '1+1?\\n'
    """
    if not isinstance(id, str) or "-v" not in id:
        raise ValueError(f"id must look like 'namespace/Name-v0', got {id!r}")
    if not (isinstance(source, TaskSource) or callable(source)):
        raise TypeError(f"source must be a TaskSource or a callable returning one, got {type(source).__name__}")
    from prmgym.envs.verifiers import Verifier, make_verifier

    if isinstance(verifier, str):
        make_verifier(verifier)  # validate the name now, not at gym.make time
    elif not (isinstance(verifier, Verifier) or callable(verifier)):
        raise TypeError(f"verifier must be a Verifier, a callable returning one, or a name, got {type(verifier).__name__}")
    if id in registry:
        raise ValueError(f"{id!r} is already registered; pick another id or version (e.g. -v1)")

    def _make(**kwargs: Any) -> ReasoningEnv:
        src = source if isinstance(source, TaskSource) else source()
        if isinstance(verifier, Verifier):
            ver = verifier
        elif isinstance(verifier, str):
            ver = make_verifier(verifier)
        else:
            ver = verifier()
        return ReasoningEnv(src, ver, **{**env_defaults, **kwargs})

    register(id=id, entry_point=_make)
    DESCRIPTIONS[id] = description or f"custom reasoning env ({type(source).__name__})"


def make(env_id: str, **kwargs: Any) -> Any:
    """`gymnasium.make` whose unknown-id error lists every registered reasoning env.

    >>> make("prmgym/ChainArithmetik-v0")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    gymnasium.error.NameNotFound: Environment `ChainArithmetik` doesn't exist in namespace prmgym. Did you mean: `ChainArithmetic`? Registered reasoning envs: prmgym/ChainArithmetic-v0, ...
    """
    import gymnasium as gym

    try:
        return gym.make(env_id, **kwargs)
    except (gym.error.NameNotFound, gym.error.VersionNotFound, gym.error.NamespaceNotFound) as e:
        raise type(e)(f"{e} Registered reasoning envs: {', '.join(DESCRIPTIONS)} (see `prmgym envs`)") from None
