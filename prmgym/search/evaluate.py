"""Run a planner over held-out tasks at a fixed per-task budget (`evaluate_planner`): the one
planner evaluation loop, used by ``prmgym search``, the quickstart and the benchmarks.

Planners are built by name with `make_planner` (the registry of `prmgym.search.base`).

>>> planner_names()[:4]
('sample', 'majority', 'bon', 'weighted_vote')
"""

from __future__ import annotations

import json
import os
from typing import Iterable

from prmgym.budget import UNITS, Budget
from prmgym.search.base import make_planner, needs_scorer, planner_names

__all__ = ["evaluate_planner", "solve_task", "make_planner", "needs_scorer", "planner_names"]


def evaluate_planner(planner, env, policy, scorer, tasks: Iterable, budget: str | dict | Budget | None = None, *,
             results_path: str | os.PathLike | None = None, logger=None, tag: str = "search",
             progress: bool = False, start: int = 0, runner=None) -> dict:
    """Solve each task from a fresh per-task budget; returns accuracy and mean usage.

    Args:
        planner: a `Planner` (anything with ``solve(env, policy, scorer, budget)``).
        env: a prmgym env (reset on each task here).
        tasks: `Task` objects (held-out: ``env.unwrapped.source.tasks("test", n)``).
        budget: per-task limits (``"generated=2000"``, a dict, or a `Budget` used as template).
        results_path: JSONL, one row per task (appended).
        logger: a `prmgym.logger.Logger`; one dump per task (step = task index) under ``tag/``.
        start: index of the first task in the whole list (a resumed search passes the tasks
            not done yet and their offset, so reset seeds and logged steps are unchanged).
        runner: where the tasks are solved; None = here, one after the other. A
            `prmgym.search.distributed.RaySearchRunner` solves them on Ray actors (then ``env``,
            ``policy`` and ``scorer`` are not used here and may be None); rows are written and
            logged in task order either way, so the report is the same.

    Returns: ``{"accuracy", "mean_reward", "n", "budget": {unit: mean used}, "rows": [...]}``.
    """
    spec = _limits(budget)
    tasks = list(tasks)
    if runner is None:
        solved: Iterable[dict] = (solve_task(planner, env, policy, scorer, task, i, spec)
                                  for i, task in enumerate(tasks, start))
    else:
        solved = runner.rows(planner, tasks, spec, start)
    rows = []
    fh = None
    from prmgym.logger import progress_bar

    bar = progress_bar(len(tasks), tag, unit="task", enabled=progress)  # a TTY gets a bar, a log gets lines
    if results_path is not None:
        os.makedirs(os.path.dirname(os.fspath(results_path)) or ".", exist_ok=True)
        fh = open(results_path, "a")
    try:
        for i, row in enumerate(solved, start):
            rows.append(row)
            if fh is not None:
                fh.write(json.dumps(row) + "\n")
                fh.flush()
            if logger is not None:
                logger.record(f"{tag}/reward", row["reward"])
                logger.record(f"{tag}/correct", float(row["correct"]))
                logger.record(f"{tag}/accuracy_so_far", sum(r["correct"] for r in rows) / len(rows))
                for u, v in row["budget"].items():
                    logger.record(f"{tag}/budget_{u}", v)
                logger.dump(step=i)
            if bar is not None:
                bar.update(1)
                bar.set_postfix(accuracy=f"{sum(r['correct'] for r in rows) / len(rows):.3f}")
            elif progress:
                print(f"  [{i + 1}] {row['task_id']}: answer={row['answer']!r} reward={row['reward']:.2f} "
                      f"generated={row['budget'].get('generated')} prm={row['budget'].get('prm')}", flush=True)
    finally:
        if fh is not None:
            fh.close()
        if bar is not None:
            bar.close()
    return summarize(rows, spec)


def solve_task(planner, env, policy, scorer, task, index: int, limits: dict) -> dict:
    """One task's result row: ``env`` reset to ``task`` with seed ``index`` (its place in the
    whole task list), a cold PRM cache, a fresh `Budget` of ``limits``. Rows depend on nothing
    but these, so tasks can be solved in any process, in any order (`prmgym.search.distributed`)."""
    env.reset(seed=index, options={"task": task})
    if hasattr(scorer, "clear_cache"):
        # Each search pays for its own PRM tokens: no prefix cache carried over
        # from earlier tasks or runs (the search engine still caches within one search).
        scorer.clear_cache()
    res = planner.solve(env, policy, scorer, Budget(**limits))
    correct = bool(res.reward >= 1.0 - 1e-9)
    return {"task_id": task.id, "answer": res.answer, "reference": task.answer, "reward": res.reward,
            "correct": correct, "score": res.score, "steps": res.steps, "budget": res.budget,
            "tree": {k: v for k, v in res.tree.items() if isinstance(v, (int, float, str))}}


def summarize(rows: list[dict], limits: dict | None = None) -> dict:
    """Accuracy, mean reward and mean budget use of ``rows`` (`evaluate`'s result rows, or the
    lines of a ``results.jsonl``)."""
    n = len(rows)
    mean_budget = {u: (sum(r["budget"].get(u, 0) for r in rows) / n if n else 0.0) for u in UNITS}
    return {"accuracy": sum(r["correct"] for r in rows) / n if n else 0.0,
            "mean_reward": sum(r["reward"] for r in rows) / n if n else 0.0,
            "n": n, "budget": mean_budget, "limits": dict(limits or {}), "rows": rows}


def _limits(budget) -> dict:
    if isinstance(budget, Budget):
        return {u: getattr(budget, u) for u in UNITS if getattr(budget, u) is not None}
    b = Budget.parse(budget)
    return {u: getattr(b, u) for u in UNITS if getattr(b, u) is not None}

