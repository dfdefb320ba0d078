"""On a plain ``ray.init(num_cpus=2)`` and on a two-node local cluster: data-parallel GRPO on Ray
actors with a gloo process group (K = 2) against one process (the same step's metrics and
weights, the same gradient on the same global batch, to 1e-5), and rollout workers (the same
groups with 0, 1 and 2 actors and with a killed actor; GRPO steps equal in-process ones)."""

from __future__ import annotations

import functools
import os
import sys
import time

import numpy as np
import pytest
import torch

from ray_fixtures import require_ray, start

ray = require_ray()
TESTS = os.path.dirname(os.path.abspath(__file__))
# the actors cannot import this test module: its functions go to them by value
ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])


@pytest.fixture(scope="module", params=["init", "cluster"])
def runtime(request):
    stop = start(request.param)
    yield request.param
    stop()


def _build(policy_dir, rank=0):
    if TESTS not in sys.path:  # in an actor: the toy env's module (its verdicts cross ranks by pickle)
        sys.path.insert(0, TESTS)
    from test_rollout_toyenv import ToyEnv

    from prmgym.agents.grpo import GRPOConfig, GRPOTrainer
    from prmgym.models import TransformersPolicy

    torch.set_num_threads(1)
    cfg = GRPOConfig(num_generations=4, batch_size=16, max_new_tokens=2, max_steps=1, learning_rate=3e-3,
                     num_mini_batches=2, seed=3)
    return GRPOTrainer(TransformersPolicy.from_pretrained(policy_dir), ToyEnv, cfg)


def _weights(trainer):
    return {k: v.detach().clone().numpy() for k, v in trainer.model.named_parameters()}


def _gradient(trainer, trajs):
    """The gradient of the first optimizer update on ``trajs`` (one mini-batch), taken just
    before the optimizer steps."""
    tok_adv, _ = trainer.compute_advantages(trajs)
    real_step, seen = trainer.optim.step, {}

    def capture():
        seen.update({k: (p.grad.clone() if p.grad is not None else torch.zeros_like(p)).numpy()
                     for k, p in trainer.model.named_parameters()})
        return real_step()

    trainer.optim.step = capture
    try:
        trainer.optimizer_update(trajs, tok_adv)
    finally:
        trainer.optim.step = real_step
    return seen


def _max_diff(a, b):
    assert a.keys() == b.keys()
    return max(float(np.abs(a[k] - b[k]).max()) for k in a)


def test_k2_step_and_gradient_equal_single_process(runtime, tmp_path):
    from prmgym.agents.data_parallel import RayDataParallel
    from prmgym.models import tiny

    torch.set_num_threads(1)
    tiny.random_tiny_policy(seed=0).save(tmp_path / "policy")
    single = _build(str(tmp_path / "policy"))
    before = _weights(single)
    expected = single.step()
    with RayDataParallel(functools.partial(_build, str(tmp_path / "policy")), world=2) as dp:
        got = dp.step()
        # one GRPO step: rank 0's rollouts, the metrics, and every rank's new weights
        for k, v in expected.items():
            if isinstance(v, float) and not k.startswith(("time/", "perf/")):
                assert got[k] == pytest.approx(v, rel=1e-5, abs=1e-6), k
        ranks = dp.call(_weights)
        assert _max_diff(ranks[0], ranks[1]) == 0.0
        assert _max_diff(ranks[0], _weights(single)) < 1e-5
        assert _max_diff(before, _weights(single)) > 1e-4  # the step really moved the weights
        # the gradient of the next batch: K = 2 summed over ranks == one process, to 1e-5
        for _ in range(20):  # a batch whose groups have reward spread (else the advantages are all 0)
            trajs, _ = single.collect_batch()
            if float(single.compute_advantages(trajs)[0].abs().max()) > 0:
                break
        want = _gradient(single, trajs)
        grads = dp.call(_gradient, trajs)
    assert max(float(np.abs(g).max()) for g in want.values()) > 1e-3  # a real gradient, not zeros
    assert _max_diff(grads[0], want) < 1e-5 and _max_diff(grads[1], want) < 1e-5


def test_data_parallel_needs_a_process_group(tmp_path):
    from prmgym.agents.data_parallel import data_parallel
    from prmgym.models import tiny

    tiny.random_tiny_policy(seed=0).save(tmp_path / "policy")
    with pytest.raises(RuntimeError, match="init_process_group"):
        data_parallel(_build(str(tmp_path / "policy")))


def test_data_parallel_refuses_a_process_reward_update_it_cannot_split(tmp_path):
    from prmgym.agents.data_parallel import check_trainer
    from prmgym.models import tiny

    class OwnReward:  # a process reward with its own update: how it reads its model is unknown
        def step_rewards(self, prompts, step_lists, trajectories=None):
            return [[0.0] * len(s) for s in step_lists]

        def update(self, trajectories):
            return {}

    tiny.random_tiny_policy(seed=0).save(tmp_path / "policy")
    trainer = _build(str(tmp_path / "policy"))
    trainer.process_reward = OwnReward()
    with pytest.raises(ValueError, match="OwnReward.* is not data-parallel.*kinds: airl, orm, mc, value, repirl"):
        check_trainer(trainer)
    trainer.config.update_process_reward = False
    check_trainer(trainer)  # a reward that is only read, never updated, needs no splitting


# ----------------------------------------------------------------------------- rollout workers
def _toy_env(pause_s: float = 0.0):
    if TESTS not in sys.path:
        sys.path.insert(0, TESTS)
    from test_rollout_toyenv import ToyEnv

    class SlowToyEnv(ToyEnv):  # the same episodes, each step taking pause_s longer
        def step(self, action):
            time.sleep(pause_s)
            return super().step(action)

    return SlowToyEnv(one_step=True) if pause_s else ToyEnv(one_step=True)


def _groups(trajs):
    return [(t.prompt.task.id, t.group, t.steps, t.step_token_ids, t.step_logprobs, t.reward) for t in trajs]


def test_rollout_workers_give_the_same_groups_with_1_or_2_actors_and_a_killed_one(runtime):
    import threading

    from prmgym.agents.ray_rollout import RayRollouts
    from prmgym.envs.episodes import Prompt
    from prmgym.models import tiny

    torch.set_num_threads(1)
    policy = tiny.random_tiny_policy(seed=0)
    prompts = [Prompt(t) for t in _toy_env().source.tasks("train", 16, seed=0)]
    kw = dict(max_new_tokens=12, max_steps=1)
    with RayRollouts(policy, _toy_env, workers=0, **kw) as local:
        want, stats = local.collect(prompts, 4, seed=5)
    assert len(want) == 64 and stats["generated"] > 0
    with RayRollouts(policy, _toy_env, workers=1, **kw) as one:
        assert _groups(one.collect(prompts, 4, seed=5)[0]) == _groups(want)
    with RayRollouts(policy, _toy_env, workers=2, **kw) as two:
        trajs, stats2 = two.collect(prompts, 4, seed=5)
        assert _groups(trajs) == _groups(want) and stats2 == stats and set(two.worker_rates) == {0, 1}
    # 16 chunks of 4 episodes at >= 0.1 s a step: the kill lands while the batch runs
    with RayRollouts(policy, functools.partial(_toy_env, 0.1), workers=2, **kw) as two:
        out: dict = {}
        t = threading.Thread(target=lambda: out.setdefault("r", two.collect(prompts, 4, seed=5)))
        t.start()
        time.sleep(0.5)
        ray.kill(two.actors[1])
        t.join(timeout=300)
        assert two.restarts >= 1 and _groups(out["r"][0]) == _groups(want)
        assert _groups(two.collect(prompts, 4, seed=6)[0]) != _groups(want)  # the pool still works; seeds matter


def test_grpo_steps_with_ray_rollout_workers_equal_in_process_ones(runtime, tmp_path):
    from prmgym.agents.ray_rollout import RayRollouts, ray_rollouts
    from prmgym.models import tiny

    torch.set_num_threads(1)
    tiny.random_tiny_policy(seed=0).save(tmp_path / "policy")
    runs = []
    for workers in (0, 2):
        trainer = _build(str(tmp_path / "policy"))
        rollouts = RayRollouts(trainer.policy, _toy_env, workers=workers, chunk_prompts=2, max_new_tokens=2, max_steps=1)
        ray_rollouts(trainer, rollouts)
        try:
            runs.append(([trainer.step() for _ in range(2)], _weights(trainer)))
        finally:
            rollouts.close()
    (local, w_local), (remote, w_remote) = runs
    for a, b in zip(local, remote):  # step 2 ran on the weights published after step 1
        for k, v in a.items():
            if isinstance(v, float) and not k.startswith(("time/", "perf/", "rollout/")):
                assert b[k] == pytest.approx(v, rel=1e-5, abs=1e-6), k
    assert {"rollout/worker0_tokens_per_s", "rollout/worker1_tokens_per_s"} <= set(remote[1])
    assert _max_diff(w_local, w_remote) < 1e-5


@pytest.mark.parametrize("runtime", ["init"], indirect=True)  # the cluster adds nothing here: one runtime
def test_train_config_rollout_workers_generate_the_groups(runtime):
    from prmgym.agents.grpo import GRPOConfig, GRPOTrainer
    from prmgym.models import tiny
    from prmgym.recipes.distributed import with_ray_rollouts

    torch.set_num_threads(1)
    cfg = GRPOConfig(num_generations=4, batch_size=8, max_new_tokens=4, max_steps=2, seed=0)
    trainer = GRPOTrainer(tiny.random_tiny_policy(seed=0), "prmgym/ChainArithmetic-v0", cfg)
    trainer = with_ray_rollouts({"backend": "ray", "rollout_workers": 2}, trainer, "prmgym/ChainArithmetic-v0",
                                {"split": "train"})
    try:
        metrics = trainer.step()
        assert metrics["episodes"] == 8 and metrics["budget/generated"] > 0
        assert {"rollout/worker0_tokens_per_s", "rollout/worker1_tokens_per_s"} <= set(metrics)
        assert trainer._ray_rollouts.version == 1  # the trainer's weights were published once
    finally:
        trainer.close()
    assert trainer._ray_rollouts.actors == []


# ----------------------------------------------------------------------------- prmgym train --set distributed.train_workers
@pytest.mark.parametrize("runtime", ["init"], indirect=True)
def test_prmgym_train_grpo_airl_with_train_workers_2_equals_one_process(runtime, tmp_path):
    """A 1-step `prmgym train` with the online AIRL-S process reward and ``distributed.train_workers: 2``
    (set on the command line) logs the metrics (the PRM's too) and writes the policy weights of the same
    run without the section, to 1e-5; its AIRL PRM's weights agree within 5% of an AdamW step."""
    import json

    import yaml

    from prmgym.cli import main
    from prmgym.models import TransformersPolicy, tiny
    from prmgym.rewards import load_prm

    torch.set_num_threads(1)
    tiny.random_tiny_policy(seed=0).save(tmp_path / "policy")
    # entropy_coef: a gradient even when a random policy's groups have no reward spread; micro_batch_size 2:
    # one process runs the micro-batches the 2 ranks run (one each), so the summed policy gradient is the
    # same to the bit (with micro_batch_size 0 one process runs each mini-batch in one forward pass, and
    # AdamW's first step shows the rounding where |g| is near eps: 1.7e-5 measured; docs/distributed.md)
    config = {"env": "prmgym/ChainArithmetic-v0", "model": str(tmp_path / "policy"), "steps": 1, "eval_tasks": 0,
              "logging": [], "reward": "airl", "reward_config": {"learning_rate": 1e-2},
              "trainer": {"num_generations": 4, "batch_size": 8, "max_new_tokens": 4, "max_steps": 2,
                          "num_mini_batches": 2, "micro_batch_size": 2, "learning_rate": 3e-3, "entropy_coef": 0.05,
                          "seed": 3, "process_reward_weight": 0.5}}
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(config))
    runs = {}
    for name, extra in (("one", []), ("dp", ["--set", "distributed.backend=ray", "--set", "distributed.train_workers=2"])):
        run_dir = tmp_path / name
        assert main(["train", "--config", str(tmp_path / "run.yaml"), "--set", f"run_dir={run_dir}", "--no-progress",
                     *extra]) == 0
        rows = [json.loads(line) for line in open(run_dir / "metrics.jsonl")]
        summary = json.load(open(run_dir / "summary.json"))
        policy = TransformersPolicy.from_pretrained(summary["policy_dir"])
        prm = load_prm(os.path.join(summary["final_checkpoint"], "process_reward"))
        runs[name] = (rows, {k: v.detach().numpy() for k, v in policy.model.named_parameters()},
                      {k: v.detach().numpy() for k, v in prm.net.named_parameters()})
    (rows1, w1, p1), (rows2, w2, p2) = runs["one"], runs["dp"]
    assert len(rows1) == len(rows2) == 1
    # rows_per_step_frac describes how each rank's micro-batches pack, not the update: not compared
    checked = [k for k, v in rows1[0].items()
               if isinstance(v, float) and not k.startswith(("time/", "perf/")) and k != "train/rows_per_step_frac"]
    assert {"train/loss", "train/grad_norm", "train/entropy", "budget/generated", "train/process_reward_mean",
            "prm/loss", "prm/disc_acc", "prm/grad_norm", "prm/step_reward_mean"} <= set(checked), sorted(checked)
    assert rows1[0]["prm/skipped"] == 0.0  # the PRM really updated
    for k in checked:
        assert rows2[0][k] == pytest.approx(rows1[0][k], rel=1e-5, abs=1e-6), k
    w0 = {k: v.detach().numpy() for k, v in TransformersPolicy.from_pretrained(str(tmp_path / "policy")).model.named_parameters()}
    assert _max_diff(w0, w1) > 1e-4  # the step moved the weights
    assert _max_diff(w1, w2) < 1e-5
    assert _max_diff(p1, p2) < 0.05 * 1e-2  # AdamW steps of ~lr; see test_prm_updates_k2_equal_single_process
    import torch.distributed as dist

    assert not dist.is_initialized()  # the run closed its process group (and its rank actor)


# ----------------------------------------------------------------------------- data-parallel PRM updates
def _value_targets():
    """Value targets over the prefixes of 4 ChainArithmetic expert solutions (values spread in [0, 1])."""
    from prmgym.envs import make
    from prmgym.rewards.value import ValueTarget

    env = make("prmgym/ChainArithmetic-v0", split="train")
    tasks = env.unwrapped.source.tasks("train", 4, seed=0)
    env.close()
    return [ValueTarget(t.prompt, tuple(t.expert_steps[:i]), ((k + i) % 3) / 2, 1 + i)
            for k, t in enumerate(tasks) for i in range(len(t.expert_steps) + 1)]


def _build_prms(kinds, policy_dir, rank=0):
    """Offline trainers of ``kinds`` on ChainArithmetic (the value model on `_value_targets`), built
    alike on every rank."""
    from prmgym.envs import make
    from prmgym.models import TransformersPolicy
    from prmgym.rewards.train import OfflinePRMTrainer, PRMTrainConfig, build_prm

    torch.set_num_threads(1)
    policy = TransformersPolicy.from_pretrained(policy_dir)
    out = {}
    for kind in kinds:
        torch.manual_seed(0)  # the same head initialisation on every rank
        cfg = PRMTrainConfig(kind=kind, steps=2, tasks_per_step=3, rollouts_per_task=2, max_new_tokens=8, max_steps=3,
                             mc_rollouts=2, batch_size=8)
        env_fn = None if kind == "value" else functools.partial(make, "prmgym/ChainArithmetic-v0", split="train")
        out[kind] = OfflinePRMTrainer(build_prm(kind, policy, learning_rate=1e-2), policy, env_fn, cfg,
                                      targets=_value_targets() if kind == "value" else None)
    return out


def _wrap_prms(trainers):
    from prmgym.rewards.data_parallel import data_parallel_prm

    return {k: data_parallel_prm(t) for k, t in trainers.items()}


def _prm_weights(trainers, kind):
    return {k: v.detach().clone().numpy() for k, v in trainers[kind].prm.net.named_parameters()}


def _capturing(prm, seen):
    """``prm``'s optimiser, made to copy the (summed) gradient into ``seen`` before it steps."""
    optim = prm.optim
    real_step = optim.step

    def capture():
        seen.update({k: (p.grad.clone() if p.grad is not None else torch.zeros_like(p)).numpy()
                     for k, p in prm.net.named_parameters()})
        return real_step()

    optim.step = capture
    return optim


def _prm_step(trainers, kind):
    """One update of ``kind``'s trainer: its metrics and the gradient it stepped with."""
    seen: dict = {}
    optim = _capturing(trainers[kind].prm, seen)
    try:
        metrics = trainers[kind].step()
    finally:
        optim.__dict__.pop("step", None)
    return metrics, seen


PRM_GROUPS = [("airl", "orm", "mc"), ("value", "repirl", "implicit")]


@pytest.mark.parametrize("runtime", ["init"], indirect=True)
@pytest.mark.parametrize("kinds", PRM_GROUPS, ids="-".join)
def test_prm_updates_k2_equal_single_process(runtime, kinds, tmp_path):
    """Offline training of every PRM kind with 2 gloo ranks in Ray actors: one update's gradient
    equals one process's on the same batch (1e-5), its metrics too (rel. 1e-5); the ranks' weights
    are equal, and equal one process's wherever AdamW's step is not sensitive to rounding."""
    from prmgym.agents.data_parallel import RayDataParallel
    from prmgym.models import tiny

    torch.set_num_threads(1)
    tiny.random_tiny_policy(seed=0).save(tmp_path / "policy")
    single = _build_prms(kinds, str(tmp_path / "policy"))
    before = {k: _prm_weights(single, k) for k in kinds}
    expected = {k: _prm_step(single, k) for k in kinds}
    build = functools.partial(_build_prms, kinds, str(tmp_path / "policy"))
    with RayDataParallel(build, world=2, wrap=_wrap_prms) as dp:
        for kind in kinds:
            (want, want_g), [(got, g0), (_, g1)] = expected[kind], dp.call(_prm_step, kind)
            assert "skipped" not in got and got["traces"] > 2, kind
            for k, v in want.items():
                if not k.startswith("time/"):
                    assert got[k] == pytest.approx(v, rel=1e-5, abs=1e-6), (kind, k)
            assert max(float(np.abs(g).max()) for g in want_g.values()) > 1e-4, kind  # a real gradient
            assert _max_diff(g0, want_g) < 1e-5 and _max_diff(g1, want_g) < 1e-5, kind
            ranks = dp.call(_prm_weights, kind)
            assert _max_diff(ranks[0], ranks[1]) == 0.0, kind
            w1 = _prm_weights(single, kind)
            moved = _max_diff(before[kind], w1)
            assert moved > 5e-3, kind  # Adam's first step moves weights by ~lr = 1e-2
            # AdamW's first step is lr * g / (|g| + eps): where |g| is near eps (1e-8) the rounding
            # differences of the summed gradient show in the weights (up to 2.8% of the step measured,
            # docs/distributed.md); where |g| > 1e-4 the step is +-lr to 1e-9 and the weights agree to rounding
            assert _max_diff(ranks[0], w1) < 0.05 * moved, kind
            sure = {k: np.abs(want_g[k]) > 1e-4 for k in w1}
            assert max(float(np.abs(ranks[0][k] - w1[k])[sure[k]].max(initial=0.0)) for k in w1) < 1e-6, kind


@pytest.mark.parametrize("runtime", ["init"], indirect=True)
def test_train_prm_cli_with_train_workers_2_equals_one_process(runtime, tmp_path):
    """``prmgym train-prm --set distributed.train_workers=2``: 2 AIRL updates log the metrics of
    the run without it (rel. 1e-5) and save weights within a small share of the update."""
    import json

    from prmgym.cli import main
    from prmgym.models import tiny
    from prmgym.rewards import load_prm

    torch.set_num_threads(1)
    tiny.random_tiny_policy(seed=0).save(tmp_path / "policy")
    base = ["train-prm", "--kind", "airl", "--policy", str(tmp_path / "policy"), "--env", "prmgym/ChainArithmetic-v0",
            "--steps", "2", "--quiet", "--set", "tasks_per_step=3", "--set", "rollouts_per_task=2",
            "--set", "max_new_tokens=8", "--set", "max_steps=3", "--set", "eval_every=0",
            "--set", "prm.learning_rate=1e-2"]
    dp = ["--set", "distributed.backend=ray", "--set", "distributed.train_workers=2"]
    out = {}
    for name, extra in (("one", []), ("dp", dp)):
        assert main([*base, "--out", str(tmp_path / name), *extra]) == 0
        rows = [json.loads(line) for line in open(tmp_path / name / "metrics.jsonl")]
        prm = load_prm(str(tmp_path / name))
        out[name] = (rows, {k: v.detach().numpy() for k, v in prm.net.named_parameters()})
    (rows1, w1), (rows2, w2) = out["one"], out["dp"]
    assert len(rows1) == len(rows2) == 2
    for a, b in zip(rows1, rows2):
        keys = [k for k, v in a.items() if isinstance(v, float) and "time" not in k]
        assert "prm/loss" in keys
        for k in keys:
            assert b[k] == pytest.approx(a[k], rel=1e-5, abs=1e-6), k
    assert _max_diff(w1, w2) < 0.05 * 1e-2  # AdamW steps of ~lr; see test_prm_updates_k2_equal_single_process
    import torch.distributed as dist

    assert not dist.is_initialized()  # the run closed its process group and its rank actor
