"""Process reward models: the interface, the learned ones (AIRL, rePIRL, value model) and the
baselines (ORM, Monte-Carlo PRM, implicit PRM). See docs/rewards.md.

>>> from prmgym.models import tiny
>>> from prmgym.rewards import AIRLPRM
>>> prm = AIRLPRM.from_backbone(tiny.random_tiny_policy(seed=0))
>>> [[a, b]] = prm.score_steps(["Compute 2 + 3 * 4."], [["3 * 4 = 12", "2 + 12 = 14"]])
>>> 0.0 <= a <= 1.0 and prm.tokens_scored > 0
True

``REWARDS`` maps the ``reward:`` name of a `prmgym train` config to the factory of a dense
step-reward provider for the GRPO trainer (`prmgym.rewards.rl`).
"""

from prmgym.rewards.airl import AIRLPRM
from prmgym.rewards.base import AGGREGATIONS, ProcessRewardModel, aggregate
from prmgym.rewards.baselines import MCPRM, ORMPRM
from prmgym.rewards.implicit import ImplicitPRM
from prmgym.rewards.repirl import RePIRLPRM
from prmgym.rewards.scalar import PRM_CLASSES, MissingClassError, PRMBatch, PRMOptions, ScalarHeadPRM, load_prm
from prmgym.rewards.value import ValueModel, ValueTarget, load_value_targets



def __getattr__(name: str):
    """``KINDS``: every registered PRM kind, read from the registry (`PRM_CLASSES`) when asked,
    so a kind defined after this import is listed too (docs/rewards.md "Adding a PRM kind")."""
    if name == "KINDS":
        return tuple(PRM_CLASSES)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _airl_provider(policy, config=None, **kw):
    """``reward: airl``: `prmgym.rewards.rl.AIRLRewardProvider.from_config(policy, config)`."""
    from prmgym.rewards.rl import AIRLRewardProvider

    return AIRLRewardProvider.from_config(policy, config, **kw)


def _repirl_provider(policy, config=None, **kw):
    """``reward: repirl``: `prmgym.rewards.rl.RePIRLRewardProvider.from_config(policy, config)`."""
    from prmgym.rewards.rl import RePIRLRewardProvider

    return RePIRLRewardProvider.from_config(policy, config, **kw)


#: ``reward:`` name in a `prmgym train` config -> factory of the dense reward provider
REWARDS = {"airl": _airl_provider, "repirl": _repirl_provider}

__all__ = [
    "AGGREGATIONS", "AIRLPRM", "ImplicitPRM", "KINDS", "MCPRM", "MissingClassError", "ORMPRM", "PRMBatch",
    "PRMOptions", "PRM_CLASSES",
    "ProcessRewardModel", "REWARDS", "RePIRLPRM", "ScalarHeadPRM", "ValueModel", "ValueTarget",
    "aggregate", "load_prm", "load_value_targets",
]
