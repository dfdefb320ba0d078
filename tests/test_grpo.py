"""GRPOTrainer: learning, exact resume, TensorBoard scalars, NaN stop, masking, config errors."""

import os

import pytest
import torch

from prmgym.agents.common import Callback, NonFiniteLossError, checkpoint_dirs
from prmgym.agents.grpo import GRPOConfig, GRPOTrainer
from prmgym.models import tiny
from test_rollout_toyenv import ToyEnv

torch.set_num_threads(1)

FAST = dict(num_generations=4, batch_size=8, max_new_tokens=1, max_steps=1, learning_rate=3e-3)


def make(cfg_kw=None, env_kw=None, seed=0, **kw):
    cfg = GRPOConfig(**{**FAST, **(cfg_kw or {})})
    policy = tiny.random_tiny_policy(seed=seed)
    env_kw = env_kw or {}
    return GRPOTrainer(policy, lambda: ToyEnv(**env_kw), cfg, eval_env=lambda: ToyEnv(split="test"), **kw)


def params(trainer):
    return {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}


# ------------------------------------------------------------------ config validation
@pytest.mark.parametrize(
    "kw, match",
    [
        (dict(num_generations=1), "num_generations must be >= 2"),
        (dict(num_generations=4, batch_size=10), "multiple of num_generations"),
        (dict(epsilon_low=0.0), "clip ranges must be positive"),
        (dict(epsilon_high=-0.1), "clip ranges must be positive"),
        (dict(loss_type="mean"), "choose one of token_mean, seq_mean, dr_grpo"),
        (dict(num_generations=4, batch_size=8, num_mini_batches=3), "num_mini_batches"),
        (dict(process_advantage="x"), "return_to_go"),
    ],
)
def test_config_rejects_with_fix(kw, match):
    with pytest.raises(ValueError, match=match):
        GRPOConfig(**kw)


def test_config_derived():
    assert GRPOConfig(loss_type="dr_grpo").scale_std is False
    assert GRPOConfig().scale_std is True
    assert GRPOConfig(max_steps=3, max_new_tokens=10).completion_cap == 30


# ------------------------------------------------------------------ learning
def test_grpo_learns_trivial_env():
    tr = make(dict(num_generations=8, batch_size=32))
    before = params(tr)
    hist = tr.train(18)
    first = sum(m["reward_mean"] for m in hist[:4]) / 4
    last = sum(m["reward_mean"] for m in hist[-4:]) / 4
    assert last > first + 0.3, (first, last)
    assert any(not torch.equal(before[k], v) for k, v in tr.model.state_dict().items())
    assert tr.pass_at_1(16) > 0.5
    assert hist[-1]["optimizer_steps"] == 2  # num_iterations=2 x 1 mini-batch


def test_loss_variants_and_kl_run_and_log():
    for lt in ("seq_mean", "dr_grpo"):
        m = make(dict(loss_type=lt, num_mini_batches=2)).step()
        assert m["optimizer_steps"] == 4 and torch.isfinite(torch.tensor(m["loss"]))
    tr = make(dict(beta=0.1, num_iterations=3))
    ref_before = {k: v.clone() for k, v in tr.ref_model.state_dict().items()}
    ms = tr.train(3)
    assert ms[-1]["kl"] > 0
    assert all(torch.equal(ref_before[k], v) for k, v in tr.ref_model.state_dict().items())


# ------------------------------------------------------------------ exact resume
def _strip(m):
    return {k: v for k, v in m.items() if not k.startswith("time/")}


def test_kill_and_resume_matches_unbroken_run(tmp_path):
    kw = dict(num_iterations=2, num_mini_batches=2, save_every=2)
    a = make(kw, run_dir=str(tmp_path / "a"))
    hist_a = a.train(4)
    ckpts = checkpoint_dirs(str(tmp_path / "a"))
    assert [os.path.basename(c) for c in ckpts] == ["checkpoint-0000002", "checkpoint-0000004"]

    b = make(kw, run_dir=str(tmp_path / "b"))  # a fresh process would build exactly this
    b.load(ckpts[0])
    assert b.num_steps == 2
    hist_b = b.train(2)
    assert [_strip(m) for m in hist_b] == [_strip(m) for m in hist_a[2:]]
    for k, v in a.model.state_dict().items():
        assert torch.equal(v, b.model.state_dict()[k]), k
    # loading a run directory picks its latest checkpoint
    c = make(kw).load(str(tmp_path / "a"))
    assert c.num_steps == 4


# ------------------------------------------------------------------ logging
def test_tensorboard_events_hold_scalars(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tr = make(run_dir=str(tmp_path))
    tr.train(2)
    tr.close()
    acc = EventAccumulator(str(tmp_path / "tb"))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    for tag in ("train/reward_mean", "train/reward_std", "train/pass_rate", "train/zero_spread_frac",
                "train/clip_low_frac", "train/clip_high_frac", "train/kl", "train/entropy",
                "train/completion_tokens_mean", "train/loss"):
        assert tag in tags, tag
    assert [e.step for e in acc.Scalars("train/reward_mean")] == [1, 2]
    assert "samples/trace_0" in acc.Tags()["tensors"] or "samples/trace_0/text_summary" in acc.Tags()["tensors"]
    lines = open(tmp_path / "metrics.jsonl").read().splitlines()
    assert len(lines) == 2 and '"train/reward_mean"' in lines[0]


# ------------------------------------------------------------------ faults
def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path):
    class Poison(Callback):
        def _on_step(self):
            if self.trainer.num_steps == 2:  # after the step-2 checkpoint was written
                with torch.no_grad():
                    next(self.trainer.model.parameters()).fill_(float("nan"))
            return True

    tr = make(dict(save_every=1), run_dir=str(tmp_path), callbacks=[Poison()])
    with pytest.raises(NonFiniteLossError, match="Last good checkpoint: .*checkpoint-0000002"):
        tr.train(5)
    assert tr.num_steps == 2
    names = [os.path.basename(c) for c in checkpoint_dirs(str(tmp_path))]
    assert names[-1] == "checkpoint-0000002"
    fresh = make().load(str(tmp_path))
    assert all(torch.isfinite(p).all() for p in fresh.model.parameters())


def test_sandbox_errors_are_masked_not_scored():
    src = ToyEnv().source
    bad = {t.id for t in src.tasks("train", 1000)}  # every training task errors
    tr = make(env_kw=dict(sandbox_error_ids=bad))
    before = params(tr)
    m = tr.step()
    assert m["masked_frac"] == 1.0 and m["zero_spread_frac"] == 1.0 and m["loss"] == 0.0
    assert all(torch.equal(before[k], v) for k, v in tr.model.state_dict().items())


def test_callback_stops_training():
    class StopAt2(Callback):
        def _on_step(self):
            return self.n_calls < 2

    cb = StopAt2()
    assert len(make(callbacks=[cb]).train(10)) == 2 and cb.trainer is not None


# ------------------------------------------------------------------ process rewards
class StepRewards:
    """Rewards the first step 1.0 if it is a digit, else 0 (a hand-made PRM)."""

    def __init__(self):
        self.updates = 0

    def step_rewards(self, prompts, step_lists, trajectories):
        assert len(trajectories) == len(prompts)
        return [[float(s[:1].isdigit()) for s in steps] for steps in step_lists]

    def update(self, trajectories):
        self.updates += 1
        return {"seen": len(trajectories)}


def test_process_reward_added_to_advantage():
    prm = StepRewards()
    tr = make(dict(process_reward_weight=0.5, process_advantage="step"), process_reward=prm)
    trajs, _ = tr.rollout(tr.sample_prompts())
    adv, info = tr.compute_advantages(trajs)
    from prmgym.agents.advantages import group_advantages, process_step_advantages

    r = torch.tensor([t.reward for t in trajs])
    out, _ = group_advantages(r, 4)
    sr = [[[float(t.steps[0][:1].isdigit())] for t in trajs[g * 4:(g + 1) * 4]] for g in range(2)]
    proc = process_step_advantages(sr, mode="step")
    for b, t in enumerate(trajs):
        assert adv[b, 0].item() == pytest.approx(out[b].item() + 0.5 * proc[b // 4][b % 4][0], abs=1e-5)
    m = tr.step()
    assert prm.updates == 1 and m["prm/seen"] == 8


def test_process_reward_with_wrong_length_is_rejected():
    class Bad:
        def step_rewards(self, prompts, step_lists, trajectories):
            return [[] for _ in prompts]

    tr = make(dict(process_reward_weight=1.0), process_reward=Bad())
    with pytest.raises(ValueError, match="one per step"):
        tr.step()
    with pytest.raises(TypeError, match="score_steps"):
        make(process_reward=object())


def test_entropy_bonus_enters_the_loss():
    # no reward anywhere (no target digit) -> zero advantages: the loss is exactly -coef * entropy
    tr = make(dict(entropy_coef=0.5, num_iterations=1), env_kw=dict(targets=""))
    before = params(tr)
    m = tr.step()
    assert m["zero_spread_frac"] == 1.0
    assert m["loss"] == pytest.approx(-0.5 * m["entropy"], rel=1e-5)
    assert any(not torch.equal(before[k], v) for k, v in tr.model.state_dict().items())
