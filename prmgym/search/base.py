"""The planner contract and registry: ``solve(env, policy, scorer, budget) -> SearchResult``.

A planner is a subclass of `Planner`. It declares the short names it is built under
(``names``: name -> one-line description) and builds itself from the shared knobs
(`from_options`); subclassing registers the names, so `make_planner`, `planner_names` and
``prmgym search --planner NAME`` know it with no other edit. Adding a planner touches two
files: its module in ``prmgym/search/`` and the import line in ``prmgym/search/__init__.py``.

>>> class Greedy(Planner):
...     names = {"greedy_demo": "one greedy trace"}
...     @classmethod
...     def from_options(cls, name, options, **extra):
...         return cls()
...     def solve(self, env, policy, scorer=None, budget=None):
...         return SearchResult(answer=None, steps=[], score=0.0)
>>> type(make_planner("greedy_demo")).__name__, "greedy_demo" in planner_names()
('Greedy', True)
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar


@dataclass
class SearchResult:
    """The outcome of one search on one task.

    Attributes:
        answer: the extracted final answer of the chosen trace (``None`` if none finished).
        steps: the chosen trace's steps.
        score: the planner's score of that trace (PRM aggregate, value, vote share, ...).
        reward: the environment's verifier reward for the chosen trace (for evaluation
            only; planners never look at it when choosing).
        tree: statistics of the search (nodes, depth, expansions, ...).
        budget: usage in the five `Budget` units.
    """

    answer: str | None
    steps: list[str]
    score: float
    reward: float = 0.0
    tree: dict = field(default_factory=dict)
    budget: dict = field(default_factory=dict)


@dataclass(frozen=True)
class PlannerOptions:
    """The knobs shared by every planner name (the ``prmgym search`` flags); each planner
    reads the ones it uses in `Planner.from_options`."""

    n: int = 8  # samples (best-of-N, majority, DVTS)
    beam_width: int = 4
    expansions: int = 4  # samples per expansion (beam M, DVTS subtree width, MCTS k)
    iterations: int = 20  # MCTS
    max_depth: int = 16
    aggregation: str = "last"
    max_new_tokens: int = 48  # per step
    max_trace_tokens: int = 256  # per whole trace / continuation
    temperature: float = 1.0
    seed: int | None = 0


_REGISTRY: dict[str, type["Planner"]] = {}


class Planner(abc.ABC):
    """A test-time search: searches from the env's current state, within ``budget``.

    Subclasses implement `solve`; to be buildable by name they set ``names`` and implement
    `from_options`. ``needs_scorer`` is False for settings that use no PRM / value model.
    """

    #: short name -> one-line description; each name is registered for `make_planner`
    names: ClassVar[dict[str, str]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        own = cls.__dict__.get("names", {})
        if own and cls.from_options.__func__ is Planner.from_options.__func__:  # type: ignore[attr-defined]
            raise TypeError(f"{cls.__qualname__} declares names {sorted(own)} but no from_options classmethod")
        for name in own:
            other = _REGISTRY.get(name)
            if other is not None and other.__qualname__ != cls.__qualname__:
                raise ValueError(f"planner name {name!r} of {cls.__qualname__} is taken by {other.__qualname__}; "
                                 "choose another name")
            _REGISTRY[name] = cls

    @classmethod
    def from_options(cls, name: str, options: PlannerOptions, **extra: Any) -> "Planner":
        """The planner registered as ``name``, built from the shared knobs; ``extra`` keyword
        arguments go to the constructor."""
        raise TypeError(f"{cls.__qualname__} cannot be built by name (it declares no names)")

    @property
    def needs_scorer(self) -> bool:
        return True

    @abc.abstractmethod
    def solve(self, env: Any, policy: Any, scorer: Any = None, budget: Any = None) -> SearchResult:
        """Search from ``env``'s current state; charge ``budget`` (a `prmgym.budget.Budget`)."""


def planner_names() -> tuple[str, ...]:
    """Every registered planner name, in registration order."""
    import prmgym.search  # noqa: F401  (imports the built-in planners, which registers them)

    return tuple(_REGISTRY)


def planner_help(name: str) -> str:
    """The one-line description of planner ``name``."""
    return _planner_class(name).names[name]


def _planner_class(name: str) -> type[Planner]:
    names = planner_names()
    if name not in _REGISTRY:
        raise ValueError(f"unknown planner {name!r}; valid: {', '.join(names)}")
    return _REGISTRY[name]


def make_planner(name: str, **knobs: Any) -> Planner:
    """A planner from its registered name and the shared knobs (`PlannerOptions` fields:
    ``n``, ``beam_width``, ``expansions``, ``iterations``, ``max_depth``, ``aggregation``,
    ``max_new_tokens``, ``max_trace_tokens``, ``temperature``, ``seed``). Other keyword
    arguments go to the planner's constructor. `planner_names` lists the names."""
    cls = _planner_class(name)
    known = {f.name for f in fields(PlannerOptions)}
    options = PlannerOptions(**{k: v for k, v in knobs.items() if k in known})
    return cls.from_options(name, options, **{k: v for k, v in knobs.items() if k not in known})


def needs_scorer(name: str) -> bool:
    """Whether planner ``name`` (with default knobs) needs a PRM / value model."""
    return make_planner(name).needs_scorer
