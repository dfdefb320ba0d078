"""Offline PRM data and training on a real environment; the AIRL-S GRPO run from the CLI."""

import dataclasses
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
from prmgym.rewards.data import EnvPool, expert_traces, mc_step_labels, prefix_proposals, rollout
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


def test_prefix_proposals_sample_at_every_expert_prefix(policy, tasks):
    experts = expert_traces(tasks)
    props = prefix_proposals(policy, experts, k=3, seed=4, max_new_tokens=8)
    again = prefix_proposals(policy, experts, k=3, seed=4, max_new_tokens=8)
    assert [p.steps for p in props] == [p.steps for p in again]  # seeded
    assert len(props) == 3 * sum(len(t.steps) for t in experts)
    at = [(t, i) for t in experts for i in range(len(t.steps)) for _ in range(3)]
    for p, (t, i) in zip(props, at):
        assert p.prompt == t.prompt and p.prefix_len == i and p.steps[:i] == t.steps[:i] and len(p.steps) == i + 1
        assert p.step_logprobs[:i] == [0.0] * i and p.step_logprobs[i] < 0 and p.step_ntokens[i] >= 1
        assert not p.correct and p.task is t.task
    with pytest.raises(ValueError, match="k >= 1"):
        prefix_proposals(policy, experts, k=0)


@pytest.mark.parametrize("mode", ["prefixes", "both"])
def test_airl_trains_on_policy_steps_at_expert_prefixes(policy, mode):
    env_fn = lambda: gym.make(ENV, split="train")  # noqa: E731
    cfg = PRMTrainConfig(kind="airl", steps=2, tasks_per_step=2, rollouts_per_task=2, max_new_tokens=8, max_steps=3,
                         airl_negatives=mode, proposals_per_prefix=2, expert_tasks=0)
    prm = build_prm("airl", policy, learning_rate=1e-3)
    before = [p.detach().clone() for p in prm.parameters()]
    tr = OfflinePRMTrainer(prm, policy, env_fn, cfg)
    batch = tr.collect(0)
    tasks = tr.data.tasks(0)
    n_prefix = sum(len(t.expert_steps) for t in tasks)
    ctx = batch.context_steps
    assert batch.prompts[:2] == [t.prompt for t in tasks] and batch.labels[:2] == [1.0, 1.0] and ctx[:2] == [0, 0]
    assert [c for c in ctx[2 : 2 + 2 * n_prefix]] == [i for t in tasks for i in range(len(t.expert_steps)) for _ in range(2)]
    if mode == "prefixes":
        assert len(batch) == 2 + 2 * n_prefix and tr.stats["rollout_traces"] == 0
    else:  # rollouts too, each a whole trace (no context)
        assert len(batch) > 2 + 2 * n_prefix and set(ctx[2 + 2 * n_prefix :]) == {0}
    hist = tr.train()
    assert len(hist) == 2 and "disc_acc" in hist[-1]
    assert any(not torch.equal(a, b) for a, b in zip(before, prm.parameters()))
    tr.close()
    # a task source without expert solutions: a clear error, not updates skipped one by one
    no_expert = OfflinePRMTrainer(build_prm("airl", policy), policy, env_fn, cfg)
    no_expert.data.tasks = lambda step: [dataclasses.replace(t, expert_steps=None) for t in tasks]
    with pytest.raises(ValueError, match="none of this update's 2 training tasks has one"):
        no_expert.collect(0)
    no_expert.close()
    with pytest.raises(ValueError, match="airl_negatives must be one of"):
        PRMTrainConfig(kind="airl", airl_negatives="expert")
    assert PRMTrainConfig(kind="orm", airl_negatives="prefixes").kind == "orm"  # other kinds ignore it
    with pytest.raises(ValueError, match="use_expert=True"):
        PRMTrainConfig(kind="airl", airl_negatives="prefixes", use_expert=False)


def test_airl_expert_tasks_add_expert_solutions_without_rollouts(policy):
    """``expert_tasks``: the expert solutions of that many more tasks (a seed stream of their own)
    join AIRL's positives; no rollout is drawn for them."""
    env_fn = lambda: gym.make(ENV, split="train")  # noqa: E731
    base = dict(kind="airl", steps=1, tasks_per_step=2, rollouts_per_task=2, max_new_tokens=8, max_steps=3)
    assert PRMTrainConfig().expert_tasks == 248  # the default (docs/rewards.md)
    plain = OfflinePRMTrainer(build_prm("airl", policy), policy, env_fn, PRMTrainConfig(**base, expert_tasks=0))
    more = OfflinePRMTrainer(build_prm("airl", policy), policy, env_fn, PRMTrainConfig(**base, expert_tasks=3))
    a, b = plain.collect(0), more.collect(0)
    extra = more.data.expert_only_tasks(0)
    assert len(extra) == 3 and {t.prompt for t in extra}.isdisjoint(t.prompt for t in more.data.tasks(0))
    assert len(b) == len(a) + 3 and sum(b.labels) == sum(a.labels) + 3
    assert more.stats["rollout_traces"] == plain.stats["rollout_traces"]  # no rollouts for the extra tasks
    assert [p for p, y in zip(b.prompts, b.labels) if y == 1.0][-3:] == [t.prompt for t in extra]
    assert plain.data.expert_only_tasks(0) == []
    plain.close()
    more.close()
    with pytest.raises(ValueError, match="expert_tasks must be >= 0"):
        PRMTrainConfig(kind="airl", expert_tasks=-1)
    off = OfflinePRMTrainer(build_prm("airl", policy), policy, env_fn, PRMTrainConfig(**base, use_expert=False))
    assert off.data.expert_only_tasks(0) == []  # no demonstrations at all without use_expert
    off.close()


def test_offline_trainer_checkpoints_and_resumes(policy, tmp_path):
    env_fn = lambda: gym.make(ENV, split="train")  # noqa: E731
    cfg = PRMTrainConfig(kind="airl", steps=2, tasks_per_step=2, rollouts_per_task=2, max_new_tokens=8, max_steps=3)
    prm = build_prm("airl", policy, learning_rate=1e-3)
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
               "--set", "tasks_per_step=2", "--set", "rollouts_per_task=1", "--set", "mc_rollouts=2",
               "--set", "max_new_tokens=8", "--set", "max_steps=3", "--set", "eval_every=0", "--quiet"])
    assert rc == 0
    prm = load_prm(out)  # eval_every=0: the last PRM, not the best held-out one (tests/test_rewards_heldout.py)
    assert isinstance(prm, MCPRM) and prm.updates == 1


def test_cli_train_airl_on_prefix_proposals(policy, tmp_path, capsys):
    pdir = str(tmp_path / "pol")
    policy.save(pdir)
    out = str(tmp_path / "airl")
    rc = main(["train-prm", "--kind", "airl", "--policy", pdir, "--env", ENV, "--out", out, "--steps", "1",
               "--set", "tasks_per_step=2", "--set", "airl_negatives=prefixes", "--set", "proposals_per_prefix=2",
               "--set", "max_new_tokens=8", "--set", "eval_every=0", "--quiet"])
    prm = load_prm(out)
    assert rc == 0 and prm.updates == 1
    logged = [json.loads(line) for line in open(os.path.join(out, "metrics.jsonl"))]
    assert any("prm/disc_acc" in m for m in logged) and not any(m.get("prm/skipped") for m in logged)  # a real update
    assert prm.learning_rate == 1e-3  # AIRL's one default (AIRLOptions); other kinds keep PRMOptions' 1e-4
    rc = main(["train-prm", "--kind", "airl", "--policy", pdir, "--env", ENV, "--out", out, "--steps", "1",
               "--set", "airl_negatives=prefixes", "--set", "use_expert=false", "--quiet"])
    assert rc == 2 and "use_expert=True" in capsys.readouterr().err
    rc = main(["train-prm", "--kind", "orm", "--policy", pdir, "--env", ENV, "--out", str(tmp_path / "orm"), "--steps", "1",
               "--set", "airl_negatives=prefixes", "--quiet"])
    assert rc == 2 and "only apply to kind airl" in capsys.readouterr().err


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



def test_build_reward_gives_the_provider_the_env(monkeypatch):
    """`prmgym train` hands the run's environment to a reward factory that takes ``env`` (the
    providers' ``expert_tasks`` draw from it), and calls one that does not as before."""
    from prmgym.recipes.train import build_reward, load_run_config
    from prmgym.rewards import REWARDS

    cfg = load_run_config({"env": ENV, "env_kwargs": {"source_kwargs": {"min_ops": 2}}, "reward": "airl",
                           "reward_config": {"expert_tasks": 2}})
    policy = tiny.random_tiny_policy(seed=0, n_layer=1, n_embd=32, n_head=2)
    provider = build_reward(cfg, policy)
    assert provider.env_spec == (ENV, {"source_kwargs": {"min_ops": 2}}) and provider.expert_tasks == 2
    assert provider.seed == 0
    seeded = build_reward(load_run_config({"env": ENV, "reward": "airl", "trainer": {"seed": 7}}), policy)
    assert seeded.seed == 7 and seeded.expert_tasks == 248  # the trainer's seed; AIRL's default with an env
    assert len(provider._expert_only_tasks()) == 2
    calls = []
    monkeypatch.setitem(REWARDS, "airl", lambda pol, options: calls.append(options) or "provider")
    assert build_reward(cfg, policy) == "provider" and calls == [{"expert_tasks": 2}]


def test_expert_only_tasks_leave_out_the_held_out_tasks_and_small_sources(policy):
    """With held-out evaluation on, no held-out task's expert solution is trained on; a source
    holding fewer tasks than ``expert_tasks`` gives all it has, one without ``at_most`` an error
    that names ``expert_tasks``."""
    from prmgym.envs.task import Task
    from prmgym.rewards.train import draw_tasks

    env_fn = lambda: gym.make(ENV, split="train")  # noqa: E731
    same = [Task(id=f"t/{i}", prompt=f"Compute {i} + 1.", answer=str(i + 1), expert_steps=(f"Answer: {i + 1}",))
            for i in range(4)]

    class Fixed:  # every draw returns the same tasks: held-out and expert-only draws overlap fully
        def tasks(self, split="train", n=None, seed=0, *, at_most=False):
            if n is not None and n > len(same) and not at_most:
                raise ValueError(f"only {len(same)} tasks")
            return same[: n or len(same)]

    for eval_every, want in ((0, same), (5, [])):
        cfg = PRMTrainConfig(kind="airl", steps=1, tasks_per_step=2, expert_tasks=3, eval_every=eval_every, eval_tasks=4)
        tr = OfflinePRMTrainer(build_prm("airl", policy), policy, env_fn, cfg)
        tr.data.pool.get(1)[0].unwrapped.source = Fixed()
        assert tr.data.expert_only_tasks(0) == want[:3]
        tr.close()
    assert draw_tasks(Fixed(), 10, 0, "expert_tasks") == same  # all it holds

    class Strict:
        def tasks(self, split="train", n=None, seed=0):
            raise ValueError("only 4 tasks")

    with pytest.raises(ValueError, match="expert_tasks=10: only 4 tasks; set a smaller expert_tasks"):
        draw_tasks(Strict(), 10, 0, "expert_tasks")
