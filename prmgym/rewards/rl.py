"""Learned PRMs as dense rewards for the GRPO trainer (AIRL-S and rePIRL), trained online.

`prmgym.agents.GRPOTrainer` (``process_reward=...``) calls, every step:

1. ``step_rewards(prompts, step_lists, trajectories)`` before the policy update: one reward
   per step of each trace (the trainer normalises them per group and adds
   ``process_reward_weight`` x the result to the outcome advantage);
2. ``update(trajectories)`` after the policy update: one or more discriminator/PRM updates
   (so discriminator and policy alternate, AIRL-S style);
3. ``save(dir)`` / ``load(dir)`` with its checkpoints.

Positives for the discriminator are the expert solutions of the step's tasks
(``Task.expert_steps``) and the policy's verified-correct rollouts; negatives are the other
rollouts. log π of every trace is recomputed under the *current* policy (after its update).

>>> from prmgym.rewards import REWARDS
>>> sorted(REWARDS)
['airl', 'repirl']
"""

from __future__ import annotations

import os
from typing import Any, Sequence

import numpy as np

from prmgym.rewards.airl import AIRLPRM
from prmgym.rewards.data import Trace, expert_traces, template_of, traces_to_batch
from prmgym.rewards.repirl import RePIRLPRM


def _check_options(cls: type, cfg: dict, provider_keys: set) -> None:
    """A clear error for a ``reward_config`` key that is neither the provider's nor one of
    ``cls.Options``'s fields."""
    from prmgym.config import ConfigError
    from prmgym.rewards.scalar import parse_options

    try:
        parse_options(cls, cfg, "reward_config")
    except ConfigError as e:
        raise ConfigError(f"{e}; the reward provider also takes prm, {', '.join(sorted(provider_keys))}") from None


def _traj_trace(t: Any) -> Trace:
    steps = list(getattr(t, "all_steps", t.steps))
    return Trace(t.task.prompt, steps, task=t.task, correct=bool(getattr(t, "correct", False)),
                 reward=float(getattr(t, "reward", 0.0)))


class _OnlineProvider:
    """Shared logic: build the labelled batch from a trainer step, update, report metrics."""

    prefix = "prm"

    def __init__(self, prm: Any, policy: Any, delimiter: str = "\n", updates_per_step: int = 1,
                 use_expert: bool = True, correct_as_expert: bool = True, reward_clip: float | None = 10.0,
                 expert_tasks: int = 0, env: tuple[str, dict] | None = None, seed: int = 0) -> None:
        if updates_per_step < 1:
            raise ValueError(f"updates_per_step must be >= 1, got {updates_per_step}")
        if expert_tasks < 0:
            raise ValueError(f"expert_tasks must be >= 0, got {expert_tasks}")
        if expert_tasks and env is None:
            raise ValueError(f"expert_tasks={expert_tasks} draws the expert solutions of more training tasks, which needs "
                             "the environment: pass env=(env_id, env_kwargs) (prmgym train and the recipes do)")
        self.expert_tasks, self.env_spec, self.seed = int(expert_tasks), env, int(seed)
        self._source: Any = None
        self.prm = prm
        self.policy = policy
        self.delimiter = delimiter
        self.updates_per_step = int(updates_per_step)
        self.use_expert = bool(use_expert)
        self.correct_as_expert = bool(correct_as_expert)
        self.reward_clip = reward_clip
        self.last_reward_stats: dict = {}

    # ProcessRewardModel-like surface so planners/trainers can also read scores
    def score_steps(self, prompts, step_lists):
        return self.prm.score_steps(prompts, step_lists)

    def _clip(self, rows: list[list[float]]) -> list[list[float]]:
        if self.reward_clip is None:
            return rows
        c = float(self.reward_clip)
        return [[min(c, max(-c, x)) for x in r] for r in rows]

    def _record(self, rows: list[list[float]]) -> None:
        flat = [x for r in rows for x in r]
        self.last_reward_stats = {
            "step_reward_mean": float(np.mean(flat)) if flat else 0.0,
            "step_reward_std": float(np.std(flat)) if flat else 0.0,
        }

    def build_batch(self, trajectories: Sequence[Any]):
        """``(positives, negatives, n_demos)``: the step's ``n_demos`` expert solutions first
        (``use_expert``), then the verified-correct rollouts (``correct_as_expert``); the other
        rollouts are negatives."""
        trajs = [t for t in trajectories if not getattr(t, "masked", False)]
        pos, neg = [], []
        for t in trajs:
            tr = _traj_trace(t)
            (pos if (tr.correct and self.correct_as_expert) else neg).append(tr)
        if self.use_expert:
            seen, tasks = set(), []
            for t in trajs:
                if t.task.id not in seen:
                    seen.add(t.task.id)
                    tasks.append(t.task)
            demos = expert_traces(tasks) + expert_traces(self._expert_only_tasks())
            pos = demos + pos
        for tr in pos + neg:  # recompute log π under the current policy
            tr.step_logprobs = None
        return pos, neg, len(demos) if self.use_expert else 0

    def _expert_only_tasks(self) -> list:
        """``expert_tasks`` training tasks of this update (a seed stream of their own, advanced by the
        PRM's saved update count, so a resumed run draws new ones), whose expert solutions join the
        positives without rollouts."""
        if not (self.expert_tasks and self.use_expert):
            return []
        if self._source is None:
            from prmgym.envs import make

            env_id, kwargs = self.env_spec
            env = make(env_id, **{**dict(kwargs or {}), "split": "train"})
            self._source = env.unwrapped.source
            env.close()
        from prmgym.rewards.train import draw_expert_only_tasks

        return draw_expert_only_tasks(self._source, self.expert_tasks, self.seed, self.prm.updates)

    def update(self, trajectories: Sequence[Any]) -> dict:
        pos, neg, n_demos = self.build_batch(trajectories)
        out = dict(self.last_reward_stats)
        if not pos or not neg:
            out["skipped"] = 1.0
            return out
        batch = traces_to_batch(pos, neg, policy=self.policy, delimiter=self.delimiter, template=template_of(trajectories))
        # AIRL's expert_nll fits the expert solutions, not the policy's correct rollouts (none: no NLL term)
        batch.demonstrations = [i < n_demos for i in range(len(batch))]
        metrics: dict = {}
        for _ in range(self.updates_per_step):
            metrics = self.prm.update(batch)
        out.update(metrics)
        out["skipped"] = 0.0
        out["n_expert_traces"] = float(len(pos))
        out["n_policy_traces"] = float(len(neg))
        return out

    def save(self, path: str | os.PathLike) -> str:
        return self.prm.save(path)

    def load(self, path: str | os.PathLike):
        self.prm.load(path)  # in place
        return self


class AIRLRewardProvider(_OnlineProvider):
    """AIRL-S: dense step reward ``f − log π`` from an `AIRLPRM` updated every trainer step.

    Logged (as ``prm/...`` by the trainer): ``disc_acc``, ``disc_acc_expert``,
    ``disc_acc_policy``, ``D_expert``, ``D_policy``, ``loss``, ``step_reward_mean/std``.
    """

    def step_rewards(self, prompts: Sequence[str], step_lists: Sequence[Sequence[str]], trajectories: Sequence[Any] | None = None) -> list[list[float]]:
        if trajectories is not None:
            from prmgym.rewards.scalar import batch_from_trajectories

            b = batch_from_trajectories(trajectories, self.delimiter)
            if len(b) == len(prompts):
                rows = self.prm.step_rewards(list(prompts), [list(s) for s in step_lists], b.step_logprobs, b.step_ntokens)
                rows = self._clip(rows)
                self._record(rows)
                return rows
        from prmgym.rewards.data import fill_logprobs

        lp, nt = fill_logprobs(self.policy, prompts, step_lists, self.delimiter, template=template_of(trajectories))
        rows = self._clip(self.prm.step_rewards(list(prompts), [list(s) for s in step_lists], lp, nt))
        self._record(rows)
        return rows

    @classmethod
    def from_config(cls, policy: Any, config: dict | None = None, delimiter: str = "\n", env: tuple[str, dict] | None = None,
                    **_: Any) -> "AIRLRewardProvider":
        """Build from a `prmgym train` config's ``reward_config`` mapping.

        Keys: ``prm`` (a saved AIRL PRM directory to start from; default: a fresh head on a
        copy of the policy), the PRM's options (`prmgym.rewards.airl.AIRLOptions`:
        ``learning_rate``, ``gamma``, ``search_score``, ``logpi_scale``, ``train_backbone``, ...)
        and the provider's ``updates_per_step``, ``use_expert``, ``correct_as_expert``,
        ``reward_clip``, ``expert_tasks`` (the expert solutions of that many more training tasks
        join every update's positives; needs ``env``; default 248 with ``env``, as offline AIRL's
        `PRMTrainConfig.expert_tasks`, else 0) and ``seed`` (of those draws).
        """
        cfg = dict(config or {})
        provider_keys = {"updates_per_step", "use_expert", "correct_as_expert", "reward_clip", "expert_tasks", "seed"}
        pk = {k: cfg.pop(k) for k in list(cfg) if k in provider_keys}
        if env is not None:  # as many demonstrations per update as offline AIRL's default
            from prmgym.rewards.train import DEFAULT_EXPERT_TASKS

            pk.setdefault("expert_tasks", DEFAULT_EXPERT_TASKS)
        start = cfg.pop("prm", None)
        _check_options(AIRLPRM, cfg, provider_keys)
        prm = AIRLPRM.load(start, **cfg) if start else AIRLPRM.from_backbone(policy, delimiter=delimiter, **cfg)
        return cls(prm, policy, delimiter=delimiter, env=env, **pk)


class RePIRLRewardProvider(_OnlineProvider):
    """rePIRL: dense step reward r_φ from a `RePIRLPRM` updated every trainer step.

    The maximum-entropy half is the trainer's: use a GRPO config with an entropy bonus if
    the trainer offers one (see docs/rewards.md).
    """

    def step_rewards(self, prompts, step_lists, trajectories=None) -> list[list[float]]:
        rows = self._clip(self.prm.step_rewards(list(prompts), [list(s) for s in step_lists]))
        self._record(rows)
        return rows

    @classmethod
    def from_config(cls, policy: Any, config: dict | None = None, delimiter: str = "\n", env: tuple[str, dict] | None = None,
                    **_: Any) -> "RePIRLRewardProvider":
        """Like `AIRLRewardProvider.from_config`; PRM options `prmgym.rewards.repirl.RePIRLOptions`
        (``learning_rate``, ``logpi_scale``, ``reward_l2``, ...)."""
        cfg = dict(config or {})
        provider_keys = {"updates_per_step", "use_expert", "correct_as_expert", "reward_clip", "expert_tasks", "seed"}
        pk = {k: cfg.pop(k) for k in list(cfg) if k in provider_keys}
        start = cfg.pop("prm", None)
        _check_options(RePIRLPRM, cfg, provider_keys)
        prm = RePIRLPRM.load(start, **cfg) if start else RePIRLPRM.from_backbone(policy, delimiter=delimiter, **cfg)
        return cls(prm, policy, delimiter=delimiter, env=env, **pk)
