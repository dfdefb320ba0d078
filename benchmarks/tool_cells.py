"""Cost of a tool step against the number of earlier cells in its episode.

`prmgym.envs.tools.ToolEnv` keeps state between cells by re-running the episode's earlier
cells before each new one (module docstring of prmgym/envs/tools.py says why). This script
measures what that costs: the wall time of the step that runs cell n (n - 1 earlier cells
re-run first) for n in ``--cells``, with the output cache off, against the baseline in the
same run, cell 1 (nothing to re-run). Two kinds of cells:

* ``light``: what ToolMath's traces do (``x3 = x2 * 7 % 1000``: one arithmetic line);
* ``heavy``: each cell also loops ``--heavy-iters`` times (default 200000, ~10 ms of Python),
  to show where re-running stops being cheap: the cost grows with the work of earlier cells.

Every n is measured ``--repeats`` times (median), kinds and n taking turns so a change in
machine load affects all alike. Prints a table and writes JSON to ``--out`` if given.

    python benchmarks/tool_cells.py
    python benchmarks/tool_cells.py --cells 1 2 4 8 16 32 --repeats 7 --out /tmp/tool_cells.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

from prmgym.envs import Task
from prmgym.envs.tools import ToolEnv, ToolMath
from prmgym.envs.verifiers import MathVerifier
from prmgym.sandbox import LocalSandbox


def cell(kind: str, i: int, heavy_iters: int) -> str:
    prev = f"x{i - 1}" if i > 1 else "1"
    line = f"x{i} = {prev} * 7 % 1000"
    if kind == "heavy":
        line += f"; _ = sum(k % 7 for k in range({heavy_iters}))"
    return f"```python {line}; print(x{i})```"


def step_time(env: ToolEnv, kind: str, n: int, heavy_iters: int) -> float:
    """Seconds of the step running cell ``n`` (the first n - 1 cells are set up untimed)."""
    env.reset(options={"task": Task(id="bench", prompt="Compute.", answer="0")})
    for i in range(1, n):
        env.step(cell(kind, i, heavy_iters))
    t0 = time.perf_counter()
    _, _, _, _, info = env.step(cell(kind, n, heavy_iters))
    dt = time.perf_counter() - t0
    assert info["tool"].ran and info["tool"].status == "passed", info["tool"]
    return dt


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cells", type=int, nargs="+", default=[1, 2, 4, 8, 16, 32])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--heavy-iters", type=int, default=200_000)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    if 1 not in args.cells:
        args.cells = [1] + args.cells
    sb = LocalSandbox(workers=1)
    env = ToolEnv(ToolMath(), MathVerifier(), sandbox=sb, tool_cache=0, max_steps=max(args.cells) + 1,
                  tool_timeout_s=60.0)
    times: dict[tuple[str, int], list[float]] = {}
    try:
        step_time(env, "light", 2, args.heavy_iters)  # warm-up
        for _ in range(args.repeats):
            for kind in ("light", "heavy"):
                for n in args.cells:
                    times.setdefault((kind, n), []).append(step_time(env, kind, n, args.heavy_iters))
    finally:
        env.close()
        sb.close()
    rows = []
    print(f"{'cells':>5} | {'light ms':>9} {'x cell 1':>8} | {'heavy ms':>9} {'x cell 1':>8}")
    for n in args.cells:
        row = {"cells": n}
        line = f"{n:>5} |"
        for kind in ("light", "heavy"):
            med = statistics.median(times[(kind, n)])
            base = statistics.median(times[(kind, 1)])
            row[f"{kind}_ms"] = round(1000 * med, 2)
            row[f"{kind}_ratio"] = round(med / base, 2)
            line += f" {1000 * med:9.2f} {med / base:8.2f} |"
        rows.append(row)
        print(line.rstrip("|"))
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"rows": rows, "repeats": args.repeats, "heavy_iters": args.heavy_iters}, f, indent=2)


if __name__ == "__main__":
    main()
