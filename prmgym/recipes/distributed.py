"""The ``distributed:`` section of a run config put to work (`prmgym.cluster.DistributedConfig`).

With ``backend: ray`` and ``sandbox_workers: M``, the run's code envs judge programs on a
`RaySandbox` of M actors per node of the Ray cluster at ``address`` (a local Ray without one)
instead of the in-process sandbox; verdicts are the same (tests/test_ray.py).
"""

from __future__ import annotations

import inspect
from typing import Any

from prmgym.cluster import DistributedConfig, connect
from prmgym.config import ConfigError, from_dict


def distributed_config(section: dict) -> DistributedConfig:
    """The typed section; a bad key or value is a `ConfigError` naming ``distributed.KEY``."""
    return from_dict(DistributedConfig, section, where="distributed")


def takes_sandbox(env_id: str) -> bool:
    """Whether the registered env ``env_id`` is made with a ``sandbox=`` keyword (a code env)."""
    import gymnasium as gym

    entry = gym.registry[env_id].entry_point
    if isinstance(entry, str):
        module, _, name = entry.partition(":")
        entry = getattr(__import__(module, fromlist=[name]), name)
    try:
        return "sandbox" in inspect.signature(entry).parameters
    except (TypeError, ValueError):
        return False


def with_ray_sandbox(section: dict, env_id: str, env_kwargs: dict) -> dict:
    """``env_kwargs`` with ``sandbox=`` a `RaySandbox` when the section asks for sandbox workers,
    else unchanged. Joins (or starts) Ray first; errors name the fix."""
    cfg = distributed_config(section)
    if not (cfg.enabled and cfg.sandbox_workers):
        return env_kwargs
    if not takes_sandbox(env_id):
        raise ConfigError(f"distributed.sandbox_workers: {env_id} runs no code (it takes no sandbox=); drop "
                          "sandbox_workers, or use a code env (prmgym/ProgramSynthesis-v0, prmgym/HumanEval-v0, Jsonl)")
    if "sandbox" in env_kwargs:
        raise ConfigError("env_kwargs.sandbox and distributed.sandbox_workers both choose the sandbox; keep one")
    try:
        connect(cfg.address, num_cpus=cfg.num_cpus)
    except (ImportError, ConnectionError, ValueError) as e:
        raise ConfigError(f"distributed: {e}") from None
    from prmgym.sandbox.ray_pool import RaySandbox

    box: Any = RaySandbox(workers_per_node=cfg.sandbox_workers)
    return {**env_kwargs, "sandbox": box}


__all__ = ["distributed_config", "takes_sandbox", "with_ray_sandbox"]
