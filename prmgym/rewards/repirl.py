"""rePIRL: a step reward r_φ learned by maximum-entropy inverse RL with an importance-sampled
log-partition, alternating with maximum-entropy policy updates.

    J(φ)   = E_{τ∈D}[R_φ(τ)] − log Z(φ),   R_φ(τ) = Σ_t r_φ(s_t, a_t)
    log Z  ≈ log Σ_j exp(R_φ(τ_j) − log π(τ_j)) − log M      (τ_1..τ_M ~ π)
    ∇J     = E_D[∇R_φ] − Σ_j w_j ∇R_φ(τ_j),   w = softmax_j(R_φ(τ_j) − log π(τ_j))

``r_φ`` is one scalar head read at each step boundary. Choices (not published; config fields):

* ``logpi_scale``: log π(τ) is the sum over steps of the *length-normalised* step log-prob
  (``"mean"``, default; raw sums of tens of nats make the weights one-hot) or the raw sum.
* ``reward_l2``: an L2 penalty ``reward_l2 · mean(r²)`` over all steps in the batch. Without
  it the objective is unbounded once expert and policy traces are separable.

Batch: ``labels`` 1 = demonstration (expert solutions, verified-correct rollouts), 0 =
policy sample; ``step_logprobs``/``step_ntokens`` for the policy samples. The policy side (a
GRPO trainer with an entropy bonus using r_φ as dense step reward) is wired in
`prmgym.rewards.rl` (``reward: repirl``). ``score_steps`` returns r_φ per step, through a
sigmoid when ``squash`` (default).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from prmgym.config import help_field
from prmgym.rewards.airl import LOGPI_SCALES, expert_vs_policy_batch, normalised_logpi
from prmgym.rewards.scalar import LMFeatureOptions, MissingClassError, PRMBatch, ScalarHeadPRM


@dataclass
class RePIRLOptions(LMFeatureOptions):
    """`RePIRLPRM`'s options (besides `PRMOptions`). r_φ's head also reads the LM's mean token
    log-prob of the step (``lm_feature``, `prmgym.rewards.lmfeature`), so r_φ starts as it."""

    lm_feature: str = help_field("step", "LM log-prob input of the head: none | step | running_min")
    logpi_scale: str = help_field("mean", "log pi of a step: mean (length-normalised) | sum")
    reward_l2: float = help_field(0.1, "L2 penalty reward_l2 * mean(r^2) over the batch's steps")

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.logpi_scale not in LOGPI_SCALES:
            raise ValueError(f"unknown logpi_scale {self.logpi_scale!r}; valid: {', '.join(LOGPI_SCALES)}")
        if self.reward_l2 < 0:
            raise ValueError(f"reward_l2 must be >= 0, got {self.reward_l2}")


class RePIRLPRM(ScalarHeadPRM):
    kind = "repirl"
    n_outputs = 1
    Options = RePIRLOptions
    needs_both_classes = True
    validation = "proposals"
    also_validate = ("corrupted",)  # prmgym.rewards.heldout: one-step-corrupted expert solutions

    def __init__(self, model, tokenizer, **options) -> None:
        super().__init__(model, tokenizer, **options)
        self.logpi_scale = self.options.logpi_scale
        self.reward_l2 = float(self.options.reward_l2)

    def _after_inplace_load(self, other: "RePIRLPRM") -> None:
        self.logpi_scale, self.reward_l2 = other.logpi_scale, other.reward_l2

    @classmethod
    def training_batch(cls, data, step: int) -> PRMBatch:
        """Demonstrations (expert solutions, verified-correct rollouts: 1) vs the policy's other
        rollouts (0), with their log-probs."""
        return expert_vs_policy_batch(data, step, "rollouts")

    def _search_scores(self, out: torch.Tensor, n_steps: int) -> torch.Tensor:
        return out[1:, 0]

    def step_rewards(self, prompts, step_lists) -> list[list[float]]:
        """r_φ per step (raw, unsquashed; the dense RL reward)."""
        was = self.net.training
        self.net.eval()
        try:
            with torch.no_grad():
                return [o[1:, 0].tolist() for o in self.outputs(prompts, step_lists)]
        finally:
            self.net.train(was)

    def loss(self, batch: PRMBatch) -> tuple[torch.Tensor, dict]:
        batch.require("labels", who="RePIRLPRM")
        demo = [i for i, y in enumerate(batch.labels) if y >= 0.5 and batch.step_lists[i]]
        samp = [i for i, y in enumerate(batch.labels) if y < 0.5 and batch.step_lists[i]]
        if not demo or not samp:
            raise MissingClassError(f"rePIRL update needs demonstrations (label 1) and policy samples (label 0); got {len(demo)} and {len(samp)}")
        if batch.step_logprobs is None:
            raise ValueError("rePIRL needs step_logprobs of the policy samples (prmgym.rewards.data.fill_logprobs)")
        lp = normalised_logpi(batch.step_logprobs, batch.step_ntokens, self.logpi_scale)
        outs = self.outputs(batch.prompts, batch.step_lists)
        r = [o[1:, 0] for o in outs]  # per-step rewards
        R = torch.stack([ri.sum() for ri in r])  # (B,)
        R_demo, R_samp = R[demo], R[samp]
        log_pi = torch.tensor([sum(lp[i]) for i in samp], dtype=R.dtype, device=R.device)
        log_w = R_samp - log_pi  # log importance weights (unnormalised)
        w = torch.softmax(log_w.detach(), dim=0)
        all_r = torch.cat(r)
        loss = -R_demo.mean() + (w * R_samp).sum() + self.reward_l2 * (all_r**2).mean()
        with torch.no_grad():
            ess = float(1.0 / (w**2).sum())
            log_z = float(torch.logsumexp(log_w, 0) - math.log(len(samp)))
            metrics = {
                "R_demo": float(R_demo.mean()),
                "R_policy": float(R_samp.mean()),
                "log_Z": log_z,
                "ess_frac": ess / len(samp),
                "objective": float(R_demo.mean()) - log_z,
                "r_step_mean": float(all_r.mean()),
            }
        return loss, metrics
