"""Pin the GRPO math against values computed by hand on tiny tensors."""

import math

import pytest
import torch

from prmgym.agents.advantages import (
    aggregate_loss,
    clipped_surrogate,
    group_advantages,
    group_std,
    k3_kl,
    process_step_advantages,
)

torch.set_num_threads(1)


def test_group_advantages_by_hand():
    # group 1: rewards 1, 0, 0, 1 -> mean .5, population std .5 -> +-1 / (.5 + eps)
    # group 2: all zero -> zero spread, all advantages 0
    r = torch.tensor([1.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0])
    adv, zero = group_advantages(r, group_size=4, eps=1e-4)
    a = 0.5 / (0.5 + 1e-4)
    assert adv.tolist() == pytest.approx([a, -a, -a, a, 0, 0, 0, 0], abs=1e-6)
    assert zero.tolist() == [False, True]


def test_group_advantages_three_values():
    # rewards 0, .5, 1: mean .5, pop std sqrt(1/6)
    adv, _ = group_advantages(torch.tensor([0.0, 0.5, 1.0]), group_size=3, eps=0.0)
    s = math.sqrt(1 / 6)
    assert adv.tolist() == pytest.approx([-0.5 / s, 0.0, 0.5 / s], abs=1e-5)


def test_dr_grpo_advantages_no_std():
    adv, _ = group_advantages(torch.tensor([0.0, 0.5, 1.0, 1.0]), group_size=4, scale_std=False)
    assert adv.tolist() == pytest.approx([-0.625, -0.125, 0.375, 0.375])


def test_invalid_samples_are_excluded_from_stats_and_zeroed():
    r = torch.tensor([1.0, 0.0, 0.0, 0.0])
    valid = torch.tensor([True, True, True, False])  # last one: sandbox error
    adv, zero = group_advantages(r, group_size=4, eps=0.0, valid=valid)
    # stats over (1, 0, 0): mean 1/3, std sqrt(2/9)
    s = math.sqrt(2 / 9)
    assert adv.tolist() == pytest.approx([(2 / 3) / s, -(1 / 3) / s, -(1 / 3) / s, 0.0], abs=1e-5)
    assert zero.tolist() == [False]
    # only one valid sample left -> no spread, no signal
    adv, zero = group_advantages(r, group_size=4, valid=torch.tensor([True, False, False, False]))
    assert adv.abs().sum() == 0 and zero.tolist() == [True]


def test_group_advantages_rejects_ragged():
    with pytest.raises(ValueError, match="multiple of group_size"):
        group_advantages(torch.zeros(5), group_size=2)


def test_group_std():
    assert group_std([0.0, 1.0]) == pytest.approx(0.5)
    assert group_std([0.3, 0.3, 0.3]) == pytest.approx(0.0)


def test_clipped_surrogate_by_hand():
    # ratios: e^0=1, e^0.5=1.6487, e^-0.5=0.6065, e^0.1=1.1052
    logp = torch.tensor([[0.0, 0.5, -0.5, 0.1]])
    old = torch.zeros(1, 4)
    for A, expect_loss, low, high in [
        (1.0, [-1.0, -1.2, -math.exp(-0.5), -math.exp(0.1)], [0, 0, 0, 0], [0, 1, 0, 0]),
        (-1.0, [1.0, math.exp(0.5), 0.8, math.exp(0.1)], [0, 0, 1, 0], [0, 0, 0, 0]),
    ]:
        out = clipped_surrogate(logp, old, torch.tensor([A]), eps_low=0.2, eps_high=0.2)
        assert out.loss[0].tolist() == pytest.approx(expect_loss, abs=1e-5)
        assert out.clipped_low[0].int().tolist() == low
        assert out.clipped_high[0].int().tolist() == high


def test_clip_higher_asymmetric():
    logp = torch.log(torch.tensor([[1.25, 1.3]]))
    out = clipped_surrogate(logp, torch.zeros(1, 2), torch.tensor([2.0]), eps_low=0.2, eps_high=0.28)
    # 1.25 < 1.28: unclipped 2.5; 1.3 > 1.28: clipped to 1.28 * 2 = 2.56
    assert out.loss[0].tolist() == pytest.approx([-2.5, -2.56], abs=1e-5)
    assert out.clipped_high[0].tolist() == [False, True]


def test_clipped_gradient_vanishes():
    logp = torch.tensor([[0.5]], requires_grad=True)
    clipped_surrogate(logp, torch.zeros(1, 1), torch.tensor([1.0])).loss.sum().backward()
    assert logp.grad.item() == 0.0
    logp = torch.tensor([[0.1]], requires_grad=True)
    clipped_surrogate(logp, torch.zeros(1, 1), torch.tensor([1.0])).loss.sum().backward()
    assert logp.grad.item() == pytest.approx(-math.exp(0.1))


def test_k3_kl_by_hand():
    logp = torch.tensor([-1.0, -2.0, -0.5])
    ref = torch.tensor([-1.0, -1.0, -1.5])
    # d = ref - logp = 0, 1, -1 -> e^d - d - 1 = 0, e - 2, e^-1
    assert k3_kl(logp, ref).tolist() == pytest.approx([0.0, math.e - 2, math.exp(-1)], abs=1e-6)
    assert (k3_kl(torch.randn(100), torch.randn(100)) >= 0).all()


def test_loss_aggregations_by_hand():
    per_token = torch.tensor([[1.0, 2.0, 3.0, 0.0], [4.0, 0.0, 0.0, 0.0]])
    mask = torch.tensor([[1, 1, 1, 0], [1, 0, 0, 0]])
    # token mean: (1+2+3+4) / 4
    assert aggregate_loss(per_token, mask, "token_mean").item() == pytest.approx(2.5)
    # sequence mean: mean(2, 4)
    assert aggregate_loss(per_token, mask, "seq_mean").item() == pytest.approx(3.0)
    # Dr. GRPO: 10 / (2 * 8)
    assert aggregate_loss(per_token, mask, "dr_grpo", max_completion_length=8).item() == pytest.approx(10 / 16)
    with pytest.raises(ValueError, match="max_completion_length"):
        aggregate_loss(per_token, mask, "dr_grpo")
    with pytest.raises(ValueError, match="valid: token_mean"):
        aggregate_loss(per_token, mask, "sum")


def test_seq_mean_skips_fully_masked_rows():
    per_token = torch.tensor([[2.0, 2.0], [9.0, 9.0]])
    mask = torch.tensor([[1, 1], [0, 0]])
    assert aggregate_loss(per_token, mask, "seq_mean").item() == pytest.approx(2.0)


def test_process_step_advantages_by_hand():
    # one group, two samples: steps (1, 0) and (0, 1, 1) -> pooled mean .6, std sqrt(.24)
    sr = [[[1.0, 0.0], [0.0, 1.0, 1.0]]]
    s = math.sqrt(0.24)
    hi, lo = 0.4 / s, -0.6 / s
    step = process_step_advantages(sr, eps=0.0, mode="step")
    assert step[0][0] == pytest.approx([hi, lo]) and step[0][1] == pytest.approx([lo, hi, hi])
    rtg = process_step_advantages(sr, eps=0.0, mode="return_to_go")
    assert rtg[0][0] == pytest.approx([hi + lo, lo])
    assert rtg[0][1] == pytest.approx([lo + 2 * hi, 2 * hi, hi])
    # no spread -> zeros
    assert process_step_advantages([[[0.5], [0.5, 0.5]]]) == [[[0.0], [0.0, 0.0]]]
    with pytest.raises(ValueError, match="return_to_go"):
        process_step_advantages(sr, mode="bogus")
