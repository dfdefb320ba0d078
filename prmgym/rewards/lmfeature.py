"""The LM feature of the scalar-head PRMs (ORM, MC-PRM, rePIRL): the PRM body's own language
model's opinion of each step, fed to the head next to the hidden state.

Why (#18). A fresh linear head on a small LM, trained by BCE on outcome or Monte-Carlo labels,
learns the task's difficulty from the prompt (the same at every step of a trace) and ignores the
step: ORM, MC-PRM and rePIRL were at chance on one-step-corrupted traces while the policy's own
mean token log-prob of the step ranked them almost perfectly. So these kinds read that
log-prob as one more input of the head::

    head(s_i) = w · hidden(s_i) + w_lm · x_i + b
    x_i = mean token log-prob of ``step_i + delimiter`` under the body's LM        (lm_feature="step")
    x_i = min_{j <= i} of those                                                   (lm_feature="running_min")

with ``w`` and ``b`` initialised to **zero** and ``w_lm`` to ``lm_feature_weight`` (> 0). An
untrained PRM therefore ranks steps (``step``) or prefixes (``running_min``: a trace is as good
as its worst step so far) exactly as the policy's LM does, and training moves away from that
prior only as far as its loss asks (and, with ``prmgym train-prm``'s held-out early stopping,
only as far as the held-out metric allows: the untrained PRM is the first candidate kept).

The log-prob is read from the PRM's body in the same forward pass as the hidden state (the body
is a copy of the policy, so at initialisation it is the policy's log-prob) and is differentiable:
training the body moves it, as AIRL's LM prior does. The prompt boundary has no step: x = 0.
A trace must fit in the model's context (a clear error otherwise; ``lm_feature="none"`` reads
long traces in windows).
"""

from __future__ import annotations

import torch

LM_FEATURES = ("none", "step", "running_min")


def lm_feature_values(seg_logprob: torch.Tensor, seg_ntokens: torch.Tensor, mode: str) -> torch.Tensor:
    """The feature at every boundary ``[prompt, step_1, ..., step_n]`` -> ``(n + 1,)``.

    ``seg_logprob``: ``(n,)`` summed log-prob of each step segment; ``seg_ntokens``: ``(n,)`` its
    token count.

    >>> lm_feature_values(torch.tensor([-1.0, -6.0, -2.0]), torch.tensor([1, 2, 2]), "running_min").tolist()
    [0.0, -1.0, -3.0, -3.0]
    >>> lm_feature_values(torch.tensor([-1.0, -6.0, -2.0]), torch.tensor([1, 2, 2]), "step").tolist()
    [0.0, -1.0, -3.0, -1.0]
    """
    if mode not in LM_FEATURES or mode == "none":
        raise ValueError(f"lm_feature must be one of {', '.join(LM_FEATURES[1:])} here, got {mode!r}")
    mean = seg_logprob / seg_ntokens.to(seg_logprob.dtype).clamp(min=1)  # (n,)
    if mode == "running_min" and mean.numel():
        mean = torch.cummin(mean, dim=0).values
    return torch.cat([mean.new_zeros(1), mean])


def check_lm_feature(mode: str, weight: float) -> None:
    """The option's checks (`LMFeatureOptions.__post_init__`)."""
    if mode not in LM_FEATURES:
        raise ValueError(f"unknown lm_feature {mode!r}; valid: {', '.join(LM_FEATURES)}")
    if mode != "none" and not weight > 0:
        raise ValueError(f"lm_feature_weight must be > 0 (the head starts as that multiple of the LM log-prob), got {weight}")


def init_feature_head(head: torch.nn.Linear, weight: float) -> torch.nn.Linear:
    """A head with one more input (the LM feature, last column): zero weights and bias except
    ``weight`` on the feature of every output."""
    new = torch.nn.Linear(head.in_features + 1, head.out_features, device=head.weight.device, dtype=head.weight.dtype)
    with torch.no_grad():
        new.weight.zero_()
        new.bias.zero_()
        new.weight[:, -1] = float(weight)
    return new
