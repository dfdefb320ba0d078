"""Scale-out on Ray: 1 Ray worker against 2, and Ray against the same work in-process, in one run.

Three workloads, each measured three ways that take turns pass by pass (load drift hits each alike):

* sandbox jobs/s: HumanEval canonical solutions through `LocalSandbox(workers=1)` in this
  process, and through `RaySandbox` with 1 and with 2 actors (each actor a one-worker sandbox);
* search tasks/s: `evaluate_planner` (beam search, the tiny policy and an AIRL PRM built here
  with a fixed seed) in this process with one torch thread, and through `RaySearchRunner` with
  1 and with 2 actors (one torch thread each). Actor start-up (loading the models) is not timed:
  each runner solves one warm-up task first;
* rollout tokens/s: `RayRollouts` (ChainArithmetic groups of 8 from the tiny policy) in this
  process (``workers=0``) and on 1 and on 2 actors, the same chunked seeds each way.

Ray starts its workers at nice 15 (below everything else on the host); here they run at the
driver's priority (``--worker-niceness 0``) so that load from other processes hits the in-process
way and the Ray ways alike (``--worker-niceness 15`` measures Ray's default).

Prints, per workload, the rates and two ratios: ``2 workers / 1 worker`` (target >= 1.7 on
2 CPUs; >= 1.5 for rollouts) and ``Ray overhead`` = in-process rate / Ray-1-worker rate - 1 (target <= 10%).

    python benchmarks/scaling.py --passes 3 --json benchmarks/results/scaling/figures.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run from a checkout


def _rates(times: dict[str, list[float]], work: int) -> dict[str, float]:
    return {k: work * len(v) / sum(v) for k, v in times.items()}


def _report(title: str, unit: str, rates: dict[str, float], target: float = 1.7) -> dict:
    scale = rates["ray_2"] / rates["ray_1"]
    overhead = rates["in_process"] / rates["ray_1"] - 1
    print(f"{title}: in-process {rates['in_process']:.2f} {unit}, Ray 1 worker {rates['ray_1']:.2f}, "
          f"Ray 2 workers {rates['ray_2']:.2f}")
    print(f"  2 workers / 1 worker: {scale:.2f}x (target >= {target}x); Ray overhead vs in-process: {overhead:+.1%} "
          "(target <= 10%)", flush=True)
    return {"rates": rates, "scale_2_over_1": scale, "ray_overhead": overhead}


def bench_sandbox(passes: int, n: int) -> dict:
    from prmgym.sandbox import LocalSandbox
    from prmgym.sandbox.cli import humaneval_job, humaneval_problems
    from prmgym.sandbox.ray_pool import RaySandbox

    problems = humaneval_problems(n)
    jobs = [humaneval_job(p, p["canonical_solution"]) for p in problems]
    # both pools live side by side and take turns: each actor reserves half a Ray CPU so the three fit
    boxes = {"in_process": LocalSandbox(workers=1), "ray_1": RaySandbox(workers_per_node=1, num_cpus=0.5),
             "ray_2": RaySandbox(workers_per_node=2, num_cpus=0.5)}
    times: dict[str, list[float]] = {k: [] for k in boxes}
    try:
        for box in boxes.values():  # warm-up, not timed
            box.run_batch(jobs[:4])
        for p in range(passes):
            for key, box in boxes.items():
                t0 = time.perf_counter()
                results = box.run_batch(jobs)
                times[key].append(time.perf_counter() - t0)
                if sum(r.passed for r in results) != len(jobs):
                    raise SystemExit(f"{key}: {len(jobs) - sum(r.passed for r in results)} canonical solutions failed")
            print(f"  sandbox pass {p + 1}: " + ", ".join(f"{k} {times[k][-1]:.2f} s" for k in boxes), flush=True)
    finally:
        for box in boxes.values():
            box.close()
    return _report(f"sandbox, {len(jobs)} HumanEval canonical solutions", "jobs/s", _rates(times, len(jobs)))


def bench_search(passes: int, n_tasks: int, budget: str) -> dict:
    import torch

    import prmgym  # noqa: F401
    from prmgym.envs import make
    from prmgym.models import tiny
    from prmgym.rewards import AIRLPRM
    from prmgym.search.distributed import RaySearchRunner
    from prmgym.search.evaluate import evaluate_planner, make_planner

    torch.set_num_threads(1)
    root = tempfile.mkdtemp(prefix="prmgym-scaling-")
    policy = tiny.random_tiny_policy(seed=0)
    policy.save(os.path.join(root, "policy"))
    prm = AIRLPRM.from_backbone(policy)
    prm.save(os.path.join(root, "prm"))
    env_id, kwargs = "prmgym/ChainArithmetic-v0", {"split": "test"}
    env = make(env_id, **kwargs)
    tasks = env.unwrapped.source.tasks("test", n_tasks + 1, seed=0)
    warm, tasks = tasks[:1], tasks[1:]
    planner = make_planner("beam", beam_width=2, expansions=2, max_depth=4, seed=0)
    runners = {k: RaySearchRunner(os.path.join(root, "policy"), os.path.join(root, "prm"), env_id, kwargs, workers=w,
                                  num_cpus=0.5)
               for k, w in (("ray_1", 1), ("ray_2", 2))}
    ways = {"in_process": None, **runners}
    times: dict[str, list[float]] = {k: [] for k in ways}
    reference = None
    try:
        for key, runner in ways.items():  # warm-up: actors load their models here, untimed
            evaluate_planner(planner, env, policy, prm, warm, budget, runner=runner)
        for p in range(passes):
            for key, runner in ways.items():
                t0 = time.perf_counter()
                res = evaluate_planner(planner, env, policy, prm, tasks, budget, start=1, runner=runner)
                times[key].append(time.perf_counter() - t0)
                answers = [r["steps"] for r in res["rows"]]
                if reference is None:
                    reference = answers
                elif answers != reference:
                    raise SystemExit(f"{key}: the search rows differ from the in-process ones")
            print(f"  search pass {p + 1}: " + ", ".join(f"{k} {times[k][-1]:.2f} s" for k in ways), flush=True)
    finally:
        for r in runners.values():
            r.close()
    return _report(f"search, {len(tasks)} ChainArithmetic tasks, beam 2x2, budget {budget}", "tasks/s",
                   _rates(times, len(tasks)))


def bench_rollout(passes: int, n_prompts: int, group: int, tokens: int) -> dict:
    import functools

    import torch

    import prmgym  # noqa: F401
    from prmgym.agents.ray_rollout import RayRollouts
    from prmgym.envs import make
    from prmgym.envs.episodes import Prompt
    from prmgym.models import tiny

    torch.set_num_threads(1)
    policy = tiny.random_tiny_policy(seed=0)
    env_fn = functools.partial(make, "prmgym/ChainArithmetic-v0")
    prompts = [Prompt(t) for t in env_fn().unwrapped.source.tasks("train", n_prompts, seed=0)]
    kw = dict(max_new_tokens=tokens, max_steps=4, chunk_prompts=2)
    ways = {"in_process": RayRollouts(policy, env_fn, workers=0, **kw),
            "ray_1": RayRollouts(policy, env_fn, workers=1, num_cpus=0.5, **kw),
            "ray_2": RayRollouts(policy, env_fn, workers=2, num_cpus=0.5, **kw)}
    times: dict[str, list[float]] = {k: [] for k in ways}
    generated: dict[str, int] = {k: 0 for k in ways}
    try:
        for r in ways.values():  # warm-up, not timed
            r.collect(prompts[:2], group, seed=0)
        for p in range(passes):
            for key, r in ways.items():
                t0 = time.perf_counter()
                _, stats = r.collect(prompts, group, seed=p + 1)
                times[key].append(time.perf_counter() - t0)
                generated[key] += stats["generated"]
            print(f"  rollout pass {p + 1}: " + ", ".join(f"{k} {times[k][-1]:.2f} s" for k in ways), flush=True)
    finally:
        for r in ways.values():
            r.close()
    if len(set(generated.values())) != 1:
        raise SystemExit(f"the ways generated different token counts: {generated}")
    rates = {k: generated[k] / sum(v) for k, v in times.items()}
    return _report(f"rollouts, {n_prompts} ChainArithmetic prompts x {group}, <= {tokens} tokens per step",
                   "tokens/s", rates, target=1.5)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--passes", type=int, default=3, help="timed passes per way (the ways take turns)")
    ap.add_argument("-n", type=int, default=164, help="HumanEval problems per sandbox pass (1-164)")
    ap.add_argument("--search-tasks", type=int, default=8, help="search tasks per pass")
    ap.add_argument("--budget", default="generated=200", help="per-task search budget")
    ap.add_argument("--rollout-prompts", type=int, default=16, help="prompts per rollout pass (groups of 8)")
    ap.add_argument("--only", choices=("sandbox", "search", "rollout"), default=None, help="run one workload")
    ap.add_argument("--worker-niceness", type=int, default=0,
                    help="nice value of the Ray workers (Ray's own default is 15, below everything else on the "
                         "host, so any other load starves the Ray ways but not the in-process one; 0 = the "
                         "driver's priority, so load hits every way alike)")
    ap.add_argument("--json", default=None, help="also write the figures to this JSON file")
    args = ap.parse_args(argv)
    if args.passes < 1 or not 1 <= args.n <= 164 or args.search_tasks < 2:
        ap.error("--passes >= 1, -n in 1..164 and --search-tasks >= 2")
    from prmgym.cluster import connect

    os.environ["RAY_worker_niceness"] = str(args.worker_niceness)  # read by the raylet this process starts
    ray = connect(num_cpus=os.cpu_count())
    print(f"Ray {ray.__version__} on this machine, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} "
          f"at start, {args.passes} interleaved passes", flush=True)
    out = {"cpus": os.cpu_count(), "load_at_start": os.getloadavg()[0], "passes": args.passes,
           "worker_niceness": args.worker_niceness}
    if args.only in (None, "sandbox"):
        out["sandbox"] = bench_sandbox(args.passes, args.n)
    if args.only in (None, "search"):
        out["search"] = bench_search(args.passes, args.search_tasks, args.budget)
    if args.only in (None, "rollout"):
        out["rollout"] = bench_rollout(args.passes, args.rollout_prompts, 8, 32)
    out["load_at_end"] = os.getloadavg()[0]
    print(f"load average {out['load_at_end']:.1f} at the end")
    if args.json:
        os.makedirs(os.path.dirname(args.json) or ".", exist_ok=True)
        with open(args.json, "w") as f:
            json.dump(out, f, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
