"""PRM-guided search against best-of-N with the same PRM and against majority vote.

The check of the search issue: at an equal budget of generated policy tokens per task, on
held-out problems, does beam search or MCTS guided by the AIRL PRM beat best-of-N with that
PRM and majority vote, over seeds? Two AIRL PRMs per seed:

* ``airl`` -- trained offline (`prmgym.recipes.pipeline.train_offline_prm`, ``--prm-steps``
  updates on the policy's rollouts against expert traces);
* ``airl_prior`` -- the same model before any update: with the default LM prior its score is
  σ(mean token log-prob of the step + an untrained linear head), i.e. the policy's own
  confidence.

Methods: majority vote (n = 32), best-of-N (n = 32, ``min`` aggregation), beam search 2×4 and
4×4, MCTS (AIRL-S preset, 30 iterations, 4 expansions). PRM tokens are reported, not
limited. Tasks differ per seed (``tasks("test", n, seed)``).

    python benchmarks/search_vs_vote.py --policy runs/tiny            # 3 seeds x 40 tasks, ~15 min
    python benchmarks/search_vs_vote.py --seeds 0 --eval-tasks 10 --budgets 150 --prm-steps 4   # smoke

Writes ``OUT/rows.json`` (per seed) and ``OUT/results.md`` (mean ± std over seeds).
"""

from __future__ import annotations

import argparse
import json
import os
import sys

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


def table(per_seed: dict[str, list[dict]]) -> str:
    """Markdown, mean ± std over seeds per method and budget (seed_claims.py's aggregation)."""
    from seed_claims import aggregate_rows, md_table  # the file next to this one

    return md_table(aggregate_rows(per_seed))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--policy", default=None, help="policy directory (default: the cached tiny SFT policy)")
    ap.add_argument("--env", default="prmgym/ChainArithmetic-v0")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--eval-tasks", type=int, default=40)
    ap.add_argument("--budgets", default=",".join(map(str, BUDGETS)))
    ap.add_argument("--prm-steps", type=int, default=40)
    ap.add_argument("--out", default="runs/search_vs_vote")
    args = ap.parse_args(argv)

    import torch

    torch.set_num_threads(1)
    from prmgym.models import TransformersPolicy
    from prmgym.recipes import pipeline as P
    from prmgym.rewards.train import build_prm

    policy_dir = args.policy or P.build_policy(args.env)
    budgets = [int(b) for b in args.budgets.split(",")]
    per_seed: dict[str, list[dict]] = {}
    for seed in (int(s) for s in args.seeds.split(",")):
        sdir = os.path.join(args.out, f"seed{seed}")
        os.makedirs(sdir, exist_ok=True)
        build_prm("airl", policy_dir).save(os.path.join(sdir, "airl_prior"))
        scorers = {"airl_prior": P.load_scorer(os.path.join(sdir, "airl_prior")),
                   "airl": P.load_scorer(P.train_offline_prm("airl", policy_dir, args.env, os.path.join(sdir, "airl"),
                                                             steps=args.prm_steps, seed=seed))}
        policy = TransformersPolicy.from_pretrained(policy_dir)
        rows, _ = P.compare(methods(), scorers, policy, args.env, budgets=budgets, n_tasks=args.eval_tasks, seed=seed,
                            on_row=lambda r: P.say(f"seed {seed} {r['method']:<18} @ {r['budget']}: {r['accuracy']:.3f} "
                                                   f"(generated {r['mean_generated']:.0f}, PRM {r['mean_prm']:.0f})"))
        per_seed[str(seed)] = rows
        with open(os.path.join(args.out, "rows.json"), "w") as f:
            json.dump({"args": vars(args), "policy": policy_dir, "rows": per_seed}, f, indent=1)
    md = table(per_seed)
    with open(os.path.join(args.out, "results.md"), "w") as f:
        f.write(md + "\n")
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
