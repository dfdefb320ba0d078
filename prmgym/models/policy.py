"""The `Policy` interface: propose next reasoning steps, score continuations."""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from typing import Literal, Sequence

FinishReason = Literal["stop", "eos", "length"]


@dataclass
class Proposal:
    """One sampled continuation of an observation.

    Attributes:
        text: the decoded step, *without* the stop string that ended it.
        token_ids: the generated token ids (including the tokens of the stop string, if the
            proposal ended there, so trainers train on exactly what was sampled).
        logprobs: per-token log-probabilities of ``token_ids`` under the sampling policy
            (before temperature/top-p adjustments: log softmax of the raw logits).
        finish_reason: ``"stop"`` (hit the stop string), ``"eos"`` or ``"length"``.
        tokens_generated: tokens this proposal sampled (== ``len(token_ids)``).
        tokens_encoded: prefix tokens run through the model on behalf of this proposal. A
            shared prefix encoded once for n samples is charged to the first proposal of
            the group and 0 to the others, so sums over proposals are exact.
    """

    text: str
    token_ids: list[int]
    logprobs: list[float]
    finish_reason: FinishReason
    tokens_generated: int = 0
    tokens_encoded: int = 0
    metadata: dict = field(default_factory=dict)

    @property
    def logprob(self) -> float:
        """log π(step | observation): the sum of the token log-probs."""
        return float(sum(self.logprobs))


def check_propose_args(observations, n: int, stop, max_new_tokens: int, temperature: float,
                       top_p: float) -> tuple[list[str], list[str]]:
    """Validate ``propose``'s arguments (every backend's); returns the observations as a list
    and the non-empty stop strings."""
    if isinstance(observations, str):
        raise TypeError("observations must be a list of strings, got a single string; wrap it: [observation]")
    observations = list(observations)
    if not observations:
        raise ValueError("observations is empty; pass at least one observation string")
    for i, o in enumerate(observations):
        if not isinstance(o, str):
            raise TypeError(f"observations[{i}] is {type(o).__name__}, expected str")
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be an integer >= 1 (proposals per observation), got {n!r}")
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0 (0 = greedy), got {temperature}")
    if not 0.0 < top_p <= 1.0:
        raise ValueError(f"top_p must be in (0, 1], got {top_p}")
    stops = [stop] if isinstance(stop, str) else list(stop or [])
    return observations, [s for s in stops if s]


class Policy(abc.ABC):
    """A step-wise generator. Backends: `TransformersPolicy` and `VLLMPolicy` (vllm_policy.py)."""

    @abc.abstractmethod
    def propose(
        self,
        observations: Sequence[str],
        n: int = 1,
        stop: str | Sequence[str] | None = "\n",
        max_new_tokens: int = 64,
        temperature: float = 1.0,
        top_p: float = 1.0,
        seed: int | None = None,
    ) -> list[list[Proposal]]:
        """Return ``n`` proposals per observation (outer list follows ``observations``)."""

    @abc.abstractmethod
    def logprobs(
        self,
        observations: Sequence[str],
        continuations: Sequence[Sequence[int] | str],
        requires_grad: bool = False,
    ) -> list:
        """Per-token log-probs (1-D tensors) of each continuation given its observation."""
