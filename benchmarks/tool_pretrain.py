"""Pretraining the tiny model with and without tool traces, held-out ToolMath pass@1 per seed.

Both arms train the same tiny character model (`prmgym.recipes.tiny.pretrain`, same size,
steps, learning rate and train problems) on ``prmgym/ToolMath-v0`` difficulty 1 ("Compute
47*83-129."), and are scored greedily on the same held-out test problems in the same tool env:

* ``tools``: the expert traces compute with a code cell (```` ```python print(47*83-129)``` ````),
  whose output the env shows; the model must learn to copy the expression into a cell and the
  output into the answer.
* ``no tools`` (the baseline): the same problems with traces that compute by hand, one
  operation per step (``47*83=3901``, ``3901-129=3772``), the way ChainArithmetic does.

Prints a table (one row per seed, and the mean) and writes JSON to ``--out`` if given.

    python benchmarks/tool_pretrain.py --seeds 0 1 2
    python benchmarks/tool_pretrain.py --seeds 0 --steps 300 --train-tasks 2000 --eval-tasks 100
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time

from prmgym.recipes.tiny import load_manifest, pretrain


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--train-tasks", type=int, default=4000)
    ap.add_argument("--eval-tasks", type=int, default=200)
    ap.add_argument("--workdir", default=None, help="where the models go (default: a temporary directory)")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    work = args.workdir or tempfile.mkdtemp(prefix="prmgym-tool-pretrain-")
    rows = []
    for seed in args.seeds:
        row = {"seed": seed}
        for arm, tools in (("tools", True), ("no_tools", False)):
            t0 = time.perf_counter()
            d = pretrain("prmgym/ToolMath-v0", os.path.join(work, f"{arm}-{seed}"), progress=False,
                         env_kwargs={"source_kwargs": {"tools": tools}}, steps=args.steps,
                         num_train_tasks=args.train_tasks, eval_tasks=args.eval_tasks, seed=seed)
            m = load_manifest(d)
            row[arm] = m["eval"]["pass@1"]
            row[f"{arm}_seconds"] = round(time.perf_counter() - t0, 1)
            print(f"seed {seed} {arm:>8}: held-out pass@1 {row[arm]:.3f} ({row[f'{arm}_seconds']} s, "
                  f"{m['n_examples']} examples, final loss {m['final_train_loss']:.3f})", flush=True)
        rows.append(row)
    print(f"\n{'seed':>4} | {'tools':>6} | {'no tools':>8}")
    for r in rows:
        print(f"{r['seed']:>4} | {r['tools']:6.3f} | {r['no_tools']:8.3f}")
    mean = {arm: statistics.mean(r[arm] for r in rows) for arm in ("tools", "no_tools")}
    print(f"{'mean':>4} | {mean['tools']:6.3f} | {mean['no_tools']:8.3f}")
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"rows": rows, "mean": mean, "args": vars(args)}, f, indent=2)


if __name__ == "__main__":
    main()
