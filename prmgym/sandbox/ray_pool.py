"""`RaySandbox`: the `Sandbox` interface over a pool of Ray actors, each holding a `LocalSandbox`
(or a `DockerSandbox`), spread over the nodes of a Ray cluster.

The caller talks to it exactly as to a local sandbox (``run``, ``run_batch``); a batch is cut
into small chunks that go to whichever actor is free. When an actor dies (its node went away,
``ray.kill``, an out-of-memory kill) the chunk it held is run again on another actor and a
replacement actor is started, so the batch's results still come back complete, in the order of
the jobs, one per job. Verdicts are decided by the harness inside each actor's sandbox, exactly
as in-process; Ray only moves jobs and results.

Ray is imported on first use: ``pip install -e '.[ray]'``. With no running Ray, the pool starts
a local one (``ray.init()``); to join a cluster call ``ray.init(address=...)`` first (or use
``prmgym.cluster.connect``). Like the rest of ``prmgym.sandbox`` this module imports no torch
and nothing else of prmgym.

>>> import ray                                                     # doctest: +SKIP
>>> ray.init(num_cpus=2)                                           # doctest: +SKIP
>>> with RaySandbox(workers_per_node=2) as sb:                     # doctest: +SKIP
...     [r.status for r in sb.run_batch([Job("x = 1", tests=("assert x == 1",))] * 3)]
['passed', 'passed', 'passed']
"""

from __future__ import annotations

import threading
from typing import Any, Sequence

from prmgym.sandbox.base import ExecResult, Job, Sandbox, close_at_exit

RAY_MISSING = "Ray is not installed; install prmgym's Ray extra: pip install -e '.[ray]' (or pip install 'ray>=2.9')"


def import_ray():
    """The ``ray`` module, or an ImportError that names the fix."""
    try:
        import ray
    except ImportError:
        raise ImportError(RAY_MISSING) from None
    return ray


class _SandboxHost:
    """The body of one pool actor: a sandbox built inside the actor's process."""

    def __init__(self, backend: str, options: dict):
        if backend == "local":
            from prmgym.sandbox.local import LocalSandbox

            self.sandbox: Sandbox = LocalSandbox(**options)
        else:
            from prmgym.sandbox.docker import DockerSandbox

            self.sandbox = DockerSandbox(**options)

    def run_batch(self, jobs: list[Job]) -> list[ExecResult]:
        return self.sandbox.run_batch(jobs)

    def node_id(self) -> str:
        import ray

        return ray.get_runtime_context().get_node_id()

    def close(self) -> None:
        self.sandbox.close()


class RaySandbox(Sandbox):
    """Run sandbox jobs on Ray actors spread over the cluster's nodes.

    Args:
        workers_per_node: actors started on each alive node (each holds one sandbox).
        nodes: how many nodes to use (the first ``nodes`` alive nodes that have CPUs, in Ray's
            order); None = all of them. A node's actors are pinned to it (hard node affinity).
        backend: ``"local"`` (`LocalSandbox` in each actor; Linux) or ``"docker"``
            (`DockerSandbox`; the node needs a Docker engine and the sandbox image).
        sandbox_options: keyword arguments of that backend's constructor, e.g.
            ``{"workers": 1}`` (the default: one job at a time per actor).
        num_cpus: Ray CPUs each actor reserves (the scheduler's view; default 1, so a node
            with C CPUs holds at most C actors).
        chunk_size: jobs sent to an actor at once; None = about four chunks per actor per batch
            (small chunks balance the load and bound what a dead actor takes down with it).
        max_restarts: how many replacement actors the pool starts over its lifetime before a
            failure is reported as an error instead of being retried.
        start_timeout_s: how long the actors may take to start (a pool asking for more CPUs than
            the cluster has free fails after this, naming the numbers, instead of waiting forever).

    Results keep the order of the jobs. `close()` kills the actors (the Ray runtime stays up).
    """

    def __init__(self, workers_per_node: int = 1, *, nodes: int | None = None, backend: str = "local",
                 sandbox_options: dict | None = None, num_cpus: float = 1.0, chunk_size: int | None = None,
                 max_restarts: int = 16, start_timeout_s: float = 120.0):
        if workers_per_node < 1:
            raise ValueError(f"workers_per_node must be >= 1, got {workers_per_node}")
        if nodes is not None and nodes < 1:
            raise ValueError(f"nodes must be >= 1 or None (all nodes), got {nodes}")
        if backend not in ("local", "docker"):
            raise ValueError(f"backend must be 'local' or 'docker', got {backend!r}")
        if chunk_size is not None and chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1 or None (automatic), got {chunk_size}")
        if num_cpus < 0:
            raise ValueError(f"num_cpus must be >= 0, got {num_cpus}")
        ray = import_ray()
        if not ray.is_initialized():
            ray.init(log_to_driver=False)
        self._ray = ray
        self.backend, self.num_cpus, self.chunk_size = backend, float(num_cpus), chunk_size
        self.options = dict(sandbox_options or {"workers": 1})
        self.max_restarts, self.restarts = int(max_restarts), 0
        self._closed = False
        self._lock = threading.Lock()  # one batch at a time drives the actors
        self._actor_cls = ray.remote(_SandboxHost)
        alive = [n for n in ray.nodes() if n.get("Alive") and n.get("Resources", {}).get("CPU", 0) > 0]
        if not alive:
            raise RuntimeError("the Ray cluster has no alive node with CPUs; start one with `ray start`")
        self.node_ids = [n["NodeID"] for n in alive[: nodes or len(alive)]]
        self._actors: list[Any] = []
        self._actor_node: dict[Any, str] = {}
        close_at_exit(self)
        try:
            for node in self.node_ids:
                for _ in range(workers_per_node):
                    self._start_actor(node)
            # fail here, not in the first batch, when an actor cannot build its sandbox or be placed
            ready, pending = ray.wait([a.node_id.remote() for a in self._actors], num_returns=len(self._actors),
                                      timeout=start_timeout_s)
            if pending:
                raise RuntimeError(
                    f"RaySandbox: {len(pending)} of {len(self._actors)} actors did not start within {start_timeout_s:.0f} s. "
                    f"Each reserves num_cpus={self.num_cpus:g}; the cluster has {ray.cluster_resources().get('CPU', 0):g} "
                    f"CPUs, {ray.available_resources().get('CPU', 0):g} free. Lower workers_per_node or num_cpus, "
                    "close other pools, or add nodes")
            ray.get(ready)
        except BaseException:
            self.close()
            raise

    @property
    def workers(self) -> int:
        """Actors in the pool now."""
        return len(self._actors)

    def _start_actor(self, node: str | None) -> Any:
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        opts: dict = {"num_cpus": self.num_cpus, "max_restarts": 0, "max_task_retries": 0}
        if node is not None:
            opts["scheduling_strategy"] = NodeAffinitySchedulingStrategy(node_id=node, soft=False)
        actor = self._actor_cls.options(**opts).remote(self.backend, self.options)
        self._actors.append(actor)
        self._actor_node[actor] = node
        return actor

    def _replace(self, dead: Any) -> None:
        """Drop ``dead`` and start a replacement: on its node if that node is alive, else anywhere."""
        self._actors.remove(dead)
        node = self._actor_node.pop(dead, None)
        if self.restarts >= self.max_restarts:
            return
        self.restarts += 1
        alive = {n["NodeID"] for n in self._ray.nodes() if n.get("Alive")}
        self._start_actor(node if node in alive else None)

    def run(self, job: Job) -> ExecResult:
        return self.run_batch([job])[0]

    def run_batch(self, jobs: Sequence[Job]) -> list[ExecResult]:
        if self._closed:
            raise RuntimeError("this RaySandbox is closed; create a new one")
        jobs = list(jobs)
        for i, job in enumerate(jobs):
            if not isinstance(job, Job):
                raise TypeError(f"RaySandbox.run_batch takes prmgym.sandbox.Job items; item {i} is {type(job).__name__}")
        if not jobs:
            return []
        from ray.exceptions import ActorDiedError, ActorUnavailableError, RayActorError

        lost = (RayActorError, ActorDiedError, ActorUnavailableError)
        with self._lock:
            size = self.chunk_size or max(1, -(-len(jobs) // (4 * max(1, len(self._actors)))))
            todo = [(s, list(range(s, min(s + size, len(jobs))))) for s in range(0, len(jobs), size)]
            todo.reverse()  # pop() takes the first chunk first
            results: list[ExecResult | None] = [None] * len(jobs)
            running: dict[Any, tuple[Any, list[int]]] = {}  # ref -> (actor, indices)
            busy: set = set()
            failures: list[str] = []
            while todo or running:
                for actor in list(self._actors):
                    if not todo:
                        break
                    if actor in busy:
                        continue
                    _, idx = todo.pop()
                    ref = actor.run_batch.remote([jobs[i] for i in idx])
                    running[ref] = (actor, idx)
                    busy.add(actor)
                if not running:
                    raise RuntimeError(f"RaySandbox: no actor left to run {sum(len(i) for _, i in todo)} jobs "
                                       f"(replacements used: {self.restarts} of max_restarts={self.max_restarts}); "
                                       f"failures: {failures[-3:]}")
                done, _ = self._ray.wait(list(running), num_returns=1)
                for ref in done:
                    actor, idx = running.pop(ref)
                    busy.discard(actor)
                    try:
                        out = self._ray.get(ref)
                    except lost as e:
                        failures.append(f"{type(e).__name__}: {str(e)[:200]}")
                        todo.append((idx[0], idx))  # runs again first, on another actor
                        self._replace(actor)
                        continue
                    for i, r in zip(idx, out):
                        results[i] = r
            assert all(r is not None for r in results)
            return results  # type: ignore[return-value]

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        ray = self._ray
        actors = list(getattr(self, "_actors", []))
        try:  # let each sandbox stop its workers, then end the actors
            ray.wait([a.close.remote() for a in actors], num_returns=len(actors), timeout=10)
        except Exception:  # noqa: BLE001  (dead actors, or Ray shut down first)
            pass
        for actor in actors:
            try:
                ray.kill(actor)
            except Exception:  # noqa: BLE001  (already dead, or Ray shut down first)
                pass
        self._actors = []

    def __del__(self):
        try:
            self.close()
        except Exception:  # noqa: BLE001
            pass


__all__ = ["RaySandbox", "import_ray", "RAY_MISSING"]
