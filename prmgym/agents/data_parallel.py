"""Data-parallel GRPO / ReST-GRPO updates over K processes with ``torch.distributed`` (gloo on
CPU, NCCL on GPUs), and `RayDataParallel`, which runs the K processes as Ray actors.

Rank 0 rolls out the step's batch and broadcasts it (with its sampling RNG state, so every rank
splits the mini-batches alike). Each optimizer update's micro-batches, with their shares of the
*global* loss normaliser (`prmgym.models.optim.micro_batches`), are dealt out round-robin to the
ranks; each rank back-propagates its own, then the gradients are summed over the ranks
(one ``all_reduce``) before the identical optimizer step on every rank. The summed gradient is
the single-process gradient of the same global batch (tests/test_ray.py checks K = 2 against
K = 1 to 1e-5), so the weights stay equal on every rank without a broadcast.

    >>> dist.init_process_group("gloo", ...)                       # doctest: +SKIP
    >>> trainer = data_parallel(GRPOTrainer(policy, env, cfg))       # doctest: +SKIP
    >>> trainer.step()                                               # doctest: +SKIP

`ray_ranks(trainer, build, world)` makes this process rank 0 of such a group and starts the
other ranks as Ray actors: the trainer is used as before (``step``, ``train``, ``save``, ``load``),
each step also stepping the actors. ``prmgym train`` does this for ``distributed.train_workers``.

A trainer whose step updates a learned process reward (AIRL-S, rePIRL: ``process_reward.prm``,
or a PRM given as the process reward) updates it data-parallel too
(`prmgym.rewards.data_parallel`): each rank runs the PRM's forward and backward on its share of
the traces and one ``all_reduce`` sums the PRM's gradients. The step rewards the PRM gives
before the policy update are computed on every rank on the whole batch (not split: so they are
bit for bit the single process's, and the policy update with them). Refused: a process reward
whose update is not one of those PRMs, and fp16 loss scaling.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import torch
import torch.distributed as dist

from prmgym.agents.common import rng_state, set_rng_state
from prmgym.cluster import ActorPool, connect
from prmgym.models.distributed import _Rank, all_reduce_gradients, run_step
from prmgym.models.distributed import ray_ranks as _ray_ranks
from prmgym.models.optim import micro_batches
from prmgym.rewards.data_parallel import check_prm, data_parallel_prm, prm_state, set_prm_state


class DataParallel:
    """Mixin placed before a GRPO trainer class by `data_parallel`; needs an initialised
    default process group."""

    def _micro_batches(self, weights: list) -> list:
        world, rank = dist.get_world_size(), dist.get_rank()
        size = self.config.micro_batch_size or math.ceil(len(weights) / world)  # at least one per rank
        return micro_batches(weights, size)[rank::world]

    def _reduce_gradients(self, metrics: dict) -> dict:
        all_reduce_gradients(self.optim.params())  # a rank that got no micro-batch adds zeros
        parts: list = [None] * dist.get_world_size()
        dist.all_gather_object(parts, metrics)
        out: dict = {}
        for part in parts:
            for k, v in part.items():
                out[k] = out.get(k, 0.0) + v
        return out

    def collect_batch(self):
        payload: list = [None, None]
        if dist.get_rank() == 0:
            payload = [super().collect_batch(), rng_state(self.rng)]
        dist.broadcast_object_list(payload, src=0)
        (trajs, metrics), state = payload
        set_rng_state(state, self.rng)
        return trajs, metrics


def data_parallel(trainer: Any) -> Any:
    """``trainer`` (a `GRPOTrainer` or subclass), made a data-parallel rank of the default
    process group (in place; returned). Give only rank 0 a ``run_dir`` / logger."""
    if not dist.is_initialized():
        raise RuntimeError("data_parallel needs torch.distributed initialised first: "
                           "dist.init_process_group('gloo' (CPU) or 'nccl' (GPU), rank=..., world_size=...), "
                           "or run the ranks with RayDataParallel")
    check_trainer(trainer)
    prm = updated_prm(trainer)
    if prm is not None:
        data_parallel_prm(prm)
    cls = type(trainer)
    if not isinstance(trainer, DataParallel):
        trainer.__class__ = type(f"DataParallel{cls.__name__}", (DataParallel, cls), {})
    return trainer


def updated_prm(trainer: Any) -> Any:
    """The PRM that ``trainer``'s step updates (its process reward's ``prm``, or the process reward
    itself), or None when the step updates none."""
    pr = getattr(trainer, "process_reward", None)
    if pr is None or not trainer.config.update_process_reward or not hasattr(pr, "update"):
        return None
    return getattr(pr, "prm", pr)


def check_trainer(trainer: Any) -> None:
    """Raise ValueError, naming the fix, for what a data-parallel GRPO rank cannot do."""
    if trainer.optim.scaler is not None:
        raise ValueError("data_parallel: fp16 loss scaling is not supported; use dtype fp32 or bf16")
    prm = updated_prm(trainer)
    if prm is not None:
        check_prm(prm, where="data_parallel (the process reward's update)")


class RayDataParallel(ActorPool):
    """K Ray actors, each a rank of one gloo (or NCCL) process group holding ``build(rank)``, a
    GRPO trainer built the same way on every rank (same policy weights, same config and seed).

    `step` runs one data-parallel trainer step on every rank and returns rank 0's metrics;
    `call(fn, *args)` runs ``fn(trainer, *args)`` on every rank and returns the K results.
    ``build`` is pickled to the actors: a module-level function of an installed module.
    ``wrap`` makes a built trainer a rank (default `data_parallel`; a PRM trainer:
    `prmgym.rewards.data_parallel.data_parallel_prm`).
    """

    def __init__(self, build: Callable[[int], Any], world: int = 2, *, backend: str = "gloo", threads: int = 1,
                 num_cpus: float = 1.0, num_gpus: float = 0.0, start_timeout_s: float = 300.0,
                 wrap: Callable[[Any], Any] | None = None):
        if world < 1:
            raise ValueError(f"world must be >= 1, got {world}")
        ray = connect()
        self._ray = ray
        cls = ray.remote(_Rank).options(num_cpus=num_cpus, num_gpus=num_gpus, max_restarts=0)
        wrap = wrap or data_parallel
        self.actors = [cls.remote(threads) for _ in range(world)]
        master = ray.get(self.actors[0].address.remote(), timeout=start_timeout_s)
        ray.get([a.setup.remote(build, r, world, master, backend, wrap) for r, a in enumerate(self.actors)],
                timeout=start_timeout_s)

    def call(self, fn: Callable[..., Any], *args: Any) -> list:
        return self._ray.get([a.call.remote(fn, *args) for a in self.actors])

    def step(self) -> dict:
        return self.call(run_step)[0]



def trainer_state(trainer: Any) -> dict:
    """What `GRPOTrainer.save` keeps, in memory: weights, optimizer, RNG, step counter, and the
    process reward's PRM when the step updates one (`prmgym.rewards.data_parallel.prm_state`)."""
    prm = updated_prm(trainer)
    return {"model": {k: v.detach().cpu().clone() for k, v in trainer.model.state_dict().items()},
            "optimizer": trainer.optim.state_dict(), "rng": rng_state(trainer.rng), "step": trainer.num_steps,
            "ref_model": trainer.ref_model.state_dict() if trainer.ref_model is not None else None,
            "extra": trainer._extra_state(), "process_reward": prm_state(prm) if prm is not None else None}


def set_trainer_state(trainer: Any, state: dict) -> None:
    trainer.model.load_state_dict(state["model"])
    trainer.optim.load_state_dict(state["optimizer"])
    set_rng_state(state["rng"], trainer.rng)
    trainer.num_steps = int(state["step"])
    if trainer.ref_model is not None and state["ref_model"] is not None:
        trainer.ref_model.load_state_dict(state["ref_model"])
    trainer._load_extra_state(state["extra"])
    prm = updated_prm(trainer)
    if prm is not None and state.get("process_reward") is not None:
        set_prm_state(prm, state["process_reward"])


def ray_ranks(trainer: Any, build: Callable[[int], Any], world: int, **options: Any) -> Any:
    """``trainer`` (a GRPO trainer) made rank 0 of a ``world``-rank data-parallel process group
    whose other ranks are Ray actors holding ``build(rank)`` (built like ``trainer``; a module-level
    function): `prmgym.models.distributed.ray_ranks` with `data_parallel`; the actors take
    ``trainer``'s state now and after each ``trainer.load``. ``options``: ``backend``, ``threads``,
    ``num_cpus``, ``num_gpus``, ``start_timeout_s``. In place; returned."""
    check_trainer(trainer)
    return _ray_ranks(trainer, build, world, wrap=data_parallel, state=(trainer_state, set_trainer_state), **options)


__all__ = ["DataParallel", "data_parallel", "RayDataParallel", "ray_ranks", "trainer_state", "set_trainer_state",
           "updated_prm", "check_trainer"]
