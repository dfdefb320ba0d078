"""The GRPO family (DAPO, GSPO, RLOO, REINFORCE++): formulas by hand, config refusals,
dynamic sampling's refill and cap, and a short learning run per variant."""

import math

import numpy as np
import pytest
import torch

from prmgym.agents.advantages import (
    aggregate_loss,
    kl_penalty,
    overlong_penalty,
    reinforce_pp_advantages,
    rloo_advantages,
    sequence_clipped_surrogate,
)
from prmgym.agents.grpo import PRESETS, GRPOConfig, GRPOTrainer, apply_preset
from prmgym.agents.rest_grpo import ReSTGRPOConfig, ReSTGRPOTrainer
from prmgym.config import ConfigError
from prmgym.models import tiny
from test_rollout_toyenv import ToyEnv

torch.set_num_threads(1)

FAST = dict(num_generations=4, batch_size=8, max_new_tokens=1, max_steps=1, learning_rate=3e-3)


# ------------------------------------------------------------------ formulas by hand
def test_rloo_by_hand_and_masked_samples():
    # group (1, 0, 0, 0), last sample invalid: baselines over the other valid samples
    # sample 0: 1 - (0 + 0)/2 = 1; samples 1, 2: 0 - (1 + 0)/2 = -.5; sample 3: excluded -> 0
    r = torch.tensor([1.0, 0.0, 0.0, 0.0])
    adv = rloo_advantages(r, 4, valid=torch.tensor([True, True, True, False]))
    assert adv.tolist() == pytest.approx([1.0, -0.5, -0.5, 0.0])
    # all valid: 0.5, 0.5 -> rewards (1, 0, .5, .5): 1 - 1/3 = 2/3, 0 - 2/3, .5 - .5 = 0 (twice)
    adv = rloo_advantages(torch.tensor([1.0, 0.0, 0.5, 0.5]), 4)
    assert adv.tolist() == pytest.approx([2 / 3, -2 / 3, 0.0, 0.0], abs=1e-6)
    # n/(n-1) x (r - mean): no std division; one valid sample -> no baseline -> 0
    assert rloo_advantages(torch.tensor([3.0, 1.0]), 2).tolist() == [2.0, -2.0]
    assert rloo_advantages(torch.tensor([3.0, 1.0]), 2, valid=torch.tensor([True, False])).tolist() == [0.0, 0.0]
    with pytest.raises(ValueError, match="multiple of group_size"):
        rloo_advantages(torch.zeros(3), 2)


def test_overlong_penalty_by_hand():
    # L_max 16, L_cache 4: no penalty up to 12; 13 -> -1/4; 15 -> -3/4; 16 -> -1; beyond -> -1
    out = overlong_penalty(torch.tensor([0, 12, 13, 15, 16, 17, 100]), max_length=16, cache_length=4)
    assert out.tolist() == pytest.approx([0.0, 0.0, -0.25, -0.75, -1.0, -1.0, -1.0])
    with pytest.raises(ValueError, match="cache_length <= max_length"):
        overlong_penalty(torch.tensor([1]), max_length=4, cache_length=5)


def test_kl_penalty_by_hand():
    logp, ref = torch.tensor([-1.0, -0.5, -2.0]), torch.tensor([-1.0, -1.5, -1.0])
    assert kl_penalty(logp, ref, "k1").tolist() == pytest.approx([0.0, 1.0, -1.0])
    assert kl_penalty(logp, ref, "k2").tolist() == pytest.approx([0.0, 0.5, 0.5])
    with pytest.raises(ValueError, match="k1, k2"):
        kl_penalty(logp, ref, "k3")


def test_reinforce_pp_by_hand():
    # episode 1 (2 tokens): outcome 1 at its last token, KL penalty .1 per token -> rewards -.1, .9
    # episode 2 (1 token of 2): outcome 0, KL .1 -> reward -.1; its pad token is masked
    tok_r = torch.tensor([[-0.1, 0.9], [-0.1, 5.0]])
    mask = torch.tensor([[True, True], [True, False]])
    # returns: .8, .9 | -.1 ; mean .5333.., population std over the 3 tokens
    g = [0.8, 0.9, -0.1]
    mean = sum(g) / 3
    std = math.sqrt(sum((x - mean) ** 2 for x in g) / 3)
    adv = reinforce_pp_advantages(tok_r, mask, eps=0.0)
    expect = [(0.8 - mean) / std, (0.9 - mean) / std, (-0.1 - mean) / std, 0.0]
    assert adv.flatten().tolist() == pytest.approx(expect, abs=1e-5)
    # global, not per group: a batch of all-equal rewards has no signal; an empty mask gives zeros
    assert reinforce_pp_advantages(torch.ones(2, 1), torch.ones(2, 1, dtype=torch.bool)).abs().max() == 0
    assert reinforce_pp_advantages(torch.ones(2, 1), torch.zeros(2, 1, dtype=torch.bool)).abs().max() == 0


def test_sequence_ratio_and_clip_by_hand():
    # sequence 0: log-ratios .1, .3 (mean .2) ; sequence 1: -.4 then a masked pad token
    logp = torch.tensor([[0.1, 0.3], [-0.4, 9.0]])
    mask = torch.tensor([[True, True], [True, False]])
    s0, s1 = math.exp(0.2), math.exp(-0.4)
    out = sequence_clipped_surrogate(logp, torch.zeros(2, 2), torch.tensor([-1.0, -1.0]), mask, 0.2, 0.28)
    assert out.ratio[:, 0].tolist() == pytest.approx([s0, s1], abs=1e-6)
    # A < 0: loss = -min(s A, clip(s) A) = max(s, clip(s)) -> s0 (inside the upper range .. 1.2214 < 1.28), 0.8 for s1
    assert out.loss[0].tolist() == pytest.approx([s0, s0], abs=1e-6)
    assert out.loss[1, 0].item() == pytest.approx(0.8, abs=1e-6)
    assert out.clipped_low.tolist() == [[False, False], [True, True]]
    assert not out.clipped_high.any()


def test_sequence_surrogate_gradient_is_gspos():
    # GSPO: J = s A with s = exp(mean_t(logp - old)); dJ/dlogp_t = s A / |y|. The per-token form
    # aggregated by seq_mean must give the same loss value and gradient.
    logp = torch.tensor([[-0.2, -0.1, -0.3]], requires_grad=True)
    old = torch.tensor([[-0.25, -0.1, -0.2]])
    mask = torch.ones(1, 3, dtype=torch.bool)
    out = sequence_clipped_surrogate(logp, old, torch.tensor([2.0]), mask, 0.5, 0.5)
    loss = aggregate_loss(out.loss, mask, "seq_mean")
    loss.backward()
    s = math.exp((0.05 + 0.0 - 0.1) / 3)
    assert loss.item() == pytest.approx(-2.0 * s, abs=1e-6)
    assert logp.grad[0].tolist() == pytest.approx([-2.0 * s / 3] * 3, abs=1e-6)
    # outside the range (A > 0, s > 1 + eps_high): no gradient at all
    logp2 = torch.tensor([[0.5, 0.5]], requires_grad=True)
    out = sequence_clipped_surrogate(logp2, torch.zeros(1, 2), torch.tensor([1.0]), torch.ones(1, 2, dtype=torch.bool), 3e-4, 4e-4)
    aggregate_loss(out.loss, torch.ones(1, 2), "seq_mean").backward()
    assert logp2.grad.abs().max() == 0 and out.clipped_high.all()


# ------------------------------------------------------------------ config
@pytest.mark.parametrize(
    "kw, match",
    [
        (dict(advantage="ppo"), "choose one of grpo, rloo, reinforce_pp"),
        (dict(ratio="seq"), "choose one of token, sequence"),
        (dict(sampling="always"), "choose one of static, dynamic"),
        (dict(advantage="rloo", scale_rewards=True), "remove scale_rewards"),
        (dict(advantage="reinforce_pp", scale_rewards=False), "remove scale_rewards"),
        (dict(reward_kl_coef=0.1), "set advantage: reinforce_pp, or use beta"),
        (dict(advantage="reinforce_pp", reward_kl_coef=-1.0), "reward_kl_coef must be >= 0"),
        (dict(advantage="reinforce_pp", reward_kl_estimator="k3"), "choose one of k1, k2"),
        (dict(overlong={"max_len": 10}), "unknown overlong keys"),
        (dict(overlong={"max_length": 100, "cache_length": 200}), "cache_length <= max_length"),
        (dict(max_new_tokens=4, max_steps=2, overlong={"max_length": 20, "cache_length": 4}), "can never act"),
        (dict(overlong={"factor": -1.0}), "factor must be >= 0"),
        (dict(overlong=[1, 2]), "must be a mapping"),
        (dict(max_sampling_rounds=-1), "max_sampling_rounds must be >= 0"),
    ],
)
def test_nonsensical_combinations_are_refused(kw, match):
    with pytest.raises(ValueError, match=match):
        GRPOConfig(**kw)
    with pytest.raises(ValueError, match=match):  # ReST-GRPO inherits the checks
        ReSTGRPOConfig(**kw)


def test_presets():
    dapo = GRPOConfig.from_preset("dapo", max_new_tokens=32, max_steps=8)
    assert (dapo.epsilon_low, dapo.epsilon_high, dapo.loss_type, dapo.sampling, dapo.beta) == (0.2, 0.28, "token_mean", "dynamic", 0.0)
    assert dapo.overlong_params == (256, 51, 1.0)  # defaults: L_max = the completion cap, L_cache = a fifth
    gspo = GRPOConfig.from_preset("gspo")
    assert (gspo.ratio, gspo.epsilon_low, gspo.epsilon_high, gspo.loss_type) == ("sequence", 3e-4, 4e-4, "seq_mean")
    assert GRPOConfig.from_preset("rloo").advantage == "rloo"
    assert GRPOConfig.from_preset("reinforce_pp", reward_kl_estimator="k2").reward_kl_estimator == "k2"
    assert apply_preset({"preset": "dapo", "epsilon_high": 0.3})["epsilon_high"] == 0.3  # the section wins
    assert PRESETS["dapo"]["overlong"] == {}  # apply_preset hands out copies
    with pytest.raises(ValueError, match="unknown preset 'dpo'; choose one of dapo"):
        apply_preset({"preset": "dpo"})


def test_run_config_reads_the_dapo_example_and_refuses_a_bad_preset():
    import yaml

    from prmgym.recipes.train import load_run_config

    cfg = load_run_config(yaml.safe_load(open("examples/configs/dapo_countdown.yaml")))
    t = cfg.trainer_config()
    assert (t.sampling, t.epsilon_high, t.loss_type, t.overlong_params) == ("dynamic", 0.28, "token_mean", (256, 64, 1.0))
    with pytest.raises(ConfigError, match="trainer: unknown preset"):
        load_run_config({"env": "prmgym/Countdown-v0", "trainer": {"preset": "nope"}})
    with pytest.raises(ConfigError, match="remove scale_rewards"):
        load_run_config({"env": "prmgym/Countdown-v0", "trainer": {"preset": "rloo", "scale_rewards": True}})


# ------------------------------------------------------------------ dynamic sampling
class FlatOrSpread(ToyEnv):
    """Tasks whose number is not a multiple of 3 always score 1 (a zero-spread group); the
    others score 0, 1, 0, 1, ... in the order the episodes finish (every group has spread)."""

    def __init__(self, counter, spread_every=3, **kw):
        super().__init__(**kw)
        self.counter = counter
        self.spread_every = spread_every

    def step(self, action):
        obs, _, term, trunc, info = super().step(action)
        if not term:
            return obs, 0.0, term, trunc, info
        n = int(self.task.id.rsplit("/", 1)[1])
        if n % self.spread_every:
            return obs, 1.0, term, trunc, info
        self.counter[0] += 1
        return obs, float(self.counter[0] % 2), term, trunc, info


def make_dynamic(spread_every=3, cls=GRPOTrainer, ccls=GRPOConfig, **kw):
    counter = [0]
    cfg = ccls(**{**FAST, "sampling": "dynamic", **kw})
    return cls(tiny.random_tiny_policy(seed=0), lambda: FlatOrSpread(counter, spread_every), cfg)


def spreads(trajs, G):
    return [float(np.std([t.reward for t in trajs[g * G:(g + 1) * G]])) for g in range(len(trajs) // G)]


def test_dynamic_sampling_refills_to_a_full_batch():
    tr = make_dynamic(max_sampling_rounds=20)
    rounds = []
    for _ in range(3):
        m = tr.step()
        trajs = tr._last_trajectories
        assert len(trajs) == 8 and m["dynamic/batch_full"] == 1.0 and m["dynamic/kept_groups"] == 2
        assert all(s > 0 for s in spreads(trajs, 4))  # only groups with spread are trained
        assert m["dynamic/generations"] == 8 * (1 + m["dynamic/rounds"])  # 2 prompts x 4 per round
        assert m["budget/generated_total"] >= m["dynamic/generations"]  # >= 1 token per episode
        rounds.append(m["dynamic/rounds"])
    assert max(rounds) > 0  # two thirds of the tasks give flat groups: some steps needed a refill


def test_dynamic_sampling_respects_the_cap_and_static_keeps_all():
    tr = make_dynamic(spread_every=10**9, max_sampling_rounds=2)  # only task 0 has spread: all flat
    before = {k: v.clone() for k, v in tr.model.state_dict().items()}
    m = tr.step()
    assert m["dynamic/rounds"] == 2 and m["dynamic/generations"] == 24
    assert m["dynamic/kept_groups"] == 0 and m["dynamic/batch_full"] == 0.0
    assert "loss" not in m and all(torch.equal(before[k], v) for k, v in tr.model.state_dict().items())
    m = make_dynamic(spread_every=10**9, max_sampling_rounds=0).step()
    assert m["dynamic/rounds"] == 0 and m["dynamic/generations"] == 8
    # static sampling: one round, every group trained, no dynamic/ metrics
    m = make_dynamic(spread_every=10**9, sampling="static").step()
    assert "dynamic/rounds" not in m and m["zero_spread_frac"] == 1.0 and m["episodes"] == 8


def test_dynamic_sampling_with_rest_grpo_refills_after_its_filter():
    tr = make_dynamic(cls=ReSTGRPOTrainer, ccls=ReSTGRPOConfig, max_sampling_rounds=20, sigma0=0.05)
    m = tr.step()
    assert m["dynamic/batch_full"] == 1.0 and len(tr._last_trajectories) == 8
    assert all(s >= 0.05 for s in spreads(tr._last_trajectories, 4))


# ------------------------------------------------------------------ combinations with the trainer
class StepRewards:
    """A hand-made PRM: step reward 1 if the step starts with a digit, else 0."""

    def step_rewards(self, prompts, step_lists, trajectories):
        return [[float(s[:1].isdigit()) for s in steps] for steps in step_lists]


def make(cfg_kw=None, env_kw=None, cls=GRPOTrainer, ccls=GRPOConfig, **kw):
    cfg = ccls(**{**FAST, **(cfg_kw or {})})
    return cls(tiny.random_tiny_policy(seed=0), lambda: ToyEnv(**(env_kw or {})), cfg, **kw)


def test_reinforce_pp_token_rewards_hold_outcome_kl_and_process_reward():
    tr = make(dict(advantage="reinforce_pp", reward_kl_coef=0.5, reward_kl_estimator="k2", process_reward_weight=0.3),
              env_kw=dict(one_step=False, episode_len=2, max_steps=3), process_reward=StepRewards())
    with torch.no_grad():  # move the policy away from its reference so the KL is not 0
        next(tr.model.parameters()).add_(0.05)
    trajs, _ = tr.rollout(tr.sample_prompts())
    adv, info = tr.compute_advantages(trajs)
    from prmgym.agents.common import pack_trajectories, packed_logprobs

    T = adv.shape[1]
    packed = pack_trajectories(trajs, tr.policy.encode, tr.policy.tokenizer.pad_token_id)
    with torch.no_grad():
        ref, _ = packed_logprobs(tr.ref_model, packed)
    tok_r = torch.zeros(len(trajs), T)
    mask = torch.zeros(len(trajs), T, dtype=torch.bool)
    for b, t in enumerate(trajs):
        n = t.num_tokens
        mask[b, :n] = True
        d = torch.tensor(t.old_logprobs) - ref[b, :n]
        tok_r[b, :n] -= 0.5 * 0.5 * d * d
        tok_r[b, n - 1] += t.reward
        for s_text, (s, e) in zip(t.steps, t.step_bounds):
            tok_r[b, e - 1] += 0.3 * float(s_text[:1].isdigit())
    assert info["reward_kl"] > 0
    assert adv.flatten().tolist() == pytest.approx(reinforce_pp_advantages(tok_r, mask).flatten().tolist(), abs=1e-4)


def test_overlong_shaping_enters_the_advantages():
    # episodes of 1-3 one-token steps; L_max 3, L_cache 2: length 1 -> 0, 2 -> -.5, 3 -> -1
    tr = make(dict(max_steps=3, overlong={"max_length": 3, "cache_length": 2}, advantage="rloo"),
              env_kw=dict(one_step=False, max_steps=3))
    trajs, _ = tr.rollout(tr.sample_prompts())
    adv, info = tr.compute_advantages(trajs)
    shaped = torch.tensor([t.reward + {1: 0.0, 2: -0.5, 3: -1.0}[t.num_tokens] for t in trajs])
    assert adv[:, 0].tolist() == pytest.approx(rloo_advantages(shaped, 4).tolist(), abs=1e-6)
    assert info["overlong/penalty_mean"] == pytest.approx(float((shaped - torch.tensor([t.reward for t in trajs])).mean()))


# ------------------------------------------------------------------ learning, one run per variant
VARIANTS = {
    "dapo": dict(preset="dapo"),
    "gspo": dict(preset="gspo"),
    "rloo": dict(preset="rloo"),
    "reinforce_pp": dict(preset="reinforce_pp"),
    "rest_grpo+gspo+dynamic": dict(preset="gspo", sampling="dynamic"),
    "rloo+prm": dict(preset="rloo", process_reward_weight=0.5),
}


@pytest.mark.parametrize("name", list(VARIANTS))
def test_variant_learns_trivial_env(name):
    rest = name.startswith("rest_grpo")
    kw = apply_preset({**FAST, "num_generations": 8, "batch_size": 32, **VARIANTS[name]})
    ccls, cls = (ReSTGRPOConfig, ReSTGRPOTrainer) if rest else (GRPOConfig, GRPOTrainer)
    extra = dict(process_reward=StepRewards()) if "prm" in name else {}
    tr = cls(tiny.random_tiny_policy(seed=0), lambda: ToyEnv(), ccls(**kw), **extra)
    before = {k: v.detach().clone() for k, v in tr.model.state_dict().items()}
    hist = tr.train(18)
    first = np.mean([m["reward_mean"] for m in hist[:4]])
    last = np.mean([m["reward_mean"] for m in hist[-4:]])
    assert last > first + 0.3, (name, first, last)
    assert any(not torch.equal(before[k], v) for k, v in tr.model.state_dict().items())


def test_dynamic_sampling_run_resumes_exactly(tmp_path):
    from prmgym.agents.common import checkpoint_dirs

    def strip(m):
        return {k: v for k, v in m.items() if not k.startswith("time/")}

    a = make_dynamic(max_sampling_rounds=20, save_every=2)
    a.run_dir = str(tmp_path)
    hist_a = a.train(4)
    b = make_dynamic(max_sampling_rounds=20, save_every=2)  # a fresh process builds exactly this
    # (FlatOrSpread's counter starts again at 0: a group's 4 episodes advance it by 4, so its parity
    # -- the rewards -- at a group's start is the same as in the unbroken run)
    b.load(checkpoint_dirs(str(tmp_path))[0])
    hist_b = b.train(2)
    # the refill rounds draw their prompts from the trainer's generator, so the resumed run repeats them
    assert [m["dynamic/rounds"] for m in hist_b] == [m["dynamic/rounds"] for m in hist_a[2:]]
    assert [strip(m) for m in hist_b] == [strip(m) for m in hist_a[2:]]
