"""Gradient all-reduce for data-parallel ranks of a ``torch.distributed`` process group, shared by
the GRPO (`prmgym.agents.data_parallel`) and PRM (`prmgym.rewards.data_parallel`) updates."""

from __future__ import annotations

from typing import Sequence

import torch
import torch.distributed as dist


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


__all__ = ["all_reduce_gradients"]
