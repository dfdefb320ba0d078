"""Keep a colocated generation engine (a `VLLMPolicy`) in step with the trainer's torch model.

GRPO and ReST-GRPO call `EngineSync` at two points of every step when their policy has an
engine (``sync_weights``):

1. `EngineSync.rescore`, after the rollouts and before the advantages: the trainer's torch
   model recomputes the log-probs of every sampled token, and these replace the engine's as
   the importance ratio's old log-probs (``t.step_logprobs``). The engine's own log-probs
   only feed ``train/logprob_mismatch``: the mean |log p_vllm - log p_torch| over the
   sampled tokens (the sampler/trainer gap verl and TRL log). With the torch model as the
   reference, the ratio at the first mini-batch is exactly 1 and clipping is measured
   against the policy that is trained, not against the engine's kernels or dtype.
2. `EngineSync.push`, after the optimizer steps: the trainer's weights go into the engine
   (``VLLMPolicy.sync_weights``), timed as ``perf/sync_seconds``; ``perf/rescore_seconds``
   is the cost of step 1.

A policy without an engine (`TransformersPolicy`) gets no `EngineSync`: its sampler is the
trainer's model, and GRPO keeps the sampled log-probs as before.
"""

from __future__ import annotations

import time
from typing import Any, Sequence

import torch

from prmgym.agents.common import pack_trajectories, packed_logprobs


class EngineSync:
    """The engine side of a trainer whose policy generates on a separate engine.

    Args:
        policy: the trainer's policy; must have ``sync_weights(model)``.
        model: the trainer's torch model (what is trained and pushed).
        chunk: trajectories per forward pass when rescoring.
    """

    def __init__(self, policy: Any, model: torch.nn.Module, chunk: int = 64) -> None:
        if not callable(getattr(policy, "sync_weights", None)):
            raise TypeError(f"{type(policy).__name__} has no sync_weights(model); EngineSync needs an engine policy")
        self.policy = policy
        self.model = model
        self.chunk = int(chunk)

    @classmethod
    def attach(cls, policy: Any, model: torch.nn.Module) -> "EngineSync | None":
        """An `EngineSync` when ``policy`` generates on an engine, else None."""
        return cls(policy, model) if callable(getattr(policy, "sync_weights", None)) else None

    def rescore(self, trajs: Sequence[Any]) -> dict:
        """Replace the trajectories' old log-probs with the torch model's; returns
        ``train/logprob_mismatch`` (engine vs torch, mean over sampled tokens) and
        ``perf/rescore_seconds``."""
        start = time.perf_counter()
        total, count = 0.0, 0
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.no_grad():
                for i in range(0, len(trajs), self.chunk):
                    part = list(trajs[i:i + self.chunk])
                    packed = pack_trajectories(part, self.policy.encode, self.policy.tokenizer.pad_token_id)
                    logp, _ = packed_logprobs(self.model, packed)
                    for b, t in enumerate(part):
                        row = logp[b, :t.num_tokens].float().cpu()
                        engine = torch.tensor(t.old_logprobs, dtype=torch.float32)
                        total += float((row - engine).abs().sum())
                        count += t.num_tokens
                        t.step_logprobs = [row[s:e].tolist() for s, e in t.step_bounds]
        finally:
            self.model.train(was_training)
        return {"train/logprob_mismatch": total / count if count else 0.0,
                "perf/rescore_seconds": time.perf_counter() - start}

    def push(self) -> dict:
        """Load the trainer's weights into the engine; returns ``perf/sync_seconds``."""
        return {"perf/sync_seconds": float(self.policy.sync_weights(self.model))}
