"""prmgym: LLM reasoning as Gymnasium environments, RL agents and test-time search that
share one learned process reward, and sandboxes that run untrusted code.

Importing the package registers its environments with Gymnasium (``gym.make("prmgym/...")``).
Only ``envs`` and ``sandbox`` are imported here, so the import does not pay for torch.
"""

__version__ = "0.1.0"

from prmgym.envs import registration as _registration  # noqa: F401  (registers envs)
