"""LocalSandbox throughput of two code versions (two source trees), measured in one run.

Each round runs one timed batch per version, each in a fresh subprocess whose ``PYTHONPATH`` is
that version's tree, the order alternating from round to round, so a change of machine load
touches both alike. A batch: start a LocalSandbox (not timed), one untimed warm-up pass over the
HumanEval canonical solutions, then ``--passes`` timed passes (one ``run_batch`` each; every
pass's tests end in a comment of their own, as in ``sandbox_throughput.py``, so no judge finds
them compiled already). Prints each round's jobs/s and the ratio B/A; the figure is the median of
the per-round ratios.

    python benchmarks/sandbox_ab.py --a /work/main --b . --rounds 7
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

_BATCH = r"""
import json, sys, time
from prmgym.sandbox import LocalSandbox
from prmgym.sandbox.cli import humaneval_job, humaneval_problems
n, passes, workers = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
problems = humaneval_problems(n)
def batch(tag):
    return [humaneval_job(dict(p, test=p["test"] + f"\n# {tag}\n"), p["canonical_solution"]) for p in problems]
with LocalSandbox(workers=workers) as sb:
    sb.run_batch(batch("warm-up"))
    jobs = [batch(f"pass {k}") for k in range(passes)]
    t0 = time.perf_counter()
    passed = sum(r.passed for js in jobs for r in sb.run_batch(js))
    seconds = time.perf_counter() - t0
print(json.dumps({"jobs": n * passes, "passed": passed, "seconds": seconds}))
"""


def batch(tree: str, n: int, passes: int, workers: int) -> dict:
    env = {**os.environ, "PYTHONPATH": os.path.abspath(tree)}
    out = subprocess.run([sys.executable, "-c", _BATCH, str(n), str(passes), str(workers)], env=env,
                         capture_output=True, text=True, check=True, cwd="/")
    r = json.loads(out.stdout.strip().splitlines()[-1])
    if r["passed"] != r["jobs"]:
        raise SystemExit(f"{tree}: {r['passed']} of {r['jobs']} canonical solutions passed")
    return r


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--a", required=True, help="source tree of the baseline (e.g. /work/main)")
    ap.add_argument("--b", required=True, help="source tree of the version measured against it")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--passes", type=int, default=2)
    ap.add_argument("-n", type=int, default=164, help="HumanEval problems per pass (1-164)")
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    args = ap.parse_args(argv)
    ratios = []
    for k in range(args.rounds):
        order = [("a", args.a), ("b", args.b)][:: 1 if k % 2 == 0 else -1]
        rates = {}
        for name, tree in order:
            r = batch(tree, args.n, args.passes, args.workers)
            rates[name] = r["jobs"] / r["seconds"]
        ratios.append(rates["b"] / rates["a"])
        print(f"round {k + 1}: A {rates['a']:.1f} jobs/s, B {rates['b']:.1f} jobs/s, B/A {ratios[-1]:.3f}", flush=True)
    print(f"median B/A over {len(ratios)} rounds: {statistics.median(ratios):.3f} "
          f"(min {min(ratios):.3f}, max {max(ratios):.3f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
