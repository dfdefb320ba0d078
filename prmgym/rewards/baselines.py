"""Baseline PRMs the learned ones are compared against: ORM and Monte-Carlo PRM.

Both heads also read the LM's mean token log-prob of the steps (``lm_feature``, default
``running_min``: `prmgym.rewards.lmfeature`), starting from zero on everything else, so that an
untrained ORM or MC-PRM ranks traces as the policy's LM does.

* `ORMPRM` — outcome reward model: one scalar head, binary cross-entropy of the head at the
  *last* step against final correctness (``PRMBatch.labels``). As a PRM it reads the same
  head at every step boundary (the probability that the trace so far ends correct).
* `MCPRM` — Math-Shepherd: each step labelled by rollouts from its prefix
  (`prmgym.rewards.data.mc_step_labels`: hard = any of N rollouts correct, soft = fraction
  correct), binary cross-entropy of the head at every step boundary against those labels.

The implicit PRM (PRIME) lives in `prmgym.rewards.implicit`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from prmgym.config import help_field
from prmgym.rewards.scalar import LMFeatureOptions, PRMBatch, ScalarHeadPRM


@dataclass
class ORMOptions(LMFeatureOptions):
    """`ORMPRM`'s options: the head reads the worst step's LM log-prob so far (`prmgym.rewards.lmfeature`)."""

    lm_feature: str = help_field("running_min", "LM log-prob input of the head: none | step | running_min")


@dataclass
class MCOptions(LMFeatureOptions):
    """`MCPRM`'s options: the head reads the worst step's LM log-prob so far (`prmgym.rewards.lmfeature`)."""

    lm_feature: str = help_field("running_min", "LM log-prob input of the head: none | step | running_min")


def _bce_metrics(z: torch.Tensor, y: torch.Tensor) -> dict:
    with torch.no_grad():
        pred = (z > 0).float()
        hard = (y >= 0.5).float()
        return {"acc": float((pred == hard).float().mean()), "p_mean": float(torch.sigmoid(z).mean())}


def _nonempty_outputs(prm: "ScalarHeadPRM", batch: PRMBatch, who: str) -> tuple[list[int], list[torch.Tensor]]:
    """Indices of the batch's traces with at least one step, and the PRM's outputs on them."""
    keep = [i for i, s in enumerate(batch.step_lists) if s]
    if not keep:
        raise ValueError(f"{who}.update needs traces with at least one step")
    return keep, prm.outputs([batch.prompts[i] for i in keep], [batch.step_lists[i] for i in keep])


class ORMPRM(ScalarHeadPRM):
    """Outcome reward model: BCE on final correctness at the last step; see module docstring."""

    kind = "orm"
    n_outputs = 1
    Options = ORMOptions
    validation = "outcome"

    @classmethod
    def training_batch(cls, data, step: int) -> PRMBatch:
        """Expert solutions (1) and policy rollouts labelled by verified correctness."""
        return data.outcome_batch(step)

    def _search_scores(self, out: torch.Tensor, n_steps: int) -> torch.Tensor:
        return out[1:, 0]

    def loss(self, batch: PRMBatch) -> tuple[torch.Tensor, dict]:
        batch.require("labels", who="ORMPRM")
        keep, outs = _nonempty_outputs(self, batch, "ORMPRM")
        z = torch.stack([o[-1, 0] for o in outs])  # (B,) head at the last step
        y = torch.tensor([float(batch.labels[i]) for i in keep], dtype=z.dtype, device=z.device)
        return F.binary_cross_entropy_with_logits(z, y), _bce_metrics(z, y)


class MCPRM(ScalarHeadPRM):
    """Monte-Carlo PRM (Math-Shepherd): BCE at every step against rollout labels."""

    kind = "mc"
    n_outputs = 1
    Options = MCOptions
    recipe_fields = ("mc_rollouts", "mc_labels")
    validation = "step_labels"
    also_validate = ("corrupted",)  # prmgym.rewards.heldout: one-step-corrupted expert solutions

    @classmethod
    def training_batch(cls, data, step: int) -> PRMBatch:
        """Expert steps labelled 1; every rollout step labelled by ``mc_rollouts`` completions
        from its prefix (``mc_labels``: hard = any correct, soft = fraction correct)."""
        tasks = data.tasks(step)
        experts = data.experts(tasks)
        rolls = data.rollouts(tasks, step)
        labels = data.mc_labels(rolls, step)
        traces = experts + rolls
        step_labels = [[1.0] * len(t.steps) for t in experts] + labels
        return PRMBatch([t.prompt for t in traces], [t.steps for t in traces], step_labels=step_labels)

    def _search_scores(self, out: torch.Tensor, n_steps: int) -> torch.Tensor:
        return out[1:, 0]

    def loss(self, batch: PRMBatch) -> tuple[torch.Tensor, dict]:
        batch.require("step_labels", who="MCPRM")
        keep, outs = _nonempty_outputs(self, batch, "MCPRM")
        z = torch.cat([o[1:, 0] for o in outs])  # (total steps,)
        y = torch.tensor([float(v) for i in keep for v in batch.step_labels[i]], dtype=z.dtype, device=z.device)
        return F.binary_cross_entropy_with_logits(z, y), _bce_metrics(z, y)
