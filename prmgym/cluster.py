"""The ``distributed:`` config section and `connect`, the one way prmgym joins (or starts) Ray.

.. code-block:: yaml

    distributed:
      backend: ray            # none (everything in this process tree) | ray
      address: null           # null: start Ray on this machine; "HOST:6379" / "auto": join a cluster
      sandbox_workers: 2      # RaySandbox actors per node for code verdicts (0: in-process sandbox)

It is the ``distributed:`` section of a `prmgym train` config (code envs then judge on
`RaySandbox`); ``prmgym search --ray [--address A] --workers N`` takes the same address on the
command line. Rollout workers (`prmgym.agents.ray_rollout`) and data-parallel updates
(`prmgym.agents.data_parallel`) are Python APIs, not started from this section (docs/distributed.md).
This module imports no prmgym subpackage and no torch; Ray is imported only by `connect`.

>>> DistributedConfig(backend="ray", sandbox_workers=2).sandbox_workers
2
>>> DistributedConfig(backend="rey")
Traceback (most recent call last):
...
ValueError: backend must be 'none' or 'ray', got 'rey'
"""

from __future__ import annotations

import socket
from dataclasses import dataclass

from prmgym.config import help_field

RAY_MISSING = "Ray is not installed; install prmgym's Ray extra: pip install -e '.[ray]' (or pip install 'ray>=2.9')"
BACKENDS = ("none", "ray")


@dataclass
class DistributedConfig:
    """Where the parallel parts of a run go. ``backend: none`` keeps everything in-process."""

    backend: str = help_field("none", "none (one machine, in-process) | ray (Ray actors; see docs/distributed.md)")
    address: str | None = help_field(None, "Ray head to join: 'HOST:PORT' (ray start --head prints it), 'auto' "
                                     "(the cluster this machine belongs to) or null (start Ray locally)")
    sandbox_workers: int = help_field(0, "RaySandbox actors per node for code verdicts (0 = in-process sandbox)")
    num_cpus: int | None = help_field(None, "CPUs of a Ray started locally (address null); null = all")

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise ValueError(f"backend must be 'none' or 'ray', got {self.backend!r}")
        if self.sandbox_workers < 0:
            raise ValueError(f"sandbox_workers must be >= 0, got {self.sandbox_workers}")
        if self.backend == "none" and (self.sandbox_workers or self.address):
            raise ValueError("sandbox_workers or an address is set but backend is 'none'; "
                             "set distributed.backend: ray to use them")
        if self.num_cpus is not None and self.num_cpus < 1:
            raise ValueError(f"num_cpus must be >= 1 or null, got {self.num_cpus}")

    @property
    def enabled(self) -> bool:
        return self.backend == "ray"


def _host_port(address: str) -> tuple[str, int] | None:
    """``(host, port)`` of a Ray address to probe, or None for addresses Ray resolves itself."""
    rest = address.split("://", 1)[-1]
    if address == "auto" or ":" not in rest:
        return None
    host, _, port = rest.rpartition(":")
    try:
        return host.strip("[]"), int(port)
    except ValueError:
        raise ValueError(f"Ray address {address!r} is not HOST:PORT (e.g. 10.0.0.5:6379)") from None


def probe(address: str, timeout_s: float = 3.0) -> None:
    """Raise ConnectionError, naming the fix, when nothing listens at ``address`` (a TCP probe, so
    a wrong address fails in seconds instead of in Ray's own long retry loop)."""
    target = _host_port(address)
    if target is None:
        return
    try:
        socket.create_connection(target, timeout=timeout_s).close()
    except OSError as e:
        raise ConnectionError(
            f"cannot reach a Ray head at {address} ({e}). Start one there with `ray start --head --port={target[1]}` "
            "and pass the address it prints, or leave distributed.address empty (no --address) to start Ray on this "
            "machine. Ray itself: pip install -e '.[ray]'") from None


def connect(address: str | None = None, *, num_cpus: int | None = None, probe_timeout_s: float = 3.0):
    """The ``ray`` module, initialised: joins ``address`` (probed first) or, with no address,
    starts Ray on this machine. An already initialised Ray is used as it is.

    Errors: ImportError naming ``pip install -e '.[ray]'`` when Ray is missing; ConnectionError
    naming ``ray start --head`` when nothing listens at ``address``."""
    try:
        import ray
    except ImportError:
        raise ImportError(RAY_MISSING) from None
    if ray.is_initialized():
        return ray
    if address:
        probe(address, probe_timeout_s)
        ray.init(address=address, log_to_driver=False)
    else:
        ray.init(num_cpus=num_cpus, include_dashboard=False, log_to_driver=False)
    return ray


__all__ = ["DistributedConfig", "connect", "probe", "RAY_MISSING"]
