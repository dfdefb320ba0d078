"""``prmgym search``: a planner, a policy, a PRM, an env and a per-task budget.

    prmgym search --planner beam --policy runs/tiny --prm runs/airl_prm \\
        --env prmgym/ChainArithmetic-v0 --n-tasks 20 --budget generated=1500 --out runs/search

Prints accuracy and mean budget used; writes ``results.jsonl`` (one row per task) and
TensorBoard logs (``tb/``) under ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import time

from prmgym.search.evaluate import evaluate_planner, make_planner, needs_scorer, planner_names


def _kv(items):
    out = {}
    for it in items or []:
        if "=" not in it:
            raise SystemExit(f"prmgym search: bad --env-arg {it!r}; write key=value (e.g. difficulty=2)")
        k, v = it.split("=", 1)
        try:
            out[k] = json.loads(v)
        except json.JSONDecodeError:
            out[k] = v
    return out


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--planner", choices=planner_names(), default="beam", help="which planner (default: beam)")
    p.add_argument("--policy", required=True, help="policy directory (a Hugging Face causal LM saved with save_pretrained)")
    p.add_argument("--prm", default=None, help="PRM / ORM / value-model directory (prmgym train-prm output); "
                   "not needed for --planner sample|majority")
    p.add_argument("--env", default="prmgym/ChainArithmetic-v0", help="environment id")
    p.add_argument("--env-arg", action="append", metavar="KEY=VALUE", help="extra gym.make argument (repeatable)")
    p.add_argument("--split", default="test", help="task split to evaluate on (default: test)")
    p.add_argument("--n-tasks", type=int, default=20, help="number of held-out tasks")
    p.add_argument("--budget", default="", help="per-task budget, e.g. generated=1500,prm=20000 (units: "
                   "generated, encoded, prm, sandbox, seconds); empty = unlimited")
    p.add_argument("--n", type=int, default=8, help="samples for best-of-N / majority / DVTS")
    p.add_argument("--beam-width", type=int, default=4)
    p.add_argument("--expansions", type=int, default=4, help="samples per expansion (beam M, DVTS subtree width, MCTS k)")
    p.add_argument("--iterations", type=int, default=20, help="MCTS iterations")
    p.add_argument("--max-depth", type=int, default=16)
    p.add_argument("--aggregation", default="last", help="PRM aggregation: last, min, mean, prod")
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="output directory (default: runs/search-<planner>-<time>)")
    p.add_argument("--quiet", action="store_true", help="no per-task lines")


def run(args) -> int:
    import gymnasium as gym

    import prmgym  # noqa: F401  (registers the envs)
    from prmgym.logging import Logger
    from prmgym.models import TransformersPolicy

    if args.n_tasks < 1:
        raise SystemExit("prmgym search: --n-tasks must be >= 1")
    scorerless = [n for n in planner_names() if not needs_scorer(n)]
    if needs_scorer(args.planner) and not args.prm:
        raise SystemExit(f"prmgym search: --planner {args.planner} needs --prm DIR (a trained PRM/value model); "
                         f"or use --planner {'|'.join(scorerless)}")
    from prmgym.budget import Budget

    try:
        Budget.parse(args.budget)
    except ValueError as e:
        raise SystemExit(f"prmgym search: --budget: {e}") from None
    if not os.path.isdir(args.policy):
        raise SystemExit(f"prmgym search: no policy directory at {args.policy!r}; build one with `prmgym pretrain`")
    planner = make_planner(args.planner, n=args.n, beam_width=args.beam_width, expansions=args.expansions,
                           iterations=args.iterations, max_depth=args.max_depth, aggregation=args.aggregation,
                           temperature=args.temperature, seed=args.seed)
    policy = TransformersPolicy.from_pretrained(args.policy)
    scorer = None
    if args.prm and needs_scorer(args.planner):
        from prmgym.rewards import load_prm

        if not os.path.isdir(args.prm):
            raise SystemExit(f"prmgym search: no PRM directory at {args.prm!r}; train one with `prmgym train-prm`")
        scorer = load_prm(args.prm)
    env = gym.make(args.env, split=args.split, **_kv(args.env_arg))
    tasks = env.unwrapped.source.tasks(args.split, args.n_tasks, seed=args.seed)
    out = args.out or os.path.join("runs", f"search-{args.planner}-{time.strftime('%Y%m%d-%H%M%S')}")
    os.makedirs(out, exist_ok=True)
    hparams = {k: v for k, v in vars(args).items() if k != "func"}
    with Logger(out, formats=("jsonl", "tensorboard"), hparams=hparams) as log:
        print(f"prmgym search: {planner!r} on {args.env} ({len(tasks)} {args.split} tasks), budget per task: "
              f"{args.budget or 'unlimited'}", flush=True)
        summary = evaluate_planner(planner, env, policy, scorer, tasks, args.budget,
                           results_path=os.path.join(out, "results.jsonl"), logger=log, tag=f"search/{args.planner}",
                           progress=not args.quiet)
        log.record(f"search/{args.planner}/accuracy", summary["accuracy"])
        log.dump(step=len(tasks))
    b = summary["budget"]
    print(f"accuracy {summary['accuracy']:.3f} ({sum(r['correct'] for r in summary['rows'])}/{summary['n']})  "
          f"mean per task: generated {b['generated']:.0f}, encoded {b['encoded']:.0f}, prm {b['prm']:.0f}, "
          f"sandbox {b['sandbox']:.1f}, seconds {b['seconds']:.2f}")
    with open(os.path.join(out, "summary.json"), "w") as f:
        json.dump({k: v for k, v in summary.items() if k != "rows"}, f, indent=2)
    print(f"results: {os.path.join(out, 'results.jsonl')}; TensorBoard: tensorboard --logdir {out}")
    return 0
