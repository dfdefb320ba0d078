"""PRM-guided search against best-of-N with the same PRM and against majority vote.

The check of the search issue: at an equal budget of generated policy tokens per task, on
held-out problems, does beam search or MCTS guided by the AIRL PRM beat best-of-N with that
PRM and majority vote, over seeds? Two AIRL PRMs per seed:

* ``airl`` -- trained offline (`prmgym.recipes.pipeline.train_offline_prm`, ``--prm-steps``
  updates at ``--prm-lr``, default 1e-5; the expert's steps against the policy's steps proposed
  at the expert's prefixes, ``--airl-negatives prefixes``, or its whole rollouts);
* ``airl_prior`` -- the same model before any update: with the default LM prior and its
  zero-initialised heads its score is exactly σ(mean token log-prob of the step), i.e. the
  policy's own confidence.

Methods: majority vote (n = 32), best-of-N (n = 32, ``min`` aggregation), beam search 2×4 and
4×4, MCTS (AIRL-S preset, 30 iterations, 4 expansions). PRM tokens are reported, not
limited. Tasks differ per seed (``tasks("test", n, seed)``).

    python benchmarks/search_vs_vote.py --policy runs/tiny            # 3 seeds x 40 tasks, ~15 min
    python benchmarks/search_vs_vote.py --seeds 0 --eval-tasks 10 --budgets 150 --prm-steps 4   # smoke
    # long chains of + and - (4-6 steps): where step-level search has room (see docs/search.md)
    python benchmarks/search_vs_vote.py --env-kwargs '{"source_kwargs": {"min_ops": 4, "max_ops": 6, "ops": "+-"}}' \
        --budgets 200,400 --eval-tasks 100 --seeds 0,1,2 --out runs/svv012 &
    python benchmarks/search_vs_vote.py --env-kwargs '{"source_kwargs": {"min_ops": 4, "max_ops": 6, "ops": "+-"}}' \
        --budgets 200,400 --eval-tasks 100 --seeds 3,4,5 --out runs/svv345
    wait
    python benchmarks/search_vs_vote.py --merge runs/svv012 runs/svv345 --out runs/svv

Writes ``OUT/rows.json`` (per seed) and ``OUT/results.md``: mean ± std over seeds, then the
paired gaps (each search method minus best-of-N with its PRM and minus majority vote, per seed).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys

from prmgym.rewards.base import ProcessRewardModel  # the oracle is a PRM like any other

BUDGETS = (150, 300)


def methods(prms=("airl_prior", "airl")):
    from prmgym.recipes.pipeline import Method

    common = dict(aggregation="min", max_new_tokens=16, max_trace_tokens=64, max_depth=12)
    out = [Method("majority", "majority", None, {"n": 32, **common})]
    for k in prms:
        out += [Method(f"bon_{k}", "bon", k, {"n": 32, **common}),
                Method(f"beam2x4_{k}", "beam", k, {"beam_width": 2, "expansions": 4, **common}),
                Method(f"beam4x4_{k}", "beam", k, {"beam_width": 4, "expansions": 4, **common}),
                Method(f"mcts_{k}", "mcts", k, {"iterations": 30, "expansions": 4, **common})]
    return out


class ChainStepOracle(ProcessRewardModel):
    """A rule-based step checker for ChainArithmetic (an upper bound, not a learned PRM). It reads
    the chain from the prompt (``Compute left to right: 9-3*6``) and scores step i 1 when it is
    exactly the solver's step i (``9-3=6``, then ``6*6=36``), the answer step 1 when it comes
    after the last operation and gives the chain's value, and everything else 0. It reads only
    the prompt and the steps, like any PRM. ``--oracle`` adds its rows, to show how much of a
    method's accuracy is capped by the policy rather than by the PRM."""

    aggregation = "min"
    _chain = re.compile(r":\s*(\d+)((?:\s*[-+*/]\s*\d+)+)\s*$")
    _op = re.compile(r"([-+*/])\s*(\d+)")

    @classmethod
    def expected_steps(cls, prompt: str) -> list[str] | None:
        """The solver's steps for the chain in ``prompt`` (None if it is not a chain)."""
        from prmgym.envs.procedural import ChainArithmetic

        m = cls._chain.search(prompt)
        if not m:
            return None
        ops = [(op, int(b)) for op, b in cls._op.findall(m.group(2))]
        try:
            steps, value = ChainArithmetic.solve(int(m.group(1)), ops)
        except ValueError:
            return None
        return steps + [f"Answer: {value}"]

    def score_steps(self, prompts, step_lists):
        out = []
        for prompt, steps in zip(prompts, step_lists):
            want = self.expected_steps(prompt) or []
            row = []
            for i, s in enumerate(steps):
                ok = i < len(want) and "".join(s.split()) == "".join(want[i].split())
                row.append(1.0 if ok else 0.0)
            out.append(row)
        return out


def table(per_seed: dict[str, list[dict]]) -> str:
    """Markdown, mean ± std over seeds per method and budget (seed_claims.py's aggregation)."""
    from seed_claims import aggregate_rows, md_table  # the file next to this one

    return md_table(aggregate_rows(per_seed))


def gaps(per_seed: dict[str, list[dict]]) -> str:
    """The issue's check as numbers: for every search method (beam, MCTS) and budget, its
    accuracy minus best-of-N with the same PRM and minus majority vote, on the same tasks (one
    difference per seed): mean ± std over seeds and the seeds where the search method is ahead."""
    import statistics

    acc = {(seed, r["method"], r["budget"]): r["accuracy"] for seed, rows in per_seed.items() for r in rows}
    budgets = sorted({b for _, _, b in acc})
    names = list(dict.fromkeys(m for _, m, _ in acc))
    lines = ["| search method | against | " + " | ".join(f"gap @ {b} tok (seeds ahead)" for b in budgets) + " |",
             "|" + "---|" * (len(budgets) + 2)]
    for m in names:
        if not m.startswith(("beam", "mcts")):
            continue
        prm = m.split("_", 1)[1]
        for other in (f"bon_{prm}", "majority"):
            cells = []
            for b in budgets:
                d = [acc[(s, m, b)] - acc[(s, other, b)] for s in per_seed if (s, m, b) in acc and (s, other, b) in acc]
                if not d:
                    cells.append("-")
                    continue
                sd = statistics.stdev(d) if len(d) > 1 else 0.0
                cells.append(f"{statistics.mean(d):+.3f} ± {sd:.3f} ({sum(x > 0 for x in d)}/{len(d)})")
            lines.append(f"| {m} | {other} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_table(per_seed: dict[str, list[dict]], out: str) -> int:
    """``out/results.md`` from the per-seed rows (accuracies, then the paired gaps), and the same on stdout."""
    md = table(per_seed) + "\n\nPaired gaps (same tasks, one difference per seed; ahead = gap > 0):\n\n" + gaps(per_seed)
    with open(os.path.join(out, "results.md"), "w") as f:
        f.write(md + "\n")
    print(md)
    return 0


def seed_list(seeds: str) -> list[str]:
    """``"0, 1,2"`` -> ``["0", "1", "2"]`` (the ``--seeds`` value, as rows.json keys its seeds)."""
    return [str(int(s)) for s in str(seeds).split(",") if s.strip()]


def merge(dirs: list[str], out: str) -> int:
    """One table from several ``rows.json`` files (their seeds must differ)."""
    from _results import read_result_files  # the file next to this one

    per_seed: dict[str, list[dict]] = {}
    meta = []
    same = ("env", "env_kwargs", "eval_tasks", "budgets", "prm_steps", "oracle", "prm_lr", "airl_negatives", "prms")
    # options added later: what a run without them did
    absent = {"oracle": False, "prm_lr": 1e-4, "airl_negatives": "rollouts", "prms": "airl_prior,airl"}
    first = None
    for d, data in read_result_files(dirs, "rows.json", "search_vs_vote.py"):
        a = data.get("args") or {}
        wanted = seed_list(a.get("seeds", ""))
        if not data.get("complete", set(wanted) <= set(data["rows"])):
            raise SystemExit(f"--merge: {d} holds seeds {sorted(data['rows'])} of {wanted}: that run has not "
                             "finished (or was stopped); finish it or leave it out")
        first = first or (d, a, data.get("policy"))
        def setting(args, k):
            v = args.get(k, absent.get(k))
            return tuple(sorted(x.strip() for x in v.split(",") if x.strip())) if k == "prms" else v

        diff = [k for k in same if setting(a, k) != setting(first[1], k)]
        if diff or data.get("policy") != first[2]:
            raise SystemExit(f"--merge: {d} and {first[0]} were run with different settings "
                             f"({', '.join(diff or ['policy'])}); only runs of one setting can share a table")
        for seed, rows in data["rows"].items():
            if seed in per_seed:
                raise SystemExit(f"--merge: seed {seed} appears in more than one of {dirs}")
            per_seed[seed] = rows
        meta.append({"dir": d, "args": data.get("args"), "policy": data.get("policy")})
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "rows.json"), "w") as f:
        json.dump({"merged_from": meta, "rows": per_seed}, f, indent=1)
    return write_table(per_seed, out)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--policy", default=None, help="policy directory (default: the cached tiny SFT policy)")
    ap.add_argument("--env", default="prmgym/ChainArithmetic-v0")
    ap.add_argument("--env-kwargs", default="{}", help="JSON gym.make arguments, e.g. "
                    "'{\"source_kwargs\": {\"min_ops\": 4, \"max_ops\": 6, \"ops\": \"+-\"}}'")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--eval-tasks", type=int, default=40)
    ap.add_argument("--budgets", default=",".join(map(str, BUDGETS)))
    ap.add_argument("--prm-steps", type=int, default=40)
    ap.add_argument("--prm-lr", type=float, default=None,
                    help="learning rate of the trained AIRL PRM (default: the offline default, 1e-5; rows.json files without this key used 1e-4)")
    ap.add_argument("--airl-negatives", default="prefixes", choices=("rollouts", "prefixes", "both"),
                    help="the trained AIRL PRM's policy steps (PRMTrainConfig.airl_negatives; rows.json files without this key used rollouts)")
    ap.add_argument("--prms", default="airl_prior,airl", help="which AIRL PRMs guide the methods: airl_prior, airl or both")
    ap.add_argument("--out", default="runs/search_vs_vote")
    ap.add_argument("--oracle", action="store_true",
                    help="also run every PRM method with a rule-based ChainArithmetic step checker (upper bound)")
    ap.add_argument("--merge", nargs="+", default=None, metavar="DIR",
                    help="run nothing: combine the rows.json of runs made separately (e.g. one seed per core) "
                         "into one results.md in --out")
    args = ap.parse_args(argv)
    if args.merge:
        return merge(args.merge, args.out)

    import torch

    torch.set_num_threads(1)
    from prmgym.models import TransformersPolicy
    from prmgym.recipes import pipeline as P
    from prmgym.rewards import AIRLPRM
    from prmgym.rewards.train import build_prm

    env_kwargs = json.loads(args.env_kwargs) or None
    if args.oracle and "ChainArithmetic" not in args.env:
        raise SystemExit(f"--oracle checks ChainArithmetic steps; it cannot score {args.env}")
    policy_dir = args.policy or P.tiny_policy_dir(args.env, env_kwargs)
    budgets = [int(b) for b in args.budgets.split(",")]
    if args.prm_lr is None:  # rows.json records the rate used, not "default"
        args.prm_lr = AIRLPRM.Options().learning_rate
    prm_names = tuple(k.strip() for k in args.prms.split(",") if k.strip())
    if not prm_names or set(prm_names) - {"airl_prior", "airl"}:
        raise SystemExit(f"--prms takes airl_prior and/or airl (comma-separated), got {args.prms!r}")
    per_seed: dict[str, list[dict]] = {}
    seeds = seed_list(args.seeds)
    for seed in map(int, seeds):
        sdir = os.path.join(args.out, f"seed{seed}")
        os.makedirs(sdir, exist_ok=True)
        scorers = {}
        if "airl_prior" in prm_names:
            build_prm("airl", policy_dir).save(os.path.join(sdir, "airl_prior"))
            scorers["airl_prior"] = P.load_scorer(os.path.join(sdir, "airl_prior"))
        if "airl" in prm_names:
            scorers["airl"] = P.load_scorer(P.train_offline_prm(
                "airl", policy_dir, args.env, os.path.join(sdir, "airl"), env_kwargs=env_kwargs, steps=args.prm_steps,
                seed=seed, learning_rate=args.prm_lr, airl_negatives=args.airl_negatives))
        if args.oracle:
            scorers["oracle"] = ChainStepOracle()
        policy = TransformersPolicy.from_pretrained(policy_dir)
        rows, _ = P.compare(methods(tuple(scorers)), scorers, policy, args.env, budgets=budgets, n_tasks=args.eval_tasks, seed=seed,
                            env_kwargs=env_kwargs,
                            on_row=lambda r: P.say(f"seed {seed} {r['method']:<18} @ {r['budget']}: {r['accuracy']:.3f} "
                                                   f"(generated {r['mean_generated']:.0f}, PRM {r['mean_prm']:.0f})"))
        per_seed[str(seed)] = rows
        with open(os.path.join(args.out, "rows.json"), "w") as f:  # after every seed: nothing is lost
            json.dump({"args": vars(args), "policy": policy_dir, "rows": per_seed,
                       "complete": set(seeds) <= set(per_seed)}, f, indent=1)
    return write_table(per_seed, args.out)


if __name__ == "__main__":
    sys.exit(main())
