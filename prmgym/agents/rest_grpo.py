"""ReST-GRPO (ReST-RL, Zhoubian et al. 2025): GRPO on prompts whose rewards vary, plus
partial-state prompts cut from the best solutions. See docs/algorithms.md, "ReST-GRPO".

Each step:

1. roll out ``num_generations`` episodes for each fresh prompt (as GRPO);
2. drop every group whose reward standard deviation (population, over non-masked
   episodes) is below ``sigma0`` -- they would carry (almost) no signal;
3. for each kept group whose best episode has reward >= ``best_reward_threshold``, take that
   episode's steps s_1..s_n and draw ``ceil(prefix_fraction * n)`` prefix lengths
   i in {1, ..., n-1} *with replacement*, with probability proportional to ``prefix_alpha**i``
   (earlier prefixes favoured). Each draw is a new prompt in the partial state
   "task prompt + s_1..s_i" (`Prompt.prefix`): the prefix is observation, not trained tokens,
   and the verifier judges the whole trace. (i = 0 is the original prompt, already rolled
   out; i = n leaves nothing to generate.) At most ``max_partial_prompts`` per step;
4. roll the partial-state prompts out (``num_generations`` each), filter them by ``sigma0``
   like any other group, and run the GRPO update on all kept groups.

Logged on top of GRPO's metrics: ``rest/filtered_frac`` (fresh groups dropped),
``rest/reward_spread`` (mean group std of fresh groups), ``rest/partial_prompts``,
``rest/partial_reward_mean``, ``rest/partial_filtered_frac``, ``rest/train_groups``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from prmgym.agents.advantages import group_std
from prmgym.agents.grpo import GRPOConfig, GRPOTrainer, _f
from prmgym.agents.rollout import Prompt, Trajectory


@dataclass
class ReSTGRPOConfig(GRPOConfig):
    """GRPO settings plus ReST-GRPO's filter and partial-state sampling."""

    sigma0: float = _f(0.05, "drop a group from the update if its reward std is below this")
    best_reward_threshold: float = _f(0.9, "a group's best episode spawns partial states if its reward >= this")
    prefix_alpha: float = _f(0.95, "prefix i is drawn with weight prefix_alpha**i (earlier prefixes favoured)")
    prefix_fraction: float = _f(0.5, "draw ceil(prefix_fraction * #steps) prefixes per best solution")
    max_partial_prompts: int | None = _f(None, "cap on partial-state prompts per step; None = prompts_per_step")

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.sigma0 < 0:
            raise ValueError(f"sigma0 must be >= 0 (0 keeps every group with any spread), got {self.sigma0}")
        if not 0 < self.prefix_alpha <= 1:
            raise ValueError(f"prefix_alpha must be in (0, 1] (ReST-RL uses 0.95), got {self.prefix_alpha}")
        if not 0 < self.prefix_fraction <= 1:
            raise ValueError(f"prefix_fraction must be in (0, 1] (ReST-RL uses 0.5), got {self.prefix_fraction}")
        if self.max_partial_prompts is not None and self.max_partial_prompts < 0:
            raise ValueError(f"max_partial_prompts must be >= 0 or null, got {self.max_partial_prompts}")

    @property
    def partial_cap(self) -> int:
        return self.prompts_per_step if self.max_partial_prompts is None else self.max_partial_prompts


class ReSTGRPOTrainer(GRPOTrainer):
    """`GRPOTrainer` with ReST-GRPO's group filter and partial-state prompts."""

    algorithm = "rest_grpo"
    config: ReSTGRPOConfig

    def __init__(self, policy, env, config: ReSTGRPOConfig | None = None, **kw) -> None:
        if config is not None and not isinstance(config, ReSTGRPOConfig):
            raise TypeError("ReSTGRPOTrainer needs a ReSTGRPOConfig (it adds sigma0, prefix_alpha, ...)")
        super().__init__(policy, env, config, **kw)

    @staticmethod
    def _default_config() -> ReSTGRPOConfig:
        return ReSTGRPOConfig()

    # ------------------------------------------------------------------ the two additions
    def filter_groups(self, trajs: list[Trajectory]) -> tuple[list[list[Trajectory]], list[float]]:
        """Split into groups; return the groups with std >= sigma0, and every group's std."""
        G = self.config.num_generations
        groups = [trajs[g * G:(g + 1) * G] for g in range(len(trajs) // G)]
        stds = [group_std([t.reward for t in grp if not t.masked]) for grp in groups]
        kept = [grp for grp, s in zip(groups, stds) if s >= self.config.sigma0]
        return kept, stds

    def partial_prompts(self, kept: list[list[Trajectory]]) -> list[Prompt]:
        """Prefixes of each kept group's best solution (reward >= threshold), drawn with
        replacement with weights alpha^i; at most ``partial_cap`` in total."""
        cfg = self.config
        out: list[Prompt] = []
        for grp in kept:
            valid = [t for t in grp if not t.masked]
            if not valid:
                continue
            best = max(valid, key=lambda t: t.reward)
            steps = best.all_steps
            n = len(steps)
            if best.reward < cfg.best_reward_threshold or n < 2:
                continue
            lengths = np.arange(1, n)  # i in 1..n-1
            w = cfg.prefix_alpha ** lengths.astype(np.float64)
            draws = self.rng.choice(lengths, size=math.ceil(cfg.prefix_fraction * n), replace=True, p=w / w.sum())
            out += [Prompt(best.task, tuple(steps[: int(i)])) for i in draws]
        return out[: cfg.partial_cap]

    def select_groups(self, trajs: list[Trajectory]) -> tuple[list[Trajectory], dict]:
        kept, stds = self.filter_groups(trajs)
        partial = self.partial_prompts(kept)
        info = {
            "rest/filtered_frac": 1.0 - len(kept) / max(1, len(stds)),
            "rest/reward_spread": float(np.mean(stds)) if stds else 0.0,
            "rest/partial_prompts": float(len(partial)),
        }
        train = [t for grp in kept for t in grp]
        if partial:
            ptrajs, pstats = self.rollout(partial)
            pkept, pstds = self.filter_groups(ptrajs)
            train += [t for grp in pkept for t in grp]
            info["rest/partial_reward_mean"] = float(np.mean([t.reward for t in ptrajs if not t.masked] or [0.0]))
            info["rest/partial_filtered_frac"] = 1.0 - len(pkept) / max(1, len(pstds))
            info["budget/generated_partial"] = float(pstats.get("generated", 0))
        info["rest/train_groups"] = float(len(train) // self.config.num_generations)
        return train, info
