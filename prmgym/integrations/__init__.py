"""Bridges to other RL libraries.

* `prmgym.integrations.sb3` — stable-baselines3: `TokenEnv` (a token-level Gymnasium view of
  any `ReasoningEnv`, one token per action) and `LMActorCriticPolicy` (an SB3 actor-critic
  whose action logits are a Hugging Face causal LM's next-token logits). Needs the ``sb3``
  extra: ``pip install 'prmgym[sb3]'``.

This package may import `prmgym.envs`, `prmgym.models` and `prmgym.rewards`, never
`prmgym.agents`.
"""
