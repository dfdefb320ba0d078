"""Offline PRM training from a fixed policy and an environment (`prmgym train-prm`).

Every step draws ``tasks_per_step`` training tasks (deterministically from the step index,
so a resumed run sees the same data) and asks the PRM's class for its batch:
``type(prm).training_batch(PRMData, step)``. Each kind owns its recipe (its module says how it
labels the data); `PRMData` offers the shared pieces (the step's tasks, the tasks' expert
solutions, ``rollouts_per_task`` policy rollouts per task, policy proposals at expert prefixes,
Monte-Carlo step labels, value targets). Adding a kind means writing its class (with
``training_batch``) and importing it in `prmgym.rewards` (docs/rewards.md).

An update whose batch lacks a class its learner contrasts (`MissingClassError`, e.g. every
rollout correct) is skipped and still counted.

Checkpoints: ``run_dir/checkpoint/`` (a PRM directory with optimiser state), every
``save_every`` steps and at the end; the final PRM is saved to ``run_dir`` itself, so
``load_prm(run_dir)`` works. Logs: the one `prmgym.logger.Logger` (stdout, JSONL, TensorBoard).
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, fields
from typing import Any, Callable

from prmgym.config import help_field
from prmgym.rewards.data import EnvPool, expert_traces, mc_step_labels, prefix_proposals, rollout, template_of, traces_to_batch
from prmgym.rewards.scalar import PRM_CLASSES, MissingClassError, PRMBatch, ScalarHeadPRM

#: AIRL's demonstrations per update beyond the update's own tasks (with 8 tasks per update: 256 in all;
#: measured in docs/rewards.md, "AIRL beyond its prior")
DEFAULT_EXPERT_TASKS = 248
def draw_expert_only_tasks(source: Any, n: int, seed: int, step: int) -> list:
    """The ``n`` expert-only training tasks of update ``step`` (`PRMTrainConfig.expert_tasks`, and
    the online providers' ``expert_tasks``): a seed stream of their own."""
    return draw_tasks(source, n, EXPERT_ONLY_SEED + seed * 1_000_003 + step, "expert_tasks")


def draw_tasks(source: Any, n: int, seed: int, what: str) -> list:
    """``n`` training tasks of ``source`` drawn with ``seed``, or all it holds when it holds fewer
    (a source without ``at_most`` fails as it always did, with ``what`` named)."""
    import inspect

    try:
        if "at_most" in inspect.signature(source.tasks).parameters:
            return list(source.tasks("train", n, seed=seed, at_most=True))
        return list(source.tasks("train", n, seed=seed))
    except ValueError as e:
        raise ValueError(f"{what}={n}: {e}; set a smaller {what}") from None


#: seed offset of the expert-only task draws (`PRMTrainConfig.expert_tasks`): far from the training
#: draws (seed * 1_000_003 + step) and from the held-out ones (`prmgym.rewards.heldout.HELDOUT_SEED`)
EXPERT_ONLY_SEED = 2_718_281_828

CHECKPOINT = "checkpoint"
AIRL_NEGATIVES = ("rollouts", "prefixes", "both")


_f = help_field


@dataclass
class PRMTrainConfig:
    """Offline PRM training settings."""

    kind: str = _f("airl", "the PRM kind: a registered kind (prmgym.rewards.KINDS; docs/rewards.md)")
    steps: int = _f(100, "PRM updates")
    tasks_per_step: int = _f(8, "training tasks per update")
    rollouts_per_task: int = _f(4, "policy rollouts per task")
    use_expert: bool = _f(True, "add the tasks' expert solutions as positives")
    airl_negatives: str = _f("rollouts", "AIRL only: its policy steps: rollouts (whole policy traces) | prefixes "
                             "(steps proposed at expert prefixes: the expert's states) | both")
    proposals_per_prefix: int = _f(4, "AIRL with prefixes/both: policy steps sampled per expert prefix")
    expert_tasks: int = _f(DEFAULT_EXPERT_TASKS, "AIRL only: more training tasks per update whose expert solutions "
                           "join the positives (no rollouts are drawn for them: expert data at no generation cost; "
                           "none without use_expert)")
    mc_rollouts: int = _f(4, "MC-PRM: completions per step prefix (Math-Shepherd used 8)")
    mc_labels: str = _f("soft", "MC-PRM: hard (any correct) | soft (fraction correct)")
    temperature: float = _f(1.0, "rollout sampling temperature")
    max_new_tokens: int = _f(32, "token cap per step")
    max_steps: int = _f(12, "step cap per rollout")
    batch_size: int = _f(32, "value model: targets per update")
    seed: int = _f(0, "data and initialisation seed")
    save_every: int = _f(0, "checkpoint every K updates (0 = only at the end)")
    log_every: int = _f(1, "log every K updates")
    eval_every: int = _f(0, "held-out evaluation of the kind's own objective every K updates and before the first "
                            "(prmgym.rewards.heldout; logged as prm/heldout/*): the final PRM is the best one seen. 0 = off")
    patience: int = _f(0, "with eval_every: stop after this many evaluations without a new best (0 = run all steps)")
    min_delta: float = _f(0.0, "with eval_every: the least rise of the held-out score that counts as a new best")
    eval_tasks: int = _f(16, "with eval_every: held-out tasks (training split, seeds disjoint from the training draws)")
    validation: str = _f("", "with eval_every: the held-out metric that picks the kept PRM (prmgym.rewards.heldout."
                             "VALIDATORS, e.g. outcome_min); empty = the kind's own")

    def __post_init__(self) -> None:
        if self.kind not in PRM_CLASSES:
            raise ValueError(f"unknown PRM kind {self.kind!r}; choose one of {', '.join(sorted(PRM_CLASSES))}")
        if self.airl_negatives not in AIRL_NEGATIVES:
            raise ValueError(f"airl_negatives must be one of {', '.join(AIRL_NEGATIVES)}, got {self.airl_negatives!r}")
        if self.kind == "airl" and self.airl_negatives != "rollouts" and not self.use_expert:
            raise ValueError(f"airl_negatives={self.airl_negatives!r} samples at expert prefixes: it needs use_expert=True "
                             "(or airl_negatives='rollouts')")
        if self.expert_tasks < 0:
            raise ValueError(f"expert_tasks must be >= 0, got {self.expert_tasks}")
        for name in ("steps", "tasks_per_step", "rollouts_per_task", "mc_rollouts", "max_new_tokens", "max_steps", "batch_size",
                     "log_every", "proposals_per_prefix", "eval_tasks"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.validation:
            from prmgym.rewards.heldout import VALIDATORS

            if self.validation not in VALIDATORS:
                raise ValueError(f"unknown validation {self.validation!r}; valid: {', '.join(VALIDATORS)} "
                                 "(or empty: the kind's own)")
        if self.mc_labels not in ("hard", "soft"):
            raise ValueError(f"mc_labels must be hard or soft, got {self.mc_labels!r}")
        if self.eval_every < 0 or self.patience < 0 or self.min_delta < 0:
            raise ValueError(f"eval_every, patience and min_delta must be >= 0, got {self.eval_every}, {self.patience}, "
                             f"{self.min_delta}")
        if self.patience and not self.eval_every:
            raise ValueError(f"patience={self.patience} stops on the held-out score, which eval_every=0 never measures; "
                             "set eval_every (e.g. 10) or patience=0")


@dataclass
class TrainPRMRun(PRMTrainConfig):
    """A `prmgym train-prm` run: `PRMTrainConfig`'s fields plus where the data comes from, where
    the PRM goes and the learner's options (YAML keys, or ``--set KEY=VALUE``)."""

    policy: str | None = _f(None, "policy directory (save_pretrained): rollouts and log-probs")
    env: str | None = _f(None, "environment id, e.g. prmgym/ChainArithmetic-v0 (kinds trained from an environment)")
    env_kwargs: dict = _f({}, "extra environment keywords (the split is always train)")
    out: str | None = _f(None, "run directory: the trained PRM, checkpoint/, metrics.jsonl, tb/")
    backbone: str | None = _f(None, "causal LM directory for the PRM body (default: the policy)")
    targets: str | None = _f(None, "value-targets JSONL (kinds trained from targets: value; docs/rewards.md)")
    prm: dict = _f({}, "the kind's learner options (its Options dataclass, e.g. learning_rate, train_backbone, "
                      "search_score); unset ones take the learner's defaults")
    quiet: bool = _f(False, "no stdout metric tables and no progress bar")
    prompt_format: str = _f("plain", "how the policy and the PRM read traces: plain | chat (the tokenizer's chat "
                            "template; docs/models.md)")
    imports: list = _f([], "modules imported before the env is made (your register_reasoning_env calls), "
                       "like --import MODULE")
    device: str = _f("auto", "torch device of the policy and the PRM: auto (cuda if visible, else cpu) | cpu | cuda | "
                             "cuda:N | mps")
    dtype: str = _f("fp32", "compute precision of the PRM's and the policy's forward passes: fp32 | bf16 | fp16 "
                            "(autocast; weights stay fp32; fp16 needs CUDA); prm.dtype, if set, wins for the PRM")
    # held-out early stopping is on for train-prm (off in PRMTrainConfig, i.e. for the Python API and recipes)
    eval_every: int = _f(10, "held-out evaluation of the kind's own objective every K updates and before the first "
                             "(prmgym.rewards.heldout; logged as prm/heldout/*): the saved PRM is the best one seen. "
                             "0 = off (and no early stopping)")
    patience: int = _f(5, "stop after this many held-out evaluations without a new best (0 = run all steps)")
    eval_tasks: int = _f(64, "held-out tasks (training split, seeds disjoint from the training draws); 16 picked the "
                             "kept update on noise (docs/rewards.md)")
    distributed: dict = _f({}, "{backend: ray, train_workers: K, address, num_cpus}: the updates data-parallel over K "
                               "ranks, this process and K - 1 Ray actors (every built-in kind; docs/distributed.md)")

    def __post_init__(self) -> None:
        if not self.eval_every:
            self.patience = 0  # eval_every=0 turns the held-out evaluation off, early stopping with it
        super().__post_init__()
        from prmgym.models.optim import check_device_name, dtype_name

        self.dtype = dtype_name(self.dtype)
        check_device_name(self.device)
        if self.distributed:
            from prmgym.rewards.data_parallel import check_section

            check_section(self.distributed, self.kind)

    def train_config(self) -> PRMTrainConfig:
        """The `PRMTrainConfig` part."""
        return PRMTrainConfig(**{f.name: getattr(self, f.name) for f in fields(PRMTrainConfig)})


class PRMData:
    """The data an offline PRM recipe (``training_batch(data, step)``) is built from; every
    method is deterministic in ``step``.

    Attributes: ``config`` (`PRMTrainConfig`), ``policy``, ``pool`` (environments, None for a
    targets-only kind), ``targets`` (value targets or None), ``prm`` (the PRM being trained),
    ``stats`` (counts of rollouts and proposals drawn so far).
    """

    def __init__(self, config: PRMTrainConfig, policy: Any, pool: EnvPool | None, targets: list | None, prm: ScalarHeadPRM) -> None:
        self.config, self.policy, self.pool, self.targets, self.prm = config, policy, pool, targets, prm
        self.stats = {"rollout_traces": 0, "mc_rollouts": 0}
        self._heldout_prompts: set | None = None

    @property
    def delimiter(self) -> str:
        return self.pool.delimiter if self.pool is not None else self.prm.delimiter

    def tasks(self, step: int) -> list:
        """``tasks_per_step`` training tasks of update ``step``."""
        u = self.pool.get(1)[0].unwrapped
        return list(u.source.tasks("train", self.config.tasks_per_step, seed=self.config.seed * 1_000_003 + step))

    def expert_only_tasks(self, step: int) -> list:
        """``expert_tasks`` more training tasks of update ``step`` (their own seed stream), of which
        only the expert solutions are used; with held-out evaluation on, the held-out tasks are left
        out (the body must not fit the expert steps early stopping judges it on)."""
        cfg = self.config
        n = cfg.expert_tasks if cfg.use_expert else 0
        if not n:
            return []
        source = self.pool.get(1)[0].unwrapped.source
        tasks = draw_expert_only_tasks(source, n, cfg.seed, step)
        if cfg.eval_every:
            if self._heldout_prompts is None:
                from prmgym.rewards.heldout import HELDOUT_SEED

                self._heldout_prompts = {t.prompt for t in source.tasks("train", cfg.eval_tasks, seed=HELDOUT_SEED + cfg.seed)}
            tasks = [t for t in tasks if t.prompt not in self._heldout_prompts]
        return tasks

    def experts(self, tasks: list) -> list:
        """The tasks' expert solutions as correct traces (none when ``use_expert`` is off)."""
        return expert_traces(tasks) if self.config.use_expert else []

    def rollouts(self, tasks: list, step: int) -> list:
        """``rollouts_per_task`` policy rollouts per task (those with at least one step)."""
        cfg = self.config
        rolls = rollout(self.pool, self.policy, tasks, n=cfg.rollouts_per_task, seed=cfg.seed * 10_007 + step,
                        temperature=cfg.temperature, max_new_tokens=cfg.max_new_tokens, max_steps=cfg.max_steps)
        rolls = [r for r in rolls if r.steps]
        self.stats["rollout_traces"] += len(rolls)
        return rolls

    def prefix_proposals(self, experts: list, step: int, k: int) -> list:
        """``k`` policy steps proposed at every prefix of every expert trace (the prefix as context)."""
        cfg = self.config
        props = prefix_proposals(self.policy, experts, k=k, delimiter=self.delimiter, seed=cfg.seed * 10_007 + step,
                                 template=template_of(self.pool),
                                 temperature=cfg.temperature, max_new_tokens=cfg.max_new_tokens)
        self.stats["prefix_proposals"] = self.stats.get("prefix_proposals", 0) + len(props)
        return props

    def mc_labels(self, rolls: list, step: int) -> list[list[float]]:
        """Monte-Carlo label of every step of ``rolls`` (``mc_rollouts`` completions per prefix)."""
        cfg = self.config
        labels = mc_step_labels(self.pool, self.policy, rolls, n_rollouts=cfg.mc_rollouts, mode=cfg.mc_labels,
                                seed=cfg.seed * 31 + step, temperature=cfg.temperature,
                                max_new_tokens=cfg.max_new_tokens, max_steps=cfg.max_steps)
        self.stats["mc_rollouts"] += cfg.mc_rollouts * sum(len(r.steps) for r in rolls)
        return labels

    def contrast_batch(self, pos: list, neg: list, context_prefixes: bool = False) -> PRMBatch:
        """Positives (1) vs negatives (0) with the policy's step log-probs (`traces_to_batch`)."""
        return traces_to_batch(pos, neg, policy=self.policy, delimiter=self.delimiter, context_prefixes=context_prefixes,
                               template=template_of(self.pool))

    def outcome_batch(self, step: int) -> PRMBatch:
        """The step's expert solutions (1) and policy rollouts labelled by verified correctness."""
        tasks = self.tasks(step)
        traces = self.experts(tasks) + self.rollouts(tasks, step)
        return PRMBatch([t.prompt for t in traces], [t.steps for t in traces],
                        labels=[1.0 if t.correct else 0.0 for t in traces])


class OfflinePRMTrainer:
    """Trains ``prm`` for `PRMTrainConfig.steps` updates; see the module docstring.

    Args:
        prm: a `ScalarHeadPRM` of the configured kind.
        policy: the (fixed) policy that produces rollouts and log-probs (unused by a kind whose
            ``data_source`` is ``"targets"``).
        env_fn: builds a training environment (likewise).
        config: `PRMTrainConfig`.
        targets: a ``data_source="targets"`` kind (the value model): a list of `ValueTarget`.
        run_dir: checkpoints and the final PRM; logger: a `prmgym.logger.Logger` or None.
    """

    def __init__(self, prm: ScalarHeadPRM, policy: Any, env_fn: Callable[[], Any] | None, config: PRMTrainConfig,
                 targets: list | None = None, run_dir: str | None = None, logger: Any = None) -> None:
        if prm.kind != config.kind:
            raise ValueError(f"config.kind is {config.kind!r} but the PRM is a {prm.kind!r}")
        source = type(prm).data_source
        if source == "targets" and not targets:
            raise ValueError(f"the {prm.kind} PRM trains from a targets file: pass targets (prmgym train-prm --targets FILE)")
        if source == "env" and (env_fn is None or policy is None):
            raise ValueError(f"kind {config.kind!r} needs a policy and an environment")
        self.prm, self.policy, self.config = prm, policy, config
        self.pool = EnvPool(env_fn) if env_fn is not None else None
        self.targets = targets
        self.data = PRMData(config, policy, self.pool, targets, prm)
        self.run_dir = run_dir
        self.logger = logger
        self._heldout = None  # prmgym.rewards.heldout.HeldOut, drawn at the first evaluation
        self._best: dict | None = None
        self._since_best = 0
        self.summary: dict = {}

    @property
    def stats(self) -> dict:
        return self.data.stats

    @property
    def num_steps(self) -> int:
        return self.prm.updates

    def collect(self, step: int) -> PRMBatch:
        """The learner's batch for update ``step`` (deterministic in ``step``): its class's recipe."""
        return type(self.prm).training_batch(self.data, step)

    def step(self) -> dict:
        t0 = time.perf_counter()
        batch = self.collect(self.num_steps)
        t1 = time.perf_counter()
        try:
            metrics = self.prm.update(batch)
        except MissingClassError:  # one class missing this step (e.g. every rollout correct): skip, but advance
            self.prm.updates += 1
            metrics = {"skipped": 1.0}
        metrics["time/collect_s"] = t1 - t0
        metrics["time/update_s"] = time.perf_counter() - t1
        metrics["traces"] = float(len(batch))
        if batch.labels is not None and type(self.prm).data_source == "env":
            n = [len(st) for st in batch.drop_context(batch.step_lists)]  # training steps per trace
            metrics["positive_frac"] = float(sum(k for k, y in zip(n, batch.labels) if y >= 0.5) / max(1, sum(n)))
        return metrics

    def train(self, n_steps: int | None = None, progress: bool = False) -> list[dict]:
        """Run updates up to `PRMTrainConfig.steps` (or ``n_steps`` more); returns their metrics.

        With ``eval_every`` the held-out score is measured before the first update and every
        ``eval_every`` updates; the PRM that scored best is the one left in ``self.prm`` and saved
        to ``run_dir`` (``checkpoint/`` keeps the last state, for resuming), and ``patience``
        evaluations without a new best stop the run. ``self.summary`` (also
        ``run_dir/summary.json``) says which update won and why training stopped. ``progress``
        shows a tqdm bar (updates, ETA) when stderr is a terminal."""
        from prmgym.logger import progress_bar

        cfg = self.config
        target = cfg.steps if n_steps is None else self.num_steps + n_steps
        bar = progress_bar(target, f"train-prm {self.prm.kind}", unit="update", enabled=progress, initial=self.num_steps)
        try:
            return self._train(cfg, target, bar)
        finally:
            if bar is not None:
                bar.close()

    def _train(self, cfg: Any, target: int, bar: Any) -> list[dict]:
        history: list[dict] = []
        self.summary = {"kind": self.prm.kind, "start_update": self.num_steps, "stopped_early": False}
        if cfg.eval_every:
            self._evaluate(initial=True)
        while self.num_steps < target:
            m = self.step()
            history.append(m)
            if bar is not None:
                bar.update(1)
                if "loss" in m:
                    bar.set_postfix(loss=f"{m['loss']:.4f}")
            stop = False
            if cfg.eval_every and (self.num_steps % cfg.eval_every == 0 or self.num_steps == target):
                ev, stop = self._evaluate()
                m.update({f"heldout/{k}": v for k, v in ev.items()})
            if self.logger is not None and (self.num_steps % cfg.log_every == 0 or self.num_steps == target or stop):
                self.logger.record_dict(m, prefix="prm/")
                self.logger.dump(self.num_steps)
            if self.run_dir and cfg.save_every and self.num_steps % cfg.save_every == 0:
                self.save_checkpoint()
            if stop:
                self.summary["stopped_early"] = True
                break
        self.summary["updates"] = self.num_steps
        if self.run_dir:
            self.save_checkpoint()  # the last state: resume continues from here
        if cfg.eval_every:
            self._restore_best()
        if self.run_dir:
            self.prm.save(self.run_dir)
            with open(os.path.join(self.run_dir, "summary.json"), "w") as f:
                json.dump(self.summary, f, indent=2)
        return history

    def _evaluate(self, initial: bool = False) -> tuple[dict, bool]:
        """Measure the held-out score; keep a copy of the PRM when it is a new best. Returns the
        metrics and whether ``patience`` has run out."""
        from prmgym.rewards.heldout import HeldOut

        cfg = self.config
        if self._heldout is None:
            self._heldout = HeldOut(self.prm, self.data, cfg.eval_tasks, cfg.validation or None)
        ev = self._heldout.measure(self.prm)
        score = ev["score"]
        if initial:
            self.summary.update(initial_score=score, initial_metrics=dict(ev))
        best = self.summary.get("best_score")
        if best is None or (score == score and (best != best or score > best + cfg.min_delta)):  # x != x: NaN
            self.summary.update(best_score=score, best_update=self.num_steps, best_metrics=dict(ev),
                                validation=self._heldout.name)
            self._best = self._snapshot()
            self._since_best = 0
        elif not initial:
            self._since_best += 1
        if initial and self.logger is not None:
            self.logger.record_dict({f"heldout/{k}": v for k, v in ev.items()}, prefix="prm/")
            self.logger.dump(self.num_steps)
        ev["best_score"] = self.summary["best_score"]
        return ev, bool(cfg.patience) and self._since_best >= cfg.patience

    def _snapshot(self) -> dict:
        import copy

        return {"net": {k: v.detach().clone() for k, v in self.prm.net.state_dict().items()},
                "extra": copy.deepcopy(self.prm._extra_state()), "updates": self.prm.updates,
                "tokens_trained": self.prm.tokens_trained}

    def _restore_best(self) -> None:
        if self._best is None:
            return
        self.prm.net.load_state_dict(self._best["net"])
        self.prm._load_extra_state(self._best["extra"])
        self.prm.updates, self.prm.tokens_trained = self._best["updates"], self._best["tokens_trained"]
        self.prm.clear_cache()

    def save_checkpoint(self) -> str:
        from prmgym.checkpoints import write_checkpoint

        return write_checkpoint(os.path.join(self.run_dir, CHECKPOINT), self.prm.save)

    def close(self) -> None:
        if self.pool is not None:
            self.pool.close()


def build_prm(kind: str, backbone: Any, **options) -> ScalarHeadPRM:
    """A fresh PRM of ``kind`` on ``backbone`` (directory or policy); ``options`` are the fields
    of its ``Options`` dataclass (``learning_rate``, ...; unset ones take the learner's default)."""
    import prmgym.rewards  # noqa: F401  (registers every kind)

    if kind not in PRM_CLASSES:
        raise ValueError(f"unknown PRM kind {kind!r}; choose one of {', '.join(sorted(PRM_CLASSES))}")
    return PRM_CLASSES[kind].from_backbone(backbone, **options)
