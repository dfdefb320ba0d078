"""Planner contract: ``solve(env, policy, scorer, budget) -> SearchResult``."""

from __future__ import annotations

from dataclasses import dataclass, field


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
