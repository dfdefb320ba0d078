"""Sandboxes that run untrusted code for outcome rewards.

``Job`` / ``ExecResult`` / ``Sandbox`` are the contract (``base.py``); ``LocalSandbox`` is the
embedded default (Linux; see ``local.py``); ``DockerSandbox`` lives in ``prmgym.sandbox.docker``.
The in-sandbox harness (``harness.py``) is standard-library only and shared by both backends.
No torch and no other prmgym module is imported here.
"""

from prmgym.sandbox.base import STATUSES, ExecResult, Job, Sandbox
from prmgym.sandbox.local import LocalSandbox, SandboxInfraError

__all__ = ["STATUSES", "ExecResult", "Job", "Sandbox", "LocalSandbox", "SandboxInfraError"]
