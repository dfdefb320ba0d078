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
ADVANTAGES = ("grpo", "rloo", "reinforce_pp")
RATIOS = ("token", "sequence")
KL_ESTIMATORS = ("k1", "k2")


def _grouped(rewards: torch.Tensor, group_size: int, valid: torch.Tensor | None):
    """``rewards`` and ``valid`` as ``(P, G)`` groups: rewards, valid mask, its float, valid count ``(P, 1)``."""
    if rewards.dim() != 1 or rewards.numel() % group_size != 0:
        raise ValueError(
            f"rewards must be 1-D with a multiple of group_size={group_size} entries, got shape {tuple(rewards.shape)}"
        )
    r = rewards.float().view(-1, group_size)  # (P, G)
    v = torch.ones_like(r, dtype=torch.bool) if valid is None else valid.bool().view(-1, group_size)
    vf = v.float()
    return r, v, vf, vf.sum(dim=1, keepdim=True)


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
    r, v, vf, n = _grouped(rewards, group_size, valid)
    mean = (r * vf).sum(dim=1, keepdim=True) / n.clamp(min=1)
    var = (((r - mean) ** 2) * vf).sum(dim=1, keepdim=True) / n.clamp(min=1)
    std = var.sqrt()
    zero = (std.squeeze(1) <= zero_spread_tol) | (n.squeeze(1) < 2)  # (P,)
    adv = r - mean
    if scale_std:
        adv = adv / (std + eps)
    adv = torch.where(v & ~zero.unsqueeze(1), adv, torch.zeros_like(adv))
    return adv.reshape(-1), zero


def rloo_advantages(
    rewards: torch.Tensor, group_size: int, valid: torch.Tensor | None = None
) -> torch.Tensor:
    """Leave-one-out advantages (RLOO: Ahmadian et al. 2024, after Kool et al. 2019).

    ``A_i = r_i - (1 / (n - 1)) * sum_{j != i} r_j`` over the ``n`` valid samples of i's
    group; no division by the std. Invalid samples (``valid`` False) get 0 and are left out
    of the others' baselines; a group with fewer than 2 valid samples gets 0 everywhere.
    Equal to ``n / (n - 1) * (r_i - mean(r))``, so a group without spread gets exactly 0.

    >>> rloo_advantages(torch.tensor([1.0, 0.0, 0.0, 2.0, 2.0, 2.0]), group_size=3).tolist()
    [1.0, -0.5, -0.5, 0.0, 0.0, 0.0]
    """
    r, v, vf, n = _grouped(rewards, group_size, valid)
    others = ((r * vf).sum(dim=1, keepdim=True) - r) / (n - 1).clamp(min=1)  # mean of the other valid samples
    adv = torch.where(v & (n >= 2), r - others, torch.zeros_like(r))
    return adv.reshape(-1)


def overlong_penalty(lengths: torch.Tensor, max_length: int, cache_length: int) -> torch.Tensor:
    """DAPO's soft overlong punishment (Yu et al. 2025), added to the outcome reward.

    With ``L_max = max_length`` and ``L_cache = cache_length`` (the soft zone at the end):
    ``|y| <= L_max - L_cache`` -> 0; ``L_max - L_cache < |y| <= L_max`` ->
    ``((L_max - L_cache) - |y|) / L_cache`` (from 0 down to -1); ``|y| > L_max`` -> -1.

    >>> overlong_penalty(torch.tensor([10, 12, 14, 16, 20]), max_length=16, cache_length=4).tolist()
    [0.0, 0.0, -0.5, -1.0, -1.0]
    """
    if cache_length <= 0 or cache_length > max_length:
        raise ValueError(f"need 0 < cache_length <= max_length, got cache_length={cache_length}, max_length={max_length}")
    y = lengths.float()
    zone = ((max_length - cache_length) - y) / cache_length
    return torch.where(y <= max_length - cache_length, torch.zeros_like(y), torch.where(y <= max_length, zone, -torch.ones_like(y)))


def kl_penalty(logp: torch.Tensor, ref_logp: torch.Tensor, estimator: str = "k1") -> torch.Tensor:
    """Per-token KL estimate for the reward (REINFORCE++, Hu 2025; estimators after Schulman 2020).

    With ``d = logp - ref_logp`` (``logp`` of the sampled token under the sampling policy):
    ``"k1"`` -> ``d``; ``"k2"`` -> ``d**2 / 2``.

    >>> kl_penalty(torch.tensor([-1.0, -2.0]), torch.tensor([-2.0, -1.0]), "k1").tolist()
    [1.0, -1.0]
    >>> kl_penalty(torch.tensor([-1.0, -2.0]), torch.tensor([-2.0, -1.0]), "k2").tolist()
    [0.5, 0.5]
    """
    d = logp - ref_logp
    if estimator == "k1":
        return d
    if estimator == "k2":
        return 0.5 * d * d
    raise ValueError(f"unknown KL estimator {estimator!r}; valid: {', '.join(KL_ESTIMATORS)}")


def reinforce_pp_advantages(
    token_rewards: torch.Tensor, mask: torch.Tensor, eps: float = 1e-8
) -> torch.Tensor:
    """REINFORCE++ advantages (Hu 2025): returns without a critic, normalised over the batch.

    ``token_rewards`` (B, T) is the per-token reward: the outcome reward at the last token
    of each episode minus ``beta * KL_t`` at every token (built by the trainer). The return
    is ``G_t = sum_{s >= t} r_s`` (gamma = 1); the advantage is ``(G_t - mean) / (std + eps)``
    with mean and (population) std over *all* ``mask``-ed tokens of the batch -- across
    prompts, not per group. Unmasked tokens get 0.

    Two episodes, outcome 1 and 0, no KL: returns 1,1 | 0,0 -> mean .5, std .5 -> +-1.

    >>> r = torch.tensor([[0.0, 1.0], [0.0, 0.0]])
    >>> reinforce_pp_advantages(r, torch.ones(2, 2, dtype=torch.bool), eps=0.0).tolist()
    [[1.0, 1.0], [-1.0, -1.0]]
    """
    m = mask.bool()
    r = torch.where(m, token_rewards.float(), torch.zeros_like(token_rewards, dtype=torch.float32))
    returns = r.flip(1).cumsum(1).flip(1)  # G_t = sum_{s >= t} r_s
    n = m.float().sum()
    if n < 1:
        return torch.zeros_like(returns)
    mean = (returns * m).sum() / n
    std = ((((returns - mean) ** 2) * m).sum() / n).sqrt()
    return torch.where(m, (returns - mean) / (std + eps), torch.zeros_like(returns))


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


def sequence_clipped_surrogate(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    eps_low: float = 3e-4,
    eps_high: float = 4e-4,
) -> SurrogateOut:
    """GSPO's sequence-level clipped surrogate (Zheng et al. 2025), as a per-token loss.

    ``s_i = exp((1/|y_i|) * sum_t (logp - old_logp))`` over the ``mask``-ed tokens of
    sequence i; the clip acts on ``s_i`` as a whole: ``min(s_i A, clip(s_i, 1 - eps_low,
    1 + eps_high) A)``. Written in the GSPO-token form: each token's ratio is
    ``sg[s_i] * pi(y_t) / sg[pi(y_t)]`` -- its value is ``s_i`` and its gradient
    ``s_i * grad log pi(y_t)`` -- so per-token advantages (a dense process reward) pass
    through, and with one advantage per sequence and ``loss_type: seq_mean`` the loss and
    its gradient are GSPO's. The returned ``ratio`` is ``s_i`` on every token of sequence i.

    Log-ratios .1 and .3 average to .2: s = exp(.2) = 1.2214 > 1 + eps_high, clipped for A > 0.

    >>> out = sequence_clipped_surrogate(torch.tensor([[0.1, 0.3]]), torch.zeros(1, 2), torch.tensor([1.0]),
    ...                                  torch.ones(1, 2, dtype=torch.bool), 0.2, 0.2)
    >>> [round(x, 4) for x in out.ratio[0].tolist()], out.loss[0].tolist(), out.clipped_high[0].tolist()
    ([1.2214, 1.2214], [-1.2000000476837158, -1.2000000476837158], [True, True])
    """
    if advantages.dim() == 1:
        advantages = advantages.unsqueeze(1)  # (B, 1)
    m = mask.to(logp.dtype)
    n = m.sum(dim=1, keepdim=True).clamp(min=1.0)  # (B, 1)
    seq_log_ratio = ((logp - old_logp) * m).sum(dim=1, keepdim=True) / n  # (B, 1)
    s = torch.exp(seq_log_ratio)  # (B, 1)
    ratio = s.detach() * torch.exp(logp - logp.detach())  # value s_i, gradient s_i * grad logp_t
    unclipped = ratio * advantages
    clipped = torch.clamp(ratio, 1.0 - eps_low, 1.0 + eps_high) * advantages
    loss = -torch.minimum(unclipped, clipped)
    s_full = s.detach().expand_as(logp)
    low = (s_full < 1.0 - eps_low) & (advantages < 0)
    high = (s_full > 1.0 + eps_high) & (advantages > 0)
    return SurrogateOut(loss, s_full, low, high)


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


def normaliser_weights(token_counts: Sequence[int], loss_type: str = "token_mean") -> list[float]:
    """Each sequence's part of `aggregate_loss`'s normaliser, for gradient accumulation
    (`prmgym.models.optim.micro_batches`): ``token_mean`` -- its trained tokens; ``seq_mean`` --
    1 if it has any trained token (empty ones leave the mean); ``dr_grpo`` -- 1 (B x constant).

    >>> normaliser_weights([3, 0, 2], "token_mean"), normaliser_weights([3, 0, 2], "seq_mean")
    ([3.0, 0.0, 2.0], [1.0, 0.0, 1.0])
    """
    if loss_type == "token_mean":
        return [float(n) for n in token_counts]
    if loss_type == "seq_mean":
        return [1.0 if n > 0 else 0.0 for n in token_counts]
    if loss_type == "dr_grpo":
        return [1.0 for _ in token_counts]
    raise ValueError(f"unknown loss_type {loss_type!r}; valid: {', '.join(LOSS_TYPES)}")


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> float:
    """Mean of ``x`` over ``mask`` as a float (0.0 when the mask is empty); for logging."""
    m = mask.to(torch.float32)
    total = float(m.sum())
    return float((x.float() * m).sum()) / total if total > 0 else 0.0
