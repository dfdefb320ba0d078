"""Registers prmgym's environments with Gymnasium (runs on ``import prmgym``).

    prmgym/ChainArithmetic-v0   make(id, split=, difficulty=, max_steps=, ...)
    prmgym/Countdown-v0         make(id, split=, difficulty=, ...)
    prmgym/ReasoningGym-v0      make(id, task="chain_sum", **dataset_config)
    prmgym/Jsonl-v0             make(id, path="problems.jsonl", verifier="math"|"exact")
    prmgym/ProgramSynthesis-v0  make(id, difficulty=, sandbox="local"|"docker"|Sandbox)
    prmgym/HumanEval-v0         make(id, sandbox="local"|"docker"|Sandbox)
    prmgym/ToolMath-v0          make(id, difficulty=, sandbox="local"|"docker"|Sandbox, tool_timeout_s=, ...)

``make`` is `prmgym.envs.make` (``gymnasium.make`` works too; ``make`` adds the helpful
errors). Every builder also takes the `ReasoningEnv` keywords (``delimiter``, ``max_steps``,
``max_step_chars``, ``max_chars``, ``render_mode``, ...). The built-in envs are registered at the
bottom of this file with `register_reasoning_env`, the same call that adds your own env; each
call carries its one-line description (listed by ``prmgym envs``).
"""

from __future__ import annotations

import inspect
import types
from collections.abc import Mapping
from typing import Any, Callable

from gymnasium.envs.registration import register, registry

from prmgym.envs.core import ReasoningEnv
from prmgym.envs.sources import TaskSource

#: id -> one-line description of every env registered with `register_reasoning_env` (shown by
#: ``prmgym envs``); filled by the registrations, never edited by hand.
DESCRIPTIONS: dict[str, str] = {}


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
             "answer_prefix", "code_end", "render_mode", "verdict_cache", "prompt_template")


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
                           tools: bool = False, **env_kwargs: Any) -> ReasoningEnv:
    """``tools=True``: a `prmgym.envs.tools.ToolEnv` whose code cells run the program on an
    example (expert traces try ``f(1)`` before submitting)."""
    from prmgym.envs.procedural import ProgramSynthesis
    from prmgym.envs.verifiers import CodeVerifier

    env_kwargs.setdefault("max_steps", 10)
    src = ProgramSynthesis(difficulty, test_fraction, code_end=env_kwargs.get("code_end", "```"), **(source_kwargs or {}))
    return _code_env(src, CodeVerifier(sandbox=sandbox, reward=reward, timeout_s=timeout_s), split, tools, sandbox, env_kwargs)


def make_humaneval(split: str = "test", sandbox: Any = "local", reward: str = "fraction", timeout_s: float = 10.0,
                   tools: bool = False, **env_kwargs: Any) -> ReasoningEnv:
    """``tools=True``: code cells run the program on an example (expert traces try the
    docstring's first ``>>>`` example before submitting)."""
    from prmgym.envs.sources import HumanEval
    from prmgym.envs.verifiers import CodeVerifier

    env_kwargs.setdefault("max_steps", 64)
    src = HumanEval(code_end=env_kwargs.get("code_end", "```"))
    src.tasks(split)  # an unknown split raises the message that says what to use instead
    return _code_env(src, CodeVerifier(sandbox=sandbox, reward=reward, timeout_s=timeout_s), split, tools, sandbox, env_kwargs)


def _code_env(src: TaskSource, verifier: Any, split: str, tools: bool, sandbox: Any, env_kwargs: dict) -> ReasoningEnv:
    if not tools:
        return ReasoningEnv(src, verifier, split, **env_kwargs)
    from prmgym.envs.tools import ExampleSteps, ToolEnv

    return ToolEnv(ExampleSteps(src, env_kwargs.get("code_end", "```")), verifier, split, sandbox=sandbox, **env_kwargs)


def make_tool_math(split: str = "train", difficulty: int = 1, sandbox: Any = "local", test_fraction: float = 0.2,
                   source_kwargs: dict | None = None, **env_kwargs: Any) -> ReasoningEnv:
    """A `prmgym.envs.tools.ToolEnv`: code-cell steps run in ``sandbox`` (``tool_timeout_s=``,
    ``tool_memory_mb=``, ``tool_output_chars=`` are its keywords too)."""
    from prmgym.envs.tools import ToolEnv, ToolMath
    from prmgym.envs.verifiers import MathVerifier

    env_kwargs.setdefault("max_steps", 6)
    return ToolEnv(ToolMath(difficulty, test_fraction, **(source_kwargs or {})), MathVerifier(), split,
                   sandbox=sandbox, **env_kwargs)


def register_reasoning_env(
    id: str,
    source: TaskSource | Callable[[], TaskSource] | None = None,
    verifier: Any = "math",
    description: str = "",
    *,
    builder: Callable[..., ReasoningEnv] | str | None = None,
    replace: bool = False,
    **env_defaults: Any,
) -> None:
    """Register a reasoning env: ``make(id)`` (or ``gym.make(id)``) then builds a `ReasoningEnv`.

    Args:
        id: the Gymnasium id, e.g. ``"mylab/Units-v0"``.
        source: a `TaskSource` instance, or a zero-argument callable returning one
            (called once per ``make``; use it when the source is heavy or not picklable).
        verifier: a `Verifier` instance, a plain function ``score(task, text) -> float |
            Verdict`` (wrapped in `FunctionVerifier`), a zero-argument callable returning a
            `Verifier` (a factory, e.g. a Verifier class), or a name: ``"math"``, ``"exact"``,
            ``"countdown"``, ``"code"``, ``"auto"``. Which kind a callable is, is decided here
            from its signature; anything else is a ``TypeError`` now, not at ``make``.
        description: one line shown by ``prmgym envs``.
        builder: instead of ``source``/``verifier``: a function ``(**kwargs) -> ReasoningEnv``,
            or its ``"module:function"`` path (imported on first ``make``), for envs whose
            keywords choose the source (``difficulty=``, ``path=``, ``sandbox=``). The built-in
            envs use this form.
        replace: put this spec in place of a different one already registered under ``id``.
        **env_defaults: default keywords (``split``, ``max_steps``, ...); ``make(id, **kw)``
            overrides them.

    Registering the same spec under the same id again (re-running a notebook cell) does
    nothing; a different spec under an id already taken raises ``ValueError`` (pass
    ``replace=True``, or pick a new id or version).

    >>> from prmgym.envs import TaskList, Task
    >>> register_reasoning_env("demo/Add-v0", TaskList(train=[Task(id="a", prompt="1+1?", answer="2")]), "exact")
    >>> register_reasoning_env("demo/Add-v0", TaskList(train=[Task(id="a", prompt="1+1?", answer="2")]), "exact")
    >>> env = make("demo/Add-v0")
    >>> env.reset(seed=0)[0]
    '1+1?\\n'
    """
    if not isinstance(id, str) or "-v" not in id:
        raise ValueError(f"id must look like 'namespace/Name-v0', got {id!r}")
    if builder is not None:
        if source is not None:
            raise TypeError("give either source= (with verifier=) or builder=, not both")
        if not (callable(builder) or (isinstance(builder, str) and ":" in builder)):
            raise TypeError(f"builder must be a function returning a ReasoningEnv or a 'module:function' path, got {builder!r:.80}")
        entry_point: Any = builder
        spec = ("builder", _fingerprint(builder), description, _fingerprint(env_defaults))
        kwargs = env_defaults
    else:
        entry_point = _source_entry_point(source, verifier, env_defaults)
        spec = ("source", _fingerprint(source), _fingerprint(verifier), description, _fingerprint(env_defaults))
        kwargs = {}
    if id in registry and not replace:
        old = registry[id]
        if _spec_of(old) == spec:
            DESCRIPTIONS.setdefault(id, _describe(description, source, builder))
            return  # the same spec again: nothing to do
        raise ValueError(
            f"{id!r} is already registered with a different spec ({_spec_summary(old)}). Pass replace=True to "
            f"register_reasoning_env to put the new one in its place (e.g. after editing a notebook cell), or "
            f"register it under a new id or version, e.g. {_next_version(id)!r}"
        )
    if id in registry:
        del registry[id]
    register(id=id, entry_point=entry_point, kwargs=kwargs)
    registry[id].prmgym_spec = spec  # type: ignore[attr-defined]  (how a re-registration is recognised)
    DESCRIPTIONS[id] = _describe(description, source, builder)


def _source_entry_point(source: Any, verifier: Any, env_defaults: dict) -> Callable[..., ReasoningEnv]:
    """The ``make`` function for an env given as a source and a verifier (checked now)."""
    if not (isinstance(source, TaskSource) or callable(source)):
        raise TypeError(f"source must be a TaskSource or a callable returning one, got {type(source).__name__}")
    from prmgym.envs.verifiers import Verifier, callable_kind, make_verifier, verifier_from_factory

    if isinstance(verifier, str):
        make_verifier(verifier)  # validate the name now, not at make time
    elif isinstance(verifier, Verifier):
        pass
    elif callable(verifier):
        if callable_kind(verifier) == "score":
            verifier = make_verifier(verifier)  # a FunctionVerifier, shared by every make
    else:
        raise TypeError(f"verifier must be a Verifier, a score(task, text) function, a zero-argument callable "
                        f"returning a Verifier, or a name, got {type(verifier).__name__}")

    def _make(**kwargs: Any) -> ReasoningEnv:
        src = source if isinstance(source, TaskSource) else source()
        if isinstance(verifier, Verifier):
            ver = verifier
        elif isinstance(verifier, str):
            ver = make_verifier(verifier)
        else:
            ver = verifier_from_factory(verifier)
        return ReasoningEnv(src, ver, **{**env_defaults, **kwargs})

    return _make


def _describe(description: str, source: Any, builder: Any) -> str:
    if description:
        return description
    what = builder if isinstance(builder, str) else getattr(builder or source, "__qualname__", type(source).__name__)
    return f"custom reasoning env ({what})"


def _spec_of(env_spec: Any) -> Any:
    return getattr(env_spec, "prmgym_spec", None)


def _spec_summary(env_spec: Any) -> str:
    if _spec_of(env_spec) is None:
        return f"entry point {env_spec.entry_point!r}, not registered by register_reasoning_env"
    return f"described as {DESCRIPTIONS.get(env_spec.id, '?')!r}"


def _next_version(env_id: str) -> str:
    head, _, version = env_id.rpartition("-v")
    return f"{head}-v{int(version) + 1}" if version.isdigit() else env_id + "-v1"


def _fingerprint(x: Any, depth: int = 0, seen: frozenset = frozenset()) -> Any:
    """A comparable description of ``x`` by content: equal for the same data or the same code
    defined again (a notebook cell run twice), different when the code or data changed."""
    if isinstance(x, (str, bytes, int, float, bool, type(None))):
        return x
    if depth > 8 or id(x) in seen:
        return ("...", type(x).__qualname__)
    seen = seen | {id(x)}

    def fp(v: Any) -> Any:
        return _fingerprint(v, depth + 1, seen)

    if isinstance(x, (list, tuple)):
        return (type(x).__name__, tuple(fp(v) for v in x))
    if isinstance(x, (set, frozenset)):
        return ("set", tuple(sorted(repr(fp(v)) for v in x)))
    if isinstance(x, Mapping):
        return ("dict", tuple(sorted((repr(k), fp(v)) for k, v in x.items())))
    if isinstance(x, types.CodeType):
        return ("code", x.co_code, x.co_names, tuple(fp(c) for c in x.co_consts))
    if isinstance(x, types.FunctionType):
        cells = tuple(fp(c.cell_contents) for c in (x.__closure__ or ()) if _has_contents(c))
        return ("function", x.__module__, x.__qualname__, fp(x.__code__), fp(x.__defaults__), fp(x.__kwdefaults__), cells)
    if isinstance(x, types.MethodType):
        return ("method", fp(x.__self__), fp(x.__func__))
    if isinstance(x, type):
        own = {k: v for k, v in vars(x).items() if not (k.startswith("__") and k.endswith("__")) or k in ("__init__", "__call__")}
        return ("class", x.__module__, x.__qualname__, fp(own), tuple(b.__qualname__ for b in x.__mro__[1:]))
    if isinstance(x, (staticmethod, classmethod, property)):
        return (type(x).__name__, fp(getattr(x, "__func__", None) or x.fget))
    if callable(x) and not hasattr(x, "__dict__"):  # builtins
        return ("builtin", getattr(x, "__module__", None), getattr(x, "__qualname__", repr(x)))
    state = getattr(x, "__dict__", None)
    if state is not None:
        return ("object", fp(type(x)), fp(state))
    return ("repr", type(x).__qualname__, repr(x))


def _has_contents(cell: Any) -> bool:
    try:
        cell.cell_contents
    except ValueError:  # an empty cell
        return False
    return True


def _env_keywords(env_spec: Any) -> list[str] | None:
    """The keywords the env behind ``env_spec`` takes, when its builder says (None if it takes any)."""
    entry = env_spec.entry_point
    if isinstance(entry, str):
        module, _, name = entry.partition(":")
        try:
            import importlib

            entry = getattr(importlib.import_module(module), name)
        except (ImportError, AttributeError):
            return None
    try:
        params = inspect.signature(entry).parameters
    except (TypeError, ValueError):
        return None
    names = [n for n, p in params.items() if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    if any(p.kind is p.VAR_KEYWORD for p in params.values()):
        names += [n for n in inspect.signature(ReasoningEnv).parameters if n not in ("source", "verifier")]
    return list(dict.fromkeys(names)) or None


def make(env_id: str, **kwargs: Any) -> Any:
    """`gymnasium.make` with errors that say what to do: an unknown id lists every registered
    reasoning env, and an unknown keyword lists the keywords the env takes.

    >>> make("prmgym/ChainArithmetik-v0")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    gymnasium.error.NameNotFound: Environment `ChainArithmetik` doesn't exist in namespace prmgym. Did you mean: `ChainArithmetic`? Registered reasoning envs: prmgym/ChainArithmetic-v0, ...
    >>> make("prmgym/ChainArithmetic-v0", dificulty=2)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    TypeError: prmgym/ChainArithmetic-v0 takes no keyword 'dificulty'; it takes: split, difficulty, ...
    """
    import gymnasium as gym

    if not isinstance(env_id, str):
        raise TypeError(f"make takes an env id string such as 'prmgym/ChainArithmetic-v0', got {type(env_id).__name__}")
    try:
        return gym.make(env_id, **kwargs)
    except (gym.error.NameNotFound, gym.error.VersionNotFound, gym.error.NamespaceNotFound) as e:
        raise type(e)(f"{e} Registered reasoning envs: {', '.join(DESCRIPTIONS)} (see `prmgym envs`)") from None
    except TypeError as e:
        if "unexpected keyword argument" not in str(e) or env_id not in registry:
            raise
        accepted = _env_keywords(registry[env_id])
        bad = [k for k in kwargs if accepted is not None and k not in accepted]
        if not bad:
            raise
        raise TypeError(f"{env_id} takes no keyword {bad[0]!r}; it takes: {', '.join(accepted)}") from None


# ----------------------------------------------------------------------------- the built-in envs
_HERE = "prmgym.envs.registration:"
register_reasoning_env(
    "prmgym/ChainArithmetic-v0", builder=_HERE + "make_chain_arithmetic",
    description="chain of + - * (/) evaluated left to right, one operation per step; difficulty=1..3")
register_reasoning_env(
    "prmgym/Countdown-v0", builder=_HERE + "make_countdown",
    description="reach a target with + - * / using each given number once, one operation per step; difficulty=1..3")
register_reasoning_env(
    "prmgym/ReasoningGym-v0", builder=_HERE + "make_reasoning_gym",
    description="any reasoning-gym dataset: task='chain_sum' plus its config, scored by its own score_answer")
register_reasoning_env(
    "prmgym/Jsonl-v0", builder=_HERE + "make_jsonl",
    description="your own problems from a JSONL file (path=...): prompt + answer, or prompt + tests for code")
register_reasoning_env(
    "prmgym/ProgramSynthesis-v0", builder=_HERE + "make_program_synthesis",
    description="write a small Python function one line per step; hidden tests run in a sandbox")
register_reasoning_env(
    "prmgym/HumanEval-v0", builder=_HERE + "make_humaneval",
    description="the 164 HumanEval problems, one completion line per step; tests run in a sandbox")
register_reasoning_env(
    "prmgym/ToolMath-v0", builder=_HERE + "make_tool_math",
    description="arithmetic solved with Python code-cell steps run in a sandbox (output shown as a tool segment)")
