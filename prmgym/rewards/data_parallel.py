"""Data-parallel PRM updates over the ranks of a ``torch.distributed`` process group (gloo on CPU,
NCCL on GPUs): `data_parallel_prm(trainer)` for a `prmgym.rewards.train.PRMTrainer` (offline
``train-prm``), or `data_parallel_prm(prm)` for a bare PRM.

A learner's loss normalises over its whole batch (class-balanced means, AIRL's expert and policy
halves), so the batch is not cut into independent micro-batches. Instead, in an update each rank
runs the forward pass (``outputs``) of its share of the traces (trace i on rank ``i % K``), the
ranks exchange those outputs (``all_gather``), and every rank computes the same loss on the whole
batch, in which only its own outputs carry a gradient. Summing the ranks' gradients (one
``all_reduce``) then gives the single-process gradient of the batch (tests/test_ray_dp.py checks
K = 2 against one process to 1e-5), and the identical optimiser step keeps the weights equal on
every rank. In a `PRMTrainer`, rank 0 collects each update's batch and broadcasts it.

Kinds: ``airl``, ``orm``, ``mc`` (their losses read the PRM only through ``outputs``); others
are refused. Evaluation, scoring and saving are not split (call them on rank 0 only, or on all).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist

from prmgym.models.distributed import all_reduce_gradients

KINDS = ("airl", "orm", "mc")


def _split_prm(prm: Any) -> None:
    """Patch ``prm``'s ``outputs`` and ``update`` (on the instance: a PRM's class cannot be swapped
    for a subclass, its ABC layout forbids ``__class__`` assignment)."""
    if getattr(prm, "_dp_rank", False):
        return
    outputs, update, split = prm.outputs, prm.update, [False]

    def split_outputs(prompts, step_lists) -> list[torch.Tensor]:
        if not split[0]:
            return outputs(prompts, step_lists)
        world, rank = dist.get_world_size(), dist.get_rank()
        mine = list(range(rank, len(prompts), world))
        own = outputs([prompts[i] for i in mine], [step_lists[i] for i in mine]) if mine else []
        parts: list = [None] * world
        dist.all_gather_object(parts, [o.detach().cpu() for o in own])
        dev = own[0].device if own else torch.device("cpu")
        out: list = [None] * len(prompts)
        for r, part in enumerate(parts):
            for i, o in zip(range(r, len(prompts), world), part):
                out[i] = o.to(dev)
        for i, o in zip(mine, own):  # this rank's own outputs keep their graph
            out[i] = o
        return out

    def split_update(batch) -> dict:
        optim = prm.optim
        real_step = optim.step

        def step() -> dict:  # between backward and the optimiser step: sum the ranks' gradients
            all_reduce_gradients(optim.params())
            return real_step()

        optim.step, split[0] = step, True
        try:
            return update(batch)
        finally:
            optim.step = real_step
            split[0] = False

    prm.outputs, prm.update, prm._dp_rank = split_outputs, split_update, True


class _DataParallelPRMTrainer:
    """Mixin put before `PRMTrainer` by `data_parallel_prm`: rank 0 collects, every rank updates."""

    def collect(self, step: int):
        payload: list = [super().collect(step) if dist.get_rank() == 0 else None]
        dist.broadcast_object_list(payload, src=0)
        return payload[0]


def _mix(obj: Any, mixin: type) -> None:
    if not isinstance(obj, mixin):
        cls = type(obj)
        obj.__class__ = type(f"DataParallel{cls.__name__}", (mixin, cls), {})


def data_parallel_prm(obj: Any) -> Any:
    """``obj`` (a `PRMTrainer` or a PRM) made a data-parallel rank of the default process group
    (in place; returned). Give only rank 0 a ``run_dir`` / logger."""
    if not dist.is_initialized():
        raise RuntimeError("data_parallel_prm needs torch.distributed initialised first: "
                           "dist.init_process_group('gloo' (CPU) or 'nccl' (GPU), rank=..., world_size=...), "
                           "or run the ranks with prmgym.agents.data_parallel.RayDataParallel(..., wrap=data_parallel_prm)")
    prm = getattr(obj, "prm", obj)
    if prm.kind not in KINDS:
        raise ValueError(f"data_parallel_prm: the {prm.kind} PRM's update is not data-parallel; kinds: {', '.join(KINDS)}")
    if prm.optim.scaler is not None:
        raise ValueError("data_parallel_prm: fp16 loss scaling is not supported; use dtype fp32 or bf16")
    _split_prm(prm)
    if prm is not obj:
        _mix(obj, _DataParallelPRMTrainer)
    return obj


__all__ = ["data_parallel_prm", "KINDS"]
