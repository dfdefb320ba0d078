"""Data-parallel ranks of a ``torch.distributed`` process group, shared by the GRPO
(`prmgym.agents.data_parallel`) and PRM (`prmgym.rewards.data_parallel`) updates: the gradient
all-reduce, the Ray actor body of a rank, and `ray_ranks`, which makes this process rank 0 and
starts the other ranks as Ray actors."""

from __future__ import annotations

import socket
from datetime import timedelta
from typing import Any, Callable, Sequence

import torch
import torch.distributed as dist

from prmgym.cluster import connect, stop_actors


def all_reduce_gradients(params: Sequence[torch.nn.Parameter]) -> None:
    """Sum every parameter's gradient over the ranks, in one flat ``all_reduce`` (a rank that did
    not touch a parameter adds zeros)."""
    params = [p for p in params if p.requires_grad]
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    flat = torch.cat([p.grad.reshape(-1) for p in params])
    dist.all_reduce(flat)
    offset = 0
    for p in params:
        n = p.numel()
        p.grad.copy_(flat[offset:offset + n].view_as(p.grad))
        offset += n


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("", 0))
        return s.getsockname()[1]


def run_step(trainer: Any) -> dict:
    return trainer.step()


class _Rank:
    """The body of one Ray actor: a process-group rank holding ``wrap(build(rank))``."""

    def __init__(self, threads: int):
        torch.set_num_threads(threads)
        self.trainer = None

    def address(self) -> tuple[str, int]:
        import ray

        return ray.util.get_node_ip_address(), _free_port()

    def setup(self, build: Callable[[int], Any], rank: int, world: int, master: tuple[str, int], backend: str,
              wrap: Callable[[Any], Any]) -> int:
        dist.init_process_group(backend, init_method=f"tcp://{master[0]}:{master[1]}", rank=rank, world_size=world)
        self.trainer = wrap(build(rank))
        return rank

    def call(self, fn: Callable[..., Any], *args: Any) -> Any:
        return fn(self.trainer, *args)

    def close(self) -> None:
        if dist.is_initialized():
            dist.destroy_process_group()


class _DrivesRanks:
    """Mixin put before rank 0's trainer class (in this process) by `ray_ranks`."""

    def step(self) -> dict:
        refs = [a.call.remote(run_step) for a in self._rank_actors]  # the other ranks step alongside
        metrics = super().step()
        self._rank_ray.get(refs)
        return metrics

    def load(self, path: str):
        out = super().load(path)
        self.sync_ranks()
        return out

    def sync_ranks(self) -> None:
        """Give every other rank this trainer's state (at the start and after a `load`)."""
        if self._rank_state is None:
            return
        get, put = self._rank_state
        ray = self._rank_ray
        ref = ray.put(get(self))
        ray.get([a.call.remote(put, ref) for a in self._rank_actors])

    def close(self) -> None:
        try:
            super().close()
        finally:
            if dist.is_initialized():
                dist.destroy_process_group()
            stop_actors(self._rank_ray, self._rank_actors)
            self._rank_actors = []


def ray_ranks(trainer: Any, build: Callable[[int], Any], world: int, *, wrap: Callable[[Any], Any],
              state: tuple[Callable, Callable] | None = None, backend: str = "gloo", threads: int = 1,
              num_cpus: float = 1.0, num_gpus: float = 0.0, start_timeout_s: float = 300.0) -> Any:
    """``trainer`` made rank 0 of a ``world``-rank process group whose ranks 1..world-1 are Ray
    actors holding ``wrap(build(rank))`` (``build``: a module-level function, pickled to them);
    ``wrap`` makes a trainer a data-parallel rank (here too). With ``state = (get, set)`` the
    actors take ``get(trainer)`` now and after each ``trainer.load``. Each ``trainer.step()``
    steps them too; ``trainer.close()`` ends them. In place; returned."""
    if world < 2:
        raise ValueError(f"ray_ranks needs world >= 2 (this process and at least one actor), got {world}")
    if dist.is_initialized():
        raise RuntimeError("ray_ranks: this process is already in a torch.distributed process group; close the "
                           "other data-parallel trainer first (trainer.close())")
    ray = connect()
    cls = ray.remote(_Rank).options(num_cpus=num_cpus, num_gpus=num_gpus, max_restarts=0)
    actors = [cls.remote(threads) for _ in range(world - 1)]
    master = (ray.util.get_node_ip_address(), _free_port())
    setups = [a.setup.remote(build, r, world, master, backend, wrap) for r, a in enumerate(actors, start=1)]
    try:
        dist.init_process_group(backend, init_method=f"tcp://{master[0]}:{master[1]}", rank=0, world_size=world,
                                timeout=timedelta(seconds=start_timeout_s))
        ray.get(setups, timeout=start_timeout_s)
    except Exception as e:
        for a in actors:
            ray.kill(a)
        if dist.is_initialized():
            dist.destroy_process_group()
        raise RuntimeError(f"ray_ranks: the {world - 1} other rank(s) did not join within {start_timeout_s:.0f} s "
                           f"({type(e).__name__}: {e}); the cluster needs {world - 1} x {num_cpus} free CPUs"
                           + (f" and {num_gpus} GPU(s) each" if num_gpus else "") + "; lower train_workers or add "
                           "nodes") from None
    wrap(trainer)
    cls0 = type(trainer)
    trainer.__class__ = type(f"RayRanks{cls0.__name__}", (_DrivesRanks, cls0), {})
    trainer._rank_actors, trainer._rank_ray, trainer._rank_state = actors, ray, state
    trainer.sync_ranks()
    return trainer


__all__ = ["all_reduce_gradients", "ray_ranks", "run_step"]
