"""Held-out pass@1 of the tiny policy before and after training with each algorithm of `--algos`.

For each environment (ChainArithmetic, Countdown) the tiny character model is pretrained
by SFT on expert traces (`prmgym.recipes.tiny.pretrain`, cached), then trained from that
same starting point with GRPO and with ReST-GRPO at equal trainer steps, for several
seeds. Held-out pass@1 (greedy, test split, the same tasks for every run) is measured
every ``--eval-every`` steps. Writes ``curves.png`` (mean +- std over seeds),
``results.md`` (table) and ``results.json`` to ``--out``.

    python benchmarks/learning_curves.py                      # full: 3 seeds
    python benchmarks/learning_curves.py --steps 10 --seeds 1 --eval-tasks 32   # short
    # one seed per core, then one table:
    python benchmarks/learning_curves.py --envs countdown --algos grpo --steps 300 --eval-every 50 --seeds 1 --first-seed 0 --out runs/lc0 &
    python benchmarks/learning_curves.py --envs countdown --algos grpo --steps 300 --eval-every 50 --seeds 1 --first-seed 1 --out runs/lc1
    wait
    python benchmarks/learning_curves.py --merge runs/lc0 runs/lc1 --out runs/lc
    # the GRPO family at equal generated tokens (DAPO's refill rounds count in its tokens):
    python benchmarks/learning_curves.py --envs countdown --algos grpo,dapo,gspo,rloo,reinforce_pp,rest_grpo \
        --tokens 400000 --evals 2 --seeds 3

Trainer settings: ``TRAINER``, then ``ENV_TRAINER[env]`` (Countdown uses lr 2e-4), then the
algorithm's entry in ``ALGOS`` (a preset of `prmgym.agents.grpo.PRESETS`), then ``--set``.
With ``--tokens N`` every run trains until it has generated N tokens (all rollouts of a step:
dynamic-sampling refills and ReST-GRPO's partial states included), instead of ``--steps``.
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
from prmgym.agents.grpo import apply_preset
from prmgym.config import add_set_arg, apply_overrides, from_dict
from prmgym.models.backend import add_backend_arg, close_policy, load_policy, policy_config_from_args, tiny_layout
from prmgym.recipes import tiny as tiny_recipe

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _sb3_curves import run_sb3_ppo  # noqa: E402  (the file next to this one)

ENVS = {"chain": "prmgym/ChainArithmetic-v0", "countdown": "prmgym/Countdown-v0"}

#: trainer settings shared by both algorithms (ReST-GRPO adds its own defaults)
#: (2026-12-01: 16 prompts x 8 per step, lr 1e-4. With 4 prompts per step every lr >= 2e-4 collapsed
#: pass@1 within 20-40 steps -- even with positive advantages only, i.e. SFT on the policy's own
#: correct traces, which raised held-out expert NLL 2.8 -> 6.1 in 30 steps: too few distinct prompts.)
TRAINER = dict(num_generations=8, batch_size=128, num_iterations=2, learning_rate=1e-4, epsilon_high=0.28,
               max_new_tokens=32, max_steps=8, temperature=1.0, log_traces=0)

#: per-environment changes to TRAINER (``--set`` still overrides both). Countdown at lr 1e-4 gained
#: +9.3 +- 1.7 points in 300 steps (3 seeds, 2026-12-01); at 2e-4 it gains more, and still without
#: the collapse that 2e-4 causes on ChainArithmetic (where it lowered pass@1).
ENV_TRAINER = {"countdown": dict(learning_rate=2e-4)}

#: the default tiny SFT (mid-strength, ~32-38% greedy pass@1 on ChainArithmetic). The former short SFT
#: (steps=400, num_train_tasks=400: ~8%) left GRPO too few correct samples to learn from.
PRETRAIN = dict()


#: ``--algos`` names -> the trainer settings each one changes (on top of TRAINER / ENV_TRAINER)
ALGOS = {
    "grpo": {},
    "dapo": {"preset": "dapo"},
    "gspo": {"preset": "gspo"},
    "rloo": {"preset": "rloo"},
    "reinforce_pp": {"preset": "reinforce_pp"},
    "rest_grpo": {},
    "sb3_ppo": {},  # SB3's PPO, one token per action (benchmarks/_sb3_curves.py); not a GRPO preset
}


def trainer_settings(env: str, overrides: dict, algo: str = "grpo") -> dict:
    """TRAINER, the env's ENV_TRAINER entries, the algorithm's ALGOS entry, then ``--set`` values."""
    return {**TRAINER, **ENV_TRAINER.get(env, {}), **apply_preset(ALGOS[algo]), **overrides}


def algo_list(text: str) -> list[str]:
    """``--algos a,b`` (or several words): the names, each checked against ALGOS."""
    names = [n.strip() for n in text.split(",") if n.strip()]
    for n in names:
        if n not in ALGOS:
            raise argparse.ArgumentTypeError(f"unknown algorithm {n!r}; valid: {', '.join(ALGOS)}")
    return names


def run_one(env_id, policy_dir, algo, seed, steps, eval_every, eval_tasks, trainer_kw, env_kwargs, tokens=0, evals=2,
            policy_config=None):
    """One training run; with ``tokens`` > 0 it stops once that many tokens were generated and
    evaluates at every ``tokens / evals`` (the curve's x is then tokens, not steps). ``policy_config``
    picks the generation backend (`prmgym.models.backend`; default hf)."""
    torch.manual_seed(seed)
    policy = load_policy(policy_dir, policy_config)
    kw = {**trainer_kw, "seed": seed}
    cls, ccls = (ReSTGRPOTrainer, ReSTGRPOConfig) if algo == "rest_grpo" else (GRPOTrainer, GRPOConfig)
    cfg = from_dict(ccls, kw)  # coerces "1e-4" (YAML reads it as a string) and validates
    tr = cls(policy, env_id, cfg, env_kwargs={"split": "train", **env_kwargs})
    curve = [(0, tr.pass_at_1(eval_tasks))]
    t0 = time.perf_counter()
    train_rewards, generated, done, sync = [], 0.0, 0, []
    while (generated < tokens) if tokens else (done < steps):
        k = 1 if tokens else min(eval_every, steps - done)
        hist = tr.train(k)
        train_rewards += [m["reward_mean"] for m in hist]
        sync += [(m["perf/sync_seconds"], m["train/logprob_mismatch"]) for m in hist if "perf/sync_seconds" in m]
        generated += sum(m["budget/generated_total"] for m in hist)
        done += k
        if not tokens:
            curve.append((done, tr.pass_at_1(eval_tasks)))
        elif generated >= tokens * len(curve) / evals:  # passed the next eval point
            curve.append((int(tokens * len(curve) / evals), tr.pass_at_1(eval_tasks)))
    seconds = time.perf_counter() - t0  # includes the evaluations along the way
    tr.close()
    close_policy(policy)
    out = {"curve": curve, "train_seconds": seconds, "train_rewards": train_rewards, "steps_done": done,
           "generated_tokens": generated}
    if sync:  # a vLLM run: weight-sync seconds and sampler/trainer mismatch, mean over steps
        out.update(sync_seconds=float(np.mean([a for a, _ in sync])), logprob_mismatch=float(np.mean([b for _, b in sync])))
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--envs", nargs="+", default=list(ENVS), choices=list(ENVS))
    p.add_argument("--algos", nargs="+", type=algo_list, default=[["grpo", "rest_grpo"]],
                   help=f"comma list (or words) of: {', '.join(ALGOS)}")
    p.add_argument("--sb3-tokens", type=int, default=20_000,
                   help="generated-token budget of sb3_ppo when no grpo run of the same env/seed precedes it")
    p.add_argument("--steps", type=int, default=60, help="trainer steps per run")
    p.add_argument("--tokens", type=int, default=0,
                   help="train each run to this many generated tokens instead of --steps (equal compute)")
    p.add_argument("--evals", type=int, default=2, help="with --tokens: evaluations after the start, evenly in tokens")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--first-seed", type=int, default=0, help="seeds run are first_seed .. first_seed + seeds - 1")
    p.add_argument("--eval-every", type=int, default=10)
    p.add_argument("--eval-tasks", type=int, default=100, help="held-out test tasks (same for all runs)")
    add_set_arg(p, example="learning_rate=5e-5")
    p.add_argument("--pretrain", action="append", default=[], metavar="KEY=VALUE", help="tiny.pretrain override")
    p.add_argument("--out", default="benchmarks/results/learning_curves")
    add_backend_arg(p)  # --backend vllm: rollouts and evaluation on a vLLM engine (tiny model with 3 heads of 32)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--merge", nargs="+", default=None, metavar="DIR",
                   help="run nothing: combine the results.json of runs made separately (e.g. one seed per "
                        "core with --first-seed) into one table and plot in --out")
    args = p.parse_args(argv)
    args.algos = [a for group in args.algos for a in group]
    if args.merge:
        return write_report(merge_results(args.merge), args.out)
    torch.set_num_threads(args.threads)
    overrides = apply_overrides({}, args.overrides)
    pc = policy_config_from_args(args)
    pre_kw = apply_overrides({**PRETRAIN, **tiny_layout(pc)}, args.pretrain, flag="--pretrain")
    os.makedirs(args.out, exist_ok=True)

    results = {}
    for env in args.envs:
        env_id = ENVS[env]
        t = time.perf_counter()
        policy_dir = tiny_recipe.pretrain(env_id, progress=False, **pre_kw)
        print(f"[{env}] tiny policy: {policy_dir} ({time.perf_counter() - t:.0f} s incl. cache check)", flush=True)
        for algo in args.algos:
            trainer_kw = trainer_settings(env, overrides, algo)
            for seed in range(args.first_seed, args.first_seed + args.seeds):
                if algo == "sb3_ppo":  # at the generated tokens of this env/seed's grpo run (list grpo first)
                    grpo = [g for g in results.get(env, {}).get("grpo", []) if g["seed"] == seed]
                    budget = grpo[0]["generated_tokens"] if grpo else (args.tokens or args.sb3_tokens)
                    r = run_sb3_ppo(env_id, policy_dir, seed, int(budget), args.evals, args.eval_tasks, trainer_kw)
                    r.update(steps_done=r["curve"][-1][0], generated_tokens=r["tokens_generated"])
                else:
                    r = run_one(env_id, policy_dir, algo, seed, args.steps, args.eval_every, args.eval_tasks,
                                trainer_kw, {}, tokens=args.tokens, evals=args.evals, policy_config=pc)
                r.update(seed=seed, steps=args.steps if not args.tokens else f"{args.tokens} tokens",
                         eval_tasks=args.eval_tasks, trainer=trainer_kw, pretrain=pre_kw, backend=pc.backend)
                label = algo if pc.backend == "hf" else f"{algo}@{pc.backend}"  # --merge puts both in one table
                results.setdefault(env, {}).setdefault(label, []).append(r)
                c = r["curve"]
                print(f"[{env}] {algo} seed {seed}: pass@1 {c[0][1]:.3f} -> {c[-1][1]:.3f} "
                      f"in {r['train_seconds'] / 60:.1f} min, {r['steps_done']} steps, "
                      f"{r['generated_tokens']:.0f} tokens", flush=True)
                with open(os.path.join(args.out, "results.json"), "w") as f:  # after every run: nothing is lost
                    json.dump({"args": vars(args), "results": results, "complete": False}, f, indent=1)
    return write_report(results, args.out)


def merge_results(dirs: list[str]) -> dict:
    """The runs of several ``results.json`` files, per env and algorithm, in the order given.
    Files written before runs carried their own settings get them from the file's header."""
    from _results import read_result_files  # the file next to this one

    merged: dict = {}
    seen: dict = {}  # (env, algo, seed) -> the dir it came from
    reference: dict = {}  # (env, algo) -> (what every run of it must share, the dir of the first)
    for d, data in read_result_files(dirs, "results.json", "learning_curves.py"):
        a = data.get("args", {})
        if data.get("complete") is False:
            raise SystemExit(f"--merge: the run in {d} has not finished (or was stopped); finish it or leave it out")
        for env, by_algo in data["results"].items():
            for algo, runs in by_algo.items():
                for i, r in enumerate(runs):
                    r.setdefault("seed", a.get("first_seed", 0) + i)
                    r.setdefault("steps", a.get("steps"))
                    r.setdefault("eval_tasks", a.get("eval_tasks"))
                    r.setdefault("trainer", data.get("trainer"))
                    key = (env, algo, r["seed"])
                    if key in seen:
                        raise SystemExit(f"--merge: {env}/{algo} seed {r['seed']} is in both {seen[key]} and {d}")
                    seen[key] = d
                    shared = (r["steps"], r["eval_tasks"], r["trainer"], len(r["curve"]))
                    ref, ref_dir = reference.setdefault((env, algo), (shared, d))
                    if shared != ref:
                        raise SystemExit(f"--merge: {env}/{algo} runs in {d} and {ref_dir} differ in steps, eval "
                                         "tasks, eval points or trainer settings; they cannot share a mean")
                    merged.setdefault(env, {}).setdefault(algo, []).append(r)
    return merged


def write_report(results: dict, out: str) -> int:
    """``results.md`` (mean ± std over seeds), ``curves.png`` and ``results.json`` in ``out``."""
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "results.json"), "w") as f:
        json.dump({"results": results, "complete": True}, f, indent=1)
    lines = ["Held-out pass@1 (greedy, the first test tasks of the split, the same for every run), tiny SFT "
             "policy; mean ± std over seeds; train minutes and seconds per step are wall-clock (evaluations "
             "included); tokens are all generated tokens of training.", ""]
    lines += ["| env | algorithm | seeds | budget | steps done | generated tokens | eval tasks | before | after "
              "| change (points) | train minutes | s/step |",
              "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    settings = []
    for env, by_algo in results.items():
        for algo, runs in by_algo.items():
            before = np.array([r["curve"][0][1] for r in runs]) * 100
            after = np.array([r["curve"][-1][1] for r in runs]) * 100
            mins = np.array([r["train_seconds"] for r in runs]) / 60
            done = np.array([r.get("steps_done", r.get("steps") or 0) for r in runs], dtype=float)
            toks = np.array([r.get("generated_tokens", float("nan")) for r in runs], dtype=float)
            d = after - before
            seeds = ",".join(str(r.get("seed", "?")) for r in runs)
            lines.append(f"| {env} | {algo} | {seeds} | {runs[0].get('steps')} | {done.mean():.1f} | {toks.mean():,.0f} "
                         f"| {runs[0].get('eval_tasks')} "
                         f"| {before.mean():.1f} ± {before.std():.1f} | {after.mean():.1f} ± {after.std():.1f} "
                         f"| {d.mean():+.1f} ± {d.std():.1f} | {mins.mean():.1f} | {60 * mins.sum() / max(done.sum(), 1):.2f} |")
            settings.append(f"- {env} / {algo}: trainer {json.dumps(runs[0].get('trainer'))}; per seed "
                            + ", ".join(f"{v:+.0f}" for v in d))
            if all("sync_seconds" in r for r in runs):  # a vLLM run
                settings[-1] += (f"; weight sync {np.mean([r['sync_seconds'] for r in runs]):.3f} s/step, sampler/trainer "
                                 f"log-prob mismatch {np.mean([r['logprob_mismatch'] for r in runs]):.1e}")
    table = "\n".join(lines + ["", "Settings and per-seed changes (points):"] + settings)
    with open(os.path.join(out, "results.md"), "w") as f:
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
        in_tokens = any(isinstance(r.get("steps"), str) for runs in by_algo.values() for r in runs)  # a --tokens run
        ax.set_xlabel("generated tokens" if in_tokens else "trainer step")
        ax.set_ylabel("held-out pass@1 (%)")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    png = os.path.join(out, "curves.png")
    fig.savefig(png, dpi=120)
    print(f"wrote {png}, results.md, results.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
