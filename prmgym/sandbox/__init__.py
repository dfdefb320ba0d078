"""Sandboxes that run untrusted code for outcome rewards.

``Job`` / ``ExecResult`` / ``Sandbox`` are the contract (``base.py``); ``LocalSandbox`` is the
embedded default (Linux; ``local.py``); ``DockerSandbox`` (``docker.py``) is imported on first
use so that the docker SDK is only loaded when asked for; ``RaySandbox`` (``ray_pool.py``)
spreads jobs over Ray actors, each holding one of those, and imports Ray only when asked for. The in-sandbox harness (the
``harness`` package, shipped as one payload module) is standard-library only and shared by both
backends. No torch and no other prmgym module is imported here.

>>> from prmgym.sandbox import Job, LocalSandbox
>>> with LocalSandbox(workers=1) as sb:
...     sb.run(Job("def f(x):\\n    return x + 1", tests=("assert candidate(1) == 2",), entry_point="f")).status
'passed'
"""

from prmgym.sandbox.base import STATUSES, ExecResult, Job, Sandbox
from prmgym.sandbox.local import LocalSandbox, SandboxInfraError

__all__ = ["STATUSES", "ExecResult", "Job", "Sandbox", "LocalSandbox", "SandboxInfraError", "DockerSandbox", "RaySandbox"]


def __getattr__(name: str):
    if name == "DockerSandbox":
        from prmgym.sandbox.docker import DockerSandbox

        return DockerSandbox
    if name == "RaySandbox":
        from prmgym.sandbox.ray_pool import RaySandbox

        return RaySandbox
    raise AttributeError(f"module 'prmgym.sandbox' has no attribute {name!r}")
