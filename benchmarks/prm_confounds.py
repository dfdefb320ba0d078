"""What a PRM can learn without reading the step: content-free features of the offline training
data and how well they predict its labels (part of #18's diagnosis of the head-based kinds).

On held-out test-split tasks the policy is rolled out (``--rollouts`` per task) and every step of
every rollout is labelled by ``--mc-rollouts`` Monte-Carlo completions, as MC-PRM's training data
is. The script prints:

* class balance: the fraction of correct rollouts (the ORM/implicit positives) and of steps whose
  MC label is ≥ ½ (MC-PRM's positives);
* outcome AUC (correct > wrong rollouts) of features that ignore the step's content: fewer
  steps, fewer operations in the prompt;
* MC step-label AUC of the step's position (earlier step > later step) and of the prompt's
  operation count, next to the label AUC of the policy's own mean token log-prob of the step
  (a feature that does read the step).

A head that reads position or prompt length can reach these AUCs without looking at the step.

    python benchmarks/prm_confounds.py --tasks 24 --rollouts 4 --mc-rollouts 4
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time

import torch


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--env", default="prmgym/ChainArithmetic-v0")
    ap.add_argument("--policy", default=None, help="policy dir (default: the cached tiny SFT policy, prmgym.recipes.tiny.pretrain)")
    ap.add_argument("--tasks", type=int, default=24)
    ap.add_argument("--rollouts", type=int, default=4)
    ap.add_argument("--mc-rollouts", type=int, default=4)
    ap.add_argument("--seed", type=int, default=900_000)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", default=None, help="also write the figures to this file")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)

    from prmgym.envs import make
    from prmgym.models import TransformersPolicy
    from prmgym.recipes import tiny as tiny_recipe
    from prmgym.rewards.data import EnvPool, fill_logprobs, mc_step_labels, rollout
    from prmgym.rewards.heldout import auc

    t0 = time.perf_counter()
    pol_dir = args.policy or tiny_recipe.pretrain(args.env, progress=False)
    policy = TransformersPolicy.from_pretrained(pol_dir)
    pool = EnvPool(lambda: make(args.env, split="test"))
    u = pool.get(1)[0].unwrapped
    tasks = list(u.source.tasks("test", args.tasks, seed=args.seed))
    rolls = [r for r in rollout(pool, policy, tasks, n=args.rollouts, seed=args.seed, max_new_tokens=32, max_steps=12) if r.steps]
    labels = mc_step_labels(pool, policy, rolls, n_rollouts=args.mc_rollouts, mode="soft", seed=args.seed + 1,
                            max_new_tokens=32, max_steps=12)
    lp, nt = fill_logprobs(policy, [r.prompt for r in rolls], [r.steps for r in rolls], u.delimiter)
    pool.close()

    def n_ops(prompt: str) -> int:
        return len(re.findall(r"[-+*/]", prompt.split(".")[0]))

    ok = [r for r in rolls if r.correct]
    bad = [r for r in rolls if not r.correct]
    steps = [(r, j, y, a / max(1, n)) for r, lab, lps, nts in zip(rolls, labels, lp, nt)
             for j, (y, a, n) in enumerate(zip(lab, lps, nts))]
    pos = [s for s in steps if s[2] >= 0.5]
    neg = [s for s in steps if s[2] < 0.5]
    out = {
        "policy": pol_dir, "rollouts": len(rolls), "steps": len(steps),
        "correct_frac": len(ok) / max(1, len(rolls)),
        "mc_positive_frac": len(pos) / max(1, len(steps)),
        "outcome_auc_fewer_steps": auc([-len(r.steps) for r in ok], [-len(r.steps) for r in bad]),
        "outcome_auc_fewer_prompt_ops": auc([-n_ops(r.prompt) for r in ok], [-n_ops(r.prompt) for r in bad]),
        "mc_label_auc_earlier_position": auc([-s[1] for s in pos], [-s[1] for s in neg]),
        "mc_label_auc_fewer_prompt_ops": auc([-n_ops(s[0].prompt) for s in pos], [-n_ops(s[0].prompt) for s in neg]),
        "mc_label_auc_step_mean_logprob": auc([s[3] for s in pos], [s[3] for s in neg]),
        "seconds": time.perf_counter() - t0,
    }
    for k, v in out.items():
        print(f"{k:34s} {v:.3f}" if isinstance(v, float) else f"{k:34s} {v}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
