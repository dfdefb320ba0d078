"""The `ProcessRewardModel` interface shared by RL (dense reward) and search (heuristic)."""

from __future__ import annotations

import abc
import math
from typing import Sequence

AGGREGATIONS = ("last", "min", "mean", "prod", "sum")


def aggregate(scores: Sequence[float], how: str = "last") -> float:
    """Collapse per-step scores into one trace score.

    >>> aggregate([0.9, 0.5, 0.8], "min"), aggregate([0.9, 0.5, 0.8], "last")
    (0.5, 0.8)
    """
    if how not in AGGREGATIONS:
        raise ValueError(f"unknown aggregation {how!r}; valid: {', '.join(AGGREGATIONS)}")
    if not scores:
        return 0.0
    if how == "last":
        return float(scores[-1])
    if how == "min":
        return float(min(scores))
    if how == "mean":
        return float(sum(scores) / len(scores))
    if how == "sum":
        return float(sum(scores))
    return float(math.prod(scores))


class ProcessRewardModel(abc.ABC):
    """Scores every step of partial or complete reasoning traces.

    A trace is a prompt plus a list of steps, laid out exactly as `ReasoningEnv` shows it
    to the policy (steps joined by the step delimiter). ``score_steps`` returns one float
    per step, read in one forward pass per trace.
    """

    #: aggregation used by `score` when none is given
    aggregation: str = "last"

    @abc.abstractmethod
    def score_steps(self, prompts: Sequence[str], step_lists: Sequence[Sequence[str]]) -> list[list[float]]:
        """One score per step for each (prompt, steps) pair."""

    def score(self, prompts: Sequence[str], step_lists: Sequence[Sequence[str]], aggregation: str | None = None) -> list[float]:
        """One score per trace: the per-step scores aggregated (`aggregate`)."""
        how = aggregation or self.aggregation
        return [aggregate(s, how) for s in self.score_steps(prompts, step_lists)]
