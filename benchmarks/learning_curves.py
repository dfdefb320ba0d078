"""Held-out pass@1 of the tiny policy before and after N GRPO and N ReST-GRPO steps.

For each environment (ChainArithmetic, Countdown) the tiny character model is pretrained
by SFT on expert traces (`prmgym.recipes.tiny.pretrain`, cached), then trained from that
same starting point with GRPO and with ReST-GRPO at equal trainer steps, for several
seeds. Held-out pass@1 (greedy, test split, the same tasks for every run) is measured
every ``--eval-every`` steps. Writes ``curves.png`` (mean +- std over seeds),
``results.md`` (table) and ``results.json`` to ``--out``.

    python benchmarks/learning_curves.py                      # full: 3 seeds
    python benchmarks/learning_curves.py --steps 10 --seeds 1 --eval-tasks 32   # short
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np
import torch

from prmgym.agents import GRPOConfig, GRPOTrainer, ReSTGRPOConfig, ReSTGRPOTrainer
from prmgym.config import from_dict
from prmgym.models import TransformersPolicy
from prmgym.recipes import tiny as tiny_recipe

ENVS = {"chain": "prmgym/ChainArithmetic-v0", "countdown": "prmgym/Countdown-v0"}

#: trainer settings shared by both algorithms (ReST-GRPO adds its own defaults)
#: (2026-12-01: 16 prompts x 8 per step, lr 1e-4. With 4 prompts per step every lr >= 2e-4 collapsed
#: pass@1 within 20-40 steps -- even with positive advantages only, i.e. SFT on the policy's own
#: correct traces, which raised held-out expert NLL 2.8 -> 6.1 in 30 steps: too few distinct prompts.)
TRAINER = dict(num_generations=8, batch_size=128, num_iterations=2, learning_rate=1e-4, epsilon_high=0.28,
               max_new_tokens=32, max_steps=8, temperature=1.0, log_traces=0)

#: the default tiny SFT (mid-strength, ~32-38% greedy pass@1 on ChainArithmetic). The former short SFT
#: (steps=400, num_train_tasks=400: ~8%) left GRPO too few correct samples to learn from.
PRETRAIN = dict()


def run_one(env_id, policy_dir, algo, seed, steps, eval_every, eval_tasks, trainer_kw, env_kwargs):
    torch.manual_seed(seed)
    policy = TransformersPolicy.from_pretrained(policy_dir)
    kw = {**TRAINER, **trainer_kw, "seed": seed}
    cls, ccls = (ReSTGRPOTrainer, ReSTGRPOConfig) if algo == "rest_grpo" else (GRPOTrainer, GRPOConfig)
    cfg = from_dict(ccls, kw)  # coerces "1e-4" (YAML reads it as a string) and validates
    tr = cls(policy, env_id, cfg, env_kwargs={"split": "train", **env_kwargs})
    curve = [(0, tr.evaluate(eval_tasks))]
    t0 = time.perf_counter()
    train_rewards = []
    done = 0
    while done < steps:
        k = min(eval_every, steps - done)
        hist = tr.train(k)
        train_rewards += [m["reward_mean"] for m in hist]
        done += k
        curve.append((done, tr.evaluate(eval_tasks)))
    seconds = time.perf_counter() - t0
    tr.close()
    return {"curve": curve, "train_seconds": seconds, "train_rewards": train_rewards}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--envs", nargs="+", default=list(ENVS), choices=list(ENVS))
    p.add_argument("--algos", nargs="+", default=["grpo", "rest_grpo"], choices=["grpo", "rest_grpo"])
    p.add_argument("--steps", type=int, default=60, help="trainer steps per run")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--first-seed", type=int, default=0, help="seeds run are first_seed .. first_seed + seeds - 1")
    p.add_argument("--eval-every", type=int, default=10)
    p.add_argument("--eval-tasks", type=int, default=100, help="held-out test tasks (same for all runs)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="trainer field override, e.g. --set learning_rate=5e-5")
    p.add_argument("--pretrain", action="append", default=[], metavar="KEY=VALUE", help="tiny.pretrain override")
    p.add_argument("--out", default="benchmarks/results/learning_curves")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    import yaml

    trainer_kw = {k: yaml.safe_load(v) for k, v in (o.split("=", 1) for o in args.overrides)}
    pre_kw = {**PRETRAIN, **{k: yaml.safe_load(v) for k, v in (o.split("=", 1) for o in args.pretrain)}}
    os.makedirs(args.out, exist_ok=True)

    results = {}
    for env in args.envs:
        env_id = ENVS[env]
        t = time.perf_counter()
        policy_dir = tiny_recipe.pretrain(env_id, progress=False, **pre_kw)
        print(f"[{env}] tiny policy: {policy_dir} ({time.perf_counter() - t:.0f} s incl. cache check)", flush=True)
        for algo in args.algos:
            for seed in range(args.first_seed, args.first_seed + args.seeds):
                r = run_one(env_id, policy_dir, algo, seed, args.steps, args.eval_every, args.eval_tasks, trainer_kw, {})
                results.setdefault(env, {}).setdefault(algo, []).append(r)
                c = r["curve"]
                print(f"[{env}] {algo} seed {seed}: pass@1 {c[0][1]:.3f} -> {c[-1][1]:.3f} "
                      f"in {r['train_seconds'] / 60:.1f} min", flush=True)
                with open(os.path.join(args.out, "results.json"), "w") as f:
                    json.dump({"args": vars(args), "trainer": {**TRAINER, **trainer_kw}, "results": results}, f, indent=1)

    lines = [
        f"Held-out pass@1 (greedy, {args.eval_tasks} test tasks), tiny SFT policy, {args.steps} trainer steps, "
        f"{args.seeds} seed(s); mean ± std over seeds. Trainer: {json.dumps({**TRAINER, **trainer_kw})}; "
        f"SFT start: {json.dumps(pre_kw)}",
        "",
        "| env | algorithm | before | after | change (points) | train minutes |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for env, by_algo in results.items():
        for algo, runs in by_algo.items():
            before = np.array([r["curve"][0][1] for r in runs]) * 100
            after = np.array([r["curve"][-1][1] for r in runs]) * 100
            mins = np.array([r["train_seconds"] for r in runs]) / 60
            d = after - before
            lines.append(f"| {env} | {algo} | {before.mean():.1f} ± {before.std():.1f} | {after.mean():.1f} ± {after.std():.1f} "
                         f"| {d.mean():+.1f} ± {d.std():.1f} | {mins.mean():.1f} |")
    table = "\n".join(lines)
    with open(os.path.join(args.out, "results.md"), "w") as f:
        f.write(table + "\n")
    print(table)

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(results), figsize=(5 * len(results), 3.6), squeeze=False)
    for ax, (env, by_algo) in zip(axes[0], results.items()):
        for algo, runs in by_algo.items():
            xs = [s for s, _ in runs[0]["curve"]]
            ys = np.array([[v for _, v in r["curve"]] for r in runs]) * 100
            m, s = ys.mean(0), ys.std(0)
            ax.plot(xs, m, marker="o", label=algo)
            ax.fill_between(xs, m - s, m + s, alpha=0.2)
        ax.set_title(ENVS[env])
        ax.set_xlabel("trainer step")
        ax.set_ylabel("held-out pass@1 (%)")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    png = os.path.join(args.out, "curves.png")
    fig.savefig(png, dpi=120)
    print(f"wrote {png}, results.md, results.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
