"""``prmgym search``: a planner, a policy, a PRM, an env and a per-task budget.

    prmgym search --planner beam --policy runs/tiny --prm runs/airl_prm \\
        --env prmgym/ChainArithmetic-v0 --n-tasks 20 --budget generated=1500 --out runs/search

Prints accuracy and mean budget used; writes ``search.json`` (the settings), ``results.jsonl``
(one row per task), ``summary.json`` and TensorBoard logs (``tb/``) under ``--out``.
An ``--out`` that already holds a search is refused: ``--resume`` continues it (tasks already
in ``results.jsonl`` are skipped; the summary is computed from all rows), ``--overwrite``
replaces it.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import time

from prmgym.config import ConfigError, add_env_arg, apply_overrides
from prmgym.models.backend import add_backend_arg, close_policy, load_policy, policy_config_from_args
from prmgym.rewards.base import AGGREGATIONS
from prmgym.search.evaluate import evaluate_planner, make_planner, needs_scorer, planner_names, summarize

#: what a search writes into --out (all of it is replaced by --overwrite, nothing else is touched)
OUTPUTS = ("search.json", "results.jsonl", "summary.json", "metrics.jsonl", "hparams.json", "tb")
#: settings that must match for --resume (the rest, e.g. --quiet, may change)
RESUME_KEYS = ("planner", "policy", "prm", "env", "env_arg", "split", "n_tasks", "budget", "n", "beam_width", "dtype",
               "expansions", "iterations", "max_depth", "aggregation", "temperature", "seed", "prompt_format")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--planner", choices=planner_names(), default="beam", help="which planner (default: beam)")
    p.add_argument("--policy", required=True, help="policy directory (a Hugging Face causal LM saved with save_pretrained)")
    p.add_argument("--prm", default=None, help="PRM / ORM / value-model directory (prmgym train-prm output); "
                   "not needed for --planner sample|majority")
    p.add_argument("--env", default="prmgym/ChainArithmetic-v0", help="environment id")
    add_env_arg(p)
    p.add_argument("--split", default="test", help="task split to evaluate on (default: test)")
    p.add_argument("--n-tasks", type=int, default=20, help="number of held-out tasks")
    p.add_argument("--budget", default="", help="per-task budget, e.g. generated=1500,prm=20000 (units: "
                   "generated, encoded, prm, sandbox, seconds); empty = unlimited")
    p.add_argument("--n", type=int, default=8, help="samples for best-of-N / majority / DVTS")
    p.add_argument("--beam-width", type=int, default=4)
    p.add_argument("--expansions", type=int, default=4, help="samples per expansion (beam M, DVTS subtree width, MCTS k)")
    p.add_argument("--iterations", type=int, default=20, help="MCTS iterations")
    p.add_argument("--max-depth", type=int, default=16)
    p.add_argument("--aggregation", default="last", choices=AGGREGATIONS, help="PRM aggregation of step scores")
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0)
    add_backend_arg(p)  # --backend hf|vllm, the vLLM engine options, and --dtype / --device (prmgym.models.backend)
    p.add_argument("--out", default=None, help="output directory (default: runs/search-<planner>-<time>)")
    again = p.add_mutually_exclusive_group()
    again.add_argument("--resume", action="store_true", help="continue the search in --out: skip the tasks already "
                       "in its results.jsonl (the settings must be the same)")
    again.add_argument("--overwrite", action="store_true", help="replace the search already in --out")
    p.add_argument("--prompt-format", choices=("plain", "chat"), default="plain",
                   help="how the policy reads observations: plain text or its tokenizer's chat template (docs/models.md)")
    p.add_argument("--quiet", action="store_true", help="no progress bar (on a terminal) or per-task lines (otherwise)")
    p.add_argument("--ray", action="store_true", help="split the tasks over Ray actors (pip install -e '.[ray]'); "
                   "the report is the same as without it (docs/distributed.md)")
    p.add_argument("--address", default=None, help="with --ray: the Ray head to join (HOST:PORT, or auto); "
                   "default: start Ray on this machine")
    p.add_argument("--workers", type=int, default=2, help="with --ray: search actors (default: 2)")


def _check_args(args) -> None:
    """Every input error, before anything is loaded or written."""
    from prmgym.budget import Budget

    if args.n_tasks < 1:
        raise ConfigError(f"--n-tasks must be >= 1, got {args.n_tasks}")
    if args.workers < 1:
        raise ConfigError(f"--workers must be >= 1, got {args.workers}")
    from prmgym.models.optim import resolve_precision

    resolve_precision(args.dtype, args.device)  # unknown names, a missing GPU, fp16 off CUDA: before any loading
    if args.ray and (args.dtype or args.device):
        raise ConfigError("--dtype / --device do not reach the Ray actors (they load on cpu in fp32); drop them or --ray")
    if args.ray and args.backend != "hf":
        raise ConfigError("--ray runs the hf backend in its actors; drop --backend vllm or --ray")
    if args.address and not args.ray:
        raise ConfigError("--address only applies with --ray; add --ray to run the search on that Ray cluster")
    if needs_scorer(args.planner) and not args.prm:
        scorerless = "|".join(n for n in planner_names() if not needs_scorer(n))
        raise ConfigError(f"--planner {args.planner} needs --prm DIR (a trained PRM/value model); "
                          f"or use --planner {scorerless}")
    try:
        Budget.parse(args.budget)
    except ValueError as e:
        raise ConfigError(f"--budget: {e}") from None
    if not os.path.isdir(args.policy):
        raise ConfigError(f"no policy directory at {args.policy!r}; build one with `prmgym pretrain`")
    if args.prm and needs_scorer(args.planner):
        from prmgym.rewards.backbone import read_prm_config

        try:
            read_prm_config(args.prm)
        except (FileNotFoundError, ValueError) as e:
            raise ConfigError(f"--prm: {e}") from None


def _read_rows(path: str) -> list[dict]:
    rows = []
    with open(path) as f:
        for line in f:
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:  # a line cut short by a kill: that task runs again
                break
    return rows


def prepare_out(out: str, settings: dict, resume: bool, overwrite: bool) -> list[dict]:
    """Check ``out`` against --resume / --overwrite; returns the rows a resumed search keeps."""
    held = [name for name in OUTPUTS if os.path.exists(os.path.join(out, name))]
    results = os.path.join(out, "results.jsonl")
    if resume:
        if not os.path.exists(results):
            raise ConfigError(f"--resume: {out!r} holds no search (no results.jsonl); run without --resume to start one")
        saved_path = os.path.join(out, "search.json")
        saved = json.load(open(saved_path)) if os.path.exists(saved_path) else {}
        diff = {k: (saved.get(k), settings.get(k)) for k in RESUME_KEYS if k in saved and saved.get(k) != settings.get(k)}
        if diff:
            shown = ", ".join(f"{k}: {a!r} then, {b!r} now" for k, (a, b) in diff.items())
            raise ConfigError(f"--resume: the search in {out!r} ran with other settings ({shown}); pass the same "
                              "options, or --overwrite to start again")
        rows = _read_rows(results)
        with open(results, "w") as f:  # drop a torn last line
            f.writelines(json.dumps(r) + "\n" for r in rows)
        return rows
    if held and not overwrite:
        n = len(_read_rows(results)) if os.path.exists(results) else 0
        raise ConfigError(f"--out {out!r} already holds a search ({n} rows in results.jsonl); pass --resume to "
                          "continue it, --overwrite to replace it, or another --out")
    return []


def _clear(out: str) -> None:
    for name in OUTPUTS:
        path = os.path.join(out, name)
        if os.path.isdir(path):
            shutil.rmtree(path)
        elif os.path.exists(path):
            os.remove(path)


def run(args) -> int:
    import prmgym  # noqa: F401  (registers the envs)
    from prmgym.envs import make

    _check_args(args)
    policy_config_from_args(args)  # a bad engine option fails before anything is loaded
    env_kwargs = apply_overrides({}, args.env_arg, flag="--env-arg")
    try:
        planner = make_planner(args.planner, n=args.n, beam_width=args.beam_width, expansions=args.expansions,
                               iterations=args.iterations, max_depth=args.max_depth, aggregation=args.aggregation,
                               temperature=args.temperature, seed=args.seed)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    out = args.out or os.path.join("runs", f"search-{args.planner}-{time.strftime('%Y%m%d-%H%M%S')}")
    settings = {k: v for k, v in vars(args).items() if k in RESUME_KEYS}
    done = prepare_out(out, settings, resume=args.resume, overwrite=args.overwrite)
    try:
        env = make(args.env, split=args.split, **env_kwargs)
    except TypeError as e:  # a keyword the env does not take
        raise ConfigError(f"--env-arg: {args.env} cannot be made with {env_kwargs}: {e}") from None
    tasks = env.unwrapped.source.tasks(args.split, args.n_tasks, seed=args.seed)
    if [r["task_id"] for r in done] != [t.id for t in tasks[: len(done)]]:
        raise ConfigError(f"--resume: the rows in {out!r} are not the first tasks of this search; --overwrite to start again")
    todo = tasks[len(done):]
    if args.resume and not todo and os.path.exists(os.path.join(out, "summary.json")):
        print(f"prmgym search: the search in {out} is complete ({len(done)} of {len(tasks)} tasks); nothing to do")
        return 0
    policy = scorer = runner = None
    prm_dir = args.prm if args.prm and needs_scorer(args.planner) else None
    if args.ray:  # the actors load the models; this process only writes the report
        runner = ray_runner(args, prm_dir, dict(env_kwargs, split=args.split))
    else:
        from prmgym.models.optim import resolve_precision

        dtype, device = resolve_precision(args.dtype, args.device)
        policy = load_policy(args.policy, policy_config_from_args(args), device=device,
                             prompt_format=args.prompt_format)  # --backend hf | vllm
        if prm_dir:
            from prmgym.rewards import load_prm

            scorer = load_prm(prm_dir, dtype=dtype, device=str(device))
        if dtype != "fp32":  # inference only: weights in the dtype too (half the memory; no optimizer to need fp32)
            from prmgym.models.optim import torch_dtype

            policy.model.to(torch_dtype(dtype))
            if scorer is not None:
                scorer.net.to(torch_dtype(dtype))
    if args.overwrite:
        _clear(out)
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "search.json"), "w") as f:
        json.dump(settings, f, indent=2)
    try:
        summary = _search(args, planner, env, policy, scorer, runner, out, settings, done, tasks, todo)
    finally:
        if runner is not None:
            runner.close()
        close_policy(policy)
    b = summary["budget"]
    print(f"accuracy {summary['accuracy']:.3f} ({sum(r['correct'] for r in summary['rows'])}/{summary['n']})  "
          f"mean per task: generated {b['generated']:.0f}, encoded {b['encoded']:.0f}, prm {b['prm']:.0f}, "
          f"sandbox {b['sandbox']:.1f}, seconds {b['seconds']:.2f}")
    with open(os.path.join(out, "summary.json"), "w") as f:
        json.dump({k: v for k, v in summary.items() if k != "rows"}, f, indent=2)
    print(f"results: {os.path.join(out, 'results.jsonl')}; TensorBoard: tensorboard --logdir {out}")
    return 0


def _search(args, planner, env, policy, scorer, runner, out, settings, done, tasks, todo) -> dict:
    from prmgym.logger import Logger

    with Logger(out, formats=("jsonl", "tensorboard"), hparams=None if args.resume else settings,
                resume_step=len(done) - 1 if args.resume else None) as log:
        print(f"prmgym search: {planner!r} on {args.env} ({len(tasks)} {args.split} tasks"
              + (f", {len(done)} done before, {len(todo)} to go" if args.resume else "")
              + f"), budget per task: {args.budget or 'unlimited'}", flush=True)
        from prmgym.models.optim import autocast, resolve_precision

        with autocast(*resolve_precision(args.dtype, args.device)):  # --dtype: the policy's forwards (the PRM's own)
            part = evaluate_planner(planner, env, policy, scorer, todo, args.budget,
                                    results_path=os.path.join(out, "results.jsonl"), logger=log,
                                    tag=f"search/{args.planner}", progress=not args.quiet, start=len(done), runner=runner)
        summary = summarize(done + part["rows"], part["limits"])
        log.record(f"search/{args.planner}/accuracy", summary["accuracy"])
        log.dump(step=len(tasks))
    return summary


def ray_runner(args, prm_dir, env_kwargs):
    """A `RaySearchRunner` of ``--workers`` actors on the Ray of ``--address`` (local without it)."""
    from prmgym.cluster import connect
    from prmgym.search.distributed import RaySearchRunner

    try:
        connect(args.address)
    except (ImportError, ConnectionError, ValueError) as e:
        raise ConfigError(f"--ray: {e}") from None
    print(f"prmgym search: {args.workers} Ray search actors"
          + (f" on the cluster at {args.address}" if args.address else " on a local Ray"), flush=True)
    return RaySearchRunner(args.policy, prm_dir, args.env, env_kwargs, workers=args.workers,
                           prompt_format=args.prompt_format)
