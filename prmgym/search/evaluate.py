"""Run a planner over held-out tasks at a fixed per-task budget; the one evaluation loop
used by ``prmgym search``, the quickstart and the benchmarks.

>>> PLANNERS[:4]
('sample', 'majority', 'bon', 'weighted_vote')
"""

from __future__ import annotations

import json
import os
from typing import Any, Iterable

from prmgym.budget import UNITS, Budget
from prmgym.search.beam import DVTS, BeamSearch
from prmgym.search.bon import BestOfN
from prmgym.search.mcts import MCTS

#: names accepted by `make_planner` (and ``prmgym search --planner``)
PLANNERS = ("sample", "majority", "bon", "weighted_vote", "orm_bon", "beam", "dvts", "mcts", "vm_mcts", "airl_s")

#: planners that need no scorer
SCORERLESS = ("sample", "majority")


def make_planner(name: str, *, n: int = 8, beam_width: int = 4, expansions: int = 4, iterations: int = 20,
                 max_depth: int = 16, aggregation: str = "last", max_new_tokens: int = 48,
                 max_trace_tokens: int = 256, temperature: float = 1.0, seed: int | None = 0, **extra: Any):
    """A planner from a short name and the common knobs.

    * ``sample``: one sampled trace (``BestOfN(n=1, select="first")``).
    * ``majority`` / ``bon`` / ``weighted_vote`` / ``orm_bon``: `BestOfN` with that selection.
    * ``beam``: `BeamSearch(beam_width, expansions)`; ``dvts``: `DVTS(n, subtree_width=expansions)`.
    * ``mcts`` / ``airl_s``: `MCTS.airl_s(iterations, expansions)` (PUCT, PRM values).
    * ``vm_mcts``: `MCTS.vm_mcts(iterations, expansions)` (value model, best completion).
    Extra keyword arguments go to the planner's constructor.
    """
    common = dict(temperature=temperature, seed=seed)
    if name == "sample":
        return BestOfN(n=1, select="first", max_trace_tokens=max_trace_tokens, max_depth=max_depth, **common, **extra)
    if name in ("majority", "bon", "weighted_vote", "orm_bon"):
        select = {"majority": "majority", "bon": "prm", "weighted_vote": "weighted_vote", "orm_bon": "orm"}[name]
        return BestOfN(n=n, select=select, aggregation=aggregation, max_trace_tokens=max_trace_tokens,
                       max_depth=max_depth, max_new_tokens=max_new_tokens, **common, **extra)
    if name == "beam":
        return BeamSearch(beam_width=beam_width, expansions=expansions, max_depth=max_depth, aggregation=aggregation,
                          max_new_tokens=max_new_tokens, **common, **extra)
    if name == "dvts":
        return DVTS(n=n, subtree_width=expansions, max_depth=max_depth, aggregation=aggregation,
                    max_new_tokens=max_new_tokens, **common, **extra)
    if name in ("mcts", "airl_s"):
        return MCTS.airl_s(iterations=iterations, expansions=expansions, max_depth=max_depth, aggregation=aggregation,
                           max_new_tokens=max_new_tokens, rollout_max_new_tokens=max_trace_tokens, **common, **extra)
    if name == "vm_mcts":
        return MCTS.vm_mcts(iterations=iterations, expansions=expansions, max_depth=max_depth,
                            max_new_tokens=max_new_tokens, rollout_max_new_tokens=max_trace_tokens, **common, **extra)
    raise ValueError(f"unknown planner {name!r}; valid: {', '.join(PLANNERS)}")


def evaluate(planner, env, policy, scorer, tasks: Iterable, budget: str | dict | Budget | None = None, *,
             results_path: str | os.PathLike | None = None, logger=None, tag: str = "search",
             progress: bool = False, start: int = 0) -> dict:
    """Solve each task from a fresh per-task budget; returns accuracy and mean usage.

    Args:
        planner: anything with ``solve(env, policy, scorer, budget)``.
        env: a prmgym env (reset on each task here).
        tasks: `Task` objects (held-out: ``env.unwrapped.source.tasks("test", n)``).
        budget: per-task limits (``"generated=2000"``, a dict, or a `Budget` used as template).
        results_path: JSONL, one row per task (appended).
        logger: a `prmgym.logging.Logger`; one dump per task (step = task index) under ``tag/``.
        start: index of the first task in the whole list (a resumed search passes the tasks
            not done yet and their offset, so reset seeds and logged steps are unchanged).

    Returns: ``{"accuracy", "mean_reward", "n", "budget": {unit: mean used}, "rows": [...]}``.
    """
    spec = _limits(budget)
    rows = []
    fh = None
    if results_path is not None:
        os.makedirs(os.path.dirname(os.fspath(results_path)) or ".", exist_ok=True)
        fh = open(results_path, "a")
    try:
        for i, task in enumerate(tasks, start):
            env.reset(seed=i, options={"task": task})
            if hasattr(scorer, "clear_cache"):
                # Each search pays for its own PRM tokens: no prefix cache carried over
                # from earlier tasks or runs (the search engine still caches within one search).
                scorer.clear_cache()
            b = Budget(**spec)
            res = planner.solve(env, policy, scorer, b)
            correct = bool(res.reward >= 1.0 - 1e-9)
            row = {"task_id": task.id, "answer": res.answer, "reference": task.answer, "reward": res.reward,
                   "correct": correct, "score": res.score, "steps": res.steps, "budget": res.budget,
                   "tree": {k: v for k, v in res.tree.items() if isinstance(v, (int, float, str))}}
            rows.append(row)
            if fh is not None:
                fh.write(json.dumps(row) + "\n")
                fh.flush()
            if logger is not None:
                logger.record(f"{tag}/reward", res.reward)
                logger.record(f"{tag}/correct", float(correct))
                logger.record(f"{tag}/accuracy_so_far", sum(r["correct"] for r in rows) / len(rows))
                for u, v in res.budget.items():
                    logger.record(f"{tag}/budget_{u}", v)
                logger.dump(step=i)
            if progress:
                print(f"  [{i + 1}] {task.id}: answer={res.answer!r} reward={res.reward:.2f} "
                      f"generated={res.budget.get('generated')} prm={res.budget.get('prm')}", flush=True)
    finally:
        if fh is not None:
            fh.close()
    return summarize(rows, spec)


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

