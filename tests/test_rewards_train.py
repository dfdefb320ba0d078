"""Offline PRM data and training on a real environment; the AIRL-S GRPO run from the CLI."""

import glob
import json
import os

import gymnasium as gym
import pytest
import torch

import prmgym  # noqa: F401  (registers the environments)
from prmgym.cli import main
from prmgym.models import tiny
from prmgym.rewards import MCPRM, load_prm
from prmgym.rewards.data import EnvPool, expert_traces, mc_step_labels, rollout
from prmgym.rewards.train import OfflinePRMTrainer, PRMTrainConfig, build_prm

torch.set_num_threads(1)
ENV = "prmgym/ChainArithmetic-v0"


@pytest.fixture(scope="module")
def policy():
    return tiny.random_tiny_policy(seed=0, n_layer=1, n_embd=32, n_head=2, n_positions=256)


@pytest.fixture(scope="module")
def tasks():
    env = gym.make(ENV, split="train")
    ts = list(env.unwrapped.source.tasks("train", 3, seed=0))
    env.close()
    return ts


def test_rollout_traces_are_complete_and_deterministic(policy, tasks):
    pool = EnvPool(lambda: gym.make(ENV, split="train"))
    a = rollout(pool, policy, tasks, n=2, seed=5, max_new_tokens=8, max_steps=3)
    b = rollout(pool, policy, tasks, n=2, seed=5, max_new_tokens=8, max_steps=3)
    assert len(a) == 6 and [t.steps for t in a] == [t.steps for t in b]
    for t in a:
        assert 1 <= len(t.steps) <= 3
        assert len(t.step_logprobs) == len(t.step_ntokens) == len(t.steps)
        assert all(lp < 0 for lp in t.step_logprobs) and all(n >= 1 for n in t.step_ntokens)
    # replaying an expert solution as a prefix ends the episode with its verdict
    done = rollout(pool, policy, tasks[:1], n=1, prefixes=[list(tasks[0].expert_steps)], seed=0)
    assert done[0].correct and done[0].reward == 1.0 and done[0].prefix_len == len(tasks[0].expert_steps)
    pool.close()


def test_mc_step_labels(policy, tasks):
    pool = EnvPool(lambda: gym.make(ENV, split="train"))
    experts = expert_traces(tasks)
    soft = mc_step_labels(pool, policy, experts, n_rollouts=2, mode="soft", max_new_tokens=8, max_steps=3)
    hard = mc_step_labels(pool, policy, experts, n_rollouts=2, mode="hard", max_new_tokens=8, max_steps=3)
    for tr, s, h in zip(experts, soft, hard):
        assert len(s) == len(h) == len(tr.steps)
        assert s[-1] == 1.0 and h[-1] == 1.0  # the full expert trace submits the right answer
        assert all(0.0 <= x <= 1.0 for x in s) and set(h) <= {0.0, 1.0}
    with pytest.raises(ValueError, match="hard, soft"):
        mc_step_labels(pool, policy, experts, mode="medium")
    pool.close()


def test_offline_trainer_checkpoints_and_resumes(policy, tmp_path):
    env_fn = lambda: gym.make(ENV, split="train")  # noqa: E731
    cfg = PRMTrainConfig(kind="airl", steps=2, tasks_per_step=2, rollouts_per_task=2, max_new_tokens=8, max_steps=3)
    prm = build_prm("airl", policy, lr=1e-3)
    tr = OfflinePRMTrainer(prm, policy, env_fn, cfg, run_dir=str(tmp_path / "r"))
    hist = tr.train()
    assert len(hist) == 2 and prm.updates == 2 and "disc_acc" in hist[-1]
    assert load_prm(tmp_path / "r").updates == 2
    ck = load_prm(tmp_path / "r" / "checkpoint", resume=True)
    tr2 = OfflinePRMTrainer(ck, policy, env_fn, PRMTrainConfig(**{**cfg.__dict__, "steps": 3}), run_dir=str(tmp_path / "r"))
    assert len(tr2.train()) == 1 and ck.updates == 3
    # the data of a step depends only on the step index (a resumed run sees the same data)
    assert tr.collect(1).prompts == tr2.collect(1).prompts
    with pytest.raises(ValueError, match="unknown PRM kind"):
        PRMTrainConfig(kind="magic")
    tr.close()
    tr2.close()


def test_cli_train_mc_prm(policy, tmp_path):
    pdir = str(tmp_path / "pol")
    policy.save(pdir)
    out = str(tmp_path / "mc")
    rc = main(["train-prm", "--kind", "mc", "--policy", pdir, "--env", ENV, "--out", out, "--steps", "1",
               "--tasks-per-step", "2", "--rollouts-per-task", "1", "--mc-rollouts", "2", "--max-new-tokens", "8",
               "--max-steps", "3", "--quiet"])
    assert rc == 0
    prm = load_prm(out)
    assert isinstance(prm, MCPRM) and prm.updates == 1


@pytest.mark.slow
def test_grpo_with_airl_reward_from_cli(policy, tmp_path):
    """`prmgym train` with `reward: airl` trains end to end and logs the discriminator."""
    pdir = str(tmp_path / "pol")
    policy.save(pdir)
    run = str(tmp_path / "run")
    cfg = os.path.join(os.path.dirname(__file__), "..", "examples", "configs", "grpo_airl_chain.yaml")
    rc = main(["train", "--config", cfg, "--set", f"model={pdir}", "--set", "steps=2", "--set", "trainer.batch_size=8",
               "--set", "trainer.num_generations=4", "--set", "trainer.max_steps=4", "--set", "trainer.max_new_tokens=12",
               "--set", "eval_tasks=0", "--set", f"run_dir={run}", "--no-progress"])
    assert rc == 0
    rows = [json.loads(l) for l in open(os.path.join(run, "metrics.jsonl"))]
    stepped = [r for r in rows if "prm/disc_acc" in r]
    assert len(stepped) == 2 and all("prm/step_reward_mean" in r and "prm/D_expert" in r for r in stepped)
    assert glob.glob(os.path.join(run, "tb", "events.out.tfevents.*"))
    ckpts = sorted(glob.glob(os.path.join(run, "checkpoints", "checkpoint-*")))
    assert ckpts and load_prm(os.path.join(ckpts[-1], "process_reward")).updates == 2


@pytest.mark.parametrize("name, reward", [("grpo_airl_chain.yaml", "airl"), ("grpo_repirl_chain.yaml", "repirl")])
def test_example_configs_validate(name, reward):
    from prmgym.recipes.train import build_reward, load_run_config
    from prmgym.config import load_yaml

    cfg = load_run_config(load_yaml(os.path.join(os.path.dirname(__file__), "..", "examples", "configs", name)))
    assert cfg.reward == reward and cfg.trainer_config().process_reward_weight > 0
    provider = build_reward(cfg, tiny.random_tiny_policy(seed=0, n_layer=1, n_embd=32, n_head=2))
    assert hasattr(provider, "step_rewards") and hasattr(provider, "update")
