"""The GRPO math, one documented function per formula (see docs/algorithms.md, "GRPO").

Everything here works on plain tensors so it can be pinned by hand-computed tests:

>>> import torch
>>> adv, zero = group_advantages(torch.tensor([1.0, 0.0, 0.0, 1.0, 1.0, 1.0]), group_size=3, eps=0.0)
>>> [round(a, 3) for a in adv.tolist()], zero.tolist()
([1.414, -0.707, -0.707, 0.0, 0.0, 0.0], [False, True])
"""

from __future__ import annotations

from typing import NamedTuple, Sequence

import torch

LOSS_TYPES = ("token_mean", "seq_mean", "dr_grpo")
PROCESS_MODES = ("return_to_go", "step")


def group_advantages(
    rewards: torch.Tensor,
    group_size: int,
    eps: float = 1e-4,
    scale_std: bool = True,
    valid: torch.Tensor | None = None,
    zero_spread_tol: float = 1e-6,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Group-normalized outcome advantages.

    ``rewards`` is flat, shape ``(num_groups * group_size,)``, groups contiguous. Within
    each group the advantage of sample i is ``(r_i - mean(r)) / (std(r) + eps)``; with
    ``scale_std=False`` (Dr. GRPO) it is ``r_i - mean(r)``. ``std`` is the *population*
    standard deviation (divide by the number of valid samples), the one ReST-GRPO's σ0
    filter uses too.

    ``valid`` (bool, same shape) excludes samples from the statistics -- e.g. a sandbox
    infrastructure error: such a sample gets advantage 0 and must also be masked out of the
    loss by the caller. A group whose valid rewards have spread ``<= zero_spread_tol`` (or
    that has fewer than 2 valid samples) carries no learning signal: all its advantages are
    exactly 0.

    Returns ``(advantages, zero_spread)``: advantages shaped like ``rewards``, and a bool
    tensor ``(num_groups,)`` marking the zero-spread groups (log ``zero_spread.float().mean()``).
    """
    if rewards.dim() != 1 or rewards.numel() % group_size != 0:
        raise ValueError(
            f"rewards must be 1-D with a multiple of group_size={group_size} entries, got shape {tuple(rewards.shape)}"
        )
    r = rewards.float().view(-1, group_size)  # (P, G)
    v = torch.ones_like(r, dtype=torch.bool) if valid is None else valid.bool().view(-1, group_size)
    vf = v.float()
    n = vf.sum(dim=1, keepdim=True)  # (P, 1)
    mean = (r * vf).sum(dim=1, keepdim=True) / n.clamp(min=1)
    var = (((r - mean) ** 2) * vf).sum(dim=1, keepdim=True) / n.clamp(min=1)
    std = var.sqrt()
    zero = (std.squeeze(1) <= zero_spread_tol) | (n.squeeze(1) < 2)  # (P,)
    adv = r - mean
    if scale_std:
        adv = adv / (std + eps)
    adv = torch.where(v & ~zero.unsqueeze(1), adv, torch.zeros_like(adv))
    return adv.reshape(-1), zero


def group_std(rewards: Sequence[float]) -> float:
    """Population standard deviation of one group's rewards (the ReST-GRPO filter statistic)."""
    t = torch.tensor(list(rewards), dtype=torch.float64)
    return float(t.std(unbiased=False)) if t.numel() else 0.0


def process_step_advantages(
    step_rewards: Sequence[Sequence[Sequence[float]]],
    eps: float = 1e-4,
    mode: str = "return_to_go",
    scale_std: bool = True,
) -> list[list[list[float]]]:
    """Normalize per-step process rewards within each group; turn them into per-step advantages.

    ``step_rewards[g][i][k]`` is the process reward of step k of sample i in group g. All
    step rewards of one group are pooled and normalized, ``r~ = (r - mean) / (std + eps)``
    (``scale_std=False``: only centred), as in DeepSeekMath's process supervision. Then:

    * ``mode="return_to_go"`` (default, DeepSeekMath): step k's advantage is the sum of the
      normalized rewards of steps k, k+1, ... of the same sample (credit flows backwards);
    * ``mode="step"``: step k's advantage is its own normalized reward.

    The trainer adds ``process_reward_weight * this`` to the outcome advantage of every
    token of step k. A group whose pooled step rewards have no spread contributes zeros.

    >>> process_step_advantages([[[1.0, 0.0], [0.0]]], eps=0.0, mode="step")
    [[[1.4142135623730951, -0.7071067811865475], [-0.7071067811865475]]]
    """
    if mode not in PROCESS_MODES:
        raise ValueError(f"unknown process advantage mode {mode!r}; valid: {', '.join(PROCESS_MODES)}")
    out: list[list[list[float]]] = []
    for group in step_rewards:
        flat = [float(x) for sample in group for x in sample]
        if len(flat) == 0:
            out.append([[] for _ in group])
            continue
        t = torch.tensor(flat, dtype=torch.float64)
        mean = float(t.mean())
        std = float(t.std(unbiased=False))
        norm_group = []
        for sample in group:
            if std <= 1e-12:
                norm = [0.0 for _ in sample]
            else:
                norm = [(float(x) - mean) / ((std + eps) if scale_std else 1.0) for x in sample]
            if mode == "return_to_go":
                acc, rtg = 0.0, []
                for x in reversed(norm):
                    acc += x
                    rtg.append(acc)
                norm = rtg[::-1]
            norm_group.append(norm)
        out.append(norm_group)
    return out


class SurrogateOut(NamedTuple):
    loss: torch.Tensor  # (B, T) per-token loss (negated clipped objective)
    ratio: torch.Tensor  # (B, T)
    clipped_low: torch.Tensor  # (B, T) bool: ratio < 1 - eps_low and A < 0 (the clip is active)
    clipped_high: torch.Tensor  # (B, T) bool: ratio > 1 + eps_high and A > 0


def clipped_surrogate(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    eps_low: float = 0.2,
    eps_high: float = 0.2,
) -> SurrogateOut:
    """PPO/GRPO clipped surrogate per token, as a loss (to minimise).

    ``rho = exp(logp - old_logp)``; ``loss = -min(rho * A, clip(rho, 1 - eps_low, 1 + eps_high) * A)``.
    ``advantages`` is ``(B, T)`` (per-token) or ``(B,)`` (broadcast over tokens). The
    clip masks mark the tokens whose gradient the clip removed: low when ``A < 0`` and
    ``rho < 1 - eps_low``, high when ``A > 0`` and ``rho > 1 + eps_high``.
    """
    if advantages.dim() == 1:
        advantages = advantages.unsqueeze(1)  # (B, 1)
    ratio = torch.exp(logp - old_logp)  # (B, T)
    unclipped = ratio * advantages
    clipped = torch.clamp(ratio, 1.0 - eps_low, 1.0 + eps_high) * advantages
    loss = -torch.minimum(unclipped, clipped)
    low = (ratio < 1.0 - eps_low) & (advantages < 0)
    high = (ratio > 1.0 + eps_high) & (advantages > 0)
    return SurrogateOut(loss, ratio, low, high)


def k3_kl(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """Per-token k3 estimator of KL(pi || ref): ``exp(ref - logp) - (ref - logp) - 1`` (>= 0)."""
    d = ref_logp - logp
    return torch.exp(d) - d - 1.0


def aggregate_loss(
    per_token: torch.Tensor,
    mask: torch.Tensor,
    loss_type: str = "token_mean",
    max_completion_length: int | None = None,
) -> torch.Tensor:
    """Reduce a ``(B, T)`` per-token loss to a scalar; ``mask`` (B, T) marks trained tokens.

    * ``"token_mean"``: sum over all masked tokens of the batch / their count (DAPO; TRL's
      default). Every token weighs the same, long completions weigh more.
    * ``"seq_mean"``: mean over sequences of each sequence's token-mean (original GRPO).
      Every sequence weighs the same; a token of a short sequence weighs more (length bias).
      Sequences with no trained tokens are left out of the mean.
    * ``"dr_grpo"``: sum over masked tokens / (B * max_completion_length), a constant
      normalizer (Dr. GRPO); pair it with advantages computed with ``scale_std=False``.
    """
    m = mask.to(per_token.dtype)
    if loss_type == "token_mean":
        return (per_token * m).sum() / m.sum().clamp(min=1.0)
    if loss_type == "seq_mean":
        per_seq_count = m.sum(dim=1)  # (B,)
        per_seq = (per_token * m).sum(dim=1) / per_seq_count.clamp(min=1.0)
        has = per_seq_count > 0
        if not bool(has.any()):
            return (per_token * m).sum()  # zero, still attached to the graph
        return per_seq[has].mean()
    if loss_type == "dr_grpo":
        if not max_completion_length or max_completion_length <= 0:
            raise ValueError("loss_type='dr_grpo' needs max_completion_length > 0 (the constant normalizer)")
        return (per_token * m).sum() / (per_token.shape[0] * max_completion_length)
    raise ValueError(f"unknown loss_type {loss_type!r}; valid: {', '.join(LOSS_TYPES)}")


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> float:
    """Mean of ``x`` over ``mask`` as a float (0.0 when the mask is empty); for logging."""
    m = mask.to(torch.float32)
    total = float(m.sum())
    return float((x.float() * m).sum()) / total if total > 0 else 0.0
