"""Rollout workers on Ray: `RayRollouts` generates GRPO / ReST-GRPO groups on N actors, each
holding a copy of the policy and its own envs; `ray_rollouts(trainer, rollouts)` makes a trainer
use them.

A step's prompts are cut into chunks of ``chunk_prompts`` prompts; chunk k is played with the
seed ``chunk_seed(seed, k)`` by whichever actor is free. The trajectories depend only on the
chunking, the seeds and the weights, not on which actor or how many actors ran them: one actor,
two actors, the same with an actor killed mid-batch (its chunk runs again, same seed), and
``RayRollouts(..., workers=0)`` (the same chunked collection in this process, no Ray) give the
same groups (tests/test_ray_dp.py). After each optimizer step the trainer publishes its weights
once through the object store (`publish`); each actor loads them before its next chunk.
Each step logs ``rollout/worker{i}_tokens_per_s``.

`prmgym train` starts them from its config: ``distributed: {backend: ray, rollout_workers: N}``.
"""

from __future__ import annotations

import time
from dataclasses import asdict, fields
from typing import Any, Callable, Sequence

import numpy as np
import torch

from prmgym.agents.rollout import RolloutCollector
from prmgym.cluster import ActorPool, connect
from prmgym.envs.episodes import RunStats


def chunk_seed(seed: int, k: int) -> int:
    """The sampling seed of chunk ``k`` of a collect seeded ``seed``."""
    return int(np.random.default_rng([int(seed), int(k)]).integers(2**31 - 1))


class _RolloutHost:
    """The body of one rollout actor (and of the in-process ``workers=0`` path)."""

    def __init__(self, policy: Any, env_fn: Callable[[], Any], collector_kwargs: dict, threads: int | None):
        if threads:
            torch.set_num_threads(threads)
        self.policy = policy
        self.collector = RolloutCollector(env_fn, policy, **collector_kwargs)
        self.version = 0

    def collect(self, weights: list, version: int, prompts: list, group_size: int, seed: int) -> tuple:
        if version != self.version:  # new weights: fetched from the object store once per version
            import ray

            state = ray.get(weights[0])
            self.policy.model.load_state_dict(state)
            self.version = version
        t0 = time.perf_counter()
        trajs, stats = self.collector.collect(prompts, group_size, seed=seed)
        return trajs, asdict(stats), time.perf_counter() - t0

    def ping(self) -> bool:
        return True

    def close(self) -> None:
        self.collector.close()


class RayRollouts(ActorPool):
    """Generate groups on ``workers`` Ray actors (0 = in this process, same chunked seeds).

    Args:
        policy: the policy; pickled once to the actors through the object store.
        env_fn: builds one env (e.g. ``lambda: make("prmgym/Countdown-v0")``; pickled to the actors).
        chunk_prompts: prompts per chunk (a chunk's groups are generated together in one batch).
        max_new_tokens, temperature, top_p, max_steps: as `RolloutCollector`.
        threads, num_cpus: torch threads and Ray CPUs per actor.
        max_restarts: replacement actors over the pool's life when actors die.
    """

    def __init__(self, policy: Any, env_fn: Callable[[], Any], *, workers: int = 2, chunk_prompts: int = 1,
                 max_new_tokens: int = 32, temperature: float = 1.0, top_p: float = 1.0, max_steps: int = 32,
                 threads: int = 1, num_cpus: float = 1.0, max_restarts: int = 16, start_timeout_s: float = 300.0):
        if workers < 0 or chunk_prompts < 1:
            raise ValueError(f"workers must be >= 0 and chunk_prompts >= 1, got {workers} and {chunk_prompts}")
        kwargs = dict(max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p, max_steps=max_steps,
                      max_workers=1)
        self.chunk_prompts, self.max_restarts, self.restarts = chunk_prompts, int(max_restarts), 0
        self.version, self._weights = 0, [None]
        self.worker_rates: dict[int, float] = {}
        self.local = None
        if workers == 0:
            self.local = _RolloutHost(policy, env_fn, kwargs, None)
            self.actors: list = []
            return
        ray = self._ray = connect()
        policy_ref = ray.put(policy)
        cls = ray.remote(_RolloutHost).options(num_cpus=num_cpus, max_restarts=0)
        self._new_actor = lambda: cls.remote(policy_ref, env_fn, kwargs, threads)
        self.actors = [self._new_actor() for _ in range(workers)]
        ready, pending = ray.wait([a.ping.remote() for a in self.actors], num_returns=workers, timeout=start_timeout_s)
        if pending:
            self.close()
            raise RuntimeError(f"RayRollouts: {len(pending)} of {workers} actors did not start within "
                               f"{start_timeout_s:.0f} s; lower workers or num_cpus, or add nodes")
        ray.get(ready)

    def publish(self, model: torch.nn.Module) -> None:
        """Put ``model``'s weights in the object store once; actors load them before their next chunk."""
        if self.local is not None:
            return  # the in-process host holds the trainer's own policy
        state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
        self._weights = [self._ray.put(state)]
        self.version += 1

    def collect(self, prompts: Sequence[Any], group_size: int, seed: int) -> tuple[list, dict]:
        """``group_size`` episodes per prompt, grouped in prompt order, and the summed `RunStats`."""
        prompts = list(prompts)
        chunks = [(k, prompts[s:s + self.chunk_prompts]) for k, s in enumerate(range(0, len(prompts), self.chunk_prompts))]
        results: dict[int, tuple] = {}
        self.worker_rates = {}
        if self.local is not None:
            for k, chunk in chunks:
                results[k] = self.local.collect([None], 0, chunk, group_size, chunk_seed(seed, k))
        else:
            self._collect_on_actors(chunks, group_size, seed, results)
        trajs, stats = [], {f.name: 0 for f in fields(RunStats)}
        for k in range(len(chunks)):
            t, s, _ = results[k]
            trajs += t
            for name in stats:
                stats[name] += s.get(name, 0)
        return trajs, stats

    def _collect_on_actors(self, chunks: list, group_size: int, seed: int, results: dict) -> None:
        from ray.exceptions import ActorDiedError, ActorUnavailableError, RayActorError

        ray = self._ray
        todo = list(reversed(chunks))
        running: dict = {}
        free = list(range(len(self.actors)))
        busy_s: dict[int, float] = {}
        tokens: dict[int, int] = {}
        while todo or running:
            while todo and free:
                a = free.pop(0)
                k, chunk = todo.pop()
                ref = self.actors[a].collect.remote(self._weights, self.version, chunk, group_size, chunk_seed(seed, k))
                running[ref] = (a, k, chunk)
            done, _ = ray.wait(list(running), num_returns=1)
            a, k, chunk = running.pop(done[0])
            try:
                results[k] = ray.get(done[0])
            except (RayActorError, ActorDiedError, ActorUnavailableError):
                if self.restarts >= self.max_restarts:
                    raise
                self.restarts += 1
                todo.append((k, chunk))  # the same chunk, the same seed, on the replacement or another actor
                self.actors[a] = self._new_actor()
            else:
                busy_s[a] = busy_s.get(a, 0.0) + results[k][2]
                tokens[a] = tokens.get(a, 0) + int(results[k][1].get("generated", 0))
            free.append(a)
        self.worker_rates = {a: tokens[a] / busy_s[a] for a in busy_s if busy_s[a] > 0}

    def close(self) -> None:
        if self.local is not None:
            self.local.close()
        super().close()


class _UsesRayRollouts:
    """Mixin put before a GRPO trainer class by `ray_rollouts`."""

    def rollout(self, prompts):
        seed = int(self.rng.integers(2**31 - 1))
        if self._published != self.optim.updates:  # the weights changed since the last publish
            self._ray_rollouts.publish(self.model)
            self._published = self.optim.updates
        return self._ray_rollouts.collect(prompts, self.config.num_generations, seed)

    def close(self) -> None:
        self._ray_rollouts.close()
        super().close()

    def collect_batch(self):
        trajs, metrics = super().collect_batch()
        for a, rate in sorted(self._ray_rollouts.worker_rates.items()):
            metrics[f"rollout/worker{a}_tokens_per_s"] = rate
        return trajs, metrics


def ray_rollouts(trainer: Any, rollouts: RayRollouts) -> Any:
    """``trainer`` (a GRPO trainer) generating its groups with ``rollouts`` (in place; returned)."""
    if not isinstance(trainer, _UsesRayRollouts):
        cls = type(trainer)
        trainer.__class__ = type(f"RayRollout{cls.__name__}", (_UsesRayRollouts, cls), {})
    trainer._ray_rollouts, trainer._published = rollouts, -1
    return trainer


__all__ = ["RayRollouts", "ray_rollouts", "chunk_seed"]
