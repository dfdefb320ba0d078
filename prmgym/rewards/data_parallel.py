"""Data-parallel PRM updates over the ranks of a ``torch.distributed`` process group (gloo on CPU,
NCCL on GPUs): `data_parallel_prm(trainer)` for a `prmgym.rewards.train.PRMTrainer` (offline
``train-prm``), or `data_parallel_prm(prm)` for a bare PRM (the online AIRL / rePIRL reward of a
data-parallel GRPO trainer, `prmgym.agents.data_parallel`).

A learner's loss normalises over its whole batch (class-balanced means, AIRL's expert and policy
halves, rePIRL's importance weights), so the batch is not cut into independent micro-batches.
Instead, in an update each rank runs the per-trace forward pass of its share of the traces
(trace i on rank ``i % K``: ``outputs`` for the head kinds, ``log_ratios`` for the implicit PRM),
the ranks exchange those results (``all_gather``), and every rank computes the same loss on the
whole batch, in which only its own results carry a gradient. Summing the ranks' gradients (one
``all_reduce``) then gives the single-process gradient of the batch (tests/test_ray_dp.py checks
K = 2 against one process to 1e-5 for every kind), and the identical optimiser step keeps the
weights equal on every rank. In a `PRMTrainer`, rank 0 collects each update's batch and
broadcasts it.

Kinds: those in `FORWARD` (every built-in kind; their losses read the model only through that
method); a kind registered elsewhere is refused. Evaluation, scoring and saving are not split
(call them on rank 0 only, or on all).

``prmgym train-prm ... --set distributed.backend=ray --set distributed.train_workers=K``
(`with_train_workers`) makes the command's trainer rank 0 and starts K - 1 Ray actor ranks, each
given a copy of the PRM, the policy and the recipe through the object store.
"""

from __future__ import annotations

import functools
import os
import tempfile
from typing import Any

import torch
import torch.distributed as dist

from prmgym.cluster import pack_dir, unpack_dir
from prmgym.models.distributed import all_reduce_gradients

#: kind -> the per-trace forward method its loss reads the model through (split over the ranks)
FORWARD = {"airl": "forward_all", "orm": "outputs", "mc": "outputs", "value": "outputs", "repirl": "outputs",
           "implicit": "log_ratios"}
KINDS = tuple(FORWARD)


def _split_prm(prm: Any) -> None:
    """Patch ``prm``'s forward (`FORWARD`; split over the ranks inside an update only) and
    ``update`` (on the instance: a PRM's class cannot be swapped for a subclass, its ABC layout
    forbids ``__class__`` assignment)."""
    if getattr(prm, "_dp_rank", False):
        return
    name = FORWARD[prm.kind]
    forward, update, split = getattr(prm, name), prm.update, [False]

    def split_forward(prompts, step_lists) -> list[torch.Tensor]:
        if not split[0]:
            return forward(prompts, step_lists)
        world, rank = dist.get_world_size(), dist.get_rank()
        mine = list(range(rank, len(prompts), world))
        own = forward([prompts[i] for i in mine], [step_lists[i] for i in mine]) if mine else []
        parts: list = [None] * world
        dist.all_gather_object(parts, [o.detach().cpu() for o in own])
        dev = own[0].device if own else torch.device("cpu")
        out: list = [None] * len(prompts)
        for r, part in enumerate(parts):
            for i, o in zip(range(r, len(prompts), world), part):
                out[i] = o.to(dev)
        for i, o in zip(mine, own):  # this rank's own results keep their graph
            out[i] = o
        return out

    def split_update(batch) -> dict:
        optim = prm.optim
        real_step, real_backward = optim.step, optim.backward

        def backward(loss: torch.Tensor) -> None:  # a rank given no trace (a batch smaller than K) adds zeros
            if loss.requires_grad:
                real_backward(loss)

        def step() -> dict:  # between backward and the optimiser step: sum the ranks' gradients
            all_reduce_gradients(optim.params())
            return real_step()

        optim.step, optim.backward, split[0] = step, backward, True
        try:
            return update(batch)
        finally:
            optim.step, optim.backward = real_step, real_backward
            split[0] = False

    setattr(prm, name, split_forward)
    prm.update, prm._dp_rank = split_update, True


def check_prm(prm: Any, where: str = "data_parallel_prm") -> None:
    """Raise ValueError, naming the fix, when ``prm``'s update cannot run data-parallel."""
    kind = getattr(prm, "kind", None)
    if kind not in FORWARD:
        raise ValueError(f"{where}: the update of {kind or type(prm).__name__!r} is not data-parallel (its loss is "
                         f"not known to read the model through one per-trace forward); kinds: {', '.join(KINDS)}")
    if prm.optim.scaler is not None:
        raise ValueError(f"{where}: fp16 loss scaling is not supported; use dtype fp32 or bf16")


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
    check_prm(prm)
    _split_prm(prm)
    if prm is not obj:
        _mix(obj, _DataParallelPRMTrainer)
    return obj


def check_section(section: dict, kind: str) -> Any:
    """The ``distributed:`` section of a train-prm run, typed; `ConfigError` naming the fix."""
    from prmgym.cluster import DistributedConfig
    from prmgym.config import ConfigError, from_dict

    cfg = from_dict(DistributedConfig, section, where="distributed")
    extra = [k for k in ("sandbox_workers", "rollout_workers") if getattr(cfg, k)]
    if extra:
        raise ConfigError(f"distributed.{extra[0]} does not apply to train-prm (only train_workers); drop it")
    if cfg.train_workers > 1 and kind not in KINDS:
        raise ConfigError(f"distributed.train_workers: the {kind} PRM's update is not data-parallel; kinds: "
                          f"{', '.join(KINDS)} (or drop train_workers)")
    return cfg


def prm_state(prm: Any) -> dict:
    """``prm`` as it is saved (weights, options, optimiser state, counters), in memory: what
    `set_prm_state` gives another rank's PRM of the same kind."""
    with tempfile.TemporaryDirectory(prefix="prmgym-prm-state-") as tmp:
        prm.save(tmp)
        return pack_dir(tmp)


def set_prm_state(prm: Any, state: dict) -> None:
    """Load `prm_state`'s copy into ``prm`` in place (as a trainer's ``load`` does on resume)."""
    with tempfile.TemporaryDirectory(prefix="prmgym-prm-state-") as tmp:
        prm.load(unpack_dir(state, tmp))


def _build_rank(payload: Any, rank: int) -> Any:
    """Rank ``rank``'s trainer (in its Ray actor) from rank 0's saved PRM (with its optimiser
    state), saved policy and recipe."""
    import ray

    import prmgym  # noqa: F401  (registers the envs)
    from prmgym.config import import_modules
    from prmgym.envs import make
    from prmgym.models import TransformersPolicy
    from prmgym.rewards.scalar import load_prm
    from prmgym.rewards.train import OfflinePRMTrainer

    p = ray.get(payload)
    import_modules(p["imports"], where="imports:")
    root = tempfile.mkdtemp(prefix="prmgym-prm-rank-")
    policy = TransformersPolicy.from_pretrained(unpack_dir(p["policy"], os.path.join(root, "policy")),
                                                device=p["device"], prompt_format=p["prompt_format"])
    prm = load_prm(unpack_dir(p["prm"], os.path.join(root, "prm")), resume=True, **p["knobs"])
    env_fn = functools.partial(make, p["env"], **{"split": "train", **p["env_kwargs"]}) if p["env"] else None
    return OfflinePRMTrainer(prm, policy, env_fn, p["config"], targets=p["targets"])


def with_train_workers(trainer: Any, run: Any) -> Any:
    """``trainer`` (an `OfflinePRMTrainer`) made rank 0 of ``run.distributed.train_workers`` ranks
    when that is more than one, else unchanged (``run``: a `TrainPRMRun`)."""
    cfg = check_section(run.distributed or {}, run.kind)
    if not (cfg.enabled and cfg.train_workers > 1):
        return trainer
    from prmgym.cluster import connect_config
    from prmgym.models.distributed import ray_ranks

    ray = connect_config(cfg)
    device = next(trainer.prm.net.parameters()).device
    with tempfile.TemporaryDirectory(prefix="prmgym-policy-ship-") as tmp:
        policy = pack_dir(trainer.policy.save(tmp))
    payload = ray.put({"policy": policy, "prm": prm_state(trainer.prm),  # with its optimiser state: a resumed run's too
                       "device": str(device), "prompt_format": run.prompt_format,
                       "knobs": {"dtype": run.prm.get("dtype", run.dtype), "device": str(device)},
                       "env": run.env, "env_kwargs": dict(run.env_kwargs), "imports": list(run.imports),
                       "config": trainer.config, "targets": trainer.targets})
    cuda = device.type == "cuda"
    return ray_ranks(trainer, functools.partial(_build_rank, payload), cfg.train_workers, wrap=data_parallel_prm,
                     backend="nccl" if cuda else "gloo", num_gpus=1.0 if cuda else 0.0)


__all__ = ["data_parallel_prm", "check_prm", "FORWARD", "KINDS", "check_section", "prm_state", "set_prm_state",
           "with_train_workers"]
