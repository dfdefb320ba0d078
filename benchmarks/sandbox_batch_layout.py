"""What a batch barrier costs: one ``run_batch`` of all HumanEval canonical solutions against the
same jobs cut into ``--slices`` batches, alternated round by round in one LocalSandbox.

Every ``run_batch`` call ends when its slowest job ends. HumanEval/75's canonical solution alone
takes about 0.2 s, so in the slice that holds it one worker runs it while the other runs out of
jobs and waits. This script prints both rates, the ratio per round and its median, and the CPU
busy (cores, from ``/proc/stat``, the whole machine) in each layout and in each slice; the code
under test is the same, only the batch layout differs. The layout that goes first alternates
from round to round. The same tests run in every round, so the judges' cache of compiled tests
serves both layouts alike after the first round.

    python benchmarks/sandbox_batch_layout.py               # 8 rounds, 4 slices (~10 s)
    python benchmarks/sandbox_batch_layout.py --rounds 4 --slices 2
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

from prmgym.sandbox.cli import humaneval_job, humaneval_problems


def _busy_jiffies() -> int:
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    return v[0] + v[1] + v[2] + v[5] + v[6]  # user nice system irq softirq


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=8, help="rounds; each runs both layouts once")
    ap.add_argument("--slices", type=int, default=4, help="batches per pass in the sliced layout")
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    args = ap.parse_args(argv)
    if args.rounds < 1:
        ap.error("--rounds must be >= 1")
    if not 2 <= args.slices <= 164:
        ap.error("--slices must be between 2 and 164")
    if args.workers < 1:
        ap.error("--workers must be >= 1")
    from prmgym.sandbox.local import LocalSandbox

    hz = os.sysconf("SC_CLK_TCK")
    jobs = [humaneval_job(p, p["canonical_solution"]) for p in humaneval_problems()]
    rates: dict[int, list[float]] = {1: [], args.slices: []}
    busy: dict[int, list[float]] = {1: [], args.slices: []}
    slice_busy: list[list[float]] = [[] for _ in range(args.slices)]
    with LocalSandbox(workers=args.workers) as sb:
        sb.run_batch(jobs[:2])  # warm-up, not timed
        for rnd in range(args.rounds):
            for k in (list(rates) if rnd % 2 == 0 else list(rates)[::-1]):
                wall = 0.0
                jiffies = 0
                for s in range(k):
                    j0, t0 = _busy_jiffies(), time.perf_counter()
                    results = sb.run_batch(jobs[s::k])
                    dt, dj = time.perf_counter() - t0, _busy_jiffies() - j0
                    wall += dt
                    jiffies += dj
                    if k > 1:
                        slice_busy[s].append(dj / hz / dt)
                    if not all(r.passed for r in results):
                        raise SystemExit("a canonical solution did not pass: the measurement is void")
                    time.sleep(0.05)
                rates[k].append(len(jobs) / wall)
                busy[k].append(jiffies / hz / wall)
    ratios = [a / b for a, b in zip(rates[1], rates[args.slices])]
    print(f"LocalSandbox, {args.workers} workers, {len(jobs)} HumanEval jobs per pass, {args.rounds} rounds")
    print(f"one batch per pass   jobs/s {' '.join(f'{r:.0f}' for r in rates[1])}   "
          f"busy cores {statistics.median(busy[1]):.2f}")
    print(f"{args.slices} batches per pass  jobs/s {' '.join(f'{r:.0f}' for r in rates[args.slices])}   "
          f"busy cores {statistics.median(busy[args.slices]):.2f}")
    print(f"busy cores per slice (median): {' '.join(f'{statistics.median(b):.2f}' for b in slice_busy)}")
    print(f"ratio one batch / {args.slices} batches: median {statistics.median(ratios):.3f}x "
          f"({' '.join(f'{r:.2f}' for r in ratios)})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
