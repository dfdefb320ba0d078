"""The papers' claims at small scale, over seeds, with mean ± spread and accuracy-vs-budget curves.

(a) AIRL PRM vs ORM, MC-PRM and implicit PRM as the heuristic inside best-of-N, beam search
    and MCTS (all four PRMs trained offline on the same rollouts of the same policy, for the
    same number of updates, so only the learner differs).
(b) VM-MCTS (value model from collection-MCTS targets) vs PRM best-of-N (MC-PRM) and
    ORM-MCTS (the VM-MCTS tree with the ORM as its scorer).
(c) GRPO with the online AIRL step reward (AIRL-S) vs outcome-only GRPO: same steps, same
    seed; held-out pass@1 of one sample (and the training reward).

Every method of (a)/(b) gets the same per-task limit on generated policy tokens; PRM tokens
are reported. The spread is the standard deviation over seeds (with 3 seeds: a rough one).

    python benchmarks/seed_claims.py --short            # minutes: 3 seeds, few tasks, 2 budgets
    python benchmarks/seed_claims.py                    # the full version (an hour or more on 2 cores)
    python benchmarks/seed_claims.py --claims a --seeds 0,1,2 --budgets 200,400,800 --eval-tasks 40

Writes ``OUT/seed_claims.json``, ``OUT/seed_claims.md`` and ``OUT/claim_{a,b,c}.png``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

from prmgym.recipes import pipeline as P
from prmgym.recipes.pipeline import Method, say

ENV = "prmgym/ChainArithmetic-v0"


def method_set(claim: str, n_max: int, iterations: int, prms=("airl", "orm", "mc", "implicit")) -> list[Method]:
    common = dict(aggregation="min", max_new_tokens=16, max_trace_tokens=64, max_depth=12)
    noagg = {k: v for k, v in common.items() if k != "aggregation"}
    if claim == "a":
        out = [Method("majority_vote", "majority", None, {"n": n_max, **common})]
        for prm in prms:
            sel = "orm_bon" if prm == "orm" else "bon"
            out += [Method(f"bon_{prm}", sel, prm, {"n": n_max, **common}),
                    Method(f"beam_{prm}", "beam", prm, {"beam_width": 2, "expansions": 4, **common}),
                    Method(f"mcts_{prm}", "mcts", prm, {"iterations": iterations, "expansions": 4, **common})]
        return out
    if claim == "b":
        return [Method("vm_mcts", "vm_mcts", "value", {"iterations": 15, "expansions": 5, **noagg}),
                Method("bon_mc_prm", "bon", "mc", {"n": n_max, **common}),
                Method("orm_mcts", "vm_mcts", "orm", {"iterations": 15, "expansions": 5, **noagg}),
                Method("majority_vote", "majority", None, {"n": n_max, **common})]
    raise ValueError(claim)


def aggregate_rows(per_seed: dict[int, list[dict]]) -> list[dict]:
    """mean ± std over seeds for each (method, budget)."""
    keys = {}
    for seed, rows in per_seed.items():
        for r in rows:
            keys.setdefault((r["method"], r["budget"]), []).append(r)
    out = []
    for (m, b), rs in keys.items():
        accs = [r["accuracy"] for r in rs]
        out.append({"method": m, "budget": b, "accuracy": statistics.mean(accs),
                    "spread": statistics.stdev(accs) if len(accs) > 1 else 0.0, "seeds": len(accs),
                    "per_seed": accs, "mean_generated": statistics.mean(r["mean_generated"] for r in rs),
                    "mean_prm": statistics.mean(r["mean_prm"] for r in rs)})
    return out


def md_table(rows: list[dict]) -> str:
    budgets = sorted({r["budget"] for r in rows})
    names = list(dict.fromkeys(r["method"] for r in rows))
    lines = ["| method | " + " | ".join(f"acc @ {b} tok" for b in budgets) + " | prm tok/task @ max |",
             "|" + "---|" * (len(budgets) + 2)]
    for n in names:
        by = {r["budget"]: r for r in rows if r["method"] == n}
        cells = [f"{by[b]['accuracy']:.3f} ± {by[b]['spread']:.3f}" if b in by else "-" for b in budgets]
        last = by.get(budgets[-1])
        lines.append(f"| {n} | " + " | ".join(cells) + (f" | {last['mean_prm']:.0f} |" if last else " | - |"))
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="runs/seed_claims")
    ap.add_argument("--env", default=ENV)
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--claims", default="a,b,c", help="any of a,b,c")
    ap.add_argument("--short", action="store_true", help="small sizes: minutes instead of an hour")
    ap.add_argument("--eval-tasks", type=int, default=None)
    ap.add_argument("--budgets", default=None, help="comma-separated generated-token budgets per task")
    ap.add_argument("--prm-steps", type=int, default=None)
    ap.add_argument("--grpo-steps", type=int, default=None)
    ap.add_argument("--policy", default=None, help="use this policy directory instead of the cached tiny SFT policy")
    ap.add_argument("--prms", default="airl,orm,mc,implicit", help="claim (a): which PRMs to compare")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (the box is shared)")
    ap.add_argument("--ray", action="store_true", help="claims (a) and (b): solve the comparison tasks on Ray actors "
                    "(same rows; pip install -e '.[ray]')")
    ap.add_argument("--address", default=None, help="with --ray: the Ray head to join (default: a local Ray)")
    ap.add_argument("--workers", type=int, default=2, help="with --ray: search actors (default 2)")
    args = ap.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    seeds = [int(s) for s in args.seeds.split(",")]
    claims = [c.strip() for c in args.claims.split(",") if c.strip()]
    bad = set(claims) - {"a", "b", "c"}
    if bad:
        ap.error(f"unknown claim(s) {sorted(bad)}; valid: a, b, c")
    short = args.short
    prms = [p.strip() for p in args.prms.split(",") if p.strip()]
    if set(prms) - {"airl", "orm", "mc", "implicit"}:
        ap.error("--prms takes any of airl, orm, mc, implicit")
    eval_tasks = args.eval_tasks or (12 if short else 40)
    budgets = [int(b) for b in args.budgets.split(",")] if args.budgets else ([200, 500] if short else [200, 400, 800])
    prm_steps = args.prm_steps or (6 if short else 25)
    grpo_steps = args.grpo_steps or (6 if short else 30)
    n_max, iterations = (16, 30) if short else (32, 60)
    os.makedirs(args.out, exist_ok=True)
    t0 = time.perf_counter()

    policy_dir = args.policy or P.tiny_policy_dir(args.env)
    from prmgym.models import TransformersPolicy

    results: dict = {"settings": {"env": args.env, "seeds": seeds, "eval_tasks": eval_tasks, "budgets": budgets,
                                  "prm_steps": prm_steps, "grpo_steps": grpo_steps, "policy": policy_dir,
                                  "short": short, "prms": prms}, "claims": {}}
    per_claim_seed: dict[str, dict[int, list[dict]]] = {c: {} for c in claims}
    grpo_rows: dict[str, list[dict]] = {"airl": [], "outcome": []}
    for seed in seeds:
        sdir = os.path.join(args.out, f"seed{seed}")
        scorers_dirs: dict[str, str] = {}
        if "a" in claims or "b" in claims:
            kinds = sorted(set((["orm", "mc"] if "b" in claims else []) + (prms if "a" in claims else [])))
            for kind in kinds:
                say(f"seed {seed}: training the {kind} PRM ({prm_steps} updates)")
                scorers_dirs[kind] = P.train_offline_prm(kind, policy_dir, args.env, os.path.join(sdir, f"prm_{kind}"),
                                                         steps=prm_steps, seed=seed)
        if "b" in claims:
            say(f"seed {seed}: collection MCTS -> value model")
            v = P.train_value_model(policy_dir, args.env, os.path.join(sdir, "value"), n_tasks=8 if short else 24,
                                    iterations=6 if short else 10, steps=20 if short else 60, seed=seed)
            scorers_dirs["value"] = v["prm"]
        scorers = {k: P.load_scorer(d) for k, d in scorers_dirs.items()}
        policy = TransformersPolicy.from_pretrained(policy_dir)
        runner = (P.ray_compare_runner(policy_dir, scorers_dirs, args.env, workers=args.workers, address=args.address)
                  if args.ray and ("a" in claims or "b" in claims) else None)
        for claim in [c for c in claims if c in ("a", "b")]:
            say(f"seed {seed}: claim ({claim}) comparisons at budgets {budgets}")
            rows, absent = P.compare(method_set(claim, n_max, iterations, prms), scorers, policy, args.env, budgets=budgets,
                                     n_tasks=eval_tasks, seed=seed, runner=runner,
                                     on_row=lambda r: say(f"  {r['method']:<14} @ {r['budget']}: {r['accuracy']:.3f}"))
            per_claim_seed[claim][seed] = rows
            if absent:
                results.setdefault("absent", {}).update(absent)
        if runner is not None:
            runner.close()
        if "c" in claims:
            from prmgym.search.evaluate import evaluate_planner, make_planner

            for reward in ("airl", "outcome"):
                say(f"seed {seed}: GRPO ({reward}) for {grpo_steps} steps")
                g = P.train_grpo(policy_dir, args.env, os.path.join(sdir, f"grpo_{reward}"), reward=reward,
                                 steps=grpo_steps, seed=seed)
                pol = TransformersPolicy.from_pretrained(g["policy"])
                env = P.make_env(args.env, "test")
                tasks = env.unwrapped.source.tasks("test", eval_tasks * 2, seed=seed)
                acc = evaluate_planner(make_planner("sample", seed=seed, max_trace_tokens=64), env, pol, None, tasks)["accuracy"]
                env.close()
                hist = g["history"]
                grpo_rows[reward].append({"seed": seed, "pass1": acc,
                                          "train_reward_first": hist[0].get("reward_mean") if hist else None,
                                          "train_reward_last": hist[-1].get("reward_mean") if hist else None})
                say(f"  GRPO {reward}: held-out pass@1 (one sample) {acc:.3f}")
        # the base policy's pass@1 for (c)
        if "c" in claims:
            from prmgym.search.evaluate import evaluate_planner, make_planner

            env = P.make_env(args.env, "test")
            tasks = env.unwrapped.source.tasks("test", eval_tasks * 2, seed=seed)
            base = evaluate_planner(make_planner("sample", seed=seed, max_trace_tokens=64), env,
                                    TransformersPolicy.from_pretrained(policy_dir), None, tasks)["accuracy"]
            env.close()
            grpo_rows.setdefault("base", []).append({"seed": seed, "pass1": base})

    md = ["# seed claims", "", f"Settings: `{json.dumps(results['settings'])}`", "",
          f"Wall time: {time.perf_counter() - t0:.0f}s", ""]
    for claim in [c for c in claims if c in ("a", "b")]:
        agg = aggregate_rows(per_claim_seed[claim])
        results["claims"][claim] = {"rows": agg, "per_seed": per_claim_seed[claim]}
        P.plot_accuracy(agg, os.path.join(args.out, f"claim_{claim}.png"), err_key="spread",
                        title=f"claim ({claim}): mean ± std over {len(seeds)} seeds")
        md += [f"## claim ({claim})", "", md_table(agg), "", f"![claim {claim}](claim_{claim}.png)", ""]
    if "c" in claims:
        summ = {}
        for k, rs in grpo_rows.items():
            vals = [r["pass1"] for r in rs]
            summ[k] = {"mean": statistics.mean(vals), "spread": statistics.stdev(vals) if len(vals) > 1 else 0.0,
                       "per_seed": vals}
        results["claims"]["c"] = {"rows": grpo_rows, "summary": summ}
        md += ["## claim (c)", "", "| policy | held-out pass@1 (one sample) |", "|---|---|"]
        md += [f"| {k} | {v['mean']:.3f} ± {v['spread']:.3f} |" for k, v in summ.items()]
        md.append("")
    with open(os.path.join(args.out, "seed_claims.json"), "w") as f:
        json.dump(results, f, indent=2, default=str)
    with open(os.path.join(args.out, "seed_claims.md"), "w") as f:
        f.write("\n".join(md))
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    sys.exit(main())
