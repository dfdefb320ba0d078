"""What limits AIRL's outcome AUC over its LM prior (#18): the scores a step could be given, each
read as prm_check.py reads a PRM (``min`` over the steps of a rollout, correct > wrong rollouts),
on the same held-out test-split rollouts of the default tiny ChainArithmetic policy.

Rows:

* the LM prior: the policy's mean token log-prob of ``step + delimiter`` (what an untrained AIRL
  PRM scores; the baseline of #18's +0.03 target);
* other statistics of the same per-token log-probs: their sum, their minimum (the least likely
  token of the step), the mean of the step's two least likely tokens;
* a perfect step checker (ChainArithmetic only: the step's operation applied to the previous
  value, the answer step against the last value): the ceiling of any step scorer read by ``min``;
* for each ``--lm DIR``: the mean token log-prob under that causal LM (e.g. a larger tiny model
  trained by the same SFT recipe: the untrained prior of an AIRL PRM built on it with ``--backbone``);
* for each ``--prm DIR``: that trained PRM's step scores.

It also sorts the wrong rollouts by why they are wrong (the first step the checker rejects:
arithmetic, operand copied wrong, answer, or none: too long / cut) and, for each kind, how many
of them the prior ranks above the median correct rollout.

    python benchmarks/airl_headroom.py --tasks 200
    python benchmarks/airl_headroom.py --tasks 200 --prm runs/prm_check/airl
"""

from __future__ import annotations

import argparse
import json
import math
import re
import statistics
import sys

import torch

_STEP = re.compile(r"^\s*(\d+)\s*([-+*/])\s*(\d+)\s*=\s*(-?\d+)\s*$")
_ANSWER = re.compile(r"^\s*Answer:\s*(-?\d+)\s*$")


def check_chain(task, steps: list[str]) -> tuple[list[float], str]:
    """1.0 / 0.0 per step from a perfect ChainArithmetic step checker, and why the first rejected
    step is wrong (``arith``: a op b != c; ``operand``: the step does not continue from the
    previous value with the task's next operation; ``answer``; ``extra``: a step past the answer
    or past the task's operations; ``none``: no step rejected)."""
    value, ops = task.metadata["start"], list(task.metadata["ops"])
    out, why, k = [], "none", 0
    for st in steps:
        m, a = _STEP.match(st), _ANSWER.match(st)
        ok, reason = False, "extra"
        if m and k < len(ops):
            x, op, y, z = int(m.group(1)), m.group(2), int(m.group(3)), int(m.group(4))
            if (x, op, y) != (value, ops[k][0], ops[k][1]):
                reason = "operand"
            else:
                true = {"+": x + y, "-": x - y, "*": x * y, "/": x // y if y else None}[op]
                ok, reason = z == true, "arith"
            if ok:
                value, k = z, k + 1
        elif a and k == len(ops):
            ok, reason = int(a.group(1)) == value, "answer"
        out.append(1.0 if ok else 0.0)
        if not ok and why == "none":
            why = reason
    return out, why


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--env", default="prmgym/ChainArithmetic-v0")
    ap.add_argument("--policy", default=None, help="policy dir (default: the cached tiny SFT policy)")
    ap.add_argument("--prm", action="append", default=[], help="a trained PRM directory to score too (repeatable)")
    ap.add_argument("--lm", action="append", default=[], help="a causal LM directory whose mean token log-prob to score "
                                                             "too (repeatable)")
    ap.add_argument("--tasks", type=int, default=200)
    ap.add_argument("--rollouts", type=int, default=4)
    ap.add_argument("--seed", type=int, default=900_000)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", default=None, help="also write the figures to this file")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)

    from prmgym.envs import make
    from prmgym.envs.trace import render_trace
    from prmgym.models import TransformersPolicy
    from prmgym.recipes import tiny as tiny_recipe
    from prmgym.rewards import load_prm
    from prmgym.rewards.data import EnvPool, rollout
    from prmgym.rewards.heldout import auc

    pol_dir = args.policy or tiny_recipe.pretrain(args.env, progress=False)
    policy = TransformersPolicy.from_pretrained(pol_dir)
    pool = EnvPool(lambda: make(args.env, split="test"))
    u = pool.get(1)[0].unwrapped
    tasks = list(u.source.tasks("test", args.tasks, seed=args.seed))
    rolls = [r for r in rollout(pool, policy, tasks, n=args.rollouts, seed=args.seed, max_new_tokens=32, max_steps=12)
             if r.steps]
    pool.close()
    obs, cont, where = [], [], []
    for i, r in enumerate(rolls):
        for j, s in enumerate(r.steps):
            obs.append(render_trace(r.prompt, r.steps[:j], u.delimiter))
            cont.append(s + u.delimiter)
            where.append((i, j))
    tok = [[None] * len(r.steps) for r in rolls]
    for b in range(0, len(obs), 64):
        for (i, j), t in zip(where[b:b + 64], policy.logprobs(obs[b:b + 64], cont[b:b + 64])):
            tok[i][j] = t.float()

    feats = {
        "LM prior: mean token log-prob (untrained AIRL)": lambda t: float(t.mean()),
        "sum of token log-probs": lambda t: float(t.sum()),
        "least likely token's log-prob": lambda t: float(t.min()),
        "mean of the two least likely tokens": lambda t: float(t.sort().values[:2].mean()),
    }
    rows = {name: [[f(t) for t in row] for row in tok] for name, f in feats.items()}
    for d in args.lm:
        other = TransformersPolicy.from_pretrained(d)
        vals = []
        for b in range(0, len(obs), 64):
            vals += [float(t.float().mean()) for t in other.logprobs(obs[b:b + 64], cont[b:b + 64])]
        row = [[0.0] * len(r.steps) for r in rolls]
        for (i, j), v in zip(where, vals):
            row[i][j] = v
        rows[f"mean token log-prob under {d}"] = row
    checks = [check_chain(r.task, r.steps) for r in rolls]
    rows["perfect step checker"] = [c[0] for c in checks]
    for d in args.prm:
        prm = load_prm(d)
        rows[f"PRM {d}"] = prm.score_steps([r.prompt for r in rolls], [r.steps for r in rolls])

    good = [i for i, r in enumerate(rolls) if r.correct]
    bad = [i for i, r in enumerate(rolls) if not r.correct]
    result = {"tasks": args.tasks, "rollouts": len(rolls), "correct": len(good), "rows": {}}
    print(f"{args.tasks} test-split tasks (seed {args.seed}); {len(rolls)} rollouts, {len(good)} correct")
    print(f"{'scorer (min over steps)':52s} {'outcome AUC':>11s}")
    for name, sc in rows.items():
        agg = [min(s) for s in sc]
        a = auc([agg[i] for i in good], [agg[i] for i in bad])
        result["rows"][name] = a
        print(f"{name:52s} {a:11.3f}")
    prior = [min(s) for s in rows["LM prior: mean token log-prob (untrained AIRL)"]]
    # the verifier checks the final answer only: some correct rollouts reach it through wrong steps
    lucky = [i for i in good if min(checks[i][0]) < 1.0]
    clean = [i for i in good if min(checks[i][0]) == 1.0]
    tie = [min(c[0]) + 1e-3 * math.exp(min(p, 0.0)) for c, p in zip(checks, prior)]  # exp: monotone, in (0, 1]
    extra = {
        "perfect step checker, ties broken by the prior": auc([tie[i] for i in good], [tie[i] for i in bad]),
        "LM prior, correct rollouts with every step right only": auc([prior[i] for i in clean], [prior[i] for i in bad]),
        "LM prior, correct rollouts with a wrong step only": auc([prior[i] for i in lucky], [prior[i] for i in bad]),
    }
    print(f"\ncorrect rollouts with a wrong step (right answer by luck): {len(lucky)} of {len(good)}")
    for name, a in extra.items():
        result["rows"][name] = a
        print(f"{name:52s} {a:11.3f}")
    result["lucky_correct"] = len(lucky)
    med = statistics.median(prior[i] for i in good)
    kinds: dict = {}
    for i in bad:
        k = checks[i][1]
        n, hi = kinds.get(k, (0, 0))
        kinds[k] = (n + 1, hi + (prior[i] >= med))
    print("\nwrong rollouts by their first rejected step: count, and how many the prior ranks at or above the "
          "median correct rollout")
    for k, (n, hi) in sorted(kinds.items(), key=lambda kv: -kv[1][0]):
        print(f"  {k:8s} {n:4d}  {hi:4d}")
    result["wrong_by_kind"] = {k: {"n": n, "prior_at_or_above_median_correct": hi} for k, (n, hi) in kinds.items()}
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
