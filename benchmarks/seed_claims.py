"""The papers' claims at small scale, over seeds, with mean ± spread and accuracy-vs-budget curves.

(a) AIRL PRM vs ORM, MC-PRM and implicit PRM as the heuristic inside best-of-N, beam search
    and MCTS (all four PRMs trained offline on the same rollouts of the same policy, for the
    same number of updates, so only the learner differs).
(b) VM-MCTS (value model from collection-MCTS targets) vs PRM best-of-N (MC-PRM) and
    ORM-MCTS (the VM-MCTS tree with the ORM as its scorer).
(c) GRPO with the online AIRL step reward (AIRL-S) vs outcome-only GRPO: same steps, same
    seed; held-out pass@1 of one sample (and the training reward).
(s) AIRL-S as the paper means it: the discriminator learned *during* GRPO (`reward: airl`,
    `pipeline.train_grpo`) is the PRM that guides best-of-N, beam and MCTS. Every scorer guides
    the policy that GRPO run produced, so only the scorer differs:
    ``airl_s`` the PRM saved from the GRPO run; ``airl_offline`` the same kind trained offline on
    that policy by `prmgym train-prm` at its defaults; ``airl_prior`` the untrained AIRL PRM on that
    policy (exactly σ of the policy's mean token log-prob of a step); ``orm`` and ``mc`` trained by
    `prmgym train-prm` (held-out early stopping, the best PRM kept) for as many updates as it takes
    to see as many policy rollouts as the GRPO run sampled; ``oracle`` the rule-based step
    checker of search_vs_vote.py (ChainArithmetic only), the upper bound. Reported: each scorer's
    accuracy per planner and the paired per-task differences (AIRL-S − each other scorer, offline
    AIRL − prior, oracle − AIRL-S) with standard errors over tasks and over seeds.

Every method of (a)/(b)/(s) gets the same per-task limit on generated policy tokens; PRM tokens
are reported. The spread is the standard deviation over seeds (with 3 seeds: a rough one).

    python benchmarks/seed_claims.py --short            # minutes: 3 seeds, few tasks, 2 budgets
    python benchmarks/seed_claims.py                    # the full version (an hour or more on 2 cores)
    python benchmarks/seed_claims.py --claims a --seeds 0,1,2 --budgets 200,400,800 --eval-tasks 40
    # claim (s) on long +/- chains, one seed per process, then one table
    K='{"source_kwargs": {"min_ops": 4, "max_ops": 6, "ops": "+-"}}'
    python benchmarks/seed_claims.py --claims s --env-kwargs "$K" --seeds 0 --eval-tasks 200 --out runs/s0 &
    python benchmarks/seed_claims.py --claims s --env-kwargs "$K" --seeds 1 --eval-tasks 200 --out runs/s1 &
    python benchmarks/seed_claims.py --claims s --env-kwargs "$K" --seeds 2 --eval-tasks 200 --out runs/s2
    wait; python benchmarks/seed_claims.py --merge runs/s0 runs/s1 runs/s2 --out runs/s

Writes ``OUT/seed_claims.json``, ``OUT/seed_claims.md`` and ``OUT/claim_{a,b,c}.png``; claim (s)
also ``OUT/claim_s.json`` (after every seed) and ``OUT/claim_s.md``.
"""

from __future__ import annotations

import argparse
import json
import math
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


#: claim (s): the scorers, in table order, and the planners each one guides (method_set's names)
S_SCORERS = ("airl_s", "airl_offline", "airl_prior", "orm", "mc", "oracle")
S_PLANNERS = ("bon", "beam", "mcts")
#: claim (s): the paired differences reported, (a, b) meaning a − b on the same tasks
S_PAIRS = (("airl_s", "airl_prior"), ("airl_s", "airl_offline"), ("airl_s", "orm"), ("airl_s", "mc"),
           ("airl_offline", "airl_prior"), ("oracle", "airl_s"))
#: claim (s): what a merged run must share
S_SETTINGS = ("env", "env_kwargs", "eval_tasks", "budgets", "grpo_steps", "offline_airl_steps", "prm_sets", "policy",
              "n_max", "iterations")


def train_prm_cli(kind: str, policy_dir: str, env_id: str, out: str, *, env_kwargs: dict | None = None, seed: int = 0,
                  sets=()) -> dict:
    """``prmgym train-prm --kind KIND --policy DIR --env ID --out OUT --seed S [--set KEY=VALUE ...]``
    in this process, i.e. at train-prm's defaults (held-out early stopping on, the best PRM kept)
    but for ``sets``; returns its ``summary.json``."""
    from prmgym.cli import main as prmgym_cli

    argv = ["train-prm", "--kind", kind, "--policy", policy_dir, "--env", env_id, "--out", out, "--seed", str(seed),
            "--quiet"]
    for k, v in (env_kwargs or {}).items():
        argv += ["--env-arg", f"{k}={json.dumps(v)}"]
    for kv in sets:
        argv += ["--set", kv]
    rc = prmgym_cli(argv)
    if rc:
        raise RuntimeError(f"prmgym {' '.join(argv)} failed with exit {rc} (its message is above)")
    path = os.path.join(out, "summary.json")
    if not os.path.exists(path):
        return {}
    with open(path) as f:
        return json.load(f)


def updates_for(episodes: int, sets=()) -> int:
    """train-prm updates that draw at least ``episodes`` policy rollouts (``tasks_per_step`` x
    ``rollouts_per_task`` per update, train-prm's defaults unless ``sets`` change them)."""
    from prmgym.config import apply_overrides, from_dict
    from prmgym.rewards.train import TrainPRMRun

    run = from_dict(TrainPRMRun, {"kind": "orm", **apply_overrides({}, list(sets))})
    return max(1, math.ceil(episodes / (run.tasks_per_step * run.rollouts_per_task)))


def claim_s_seed(policy_dir: str, env_id: str, sdir: str, *, seed: int, budgets: list[int], eval_tasks: int,
                 env_kwargs: dict | None = None, grpo_steps: int = 30, offline_airl_steps: int | None = None,
                 prm_sets=(), grpo_overrides: dict | None = None, n_max: int = 32, iterations: int = 30,
                 on_row=None) -> dict:
    """Claim (s) for one seed: GRPO with the online AIRL reward from ``policy_dir``, the scorers of
    `S_SCORERS` on the policy it produced, and every planner with every scorer on ``eval_tasks``
    test-split tasks (drawn with ``seed``). ``offline_airl_steps`` None = train-prm's default;
    ``prm_sets``: extra ``--set`` pairs for every train-prm run. Returns ``{"rows": compare rows
    (with per-task ``correct``), "info": {...}, "dirs": {scorer: PRM directory}}``."""
    from prmgym.models import TransformersPolicy
    from prmgym.rewards.train import build_prm

    say(f"seed {seed}: GRPO with the online AIRL reward (AIRL-S) for {grpo_steps} steps")
    t0 = time.perf_counter()
    g = P.train_grpo(policy_dir, env_id, os.path.join(sdir, "grpo_airl"), env_kwargs=env_kwargs, reward="airl",
                     steps=grpo_steps, seed=seed, **(grpo_overrides or {}))
    info: dict = {"grpo_steps": g["steps"], "grpo_episodes": g["episodes"], "seconds": {"grpo": time.perf_counter() - t0},
                  "summaries": {}, "prm_updates": {}}
    pol = g["policy"]
    dirs = {"airl_s": g["prm"], "airl_prior": os.path.join(sdir, "airl_prior")}
    build_prm("airl", pol).save(dirs["airl_prior"])  # untrained: σ(mean token log-prob of the step) under pol
    n_updates = updates_for(g["episodes"], prm_sets)
    for name, kind, extra in (("airl_offline", "airl", [f"steps={offline_airl_steps}"] if offline_airl_steps else []),
                              ("orm", "orm", [f"steps={n_updates}"]), ("mc", "mc", [f"steps={n_updates}"])):
        say(f"seed {seed}: prmgym train-prm --kind {kind} on the GRPO policy{' ' + ' '.join(extra) if extra else ''}")
        t0 = time.perf_counter()
        dirs[name] = os.path.join(sdir, f"prm_{name}")
        s = train_prm_cli(kind, pol, env_id, dirs[name], env_kwargs=env_kwargs, seed=seed, sets=[*prm_sets, *extra])
        info["seconds"][name] = time.perf_counter() - t0
        info["summaries"][name] = {k: s.get(k) for k in ("validation", "initial_score", "best_score", "best_update",
                                                         "updates", "stopped_early")}
    scorers = {k: P.load_scorer(d) for k, d in dirs.items()}
    info["prm_updates"] = {k: getattr(v, "updates", None) for k, v in scorers.items()}
    if "ChainArithmetic" in env_id:
        from search_vs_vote import ChainStepOracle  # the file next to this one

        scorers["oracle"] = ChainStepOracle()
    names = [k for k in S_SCORERS if k in scorers]
    common = dict(max_new_tokens=16, max_trace_tokens=64, max_depth=12)
    methods = [Method("sampling", "sample", None, dict(common))] + method_set("a", n_max, iterations, prms=names)
    say(f"seed {seed}: claim (s) comparisons at budgets {budgets} on {eval_tasks} test-split tasks")
    t0 = time.perf_counter()
    rows, absent = P.compare(methods, scorers, TransformersPolicy.from_pretrained(pol), env_id, budgets=budgets,
                             n_tasks=eval_tasks, env_kwargs=env_kwargs, seed=seed, per_task=True, on_row=on_row)
    info["seconds"]["compare"] = time.perf_counter() - t0
    if absent:
        info["absent"] = absent
    return {"rows": rows, "info": info, "dirs": dirs}


def paired(per_seed: dict, a: str, b: str, budget: int) -> dict | None:
    """Method ``a`` minus method ``b`` task by task (the same tasks: `compare`'s per-task
    ``correct``), per seed, then over seeds: the mean of the per-seed mean differences;
    ``se_tasks`` the standard error from the tasks (√Σ se_s² / k, se_s = sd of seed s's task
    differences / √n); ``se_seeds`` the standard deviation of the k per-seed means / √k (it also
    holds the training randomness; rough with 3 seeds); ``se`` the larger. None if no seed has both."""
    means, ses, n = [], [], 0
    for seed, rows in per_seed.items():
        by = {r["method"]: r for r in rows if r["budget"] == budget}
        if a not in by or b not in by:
            continue
        ca, cb = by[a]["correct"], by[b]["correct"]
        if len(ca) != len(cb):
            raise ValueError(f"seed {seed}: {a} has {len(ca)} tasks and {b} {len(cb)}; paired differences need the same tasks")
        d = [x - y for x, y in zip(ca, cb)]
        means.append(statistics.mean(d))
        ses.append(statistics.stdev(d) / math.sqrt(len(d)) if len(d) > 1 else 0.0)
        n += len(d)
    if not means:
        return None
    k = len(means)
    se_tasks = math.sqrt(sum(s * s for s in ses)) / k
    se_seeds = statistics.stdev(means) / math.sqrt(k) if k > 1 else None
    return {"mean": statistics.mean(means), "se_tasks": se_tasks, "se_seeds": se_seeds,
            "se": max(se_tasks, se_seeds or 0.0), "per_seed": means, "n": n, "seeds_ahead": sum(m > 0 for m in means)}


def claim_s_report(per_seed: dict) -> tuple[str, dict]:
    """Markdown tables of claim (s) (accuracy per scorer and planner, mean ± SE over seeds; the
    paired differences of `S_PAIRS`) and the same numbers as a dict."""
    agg = aggregate_rows(per_seed)
    k = len(per_seed)
    budgets = sorted({r["budget"] for r in agg})
    by = {(r["method"], r["budget"]): r for r in agg}
    out: dict = {"accuracy": agg, "paired": {}}
    md = []
    for b in budgets:
        def cell(m):
            r = by.get((m, b))
            return f"{r['accuracy']:.3f} ± {r['spread'] / math.sqrt(r['seeds']):.3f}" if r else "-"

        md += [f"Accuracy at {b} generated policy tokens per task, mean ± SE over {k} seed(s) (SE = std / √{k}):", "",
               "| scorer | " + " | ".join(S_PLANNERS) + " |", "|---|" + "---|" * len(S_PLANNERS)]
        for s in S_SCORERS:
            if any((f"{p}_{s}", b) in by for p in S_PLANNERS):
                md.append(f"| {s} | " + " | ".join(cell(f"{p}_{s}") for p in S_PLANNERS) + " |")
        md += ["", f"Without a scorer, on the same tasks: majority vote {cell('majority_vote')}, sampling (one "
               f"trace) {cell('sampling')}.", "",
               f"Paired differences at {b} tokens (the same tasks for every scorer; mean over seeds; SE from the "
               "tasks and from the seeds; 'clear' = |mean| > 2 × the larger SE):", "",
               "| planner | difference | mean | SE tasks | SE seeds | per seed | clear |", "|---|---|---|---|---|---|---|"]
        for p in S_PLANNERS:
            for x, y in S_PAIRS:
                d = paired(per_seed, f"{p}_{x}", f"{p}_{y}", b)
                if d is None:
                    continue
                out["paired"][f"{p}_{x}-{y}@{b}"] = d
                seeds_se = f"{d['se_seeds']:.3f}" if d["se_seeds"] is not None else "-"
                md.append(f"| {p} | {x} − {y} | {d['mean']:+.3f} | {d['se_tasks']:.3f} | {seeds_se} | "
                          + " / ".join(f"{m:+.3f}" for m in d["per_seed"])
                          + f" | {'yes' if abs(d['mean']) > 2 * d['se'] else 'no'} |")
        md.append("")
    return "\n".join(md), out


def write_claim_s(out_dir: str, settings: dict, per_seed: dict, info: dict, complete: bool) -> str:
    """``out_dir/claim_s.json`` (settings, per-seed rows and info, whether every seed is in) and,
    when complete, ``out_dir/claim_s.md``; returns the markdown (empty while incomplete)."""
    os.makedirs(out_dir, exist_ok=True)
    data = {"settings": settings, "per_seed": per_seed, "info": info, "complete": complete}
    md = ""
    if complete:
        md, data["summary"] = claim_s_report(per_seed)
        with open(os.path.join(out_dir, "claim_s.md"), "w") as f:
            f.write(md + "\n")
    with open(os.path.join(out_dir, "claim_s.json"), "w") as f:
        json.dump(data, f, indent=1, default=str)
    return md


def merge_s(dirs: list[str], out: str) -> int:
    """One claim (s) table from the ``claim_s.json`` of runs made separately (one seed each, say):
    the runs must be finished, share `S_SETTINGS` and hold different seeds."""
    from _results import read_result_files  # the file next to this one

    per_seed: dict = {}
    info: dict = {}
    first = None
    for d, data in read_result_files(dirs, "claim_s.json", "seed_claims.py --claims s"):
        if not data.get("complete"):
            raise SystemExit(f"--merge: {d} has not finished (seeds {sorted(data.get('per_seed', {}))} of "
                             f"{data.get('settings', {}).get('seeds')}); finish it or leave it out")
        st = data["settings"]
        first = first or (d, st)
        diff = [k for k in S_SETTINGS if st.get(k) != first[1].get(k)]
        if diff:
            raise SystemExit(f"--merge: {d} and {first[0]} differ in {', '.join(diff)}; only runs of one setting "
                             "can share a table")
        for seed, rows in data["per_seed"].items():
            if seed in per_seed:
                raise SystemExit(f"--merge: seed {seed} is in more than one of {dirs}")
            per_seed[seed] = rows
            info[seed] = data["info"].get(seed)
    settings = {**first[1], "seeds": [int(s) for s in per_seed], "merged_from": list(dirs)}
    print(write_claim_s(out, settings, per_seed, info, complete=True))
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="runs/seed_claims")
    ap.add_argument("--env", default=ENV)
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--claims", default="a,b,c", help="any of a,b,c,s (s: not in the default set)")
    ap.add_argument("--env-kwargs", default="{}", help="JSON gym.make arguments, e.g. long chains: "
                    "'{\"source_kwargs\": {\"min_ops\": 4, \"max_ops\": 6, \"ops\": \"+-\"}}'")
    ap.add_argument("--short", action="store_true", help="small sizes: minutes instead of an hour")
    ap.add_argument("--eval-tasks", type=int, default=None)
    ap.add_argument("--budgets", default=None, help="comma-separated generated-token budgets per task")
    ap.add_argument("--prm-steps", type=int, default=None)
    ap.add_argument("--grpo-steps", type=int, default=None)
    ap.add_argument("--policy", default=None, help="use this policy directory instead of the cached tiny SFT policy")
    ap.add_argument("--prms", default="airl,orm,mc,implicit", help="claim (a): which PRMs to compare")
    ap.add_argument("--offline-airl-steps", type=int, default=None,
                    help="claim (s): updates of the offline AIRL PRM (default: train-prm's own; --short: 10)")
    ap.add_argument("--prm-set", action="append", default=[], metavar="KEY=VALUE",
                    help="claim (s): extra train-prm --set for the offline AIRL, ORM and MC-PRM (repeatable)")
    ap.add_argument("--merge", nargs="+", default=None, metavar="DIR",
                    help="claim (s): run nothing; one table from the claim_s.json of runs made separately, into --out")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (the box is shared)")
    ap.add_argument("--ray", action="store_true", help="claims (a) and (b): solve the comparison tasks on Ray actors "
                    "(same rows; pip install -e '.[ray]')")
    ap.add_argument("--address", default=None, help="with --ray: the Ray head to join (default: a local Ray)")
    ap.add_argument("--workers", type=int, default=2, help="with --ray: search actors (default 2)")
    args = ap.parse_args(argv)
    if args.merge:
        return merge_s(args.merge, args.out)

    import torch

    torch.set_num_threads(args.threads)
    seeds = [int(s) for s in args.seeds.split(",")]
    claims = [c.strip() for c in args.claims.split(",") if c.strip()]
    bad = set(claims) - {"a", "b", "c", "s"}
    if bad:
        ap.error(f"unknown claim(s) {sorted(bad)}; valid: a, b, c, s")
    if args.ray and "s" in claims:
        ap.error("--ray runs claims a and b on Ray; claim s runs here (run one seed per process and --merge)")
    try:
        env_kwargs = json.loads(args.env_kwargs) or None
    except json.JSONDecodeError as e:
        ap.error(f"--env-kwargs is not JSON ({e}); e.g. '{{\"source_kwargs\": {{\"min_ops\": 4}}}}'")
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

    policy_dir = args.policy or P.tiny_policy_dir(args.env, env_kwargs)
    from prmgym.models import TransformersPolicy

    results: dict = {"settings": {"env": args.env, "env_kwargs": env_kwargs, "seeds": seeds, "eval_tasks": eval_tasks,
                                  "budgets": budgets, "prm_steps": prm_steps, "grpo_steps": grpo_steps,
                                  "policy": policy_dir, "short": short, "prms": prms}, "claims": {}}
    # claim (s): one budget unless --budgets, train-prm's own AIRL updates unless --short / --offline-airl-steps
    s_settings = {"env": args.env, "env_kwargs": env_kwargs, "seeds": seeds, "eval_tasks": eval_tasks,
                  "budgets": [int(b) for b in args.budgets.split(",")] if args.budgets else [200],
                  "grpo_steps": grpo_steps, "offline_airl_steps": args.offline_airl_steps or (10 if short else None),
                  "prm_sets": list(args.prm_set) + (["eval_tasks=16"] if short else []), "policy": policy_dir,
                  "n_max": 32, "iterations": 30, "short": short}
    s_info: dict = {}
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
                                                         env_kwargs=env_kwargs, steps=prm_steps, seed=seed)
        if "b" in claims:
            say(f"seed {seed}: collection MCTS -> value model")
            v = P.train_value_model(policy_dir, args.env, os.path.join(sdir, "value"), env_kwargs=env_kwargs,
                                    n_tasks=8 if short else 24,
                                    iterations=6 if short else 10, steps=20 if short else 60, seed=seed)
            scorers_dirs["value"] = v["prm"]
        scorers = {k: P.load_scorer(d) for k, d in scorers_dirs.items()}
        policy = TransformersPolicy.from_pretrained(policy_dir)
        runner = (P.ray_compare_runner(policy_dir, scorers_dirs, args.env, env_kwargs, workers=args.workers,
                                       address=args.address)
                  if args.ray and ("a" in claims or "b" in claims) else None)
        for claim in [c for c in claims if c in ("a", "b")]:
            say(f"seed {seed}: claim ({claim}) comparisons at budgets {budgets}")
            rows, absent = P.compare(method_set(claim, n_max, iterations, prms), scorers, policy, args.env, budgets=budgets,
                                     n_tasks=eval_tasks, env_kwargs=env_kwargs, seed=seed, runner=runner,
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
                g = P.train_grpo(policy_dir, args.env, os.path.join(sdir, f"grpo_{reward}"), env_kwargs=env_kwargs,
                                 reward=reward, steps=grpo_steps, seed=seed)
                pol = TransformersPolicy.from_pretrained(g["policy"])
                env = P.make_env(args.env, "test", env_kwargs)
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

            env = P.make_env(args.env, "test", env_kwargs)
            tasks = env.unwrapped.source.tasks("test", eval_tasks * 2, seed=seed)
            base = evaluate_planner(make_planner("sample", seed=seed, max_trace_tokens=64), env,
                                    TransformersPolicy.from_pretrained(policy_dir), None, tasks)["accuracy"]
            env.close()
            grpo_rows.setdefault("base", []).append({"seed": seed, "pass1": base})
        if "s" in claims:
            res = claim_s_seed(policy_dir, args.env, sdir, seed=seed, budgets=s_settings["budgets"], eval_tasks=eval_tasks,
                               env_kwargs=env_kwargs, grpo_steps=grpo_steps,
                               offline_airl_steps=s_settings["offline_airl_steps"], prm_sets=s_settings["prm_sets"],
                               n_max=s_settings["n_max"], iterations=s_settings["iterations"],
                               on_row=lambda r: say(f"  {r['method']:<18} @ {r['budget']}: {r['accuracy']:.3f} "
                                                    f"(generated {r['mean_generated']:.0f}, PRM {r['mean_prm']:.0f})"))
            per_claim_seed["s"][seed] = res["rows"]
            s_info[seed] = res["info"]
            # after every seed, so a stopped run keeps what it measured
            write_claim_s(args.out, s_settings, per_claim_seed["s"], s_info, complete=set(seeds) <= set(s_info))

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
    if "s" in claims:
        s_md, results["claims"]["s"] = claim_s_report(per_claim_seed["s"])
        md += ["## claim (s)", "", s_md]
    with open(os.path.join(args.out, "seed_claims.json"), "w") as f:
        json.dump(results, f, indent=2, default=str)
    with open(os.path.join(args.out, "seed_claims.md"), "w") as f:
        f.write("\n".join(md))
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    sys.exit(main())
