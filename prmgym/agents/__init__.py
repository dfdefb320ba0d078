"""Trainers that learn by stepping the reasoning environments: GRPO and ReST-GRPO (and SFT).

>>> from prmgym.agents import GRPOConfig
>>> GRPOConfig(num_generations=4, batch_size=16).prompts_per_step
4

See docs/agents.md for the algorithms, the logged metrics and the ``prmgym train`` command.
"""

from prmgym.agents.common import Callback, FunctionCallback, NonFiniteLossError
from prmgym.agents.grpo import GRPOConfig, GRPOTrainer
from prmgym.agents.rest_grpo import ReSTGRPOConfig, ReSTGRPOTrainer
from prmgym.agents.rollout import Prompt, RolloutCollector, Trajectory

__all__ = [
    "Callback", "FunctionCallback", "GRPOConfig", "GRPOTrainer", "NonFiniteLossError", "Prompt",
    "ReSTGRPOConfig", "ReSTGRPOTrainer", "RolloutCollector", "Trajectory",
]


def __getattr__(name):  # the SFT trainer lives in prmgym.agents.sft; import it on demand
    if name in ("SFTTrainer", "SFTConfig"):
        from prmgym.agents import sft

        return getattr(sft, name)
    raise AttributeError(f"module 'prmgym.agents' has no attribute {name!r}")
