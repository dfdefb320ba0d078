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
