"""Search and evaluation fan-out on Ray: `RaySearchRunner` solves a planner's tasks on Ray actors,
each holding its own policy, scorer and env, and hands the rows back in task order.

Each task's row depends only on the task, its index in the whole list (the reset seed), the
planner (seeded per search) and the models (`prmgym.search.evaluate.solve_task`), so the rows,
and the report `evaluate_planner` writes from them, are the same as the single-process ones.

The policy and PRM directories are read once here and shipped to the actors through Ray's object
store (each actor writes them to a temporary directory and loads them), so the nodes need no
shared file system, only prmgym installed.

>>> runner = RaySearchRunner("runs/tiny", None, "prmgym/ChainArithmetic-v0", workers=2)  # doctest: +SKIP
>>> evaluate_planner(make_planner("sample"), None, None, None, tasks, "generated=200", runner=runner)  # doctest: +SKIP
"""

from __future__ import annotations

import os
import shutil
import tempfile
from typing import Any, Iterator, Sequence

from prmgym.cluster import ActorPool, connect, pack_dir, unpack_dir


class _SearchWorker:
    """The body of one search actor: a policy, an optional scorer and an env, built here."""

    def __init__(self, policy_files: dict, prm_files: dict | None, env_id: str, env_kwargs: dict, threads: int,
                 prompt_format: str = "plain", named_files: dict | None = None):
        import torch

        import prmgym  # noqa: F401  (registers the envs)
        from prmgym.envs import make
        from prmgym.models import TransformersPolicy

        torch.set_num_threads(threads)
        self.tmp = tempfile.mkdtemp(prefix="prmgym-search-worker-")
        self.policy = TransformersPolicy.from_pretrained(unpack_dir(policy_files, os.path.join(self.tmp, "policy")),
                                                         prompt_format=prompt_format)
        from prmgym.rewards import load_prm

        self.scorers: dict = {None: None}
        if prm_files is not None:
            self.scorers[None] = load_prm(unpack_dir(prm_files, os.path.join(self.tmp, "prm")))
        for k, (name, files) in enumerate(sorted((named_files or {}).items())):
            self.scorers[name] = load_prm(unpack_dir(files, os.path.join(self.tmp, f"scorer{k}")))
        self.env = make(env_id, **env_kwargs)

    def ping(self) -> bool:
        return True

    def solve(self, planner: Any, items: list, limits: dict, scorer: str | None = None) -> list[dict]:
        from prmgym.search.evaluate import solve_task

        return [solve_task(planner, self.env, self.policy, self.scorers[scorer], task, i, limits) for i, task in items]

    def close(self) -> None:
        self.env.close()
        shutil.rmtree(self.tmp, ignore_errors=True)


class RaySearchRunner(ActorPool):
    """Solve search tasks on ``workers`` Ray actors (a ``runner`` for `evaluate_planner`).

    Args:
        policy_dir: the policy's directory (save_pretrained output).
        prm_dir: the PRM / value-model directory, or None for scorer-free planners.
        env_id, env_kwargs: how each actor makes its env (``make(env_id, **env_kwargs)``; pass
            the ``split`` here).
        workers: actors; they are spread over the cluster's CPUs by Ray's scheduler.
        threads: torch threads per actor (with ``num_cpus`` Ray CPUs reserved for each).
        chunk_size: tasks handed to an actor at once (1 balances best; more saves round trips).
        start_timeout_s: how long the actors may take to start and load the models.
        max_restarts: replacement actors started over the runner's life when actors die (their
            tasks run again on another actor; rows are the same).
        prompt_format: the actors' policies read observations ``plain`` or ``chat``
            (`prmgym.models.formatting`).
        scorers: more scorers by name, ``{name: PRM directory}``, each loaded by every actor;
            ``rows(..., scorer=name)`` (or ``using(name)``) searches with one of them (a
            comparison of many PRMs, `prmgym.recipes.pipeline.compare`, on one pool).

    Call `close()` (or use ``with``) to end the actors. To join a cluster call
    `prmgym.cluster.connect` with its address first; otherwise a local Ray is started.
    """

    def __init__(self, policy_dir: str | os.PathLike, prm_dir: str | os.PathLike | None, env_id: str,
                 env_kwargs: dict | None = None, *, workers: int = 2, threads: int = 1, num_cpus: float | None = None,
                 chunk_size: int = 1, start_timeout_s: float = 300.0, max_restarts: int = 16,
                 prompt_format: str = "plain", scorers: dict[str, str | os.PathLike] | None = None):
        if workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers}")
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
        ray = connect()  # the Ray already initialised (connect(address) first to join a cluster), else a local one
        self._ray, self.chunk_size = ray, chunk_size
        policy_ref = ray.put(pack_dir(policy_dir))
        prm_ref = ray.put(pack_dir(prm_dir)) if prm_dir is not None else None
        self.scorer_names = sorted(scorers or {})
        named_ref = ray.put({name: pack_dir(d) for name, d in (scorers or {}).items()})
        cls = ray.remote(_SearchWorker).options(num_cpus=threads if num_cpus is None else num_cpus, max_restarts=0)
        self._new_actor = lambda: cls.remote(policy_ref, prm_ref, env_id, dict(env_kwargs or {}), threads, prompt_format,
                                             named_ref)
        self.actors = [self._new_actor() for _ in range(workers)]
        self.max_restarts, self.restarts = int(max_restarts), 0
        ready, pending = ray.wait([a.ping.remote() for a in self.actors], num_returns=workers, timeout=start_timeout_s)
        if pending:
            self.close()
            raise RuntimeError(f"RaySearchRunner: {len(pending)} of {workers} actors did not start within "
                               f"{start_timeout_s:.0f} s (each reserves {threads if num_cpus is None else num_cpus} CPUs; "
                               f"the cluster has {ray.available_resources().get('CPU', 0):g} free); lower workers or "
                               "num_cpus, or add nodes")
        ray.get(ready)  # an actor that failed to load its models raises here
        self.solved_by: list[int] = []  # per row, which actor solved it (for the report, and tests)

    def using(self, scorer: str | None) -> "_Using":
        """This runner searching with the named scorer (a ``runner`` for `evaluate_planner`)."""
        if scorer is not None and scorer not in self.scorer_names:
            raise KeyError(f"RaySearchRunner has no scorer {scorer!r}; its scorers: {self.scorer_names}")
        return _Using(self, scorer)

    def rows(self, planner: Any, tasks: Sequence, limits: dict, start: int = 0,
             scorer: str | None = None) -> Iterator[dict]:
        """The rows of ``tasks`` (indices from ``start``), yielded in task order as soon as every
        earlier row is in; ``scorer``: one of the named ``scorers`` (None: ``prm_dir``'s)."""
        from ray.exceptions import ActorDiedError, ActorUnavailableError, RayActorError

        ray = self._ray
        items = list(enumerate(tasks, start))
        chunks = [items[k:k + self.chunk_size] for k in range(0, len(items), self.chunk_size)]
        chunks.reverse()
        planner_ref = ray.put(planner)
        running: dict = {}  # ref -> (actor index, chunk)
        free = list(range(len(self.actors)))
        ready: dict[int, tuple[dict, int]] = {}
        next_i = start
        self.solved_by = []
        while chunks or running:
            while chunks and free:
                a = free.pop(0)
                chunk = chunks.pop()
                running[self.actors[a].solve.remote(planner_ref, chunk, limits, scorer)] = (a, chunk)
            done, _ = ray.wait(list(running), num_returns=1)
            a, chunk = running.pop(done[0])
            try:
                solved = ray.get(done[0])
            except (RayActorError, ActorDiedError, ActorUnavailableError):
                if self.restarts >= self.max_restarts:
                    raise
                self.restarts += 1
                chunks.append(chunk)  # runs again first, on the replacement or another actor
                self.actors[a] = self._new_actor()
                free.append(a)
                continue
            free.append(a)
            for (i, _), row in zip(chunk, solved):
                ready[i] = (row, a)
            while next_i in ready:
                row, a = ready.pop(next_i)
                self.solved_by.append(a)
                next_i += 1
                yield row


class _Using:
    def __init__(self, runner: RaySearchRunner, scorer: str | None):
        self.runner, self.scorer = runner, scorer

    def rows(self, planner: Any, tasks: Sequence, limits: dict, start: int = 0) -> Iterator[dict]:
        return self.runner.rows(planner, tasks, limits, start, scorer=self.scorer)


__all__ = ["RaySearchRunner", "pack_dir", "unpack_dir"]
