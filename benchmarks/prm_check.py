"""Each PRM kind trained by `prmgym train-prm` at its defaults, scored on held-out test-split tasks
(issue #18's check, made the way a new user would make it).

For every kind the script runs ``prmgym train-prm --kind K --policy P --env E --out OUT/K`` as a
subprocess with no other setting (so at train-prm's defaults: 100 updates, held-out early stopping
every 10 updates with patience 5 on 64 held-out tasks, the best PRM kept), then, on ``--tasks`` test-split tasks drawn
with ``--seed`` (900000: seeds never used in training), prints per scorer:

* outcome AUC: the policy's own ``--rollouts`` solutions per task, correct > wrong, by the ``min``
  aggregation of the step scores (and by ``last``);
* corrupted-step AUC: each task's expert solution against a copy with one step's last number
  changed (`prmgym.rewards.heldout.corrupted_pairs`), clean > corrupted, ``min`` aggregation;

for the trained kinds, for the untrained LM prior (the policy's mean token log-prob of each step:
no training at all) and for the number of steps alone; then AIRL − prior.

    python benchmarks/prm_check.py --out runs/prm_check --tasks 100
    python benchmarks/prm_check.py --out runs/prm_check --skip-train     # re-score trained PRMs
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import torch

KINDS = ("orm", "mc", "implicit", "airl", "repirl")


def train(kind: str, policy: str, env: str, out: str, extra: list[str], threads: int) -> float:
    """``prmgym train-prm`` at its defaults (plus ``extra`` --set pairs); returns its seconds."""
    cmd = [sys.executable, "-c", "import sys; from prmgym.cli import main; sys.exit(main(sys.argv[1:]))",
           "train-prm", "--kind", kind, "--policy", policy, "--env", env, "--out", out, "--quiet"]
    for kv in extra:
        cmd += ["--set", kv]
    envvars = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    t0 = time.perf_counter()
    with open(os.path.join(os.path.dirname(out) or ".", f"{kind}.log"), "w") as log:
        subprocess.run(cmd, check=True, stdout=log, stderr=subprocess.STDOUT, env=envvars)
    return time.perf_counter() - t0


def test_rollouts(env: str, policy, n_tasks: int, n_rollouts: int, seed: int) -> tuple:
    """``(env.unwrapped, tasks, rollouts)``: ``n_tasks`` test-split tasks drawn with ``seed`` and
    ``n_rollouts`` policy rollouts of each (those with a step), as every figure here is scored."""
    from prmgym.envs import make
    from prmgym.rewards.data import EnvPool, rollout

    pool = EnvPool(lambda: make(env, split="test"))
    u = pool.get(1)[0].unwrapped
    tasks = list(u.source.tasks("test", n_tasks, seed=seed))
    rolls = [r for r in rollout(pool, policy, tasks, n=n_rollouts, seed=seed, max_new_tokens=32, max_steps=12) if r.steps]
    pool.close()
    return u, tasks, rolls


test_rollouts.__test__ = False  # not a pytest test


def rank_rows(name: str, step_scores_rolls: list[list[float]], rolls: list, step_scores_clean: list[list[float]],
              step_scores_bad: list[list[float]]) -> dict:
    from prmgym.rewards.heldout import auc

    def outcome(agg):
        vals = [agg(r) for r in step_scores_rolls]
        return auc([v for v, r in zip(vals, rolls) if r.correct], [v for v, r in zip(vals, rolls) if not r.correct])

    return {"scorer": name, "outcome_auc_min": outcome(min), "outcome_auc_last": outcome(lambda r: r[-1]),
            "corrupted_auc_min": auc([min(r) for r in step_scores_clean], [min(r) for r in step_scores_bad])}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--env", default="prmgym/ChainArithmetic-v0")
    ap.add_argument("--policy", default=None, help="policy dir (default: the cached tiny SFT policy, prmgym.recipes.tiny.pretrain)")
    ap.add_argument("--kinds", default=",".join(KINDS))
    ap.add_argument("--out", default="runs/prm_check", help="one train-prm run directory per kind, and results.json")
    ap.add_argument("--set", dest="extra", action="append", default=[], help="extra train-prm --set KEY=VALUE (every kind)")
    ap.add_argument("--skip-train", action="store_true", help="score the PRMs already in --out")
    ap.add_argument("--tasks", type=int, default=100)
    ap.add_argument("--rollouts", type=int, default=4)
    ap.add_argument("--seed", type=int, default=900_000)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)

    from prmgym.models import TransformersPolicy
    from prmgym.recipes import tiny as tiny_recipe
    from prmgym.rewards import load_prm
    from prmgym.rewards.data import expert_traces, fill_logprobs
    from prmgym.rewards.heldout import corrupted_pairs

    kinds = [k for k in args.kinds.split(",") if k]
    pol_dir = args.policy or tiny_recipe.pretrain(args.env, progress=False)
    os.makedirs(args.out, exist_ok=True)
    seconds = {}
    if not args.skip_train:
        for k in kinds:
            seconds[k] = train(k, pol_dir, args.env, os.path.join(args.out, k), args.extra, args.threads)
            print(f"trained {k} in {seconds[k]:.0f}s", flush=True)

    policy = TransformersPolicy.from_pretrained(pol_dir)
    u, tasks, rolls = test_rollouts(args.env, policy, args.tasks, args.rollouts, args.seed)
    pairs = corrupted_pairs(expert_traces(tasks), seed=args.seed)
    prompts_c = [p for p, _, _, _ in pairs]
    clean, bad = [c for _, c, _, _ in pairs], [b for _, _, b, _ in pairs]

    def prior(prompts, step_lists):
        lp, nt = fill_logprobs(policy, prompts, step_lists, u.delimiter)
        return [[a / max(1, n) for a, n in zip(r, m)] for r, m in zip(lp, nt)]

    rows = [rank_rows("LM prior (mean token log-prob, untrained)", prior([r.prompt for r in rolls], [r.steps for r in rolls]),
                      rolls, prior(prompts_c, clean), prior(prompts_c, bad)),
            rank_rows("number of steps (fewer)", [[-len(r.steps)] * len(r.steps) for r in rolls], rolls,
                      [[-len(s)] * len(s) for s in clean], [[-len(s)] * len(s) for s in bad])]
    summaries = {}
    for k in kinds:
        d = os.path.join(args.out, k)
        prm = load_prm(d)
        rows.append(rank_rows(k, prm.score_steps([r.prompt for r in rolls], [r.steps for r in rolls]), rolls,
                              prm.score_steps(prompts_c, clean), prm.score_steps(prompts_c, bad)))
        s_path = os.path.join(d, "summary.json")
        if os.path.exists(s_path):
            with open(s_path) as f:
                s = json.load(f)
            summaries[k] = {key: s.get(key) for key in ("validation", "initial_score", "best_score", "best_update",
                                                        "updates", "stopped_early")}
            rows[-1]["best_update"], rows[-1]["updates"] = s.get("best_update"), s.get("updates")

    n_ok = sum(r.correct for r in rolls)
    print(f"\n{args.tasks} test-split tasks (seed {args.seed}); {len(rolls)} policy rollouts ({n_ok} correct); "
          f"{len(pairs)} clean/corrupted pairs")
    print(f"{'scorer':44s} {'outcome AUC (min)':>17s} {'(last)':>7s} {'corrupted AUC (min)':>19s} {'kept update':>11s}")
    for r in rows:
        kept = f"{r['best_update']}/{r['updates']}" if r.get("updates") is not None else ""
        print(f"{r['scorer']:44s} {r['outcome_auc_min']:17.3f} {r['outcome_auc_last']:7.3f} {r['corrupted_auc_min']:19.3f} {kept:>11s}")
    by = {r["scorer"]: r for r in rows}
    base = rows[0]
    if "airl" in by:
        d_out = by["airl"]["outcome_auc_min"] - base["outcome_auc_min"]
        d_cor = by["airl"]["corrupted_auc_min"] - base["corrupted_auc_min"]
        print(f"AIRL − prior: outcome AUC {d_out:+.3f}, corrupted AUC {d_cor:+.3f}")
    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump({"policy": pol_dir, "tasks": args.tasks, "seed": args.seed, "rollouts": len(rolls), "correct": n_ok,
                   "pairs": len(pairs), "rows": rows, "train_seconds": seconds, "summaries": summaries,
                   "extra": args.extra}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
