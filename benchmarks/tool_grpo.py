"""GRPO on ToolMath-v0 with code cells the policy writes: held-out pass@1 before and after, seeds.

For each seed the tiny character model is pretrained by SFT on ToolMath tool traces
(`prmgym.recipes.tiny.pretrain`, few steps, so that it writes cells but often copies the
expression or the output wrong: groups have spread), then trained with GRPO in
``prmgym/ToolMath-v0``: every cell it writes runs in the sandbox, the output joins the trace
as context (never a loss target), and the reward is the final answer's. Measured before and
after on the same held-out test tasks: greedy pass@1 and sampled pass@1 (temperature 1, what
GRPO samples and optimises), and the mean training reward of the first and last steps.

    python benchmarks/tool_grpo.py --seeds 0 1 2 --steps 40   # 16 prompts x 8 a step, lr 3e-4
    python benchmarks/tool_grpo.py --seeds 0 1 2 --steps 20 --batch 64 --lr 1e-3 --warmup 0
    python benchmarks/tool_grpo.py --seeds 0 --steps 5 --eval-tasks 30   # short

Measured (2026-12-05, docs/envs.md): 40 steps raise sampled pass@1 on all 3 seeds (mean 0.333
-> 0.440); 15 steps do not.

Prints one row per seed and the mean, and writes JSON to ``--out`` if given.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time

import torch

from prmgym.agents import GRPOConfig, GRPOTrainer
from prmgym.envs import make
from prmgym.models.hf import TransformersPolicy
from prmgym.recipes.tiny import load_manifest, pretrain

#: the easy ToolMath preset trained on: one operation on two-digit operands ("Compute 47+83.")
SOURCE = {"families": ("expr",), "n_ops": (1, 1), "operand": (10, 99)}


def sampled(tr: GRPOTrainer, args: argparse.Namespace) -> float:
    """Held-out pass@1 at temperature 1 (``--sampled-tasks`` test tasks, one episode each)."""
    from prmgym.envs.episodes import evaluate_policy

    return evaluate_policy(tr.policy, tr.eval_env_fn, n_tasks=args.sampled_tasks, temperature=1.0, seed=1,
                           max_new_tokens=tr.config.max_new_tokens, max_steps=tr.config.max_steps)["pass@1"]


def run(seed: int, args: argparse.Namespace, work: str) -> dict:
    env_kwargs = {"source_kwargs": dict(SOURCE)}
    d = pretrain("prmgym/ToolMath-v0", os.path.join(work, f"pre-{seed}-{args.pretrain_steps}"), progress=False,
                 env_kwargs=env_kwargs, steps=args.pretrain_steps, num_train_tasks=args.train_tasks,
                 eval_tasks=0, seed=seed, n_layer=args.n_layer, n_embd=args.n_embd, n_head=args.n_head)
    row = {"seed": seed, "pretrain_dir": d, "pretrain_seconds": round(load_manifest(d).get("train_seconds", 0.0), 1)}
    for arm, lr in [("grpo", args.lr)]:
        policy = TransformersPolicy.from_pretrained(d)
        cfg = GRPOConfig(num_generations=args.generations, batch_size=args.batch, learning_rate=lr,
                         num_iterations=2, beta=args.beta, warmup_steps=args.warmup, max_new_tokens=40, max_steps=4, temperature=1.0,
                         log_traces=0, seed=seed)
        sk = {"source_kwargs": dict(SOURCE)}
        tr = GRPOTrainer(policy, lambda: make("prmgym/ToolMath-v0", **sk), cfg,
                         eval_env=lambda: make("prmgym/ToolMath-v0", split="test", **sk))
        t0 = time.perf_counter()
        before, before_t1 = tr.pass_at_1(args.eval_tasks), sampled(tr, args)
        hist = tr.train(args.steps)
        after, after_t1 = tr.pass_at_1(args.eval_tasks), sampled(tr, args)
        k = max(1, min(5, len(hist) // 2))
        rw = [m["reward_mean"] for m in hist]
        row[arm] = {"before": before, "after": after, "sampled_before": before_t1, "sampled_after": after_t1,
                    "reward_first": statistics.mean(rw[:k]),
                    "reward_last": statistics.mean(rw[-k:]), "rewards": [round(r, 3) for r in rw],
                    "seconds": round(time.perf_counter() - t0, 1)}
        tr.close()
        print(f"seed {seed} {arm:>7}: greedy pass@1 {before:.3f} -> {after:.3f}; sampled pass@1 "
              f"{before_t1:.3f} -> {after_t1:.3f}; train reward "
              f"{row[arm]['reward_first']:.3f} -> {row[arm]['reward_last']:.3f} ({row[arm]['seconds']} s)", flush=True)
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--pretrain-steps", type=int, default=220, help="SFT steps on tool traces (the start)")
    ap.add_argument("--train-tasks", type=int, default=2000)
    ap.add_argument("--n-layer", type=int, default=2)
    ap.add_argument("--n-embd", type=int, default=64)
    ap.add_argument("--n-head", type=int, default=4)
    ap.add_argument("--steps", type=int, default=40, help="GRPO steps")
    ap.add_argument("--lr", type=float, default=3e-4)
    ap.add_argument("--warmup", type=int, default=4, help="optimizer updates of linear lr warm-up (Adam's first "
                    "sign-like steps at the full rate collapsed the policy in one step)")
    ap.add_argument("--beta", type=float, default=0.0, help="KL weight to the start policy")
    ap.add_argument("--generations", type=int, default=8)
    ap.add_argument("--batch", type=int, default=128, help="episodes per step (/ --generations = prompts)")
    ap.add_argument("--eval-tasks", type=int, default=50)
    ap.add_argument("--sampled-tasks", type=int, default=100, help="held-out tasks of the temperature-1 pass@1")
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    torch.set_num_threads(1)
    work = args.workdir or tempfile.mkdtemp(prefix="prmgym-tool-grpo-")
    rows = [run(s, args, work) for s in args.seeds]
    keys = ("before", "after", "sampled_before", "sampled_after", "reward_first", "reward_last")
    print(f"\n{'seed':>4} | greedy pass@1 | sampled pass@1 | train reward (first -> last steps)")
    for r in rows + [{"seed": "mean", "grpo": {k: statistics.mean(x["grpo"][k] for x in rows) for k in keys}}]:
        g = r["grpo"]
        print(f"{r['seed']:>4} | {g['before']:.3f} -> {g['after']:.3f} | {g['sampled_before']:.3f} -> "
              f"{g['sampled_after']:.3f} | {g['reward_first']:.3f} -> {g['reward_last']:.3f}")
    mean = {k: statistics.mean(r["grpo"][k] for r in rows) for k in keys}
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"rows": rows, "mean": mean, "source": SOURCE, "args": vars(args)}, f, indent=2)


if __name__ == "__main__":
    main()
