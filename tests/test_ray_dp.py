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
def test_prmgym_train_with_train_workers_2_equals_one_process(runtime, tmp_path):
    """A 1-step `prmgym train` with ``distributed.train_workers: 2`` (set on the command line) logs the
    metrics and writes the weights of the same run without the section, to 1e-5."""
    import json

    import yaml

    from prmgym.cli import main
    from prmgym.models import TransformersPolicy, tiny

    torch.set_num_threads(1)
    tiny.random_tiny_policy(seed=0).save(tmp_path / "policy")
    # entropy_coef: a gradient even when a random policy's groups have no reward spread
    config = {"env": "prmgym/ChainArithmetic-v0", "model": str(tmp_path / "policy"), "steps": 1, "eval_tasks": 0,
              "logging": [], "trainer": {"num_generations": 4, "batch_size": 8, "max_new_tokens": 4, "max_steps": 2,
                                         "num_mini_batches": 2, "learning_rate": 3e-3, "entropy_coef": 0.05, "seed": 3}}
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(config))
    runs = {}
    for name, extra in (("one", []), ("dp", ["--set", "distributed.backend=ray", "--set", "distributed.train_workers=2"])):
        run_dir = tmp_path / name
        assert main(["train", "--config", str(tmp_path / "run.yaml"), "--set", f"run_dir={run_dir}", "--no-progress",
                     *extra]) == 0
        rows = [json.loads(line) for line in open(run_dir / "metrics.jsonl")]
        summary = json.load(open(run_dir / "summary.json"))
        policy = TransformersPolicy.from_pretrained(summary["policy_dir"])
        runs[name] = (rows, {k: v.detach().numpy() for k, v in policy.model.named_parameters()})
    (rows1, w1), (rows2, w2) = runs["one"], runs["dp"]
    assert len(rows1) == len(rows2) == 1
    # rows_per_step_frac describes how each rank's micro-batches pack, not the update: not compared
    checked = [k for k, v in rows1[0].items()
               if isinstance(v, float) and not k.startswith(("time/", "perf/")) and k != "train/rows_per_step_frac"]
    assert {"train/loss", "train/grad_norm", "train/entropy", "budget/generated"} <= set(checked)
    for k in checked:
        assert rows2[0][k] == pytest.approx(rows1[0][k], rel=1e-5, abs=1e-6), k
    w0 = {k: v.detach().numpy() for k, v in TransformersPolicy.from_pretrained(str(tmp_path / "policy")).model.named_parameters()}
    assert _max_diff(w0, w1) > 1e-4  # the step moved the weights
    assert _max_diff(w1, w2) < 1e-5
    import torch.distributed as dist

    assert not dist.is_initialized()  # the run closed its process group (and its rank actor)


# ----------------------------------------------------------------------------- data-parallel PRM updates
def _build_prms(policy_dir, rank=0):
    """An offline AIRL and an ORM trainer on ChainArithmetic, built alike on every rank."""
    from prmgym.envs import make
    from prmgym.models import TransformersPolicy
    from prmgym.rewards.train import OfflinePRMTrainer, PRMTrainConfig, build_prm

    torch.set_num_threads(1)
    policy = TransformersPolicy.from_pretrained(policy_dir)
    out = {}
    for kind in ("airl", "orm"):
        torch.manual_seed(0)  # the same head initialisation on every rank
        cfg = PRMTrainConfig(kind=kind, steps=2, tasks_per_step=3, rollouts_per_task=2, max_new_tokens=8, max_steps=3)
        out[kind] = OfflinePRMTrainer(build_prm(kind, policy, learning_rate=1e-2), policy,
                                      functools.partial(make, "prmgym/ChainArithmetic-v0", split="train"), cfg)
    return out


def _wrap_prms(trainers):
    from prmgym.rewards.data_parallel import data_parallel_prm

    return {k: data_parallel_prm(t) for k, t in trainers.items()}


def _prm_step(trainers, kind):
    return trainers[kind].step()


def _prm_weights(trainers, kind):
    return {k: v.detach().clone().numpy() for k, v in trainers[kind].prm.net.named_parameters()}


def _prm_gradient(trainers, kind, batch):
    prm = trainers[kind].prm
    optim, seen = prm.optim, {}
    real_step = optim.step

    def capture():
        seen.update({k: (p.grad.clone() if p.grad is not None else torch.zeros_like(p)).numpy()
                     for k, p in prm.net.named_parameters()})
        return real_step()

    optim.step = capture
    try:
        prm.update(batch)
    finally:
        optim.__dict__.pop("step", None)
    return seen


@pytest.mark.parametrize("runtime", ["init"], indirect=True)
def test_prm_updates_k2_equal_single_process(runtime, tmp_path):
    """AIRL and ORM offline training with 2 gloo ranks in Ray actors: one update's metrics (1e-5)
    and weights, and the gradient on a further batch (1e-5), equal one process's."""
    from prmgym.agents.data_parallel import RayDataParallel
    from prmgym.models import tiny

    torch.set_num_threads(1)
    tiny.random_tiny_policy(seed=0).save(tmp_path / "policy")
    single = _build_prms(str(tmp_path / "policy"))
    before = {k: _prm_weights(single, k) for k in single}
    expected = {k: single[k].step() for k in single}
    with RayDataParallel(functools.partial(_build_prms, str(tmp_path / "policy")), world=2, wrap=_wrap_prms) as dp:
        for kind in ("airl", "orm"):
            got = dp.call(_prm_step, kind)[0]
            assert "skipped" not in got and got["traces"] > 2
            for k, v in expected[kind].items():
                if not k.startswith("time/"):
                    assert got[k] == pytest.approx(v, rel=1e-5, abs=1e-6), (kind, k)
            ranks = dp.call(_prm_weights, kind)
            assert _max_diff(ranks[0], ranks[1]) == 0.0
            moved = _max_diff(before[kind], _prm_weights(single, kind))
            assert moved > 5e-3  # Adam's first step moves weights by ~lr = 1e-2
            # AdamW's first step is ~lr * g / |g|: where |g| is near eps (1e-8) a 1e-9 difference in the
            # summed gradient shows in the weights, so they are compared to a share of the step
            assert _max_diff(ranks[0], _prm_weights(single, kind)) < 0.05 * moved
            batch = single[kind].collect(1)
            want = _prm_gradient(single, kind, batch)
            grads = dp.call(_prm_gradient, kind, batch)
            assert max(float(np.abs(g).max()) for g in want.values()) > 1e-4  # a real gradient
            assert _max_diff(grads[0], want) < 1e-5 and _max_diff(grads[1], want) < 1e-5, kind


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
