"""PRM quality on corrupted traces, and the one-pass scoring speed-up.

For each environment:

1. A policy: ``--policy DIR`` or the tiny SFT model (`prmgym.recipes.tiny.pretrain`, cached).
2. Every PRM kind is trained offline with the *same* budget (`prmgym.rewards.train`):
   ``--steps`` updates x ``--tasks-per-step`` tasks x ``--rollouts`` rollouts (MC-PRM also
   spends ``--mc-rollouts`` completions per step prefix: reported).
3. Held-out test tasks: the expert solution, and a copy with one non-final step corrupted
   (its last number replaced, `prmgym.recipes.tiny.corrupt_step`: a wrong operation result;
   later steps unchanged). Good steps = all steps of clean traces + the steps before the
   corruption; bad steps = the corrupted step (steps after it are left out of the AUC).
   * ``AUC``: probability that a random good step scores above a random bad step.
   * ``loc``: fraction of corrupted traces whose lowest-scoring step is the corrupted one.
   * ``paired``: fraction of corrupted traces where the clean step k outscores the corrupted
     step k (same prefix, same position: free of position effects).
   A reference row scores steps by the policy's own mean token log-prob (no PRM training),
   so the table shows how much each learner adds to what the policy already knows. AIRL is
   reported with both search scores (g and f) from the same trained model.
   * ``own``: the errors that matter for search are the policy's own, not random corruptions.
     At every prefix of ``--own-tasks`` expert solutions the policy samples 8 next steps
     (`own_proposal_set`); a proposal is right when it equals the expert's step. ``own AUC``
     pools all proposals; ``own within`` compares right and wrong siblings of the same prefix,
     the ranking a beam search or MCTS asks of its PRM.
4. Speed: `score_steps` (one pass per trace) vs scoring every prefix as its own trace, on
   the same traces, cache off; ratio of wall times measured in the same run.

    python benchmarks/prm_quality.py --env prmgym/ChainArithmetic-v0 --steps 40
    python benchmarks/prm_quality.py --policy DIR --kinds airl --env-kwargs '{"source_kwargs": {"min_ops": 4, "max_ops": 6, "ops": "+-"}}'
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time

import torch


def auc(good: list[float], bad: list[float]) -> float:
    """Mann-Whitney AUC: P(good > bad) + ½ P(tie)."""
    if not good or not bad:
        return float("nan")
    wins = 0.0
    for g in good:
        for b in bad:
            wins += 1.0 if g > b else 0.5 if g == b else 0.0
    return wins / (len(good) * len(bad))


def corrupted_eval_set(env, n: int, seed: int):
    from prmgym.recipes.tiny import corrupt_step

    u = env.unwrapped
    rng = random.Random(seed)
    tasks = [t for t in u.source.tasks("test", n, seed=seed) if t.expert_steps and len(t.expert_steps) >= 2]
    clean, bad = [], []
    for t in tasks:
        steps = list(t.expert_steps)
        clean.append((t.prompt, steps))
        cands = list(range(len(steps) - 1))  # never the final answer step
        rng.shuffle(cands)
        for k in cands:
            new = corrupt_step(steps[k], rng)
            if new is not None and new != steps[k]:
                bad.append((t.prompt, steps[:k] + [new] + steps[k + 1 :], k))
                break
    return clean, bad


def own_proposal_set(policy, env, n: int, seed: int, k: int = 8, max_new_tokens: int = 24):
    """The policy's *own* next steps: at every prefix of the expert solution of ``n`` test tasks,
    ``k`` sampled proposals (T = 1, duplicates dropped), labelled 1 when the proposal equals the
    expert's step. Exact for tasks whose next step is unique (ChainArithmetic); elsewhere a valid
    alternative step counts as wrong. Returns (items, right_of_k): items are (position, prompt,
    steps ending in the proposal, label, the policy's mean token log-prob of the proposal);
    right_of_k[j] counts the prefixes where j of the k samples equal the expert step (how
    systematic the policy's errors are: j = 0 is an error no resampling fixes)."""
    from prmgym.envs.trace import render_trace

    u = env.unwrapped
    tasks = [t for t in u.source.tasks("test", n, seed=seed) if t.expert_steps]
    pos = [(t, i) for t in tasks for i in range(len(t.expert_steps))]
    obs = [render_trace(t.prompt, list(t.expert_steps[:i]), u.delimiter) for t, i in pos]
    props = policy.propose(obs, k, stop=u.delimiter, max_new_tokens=max_new_tokens, temperature=1.0, seed=seed)
    items = []
    right_of_k = [0] * (k + 1)  # positions by how many of the k samples equal the expert step
    for j, ((t, i), ps) in enumerate(zip(pos, props)):
        right_of_k[sum(pr.text.strip() == t.expert_steps[i].strip() for pr in ps)] += 1
        seen = set()
        for pr in ps:
            txt = pr.text.strip()
            if txt and txt not in seen:
                seen.add(txt)
                items.append((j, t.prompt, list(t.expert_steps[:i]) + [txt], float(txt == t.expert_steps[i].strip()),
                              sum(pr.logprobs) / max(1, len(pr.logprobs))))
    return items, right_of_k


def own_metrics(scores: list[float], items) -> dict:
    """Pooled AUC over all proposals, and within-position AUC (right vs wrong siblings of the
    same prefix: what a beam or MCTS ranking needs)."""
    good = [x for x, it in zip(scores, items) if it[3] == 1]
    bad = [x for x, it in zip(scores, items) if it[3] == 0]
    by_pos: dict = {}  # position -> ([right siblings' scores], [wrong siblings' scores])
    for x, it in zip(scores, items):
        by_pos.setdefault(it[0], ([], []))[0 if it[3] == 1 else 1].append(x)
    wins = pairs = 0.0
    for right, wrong in by_pos.values():
        if right and wrong:
            wins += auc(right, wrong) * len(right) * len(wrong)
            pairs += len(right) * len(wrong)
    return {"own_auc": auc(good, bad), "own_within": wins / pairs if pairs else float("nan"),
            "own_items": len(items), "own_pairs": int(pairs)}


def metrics_from_scores(s_clean, s_bad, clean, bad) -> dict:
    """AUC (pooled good vs bad steps), localisation (argmin), paired (clean step k > corrupted step k)."""
    good = [x for row in s_clean for x in row]
    wrong = []
    loc = 0
    for row, (_, _, k) in zip(s_bad, bad):
        good.extend(row[:k])
        wrong.append(row[k])
        loc += int(min(range(len(row)), key=lambda i: row[i]) == k)
    by_prompt = {}
    for row, (p, _) in zip(s_clean, clean):
        by_prompt[p] = row
    paired = [float(by_prompt[p][k] > row[k]) + 0.5 * float(by_prompt[p][k] == row[k])
              for row, (p, _, k) in zip(s_bad, bad) if p in by_prompt]
    return {"auc": auc(good, wrong), "loc": loc / max(1, len(bad)),
            "paired": sum(paired) / max(1, len(paired)), "n_good": len(good), "n_bad": len(wrong)}


def evaluate(prm, clean, bad, own=()) -> dict:
    """Corrupted-step metrics, plus the own-proposal ones when ``own`` items are given."""
    prm.clear_cache()
    s_clean = prm.score_steps([p for p, _ in clean], [s for _, s in clean])
    s_bad = prm.score_steps([p for p, _, _ in bad], [s for _, s, _ in bad])
    res = metrics_from_scores(s_clean, s_bad, clean, bad)
    if own:
        res.update(own_metrics([r[-1] for r in prm.score_steps([it[1] for it in own], [it[2] for it in own])], own))
    return res


def policy_logprob_scores(policy, clean, bad, delimiter):
    """Reference signal with no PRM training: the policy's mean token log-prob of each step."""
    from prmgym.rewards.data import fill_logprobs

    def rows(traces):
        lp, nt = fill_logprobs(policy, [t[0] for t in traces], [t[1] for t in traces], delimiter)
        return [[a / max(1, n) for a, n in zip(r, q)] for r, q in zip(lp, nt)]

    return metrics_from_scores(rows(clean), rows(bad), clean, bad)


def speed(prm, traces, repeats: int = 3) -> dict:
    prm.cache = None
    prompts, steps = [p for p, _ in traces], [s for _, s in traces]
    pp = [p for p, s in traces for i in range(len(s))]
    ps = [s[: i + 1] for _, s in traces for i in range(len(s))]
    one, per = [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        a = prm.score_steps(prompts, steps)
        one.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        b = prm.score_steps(pp, ps)
        per.append(time.perf_counter() - t0)
    flat_a = [x for row in a for x in row]
    flat_b = [row[-1] for row in b]
    maxdiff = max(abs(x - y) for x, y in zip(flat_a, flat_b))
    tok_one = prm.token_count(prompts, steps)
    tok_per = prm.token_count(pp, ps)
    return {"one_pass_s": min(one), "per_prefix_s": min(per), "speedup": min(per) / min(one),
            "tokens_one_pass": tok_one, "tokens_per_prefix": tok_per, "max_abs_diff": maxdiff}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--env", action="append", default=None, help="environment id (repeatable)")
    ap.add_argument("--env-kwargs", default="{}", help="JSON gym.make arguments for every --env")
    ap.add_argument("--own-tasks", type=int, default=40, help="test tasks whose prefixes get k=8 own proposals (0 skips)")
    ap.add_argument("--policy", default=None, help="policy dir (default: tiny.pretrain for the env)")
    ap.add_argument("--pretrain-steps", type=int, default=600)
    ap.add_argument("--pretrain-tasks", type=int, default=400)
    ap.add_argument("--pretrain-corrupt", type=float, default=0.2, help="corrupt_rate of the tiny SFT data (a policy that errs)")
    ap.add_argument("--kinds", default="airl,repirl,orm,mc,implicit")
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--tasks-per-step", type=int, default=8)
    ap.add_argument("--rollouts", type=int, default=4)
    ap.add_argument("--mc-rollouts", type=int, default=4)
    ap.add_argument("--learning-rate", type=float, default=None, help="learning rate of every kind (default: each "
                    "learner's own, its Options.learning_rate: 1e-3 for airl (its body; heads 1e-5), 1e-4 for the others)")
    ap.add_argument("--airl-negatives", default="rollouts", help="AIRL policy steps: rollouts | prefixes | both "
                    "(PRMTrainConfig.airl_negatives)")
    ap.add_argument("--proposals", type=int, default=4, help="AIRL with prefixes/both: policy steps per expert prefix")
    ap.add_argument("--eval-tasks", type=int, default=100)
    ap.add_argument("--max-steps", type=int, default=12)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default="runs/bench_prm_quality")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)

    import prmgym  # noqa: F401
    from prmgym.envs import make
    from prmgym.models import TransformersPolicy
    from prmgym.recipes import tiny as tiny_recipe
    from prmgym.rewards.train import OfflinePRMTrainer, PRMTrainConfig, build_prm

    envs = args.env or ["prmgym/ChainArithmetic-v0"]
    kinds = [k.strip() for k in args.kinds.split(",") if k.strip()]
    os.makedirs(args.out, exist_ok=True)
    report = {"args": vars(args), "envs": {}}
    ek = json.loads(args.env_kwargs)
    for env_id in envs:
        print(f"\n=== {env_id} ===", flush=True)
        if args.policy:
            pol_dir = args.policy
        else:
            t0 = time.perf_counter()
            pol_dir = tiny_recipe.pretrain(env_id, steps=args.pretrain_steps, num_train_tasks=args.pretrain_tasks,
                                           corrupt_rate=args.pretrain_corrupt, eval_tasks=50, seed=args.seed,
                                           env_kwargs=ek, progress=False)
            print(f"policy: {pol_dir} ({time.perf_counter() - t0:.0f}s incl. cache)", flush=True)
        policy = TransformersPolicy.from_pretrained(pol_dir)
        env_fn = lambda: make(env_id, split="train", **ek)  # noqa: E731
        probe = make(env_id, split="test", **ek)
        delim = probe.unwrapped.delimiter
        clean, bad = corrupted_eval_set(probe, args.eval_tasks, seed=args.seed + 1)
        own, right_of_8 = own_proposal_set(policy, probe, args.own_tasks, seed=args.seed + 2) if args.own_tasks else ([], [])
        probe.close()
        print(f"eval: {len(clean)} clean traces, {len(bad)} corrupted; {len(own)} own proposals "
              f"({sum(it[3] for it in own):.0f} equal the expert step)", flush=True)
        if own:
            n_pre = max(1, sum(right_of_8))
            print(f"prefixes by how many of 8 samples equal the expert step (0..8): {right_of_8}; "
                  f"all 8 wrong at {right_of_8[0] / n_pre:.0%} of {sum(right_of_8)} prefixes", flush=True)
            report.setdefault("own_right_of_8", {})[env_id] = right_of_8
        rows = {}
        ref = policy_logprob_scores(policy, clean, bad, delim)
        ref.update({"train_s": 0.0, "rollout_traces": 0, "mc_rollouts": 0})
        if own:
            ref.update(own_metrics([it[4] for it in own], own))
        rows["policy log-prob (reference, untrained)"] = ref
        print(f"reference policy mean log-prob: AUC={ref['auc']:.3f} loc={ref['loc']:.3f} paired={ref['paired']:.3f}", flush=True)
        for kind in kinds:
            torch.manual_seed(args.seed)
            lr = {} if args.learning_rate is None else {"learning_rate": args.learning_rate}
            prm = build_prm(kind, policy, delimiter=delim, **lr)
            cfg = PRMTrainConfig(kind=kind, steps=args.steps, tasks_per_step=args.tasks_per_step,
                                 rollouts_per_task=args.rollouts, mc_rollouts=args.mc_rollouts,
                                 max_steps=args.max_steps, seed=args.seed,
                                 **({"airl_negatives": args.airl_negatives, "proposals_per_prefix": args.proposals}
                                    if kind == "airl" else {}))
            trainer = OfflinePRMTrainer(prm, policy, env_fn, cfg)
            t0 = time.perf_counter()
            hist = trainer.train()
            train_s = time.perf_counter() - t0
            trainer.close()
            res = evaluate(prm, clean, bad, own)
            res.update({"train_s": train_s, "rollout_traces": trainer.stats["rollout_traces"],
                        "prefix_proposals": trainer.stats.get("prefix_proposals", 0),
                        "mc_rollouts": trainer.stats["mc_rollouts"],
                        "skipped_updates": sum(1 for h in hist if h.get("skipped")),
                        "pos_frac": sum(h.get("positive_frac", 0) for h in hist) / max(1, len(hist))})
            last = hist[-1] if hist else {}
            for k in ("disc_acc", "acc", "loss"):
                if k in last:
                    res[f"final_{k}"] = last[k]
            rows[kind] = res
            if kind == "airl" and args.airl_negatives != "rollouts":
                rows[f"airl [{args.airl_negatives}]"] = rows.pop("airl")
                kind = f"airl [{args.airl_negatives}]"
            if kind.startswith("airl"):  # both documented search scores
                other = "f" if prm.search_score == "g" else "g"
                keep = prm.search_score
                prm.search_score = other
                alt = evaluate(prm, clean, bad, own)
                prm.search_score = keep
                rows[f"{kind} (search_score={other})"] = {**res, **alt}
                rows[f"{kind} (search_score={keep})"] = rows.pop(kind)
                print(f"airl search_score={other}: AUC={alt['auc']:.3f} loc={alt['loc']:.3f} paired={alt['paired']:.3f}", flush=True)
            print(f"{kind:9s} AUC={res['auc']:.3f} loc={res['loc']:.3f} paired={res['paired']:.3f} train={train_s:.0f}s "
                  f"rollouts={res['rollout_traces']} mc_rollouts={res['mc_rollouts']}", flush=True)
            if kind.split(" ")[0] == kinds[0]:
                sp = speed(prm, clean + [(p, s) for p, s, _ in bad])
                print(f"speed: one pass {sp['one_pass_s']*1e3:.1f} ms vs per-prefix {sp['per_prefix_s']*1e3:.1f} ms "
                      f"-> {sp['speedup']:.2f}x (tokens {sp['tokens_one_pass']} vs {sp['tokens_per_prefix']}, "
                      f"max |diff| {sp['max_abs_diff']:.2e})", flush=True)
                report.setdefault("speed", {})[env_id] = sp
        report["envs"][env_id] = {"policy": pol_dir, "n_clean": len(clean), "n_corrupted": len(bad), "results": rows}
        print(f"\n| PRM | AUC good vs bad step | first-bad-step loc. | paired (same prefix) | own proposals: AUC "
              f"| own: within prefix | train s | policy rollouts | MC rollouts |")
        print("|---|---|---|---|---|---|---|---|---|")
        for kind, r in rows.items():
            print(f"| {kind} | {r['auc']:.3f} | {r['loc']:.3f} | {r['paired']:.3f} | {r.get('own_auc', float('nan')):.3f} "
                  f"| {r.get('own_within', float('nan')):.3f} | {r['train_s']:.0f} | {r['rollout_traces']} | {r['mc_rollouts']} |")
    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump(report, f, indent=2, default=str)
    print(f"\nwrote {os.path.join(args.out, 'results.json')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
