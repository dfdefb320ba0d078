"""Offline PRM training from a fixed policy and an environment (`prmgym train-prm`).

Every step draws ``tasks_per_step`` training tasks (deterministically from the step index,
so a resumed run sees the same data), rolls the policy out ``rollouts_per_task`` times per
task, and builds the learner's batch from the *same* data for every kind:

| kind       | positives / labels                                                     |
| ---        | ---                                                                    |
| `airl`     | expert solutions + verified-correct rollouts (label 1) vs other rollouts (0); log π from the policy. With ``airl_negatives="prefixes"``: expert solutions (1) vs ``proposals_per_prefix`` policy steps sampled at every expert prefix (0, the prefix as context); ``"both"``: the union |
| `repirl`   | same as AIRL with ``airl_negatives="rollouts"``                        |
| `orm`      | expert solutions (1) + rollouts labelled by correctness                |
| `implicit` | same as ORM                                                            |
| `mc`       | expert steps labelled 1; rollout steps labelled by ``mc_rollouts`` completions per prefix (hard/soft) |
| `value`    | no environment: batches of a value-targets JSONL file (docs/rewards.md)  |

Checkpoints: ``run_dir/checkpoint/`` (a PRM directory with optimiser state), every
``save_every`` steps and at the end; the final PRM is saved to ``run_dir`` itself, so
``load_prm(run_dir)`` works. Logs: the one `prmgym.logger.Logger` (stdout, JSONL, TensorBoard).
"""

from __future__ import annotations

import os
import random
import time
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from prmgym.config import help_field
from prmgym.rewards.data import EnvPool, expert_traces, mc_step_labels, prefix_proposals, rollout, traces_to_batch
from prmgym.rewards.scalar import PRMBatch, PRM_CLASSES, ScalarHeadPRM

CHECKPOINT = "checkpoint"
AIRL_NEGATIVES = ("rollouts", "prefixes", "both")
# Offline learning rates where the learner's own default (1e-4) is not the measured best. AIRL:
# the body is a copy of the policy and its LM log-prob is the prior; at 1e-4 its updates
# lowered the within-prefix AUC of the policy's own proposals below the untrained prior, at
# 1e-5 they raised it (figures in docs/rewards.md).
OFFLINE_LR = {"airl": 1e-5}


def offline_lr(kind: str, lr: float | None = None) -> dict:
    """The ``lr`` option for an offline PRM of ``kind``: ``lr`` if given, else `OFFLINE_LR`'s
    entry, else nothing (the learner's default)."""
    if lr is not None:
        return {"lr": float(lr)}
    return {"lr": OFFLINE_LR[kind]} if kind in OFFLINE_LR else {}


_f = help_field


@dataclass
class PRMTrainConfig:
    """Offline PRM training settings."""

    kind: str = _f("airl", "airl | repirl | orm | mc | value | implicit")
    steps: int = _f(100, "PRM updates")
    tasks_per_step: int = _f(8, "training tasks per update")
    rollouts_per_task: int = _f(4, "policy rollouts per task")
    use_expert: bool = _f(True, "add the tasks' expert solutions as positives")
    airl_negatives: str = _f("rollouts", "AIRL only: its policy steps: rollouts (whole policy traces) | prefixes "
                             "(steps proposed at expert prefixes: the expert's states) | both")
    proposals_per_prefix: int = _f(4, "AIRL with prefixes/both: policy steps sampled per expert prefix")
    mc_rollouts: int = _f(4, "MC-PRM: completions per step prefix (Math-Shepherd used 8)")
    mc_labels: str = _f("soft", "MC-PRM: hard (any correct) | soft (fraction correct)")
    temperature: float = _f(1.0, "rollout sampling temperature")
    max_new_tokens: int = _f(32, "token cap per step")
    max_steps: int = _f(12, "step cap per rollout")
    batch_size: int = _f(32, "value model: targets per update")
    seed: int = _f(0, "data and initialisation seed")
    save_every: int = _f(0, "checkpoint every K updates (0 = only at the end)")
    log_every: int = _f(1, "log every K updates")

    def __post_init__(self) -> None:
        if self.kind not in PRM_CLASSES:
            raise ValueError(f"unknown PRM kind {self.kind!r}; choose one of {', '.join(sorted(PRM_CLASSES))}")
        if self.airl_negatives not in AIRL_NEGATIVES:
            raise ValueError(f"airl_negatives must be one of {', '.join(AIRL_NEGATIVES)}, got {self.airl_negatives!r}")
        if self.kind == "airl" and self.airl_negatives != "rollouts" and not self.use_expert:
            raise ValueError(f"airl_negatives={self.airl_negatives!r} samples at expert prefixes: it needs use_expert=True "
                             "(or airl_negatives='rollouts')")
        for name in ("steps", "tasks_per_step", "rollouts_per_task", "mc_rollouts", "max_new_tokens", "max_steps", "batch_size",
                     "log_every", "proposals_per_prefix"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.mc_labels not in ("hard", "soft"):
            raise ValueError(f"mc_labels must be hard or soft, got {self.mc_labels!r}")


class OfflinePRMTrainer:
    """Trains ``prm`` for `PRMTrainConfig.steps` updates; see the module docstring.

    Args:
        prm: a `ScalarHeadPRM` of the configured kind.
        policy: the (fixed) policy that produces rollouts and log-probs (unused for ``value``).
        env_fn: builds a training environment (unused for ``value``).
        config: `PRMTrainConfig`.
        targets: value kind only: a list of `ValueTarget`.
        run_dir: checkpoints and the final PRM; logger: a `prmgym.logger.Logger` or None.
    """

    def __init__(self, prm: ScalarHeadPRM, policy: Any, env_fn: Callable[[], Any] | None, config: PRMTrainConfig,
                 targets: list | None = None, run_dir: str | None = None, logger: Any = None) -> None:
        if prm.kind != config.kind:
            raise ValueError(f"config.kind is {config.kind!r} but the PRM is a {prm.kind!r}")
        if config.kind == "value" and not targets:
            raise ValueError("the value model trains from a targets file: pass targets (prmgym train-prm --targets FILE)")
        if config.kind != "value" and (env_fn is None or policy is None):
            raise ValueError(f"kind {config.kind!r} needs a policy and an environment")
        self.prm, self.policy, self.config = prm, policy, config
        self.pool = EnvPool(env_fn) if env_fn is not None else None
        self.targets = targets
        self.run_dir = run_dir
        self.logger = logger
        self.stats = {"rollout_traces": 0, "mc_rollouts": 0}

    @property
    def num_steps(self) -> int:
        return self.prm.updates

    def _tasks(self, step: int) -> list:
        u = self.pool.get(1)[0].unwrapped
        return list(u.source.tasks("train", self.config.tasks_per_step, seed=self.config.seed * 1_000_003 + step))

    def collect(self, step: int) -> PRMBatch:
        """The learner's batch for update ``step`` (deterministic in ``step``)."""
        cfg = self.config
        if cfg.kind == "value":
            from prmgym.rewards.value import targets_to_batch

            rng = random.Random(cfg.seed * 7919 + step // max(1, len(self.targets) // cfg.batch_size))
            order = list(range(len(self.targets)))
            rng.shuffle(order)
            k = step % max(1, len(self.targets) // cfg.batch_size)
            chosen = [self.targets[i] for i in order[k * cfg.batch_size : (k + 1) * cfg.batch_size]] or [self.targets[i] for i in order]
            return targets_to_batch(chosen, weight_by_visits=getattr(self.prm, "weight_by_visits", False))
        tasks = self._tasks(step)
        delim = self.pool.delimiter
        experts = expert_traces(tasks) if cfg.use_expert else []
        at_prefixes = cfg.kind == "airl" and cfg.airl_negatives != "rollouts"
        if at_prefixes and not experts:
            raise ValueError(f"airl_negatives={cfg.airl_negatives!r} samples at the prefixes of expert solutions, but none of "
                             f"this update's {len(tasks)} training tasks has one (Task.expert_steps); use "
                             "airl_negatives='rollouts' for a task source without expert solutions")
        rolls = []
        if not (at_prefixes and cfg.airl_negatives == "prefixes"):
            rolls = rollout(self.pool, self.policy, tasks, n=cfg.rollouts_per_task, seed=cfg.seed * 10_007 + step,
                            temperature=cfg.temperature, max_new_tokens=cfg.max_new_tokens, max_steps=cfg.max_steps)
            rolls = [r for r in rolls if r.steps]
            self.stats["rollout_traces"] += len(rolls)
        if cfg.kind in ("airl", "repirl"):
            pos = experts + [r for r in rolls if r.correct]
            neg = [r for r in rolls if not r.correct]
            if at_prefixes:  # policy steps proposed at the expert's prefixes, the prefix as context
                props = prefix_proposals(self.policy, experts, k=cfg.proposals_per_prefix, delimiter=delim,
                                         seed=cfg.seed * 10_007 + step, temperature=cfg.temperature,
                                         max_new_tokens=cfg.max_new_tokens)
                self.stats["prefix_proposals"] = self.stats.get("prefix_proposals", 0) + len(props)
                neg = props + neg
            return traces_to_batch(pos, neg, policy=self.policy, delimiter=delim, context_prefixes=at_prefixes)
        if cfg.kind in ("orm", "implicit"):
            traces = experts + rolls
            return PRMBatch([t.prompt for t in traces], [t.steps for t in traces],
                            labels=[1.0 if t.correct else 0.0 for t in traces])
        if cfg.kind == "mc":
            labels = mc_step_labels(self.pool, self.policy, rolls, n_rollouts=cfg.mc_rollouts, mode=cfg.mc_labels,
                                    seed=cfg.seed * 31 + step, temperature=cfg.temperature,
                                    max_new_tokens=cfg.max_new_tokens, max_steps=cfg.max_steps)
            self.stats["mc_rollouts"] += cfg.mc_rollouts * sum(len(r.steps) for r in rolls)
            traces = experts + rolls
            step_labels = [[1.0] * len(t.steps) for t in experts] + labels
            return PRMBatch([t.prompt for t in traces], [t.steps for t in traces], step_labels=step_labels)
        raise ValueError(f"no offline data recipe for kind {cfg.kind!r}")

    def step(self) -> dict:
        t0 = time.perf_counter()
        batch = self.collect(self.num_steps)
        t1 = time.perf_counter()
        try:
            metrics = self.prm.update(batch)
        except ValueError as e:
            if "needs expert" in str(e) or "needs demonstrations" in str(e):
                # one class missing this step (e.g. every rollout correct): skip, but advance
                self.prm.updates += 1
                metrics = {"skipped": 1.0}
            else:
                raise
        metrics["time/collect_s"] = t1 - t0
        metrics["time/update_s"] = time.perf_counter() - t1
        metrics["traces"] = float(len(batch))
        if batch.labels is not None and self.config.kind != "value":
            n = [len(st) for st in batch.drop_context(batch.step_lists)]  # training steps per trace
            metrics["positive_frac"] = float(sum(k for k, y in zip(n, batch.labels) if y >= 0.5) / max(1, sum(n)))
        return metrics

    def train(self, n_steps: int | None = None) -> list[dict]:
        cfg = self.config
        target = cfg.steps if n_steps is None else self.num_steps + n_steps
        history = []
        while self.num_steps < target:
            m = self.step()
            history.append(m)
            if self.logger is not None and (self.num_steps % cfg.log_every == 0 or self.num_steps == target):
                self.logger.record_dict(m, prefix="prm/")
                self.logger.dump(self.num_steps)
            if self.run_dir and cfg.save_every and self.num_steps % cfg.save_every == 0:
                self.save_checkpoint()
        if self.run_dir:
            self.save_checkpoint()
            self.prm.save(self.run_dir)
        return history

    def save_checkpoint(self) -> str:
        from prmgym.checkpoints import write_checkpoint

        return write_checkpoint(os.path.join(self.run_dir, CHECKPOINT), self.prm.save)

    def close(self) -> None:
        if self.pool is not None:
            self.pool.close()


def build_prm(kind: str, backbone: Any, **options) -> ScalarHeadPRM:
    """A fresh PRM of ``kind`` on ``backbone`` (directory or policy)."""
    import prmgym.rewards  # noqa: F401  (registers every kind)

    if kind not in PRM_CLASSES:
        raise ValueError(f"unknown PRM kind {kind!r}; choose one of {', '.join(sorted(PRM_CLASSES))}")
    return PRM_CLASSES[kind].from_backbone(backbone, **options)
