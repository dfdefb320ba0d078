"""Why K = 2 data-parallel PRM weights differ from one process's after an AdamW step: a measurement.

    python benchmarks/dp_prm_numerics.py [--kinds airl,orm,mc,repirl,implicit] [--lr 1e-2]

One offline update of each PRM kind (tiny random policy, ChainArithmetic), in this process and with
2 gloo ranks in Ray actors (a local Ray with 2 CPUs), with AdamW and then with plain SGD at the same
learning rate. For each it prints: the largest difference of the summed gradient from one
process's (and the largest |g|), of the weights after the step (and the largest step), of the
weights over the elements whose |g| > 1e-6 only, and |g| where the weights differ most.

AdamW's first step is ``lr * g / (|g| + eps)`` (eps = 1e-8): it saturates at ``+-lr`` for
``|g| >> eps`` and is steep where ``|g|`` is near eps, so a rounding difference of the summed
gradient (the ranks run their halves of the batch in smaller padded forward passes) shows in the
weights there and nowhere else; SGD's step ``lr * g`` passes it on at its own size. Figures and
what they show: docs/distributed.md ("Data-parallel PRM updates").
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
import tempfile

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def build(kinds, policy_dir, optimizer, lr, rank=0):
    from prmgym.envs import make
    from prmgym.models import TransformersPolicy
    from prmgym.models.optim import Optimization, model_device
    from prmgym.rewards.train import OfflinePRMTrainer, PRMTrainConfig, build_prm

    torch.set_num_threads(1)
    policy = TransformersPolicy.from_pretrained(policy_dir)
    out = {}
    for kind in kinds:
        torch.manual_seed(0)
        cfg = PRMTrainConfig(kind=kind, steps=1, tasks_per_step=3, rollouts_per_task=2, max_new_tokens=8,
                             max_steps=3, mc_rollouts=2)
        prm = build_prm(kind, policy, learning_rate=lr)
        if optimizer == "sgd":
            prm._optim = Optimization(prm.options, prm.parameters(), model_device(prm.net), optimizer_cls=torch.optim.SGD)
        out[kind] = OfflinePRMTrainer(prm, policy, functools.partial(make, "prmgym/ChainArithmetic-v0", split="train"),
                                      cfg)
    return out


def wrap(trainers):
    from prmgym.rewards.data_parallel import data_parallel_prm

    return {k: data_parallel_prm(t) for k, t in trainers.items()}


def weights(trainers, kind):
    return {k: v.detach().clone().numpy() for k, v in trainers[kind].prm.net.named_parameters()}


def step(trainers, kind):
    """One update; the gradient the optimiser stepped with (after the ranks' all-reduce)."""
    prm, seen = trainers[kind].prm, {}
    real = prm.optim.step

    def capture():
        seen.update({k: (p.grad.clone() if p.grad is not None else torch.zeros_like(p)).numpy()
                     for k, p in prm.net.named_parameters()})
        return real()

    prm.optim.step = capture
    try:
        trainers[kind].step()
    finally:
        prm.optim.__dict__.pop("step", None)
    return seen


def first_step(g, optimizer, lr, max_norm=1.0, eps=1e-8):
    """The first update of ``optimizer`` on gradient ``g`` (float64), after clipping to ``max_norm``:
    AdamW's is ``lr * g / (|g| + eps)`` (bias-corrected moments of one step), SGD's ``lr * g``."""
    g = g.astype(np.float64) * min(1.0, max_norm / (np.linalg.norm(g.astype(np.float64)) + 1e-6))
    return lr * g / (np.abs(g) + eps) if optimizer == "adamw" else lr * g


def flat(d):
    return np.concatenate([d[k].ravel() for k in sorted(d)])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--kinds", default="airl,orm")
    p.add_argument("--lr", type=float, default=1e-2)
    args = p.parse_args(argv)
    kinds = tuple(args.kinds.split(","))
    if "value" in kinds:
        p.error("--kinds: the value model trains from a targets file, which this script does not make "
                "(tests/test_ray_dp.py covers it); choose from airl, orm, mc, repirl, implicit")

    from prmgym.agents.data_parallel import RayDataParallel
    from prmgym.cluster import connect
    from prmgym.models import tiny

    torch.set_num_threads(1)
    connect(num_cpus=2)
    tmp = tempfile.mkdtemp(prefix="dp-numerics-")
    tiny.random_tiny_policy(seed=0).save(os.path.join(tmp, "policy"))
    print(f"{'kind':<9} {'optimiser':<9} {'max|g|':>8} {'max|dg|':>8} {'max step':>8} {'max|dw|':>8} "
          f"{'dw/step':>7} {'|g| there':>9} {'dw,|g|>1e-6':>11} {'dw,|g|>1e-4':>11} {'predicted':>9} {'dw-pred':>8}")
    for optimizer in ("adamw", "sgd"):
        make = functools.partial(build, kinds, os.path.join(tmp, "policy"), optimizer, args.lr)
        single = make()
        before = {k: flat(weights(single, k)) for k in kinds}
        want = {k: flat(step(single, k)) for k in kinds}
        with RayDataParallel(make, world=2, wrap=wrap) as dp:
            for kind in kinds:
                g = flat(dp.call(step, kind)[0])
                w_dp, w_one = flat(dp.call(weights, kind)[0]), flat(weights(single, kind))
                g1, dw, moved = want[kind], np.abs(w_dp - w_one), np.abs(w_one - before[kind]).max()
                worst = int(dw.argmax())
                # what the optimiser's first step makes of the two gradients (clipped to norm 1 first)
                pred = np.abs(first_step(g, optimizer, args.lr) - first_step(g1, optimizer, args.lr))
                print(f"{kind:<9} {optimizer:<9} {np.abs(g1).max():8.1e} {np.abs(g - g1).max():8.1e} {moved:8.1e} "
                      f"{dw.max():8.1e} {dw.max() / moved:7.2%} {abs(g1[worst]):9.1e} "
                      f"{dw[np.abs(g1) > 1e-6].max():11.1e} {dw[np.abs(g1) > 1e-4].max():11.1e} {pred.max():9.1e} "
                      f"{np.abs(dw - pred).max():8.1e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
