"""`ScalarHeadPRM`: the trainable PRM every learner here builds on.

It adds to `ProcessRewardModel`: batching, a prefix cache, a count of tokens scored (for
`Budget.prm`), an optimiser with `update(batch) -> metrics`, and save/load as a Hugging Face
style directory::

    out_dir/
      prm_config.json     {"kind": "airl", "delimiter": "\\n", "aggregation": "last", ...}
      head.pt             the linear head(s) (+ any extra learner state)
      backbone/           model.save_pretrained(...) and tokenizer.save_pretrained(...)
      trainer_state.pt    optimiser, update counter, RNG (for resuming training)

Subclasses set ``kind`` and ``n_outputs``, implement ``loss(batch)`` and
``_search_scores(outputs, ...)``, and own their offline training recipe: ``Options`` (their
constructor options, a `PRMOptions` dataclass), ``data_source`` (what offline training needs)
and ``training_batch(data, step)`` (builds an update's `PRMBatch` from a
`prmgym.rewards.train.PRMData` collector). Defining the class registers its ``kind``.
"""

from __future__ import annotations

import abc
import json
import os
import random
from dataclasses import dataclass, fields, replace
from typing import Any, Sequence

import torch

from prmgym.config import ConfigError, from_dict, help_field, to_dict
from prmgym.envs.trace import DEFAULT_DELIMITER
from prmgym.models.formatting import check_prompt_format
from prmgym.models.lora import ADAPTER_DIR, load_adapter, private_copy
from prmgym.models.lora import prm_adapter as lora_prm_adapter
from prmgym.rewards.backbone import (
    BACKBONE_DIR,
    HEAD_FILE,
    PRM_CONFIG,
    TRAINER_STATE,
    LMScalarHead,
    TraceEncoder,
    load_causal_lm,
    pad_id,
    read_prm_config,
    resolve_backbone,
)
from prmgym.models.optim import OptimKnobs, Optimization, autocast, model_device, prepare_model
from prmgym.rewards.base import AGGREGATIONS, ProcessRewardModel
from prmgym.rewards.lmfeature import check_lm_feature, init_feature_head, lm_feature_values

#: kind -> class, filled by subclasses (see `load_prm`)
PRM_CLASSES: dict[str, type] = {}
#: what offline training of a kind needs (`ScalarHeadPRM.data_source`)
DATA_SOURCES = ("env", "targets")


class MissingClassError(ValueError):
    """A training batch lacks a class the learner contrasts (e.g. no policy step because every
    rollout was correct); offline training skips such an update and counts it."""


@dataclass
class PRMOptions(OptimKnobs):
    """Constructor options shared by every `ScalarHeadPRM` (a kind adds its own in a subclass,
    ``SomePRM.Options``). ``learning_rate``'s default here is the learner's one default, used by
    every entry point (`prmgym train-prm`, `prmgym train` rewards, benchmarks). The optimiser,
    precision and memory knobs are `OptimKnobs`' (their steps are PRM updates); a PRM update is
    one batch (``micro_batch_size`` must stay 0: the learners' losses normalise over the batch)."""

    learning_rate: float = help_field(1e-4, "AdamW learning rate of `update`")
    head_learning_rate: float = help_field(0.0, "learning rate of the linear head(s) (the body trains at "
                                           "learning_rate; same schedule); 0 = learning_rate")
    weight_decay: float = help_field(0.0, "AdamW weight decay")
    train_backbone: bool = help_field(True, "train the LM body too (false: only the head)")
    batch_size: int = help_field(16, "rows per forward pass")
    aggregation: str = help_field("last", f"default aggregation of `score`: {' | '.join(AGGREGATIONS)}")
    squash: bool = help_field(True, "pass search scores through a sigmoid (scores in [0, 1])")
    cache: bool = help_field(True, "prefix cache of step scores (cleared by every update)")
    delimiter: str = help_field(DEFAULT_DELIMITER, "step delimiter of the traces (env.unwrapped.delimiter)")
    lora: dict | None = help_field(None, "LoRA adapter on the backbone {r, alpha, dropout, target_modules} "
                                   "instead of training all of it (null = no LoRA); see prmgym.models.lora")
    share_backbone: bool = help_field(False, "with lora, on a LoRA policy: put this PRM's adapter on the policy's "
                                      "own model (one frozen base for both) instead of a copy of the whole LM")
    prompt_format: str = help_field("plain", "how traces are tokenised: plain (the trace text) | chat (the "
                                    "tokenizer's chat template; a PRM built on a policy takes the policy's)")

    #: option values that a PRM saved without those options gets at load (its training before they
    #: existed); a class attribute, not a field
    legacy_options = {}

    def __post_init__(self) -> None:
        super().__post_init__()  # the OptimKnobs checks
        if self.micro_batch_size:
            raise ValueError(f"micro_batch_size={self.micro_batch_size}: PRM updates do not accumulate over micro-batches "
                             "(a learner's loss normalises over its whole batch); set micro_batch_size: 0 and save memory "
                             "with a smaller batch_size (rows per forward) or gradient_checkpointing: true")
        check_prompt_format(self.prompt_format)
        if self.aggregation not in AGGREGATIONS:
            raise ValueError(f"unknown aggregation {self.aggregation!r}; valid: {', '.join(AGGREGATIONS)}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.head_learning_rate < 0:
            raise ValueError(f"head_learning_rate must be >= 0 (0 = learning_rate), got {self.head_learning_rate}")
        if self.weight_decay < 0:
            raise ValueError(f"weight_decay must be >= 0, got {self.weight_decay}")


@dataclass
class LMFeatureOptions(PRMOptions):
    """Options of a kind whose head also reads the LM's log-prob of the step
    (`prmgym.rewards.lmfeature`: ORM, MC-PRM, rePIRL); a kind sets its own default."""

    lm_feature: str = help_field("none", "LM log-prob input of the head: none | step (the step's mean token "
                                 "log-prob) | running_min (its minimum over the steps so far); the head starts "
                                 "at zero on everything else, so the untrained PRM ranks as the LM does")
    lm_feature_weight: float = help_field(1.0, "initial head weight on the LM feature (> 0)")
    legacy_options = {"lm_feature": "none"}  # saved before the option existed: a head without the feature

    def __post_init__(self) -> None:
        super().__post_init__()
        check_lm_feature(self.lm_feature, self.lm_feature_weight)


def parse_options(cls: type, options: dict, where: str = "") -> Any:
    """``options`` as ``cls.Options`` (a `PRMOptions` dataclass); errors name the key and the
    valid ones. ``lr`` is spelled ``learning_rate``, ``grad_clip`` ``max_grad_norm``."""
    for old, new in (("lr", "learning_rate"), ("grad_clip", "max_grad_norm")):
        if old in options:
            raise ConfigError(f"{where or cls.kind + ' PRM'}: the option '{old}' is spelled '{new}' "
                              f"(e.g. {new}={options[old]})")
    return from_dict(cls.Options, options, where)


def check_traces(prompts: Sequence[str], step_lists: Sequence[Sequence[str]]) -> None:
    """Raise a clear error for inputs `score_steps` cannot read."""
    if isinstance(prompts, str):
        raise TypeError("prompts must be a list of strings, got one string: wrap it as [prompt]")
    if len(prompts) != len(step_lists):
        raise ValueError(
            f"got {len(prompts)} prompts but {len(step_lists)} step lists: pass one list of steps per prompt"
        )
    for i, (p, steps) in enumerate(zip(prompts, step_lists)):
        if not isinstance(p, str):
            raise TypeError(f"prompts[{i}] must be a string, got {type(p).__name__}")
        if isinstance(steps, str):
            raise TypeError(f"step_lists[{i}] is a string; pass a list of step strings (e.g. [{steps!r}])")
        for j, s in enumerate(steps):
            if not isinstance(s, str):
                raise TypeError(f"step_lists[{i}][{j}] must be a string, got {type(s).__name__}")


@dataclass
class PRMBatch:
    """Training data for any PRM learner (fields a learner does not use may stay ``None``).

    Attributes:
        prompts, step_lists: the traces.
        labels: one number per trace: 1 = expert/correct, 0 = policy sample/incorrect (AIRL,
            rePIRL, ORM, implicit PRM), or a value target in [0, 1] (value model).
        step_labels: one number per step (Monte-Carlo PRM labels).
        step_logprobs: log π(step | state) per step, the sum of the token log-probs of
            ``step + delimiter`` under the current policy (AIRL, rePIRL).
        step_ntokens: the number of those tokens per step (for length normalisation).
        weights: optional per-trace loss weights (value model: visit counts).
        context_steps: optional, per trace, how many leading steps are context only: they are
            read (the state) but are not training examples (AIRL: a policy step proposed after an
            expert prefix is one negative, the prefix is not).
        demonstrations: optional, per trace, whether it is an expert demonstration rather than a
            policy sample (a verified-correct rollout is label 1 but not a demonstration; AIRL's
            ``expert_nll`` fits only demonstrations). None: every label-1 trace counts as one.
    """

    prompts: list[str]
    step_lists: list[list[str]]
    labels: list[float] | None = None
    step_labels: list[list[float]] | None = None
    step_logprobs: list[list[float]] | None = None
    step_ntokens: list[list[int]] | None = None
    weights: list[float] | None = None
    context_steps: list[int] | None = None
    demonstrations: list[bool] | None = None

    def __post_init__(self) -> None:
        self.prompts = list(self.prompts)
        self.step_lists = [list(s) for s in self.step_lists]
        check_traces(self.prompts, self.step_lists)
        n = len(self.prompts)
        for name in ("labels", "weights", "context_steps", "demonstrations"):
            v = getattr(self, name)
            if v is not None and len(v) != n:
                raise ValueError(f"PRMBatch.{name} has {len(v)} entries for {n} traces")
        if self.context_steps is not None:
            for i, (c, steps) in enumerate(zip(self.context_steps, self.step_lists)):
                if not 0 <= int(c) <= len(steps):
                    raise ValueError(f"PRMBatch.context_steps[{i}] is {c} for a trace of {len(steps)} steps; "
                                     "it counts leading steps and must be between 0 and the step count")
        for name in ("step_labels", "step_logprobs", "step_ntokens"):
            v = getattr(self, name)
            if v is None:
                continue
            if len(v) != n:
                raise ValueError(f"PRMBatch.{name} has {len(v)} entries for {n} traces")
            for i, (vals, steps) in enumerate(zip(v, self.step_lists)):
                if len(vals) != len(steps):
                    raise ValueError(f"PRMBatch.{name}[{i}] has {len(vals)} values for {len(steps)} steps")

    def __len__(self) -> int:
        return len(self.prompts)

    def drop_context(self, rows: Sequence[Sequence[Any]]) -> list:
        """Per-trace step rows (values, logits, the steps themselves) without their leading
        ``context_steps``: what is left are the training examples."""
        if self.context_steps is None:
            return list(rows)
        return [row[int(c):] for row, c in zip(rows, self.context_steps)]

    def require(self, *names: str, who: str = "this PRM") -> None:
        missing = [n for n in names if getattr(self, n) is None]
        if missing:
            raise ValueError(f"{who} needs PRMBatch field(s) {missing}; see prmgym.rewards.data for helpers that fill them")

    @staticmethod
    def concat(batches: Sequence["PRMBatch"]) -> "PRMBatch":
        def cat(name):
            vals = [getattr(b, name) for b in batches]
            if any(v is None for v in vals):
                return None
            return [x for v in vals for x in v]

        return PRMBatch(
            prompts=[p for b in batches for p in b.prompts],
            step_lists=[s for b in batches for s in b.step_lists],
            **{n: cat(n) for n in ("labels", "step_labels", "step_logprobs", "step_ntokens", "weights")},
            context_steps=None if all(b.context_steps is None for b in batches)
            else [c for b in batches for c in (b.context_steps or [0] * len(b))],  # none given = no context steps
            demonstrations=None if all(b.demonstrations is None for b in batches)  # none given = every label-1 trace
            else [d for b in batches for d in (b.demonstrations if b.demonstrations is not None
                                               else [y >= 0.5 for y in (b.labels or [0.0] * len(b))])],
        )


def batch_from_trajectories(trajs: Sequence[Any], delimiter: str = DEFAULT_DELIMITER) -> PRMBatch:
    """A `PRMBatch` from trainer trajectories (duck-typed `prmgym.agents.rollout.Trajectory`).

    Labels = verified correctness; per-step log-probs from the sampled tokens (prefix steps
    that were replayed, not sampled, get log-prob 0 over 1 token). Masked ones are left out.
    """
    prompts, steps, labels, lps, nts = [], [], [], [], []
    for t in trajs:
        if getattr(t, "masked", False):
            continue
        task = getattr(t, "task", None)
        prompt = task.prompt if task is not None else t.prompt
        all_steps = list(getattr(t, "all_steps", t.steps))
        gen = list(getattr(t, "step_logprobs", []) or [])
        n_prefix = len(all_steps) - len(gen)
        lp = [0.0] * n_prefix + [float(sum(x)) if not isinstance(x, (int, float)) else float(x) for x in gen]
        nt = [1] * n_prefix + [len(x) if not isinstance(x, (int, float)) else 1 for x in gen]
        prompts.append(prompt)
        steps.append(all_steps)
        labels.append(1.0 if getattr(t, "correct", False) else 0.0)
        lps.append(lp)
        nts.append(nt)
    return PRMBatch(prompts, steps, labels=labels, step_logprobs=lps, step_ntokens=nts)


class _classorinstancemethod:
    """A method that receives the class when called on the class and the instance otherwise."""

    def __init__(self, fn):
        self.fn = fn
        self.__doc__ = fn.__doc__

    def __get__(self, obj, cls):
        import functools

        return functools.partial(self.fn, cls if obj is None else obj)


class ScalarHeadPRM(ProcessRewardModel, abc.ABC):
    """A causal LM + linear head(s) read at step boundaries; see the module docstring.

    Args:
        model, tokenizer: the backbone (use `from_backbone` for a directory or a policy).
        **options: the fields of ``Options`` (`PRMOptions` plus the kind's own): delimiter,
            aggregation, squash, cache (a prefix cache ``{(prompt, steps[:i+1]): score}``),
            learning_rate, weight_decay, max_grad_norm, train_backbone, batch_size, dtype, ...

    Class attributes a kind sets: ``kind`` (registers the class), ``n_outputs``, ``Options``,
    ``data_source`` (``"env"``: a policy and an environment; ``"targets"``: a value-targets
    file), ``recipe_fields`` (the `PRMTrainConfig` fields only this kind's recipe reads),
    ``needs_both_classes`` (its loss contrasts label-1 and label-0 traces), and the classmethod
    ``training_batch(data, step)``.
    """

    kind: str = "scalar"
    n_outputs: int = 1
    Options: type = PRMOptions
    data_source: str = "env"
    recipe_fields: tuple[str, ...] = ()
    needs_both_classes: bool = False
    validation: str | None = None  # held-out metric while training offline (prmgym.rewards.heldout.VALIDATORS)
    also_validate: tuple[str, ...] = ()  # more held-out metrics logged beside it (not used to pick the best)

    def __init_subclass__(cls, **kw):
        super().__init_subclass__(**kw)
        if "kind" in cls.__dict__:
            if cls.data_source not in DATA_SOURCES:
                raise TypeError(f"{cls.__name__}.data_source must be one of {DATA_SOURCES}, got {cls.data_source!r}")
            PRM_CLASSES[cls.kind] = cls

    def __init__(self, model: torch.nn.Module, tokenizer: Any, **options: Any) -> None:
        self.options = parse_options(type(self), options)
        o = self.options
        self.tokenizer = tokenizer
        self.delimiter = o.delimiter
        self.aggregation = o.aggregation
        self.squash = bool(o.squash)
        self.learning_rate = float(o.learning_rate)
        self.weight_decay = float(o.weight_decay)
        self.train_backbone = bool(o.train_backbone)
        model, adapter = lora_prm_adapter(model, o.lora, o.share_backbone)
        device = prepare_model(model, o)  # device, gradient checkpointing (prmgym.models.optim)
        self.net = LMScalarHead(model, n_outputs=self.n_outputs, batch_size=o.batch_size).to(device)
        self.net.adapter = adapter
        self.net.pad_token_id = pad_id(tokenizer)
        self.lm_feature = getattr(o, "lm_feature", "none")
        if self.lm_feature != "none":  # the head reads [hidden, LM feature]: zero but the feature's weight
            self.net.head = init_feature_head(self.net.head, o.lm_feature_weight)
        self.encoder = TraceEncoder(tokenizer, o.delimiter, mode=o.prompt_format)
        self.cache: dict | None = {} if o.cache else None
        self.cache_hits = 0
        self.tokens_scored = 0  # tokens run through the model by score_steps (charge Budget.prm)
        self.tokens_trained = 0  # tokens run through the model by update
        self.updates = 0
        self._optim: Optimization | None = None

    # -- construction ----------------------------------------------------------------------
    @classmethod
    def from_backbone(cls, source: Any, tokenizer: Any = None, copy: bool = True, **kwargs) -> "ScalarHeadPRM":
        """A fresh PRM (new random head) on a causal LM directory, a policy or a model.

        ``copy=True`` deep-copies an in-memory model so training the PRM never touches the
        policy it came from; ``share_backbone=True`` (with ``lora``) shares a LoRA policy's
        model instead, the PRM training only its own adapter and head. Without a ``prompt_format`` option, a PRM built on a policy takes
        the policy's (``policy.formatter.mode``), so both read the same token ids.
        """
        fmt = getattr(source, "formatter", None)
        if "prompt_format" not in kwargs and fmt is not None:
            kwargs["prompt_format"] = fmt.mode
        model, tok = resolve_backbone(source, tokenizer)
        loaded = isinstance(source, (str, os.PathLike))  # loaded just for this PRM: its own already
        if (copy or loaded) and not kwargs.get("share_backbone"):
            model = private_copy(model, copy=not loaded)  # a LoRA policy's adapter is merged in
        return cls(model, tok, **kwargs)

    @classmethod
    def training_batch(cls, data: Any, step: int) -> PRMBatch:
        """This kind's offline data recipe: the `PRMBatch` of update ``step``, built from ``data``
        (a `prmgym.rewards.train.PRMData`: its config, tasks, expert traces, policy rollouts,
        Monte-Carlo labels, value targets), deterministic in ``step``. Every registered kind
        defines it."""
        raise TypeError(f"PRM kind {cls.kind!r} ({cls.__name__}) defines no training_batch(data, step): "
                        "it cannot be trained offline")

    def config(self) -> dict:
        """JSON-able constructor options (written to ``prm_config.json``), without the run-time
        ``device`` and ``dtype`` (a PRM trained on a GPU in bf16 loads anywhere; pass them to `load`)."""
        return {k: v for k, v in to_dict(self.options).items() if k not in ("device", "dtype")}

    # -- reading the head ----------------------------------------------------------------------
    def parameters(self):
        if self.train_backbone:
            return self.net.trainable() + (list(self._extra_parameters()) if self.net.adapter else [])
        return list(self.net.head.parameters()) + list(self._extra_parameters())

    def _extra_parameters(self):
        return []

    def outputs(self, prompts: Sequence[str], step_lists: Sequence[Sequence[str]]) -> list[torch.Tensor]:
        """Head outputs at ``[prompt_end, step_1_end, ...]``: ``list[(n_steps_i + 1, n_outputs)]``.

        Differentiable (call under ``torch.no_grad()`` for inference). One row per trace.
        """
        check_traces(prompts, step_lists)
        enc = [self.encoder.encode(p, s) for p, s in zip(prompts, step_lists)]
        if self.lm_feature == "none":
            return self.net.outputs_at([e[0] for e in enc], [e[1] for e in enc])
        res = self.net.hidden_and_segment_logprobs([e[0] for e in enc], [e[1] for e in enc])
        outs = []
        for (_, bounds), (hidden, seg_lp) in zip(enc, res):
            n_tok = torch.tensor([b - a for a, b in zip(bounds[:-1], bounds[1:])], device=seg_lp.device)
            x = lm_feature_values(seg_lp, n_tok, self.lm_feature).to(hidden.dtype)  # (n+1,)
            outs.append(self.net.head(torch.cat([hidden, x[:, None]], dim=1)).float())  # (n+1, n_outputs), fp32
        return outs

    def token_count(self, prompts: Sequence[str], step_lists: Sequence[Sequence[str]]) -> int:
        return sum(len(self.encoder.encode(p, s)[0]) for p, s in zip(prompts, step_lists))

    @abc.abstractmethod
    def _search_scores(self, out: torch.Tensor, n_steps: int) -> torch.Tensor:
        """Raw (unsquashed) search score per step from one trace's outputs ``(n+1, n_outputs)``."""

    def _finish(self, raw: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(raw) if self.squash else raw

    def step_scores_tensor(self, prompts: Sequence[str], step_lists: Sequence[Sequence[str]]) -> list[torch.Tensor]:
        """Differentiable per-step search scores (what `score_steps` returns, as tensors)."""
        outs = self.outputs(prompts, step_lists)
        return [self._finish(self._search_scores(o, len(s))) for o, s in zip(outs, step_lists)]

    def score_steps(self, prompts: Sequence[str], step_lists: Sequence[Sequence[str]]) -> list[list[float]]:
        """One score per step for each trace: one forward pass per trace, prefix-cached.

        A trace whose every prefix is cached costs nothing; otherwise the whole trace is run
        once and all its prefixes are cached. ``tokens_scored`` grows by the tokens run.
        """
        check_traces(prompts, step_lists)
        result: list[list[float] | None] = [None] * len(prompts)
        todo = []
        for i, (p, steps) in enumerate(zip(prompts, step_lists)):
            steps = tuple(steps)
            if not steps:
                result[i] = []
                continue
            if self.cache is not None:
                hit = [self.cache.get((p, steps[: k + 1])) for k in range(len(steps))]
                if all(h is not None for h in hit):
                    self.cache_hits += 1
                    result[i] = [float(h) for h in hit]
                    continue
            todo.append(i)
        if todo:
            ps = [prompts[i] for i in todo]
            ss = [list(step_lists[i]) for i in todo]
            was_training = self.net.training
            self.net.eval()
            try:
                with torch.no_grad(), autocast(self.options.dtype, model_device(self.net)):
                    scores = self.step_scores_tensor(ps, ss)
            finally:
                self.net.train(was_training)
            self.tokens_scored += self.token_count(ps, ss)
            for i, sc in zip(todo, scores):
                vals = [float(x) for x in sc.tolist()]
                result[i] = vals
                if self.cache is not None:
                    steps = tuple(step_lists[i])
                    for k, v in enumerate(vals):
                        self.cache[(prompts[i], steps[: k + 1])] = v
        return [r if r is not None else [] for r in result]

    def clear_cache(self) -> None:
        if self.cache is not None:
            self.cache.clear()

    # -- training ---------------------------------------------------------------------------
    @property
    def optim(self) -> Optimization:
        """AdamW run by the `OptimKnobs` in ``options`` (schedule over updates, clipping, precision)."""
        if self._optim is None:
            self._optim = Optimization(self.options, self._param_groups(), model_device(self.net),
                                       weight_decay=self.weight_decay)
        return self._optim

    def _param_groups(self) -> list:
        """The trained parameters; with ``head_learning_rate`` the head in a group of its own that
        runs at ``head_learning_rate / learning_rate`` times the schedule."""
        params = self.parameters()
        o = self.options
        if not o.head_learning_rate:
            return params
        head = {id(p) for p in self.net.head.parameters()}
        groups = [{"params": [p for p in params if id(p) not in head]},
                  {"params": [p for p in params if id(p) in head], "lr_scale": o.head_learning_rate / o.learning_rate}]
        return [g for g in groups if g["params"]]

    @property
    def optimizer(self) -> torch.optim.Optimizer:
        return self.optim.optimizer

    @abc.abstractmethod
    def loss(self, batch: PRMBatch) -> tuple[torch.Tensor, dict]:
        """The learner's loss on ``batch`` and metrics (floats)."""

    def update(self, batch: "PRMBatch | Sequence[Any]") -> dict:
        """One optimiser step on ``batch``; returns metrics (loss, accuracies, ...).

        ``batch`` is a `PRMBatch`, or the trajectories of a trainer step (objects with
        ``.task``, ``.all_steps``/``.steps``, ``.correct``; see `batch_from_trajectories`),
        which are labelled by correctness. A trajectory batch with only one class gives
        ``{"skipped": 1.0}`` for learners that need both.
        """
        if not isinstance(batch, PRMBatch):
            batch = batch_from_trajectories(batch, self.delimiter)
            if batch.labels is not None and len(set(x >= 0.5 for x in batch.labels)) < 2 and self.needs_both_classes:
                return {"skipped": 1.0}
        if len(batch) == 0:
            raise ValueError("update() got an empty batch")
        self.net.train()
        with self.optim.autocast():
            loss, metrics = self.loss(batch)
        self.optim.zero_grad()
        self.optim.backward(loss)
        info = self.optim.step()  # schedule, clipping; a non-finite gradient norm skips the update
        metrics.update(grad_norm=info["grad_norm"], lr=info["lr"])
        self.updates += 1
        self.tokens_trained += self.token_count(batch.prompts, batch.step_lists)
        self.clear_cache()  # scores changed
        metrics["loss"] = float(loss.detach())
        return metrics

    # -- persistence --------------------------------------------------------------------------
    def _extra_state(self) -> dict:
        return {}

    def _load_extra_state(self, state: dict) -> None:
        pass

    def _after_inplace_load(self, other: "ScalarHeadPRM") -> None:
        pass

    def save(self, path: str | os.PathLike, trainer_state: bool = True) -> str:
        """Write the PRM directory (see the module docstring); returns the path."""
        path = os.fspath(path)
        os.makedirs(path, exist_ok=True)
        self.net.save_backbone(path, self.tokenizer)
        torch.save({"head": self.net.head.state_dict(), "extra": self._extra_state()}, os.path.join(path, HEAD_FILE))
        with open(os.path.join(path, PRM_CONFIG), "w") as f:
            json.dump({"kind": self.kind, "format_version": 1, **self.config()}, f, indent=2)
        if trainer_state:
            torch.save(
                {
                    "optimizer": self._optim.state_dict() if self._optim is not None else None,
                    "updates": self.updates,
                    "tokens_trained": self.tokens_trained,
                    "torch_rng": torch.get_rng_state(),
                    "python_rng": random.getstate(),
                },
                os.path.join(path, TRAINER_STATE),
            )
        return path

    @_classorinstancemethod
    def load(owner, path: str | os.PathLike, tokenizer: Any = None, resume: bool = False, **overrides):
        """Load a PRM written by `save`.

        On the class (``AIRLPRM.load(dir)``) it returns a new PRM; on an instance
        (``prm.load(dir)``, what trainers call when they resume) it loads the weights,
        counters and optimiser state into that instance and returns it. ``resume=True`` (always
        on for the instance form) also restores the optimiser and RNG.
        """
        if isinstance(owner, type):
            return owner._load_new(path, tokenizer=tokenizer, resume=resume, **overrides)
        other = type(owner)._load_new(path, tokenizer=tokenizer or owner.tokenizer, resume=True)
        owner.net.load_weights_from(other.net)
        owner._load_extra_state(other._extra_state())
        owner.updates, owner.tokens_trained = other.updates, other.tokens_trained
        kept = {"learning_rate", "cache", "batch_size", "delimiter", "prompt_format", "device", "dtype",
                "lora", "share_backbone"}  # the instance's own settings win
        owner.options = replace(owner.options, **{f.name: getattr(other.options, f.name)
                                                  for f in fields(owner.options) if f.name not in kept})
        for k in ("aggregation", "squash", "weight_decay", "train_backbone"):
            setattr(owner, k, getattr(owner.options, k))
        owner._after_inplace_load(other)
        if owner._optim is not None:
            owner._optim.knobs = owner.options
        if other._optim is not None:
            owner.optim.load_state_dict(other._optim.state_dict())
        owner.clear_cache()
        return owner

    @classmethod
    def _load_new(cls, path, tokenizer=None, resume=False, **overrides) -> "ScalarHeadPRM":
        cfg = read_prm_config(path)
        kind = cfg.pop("kind")
        cfg.pop("format_version", None)
        for old, new in (("lr", "learning_rate"), ("grad_clip", "max_grad_norm")):  # PRMs saved before the renames
            if old in cfg:
                cfg[new] = cfg.pop(old)
        target = cls
        if cls.kind != kind:
            if cls is not ScalarHeadPRM and not issubclass(PRM_CLASSES.get(kind, object), cls):
                raise ValueError(f"{os.fspath(path)!r} holds a {kind!r} PRM, not {cls.kind!r}: load it with load_prm()")
            if kind not in PRM_CLASSES:
                raise ValueError(f"unknown PRM kind {kind!r} in {path}; known: {sorted(PRM_CLASSES)}")
            target = PRM_CLASSES[kind]
        head_path = os.path.join(os.fspath(path), HEAD_FILE)
        if not os.path.exists(head_path):
            raise ValueError(f"{os.fspath(path)!r} has {PRM_CONFIG} but no {HEAD_FILE}: the PRM head is missing; re-save the PRM")
        model, tok = load_causal_lm(os.path.join(os.fspath(path), BACKBONE_DIR))
        for key, value in target.Options.legacy_options.items():  # saved before the option existed: as trained
            cfg.setdefault(key, value)
        cfg.update(overrides)
        cfg["share_backbone"] = False  # loaded on its own: its backbone directory is its own
        prm = target(model, tokenizer or tok, **cfg)
        if prm.net.adapter is not None:
            load_adapter(prm.net.model, os.path.join(os.fspath(path), ADAPTER_DIR), prm.net.adapter)
        state = torch.load(head_path, map_location="cpu", weights_only=False)
        prm.net.head.load_state_dict(state["head"])
        prm._load_extra_state(state.get("extra", {}))
        ts_path = os.path.join(os.fspath(path), TRAINER_STATE)
        if os.path.exists(ts_path):
            ts = torch.load(ts_path, map_location="cpu", weights_only=False)
            prm.updates = int(ts.get("updates", 0))
            prm.tokens_trained = int(ts.get("tokens_trained", 0))
            if resume:
                if ts.get("optimizer") is not None:
                    prm.optim.load_state_dict(ts["optimizer"])
                torch.set_rng_state(ts["torch_rng"])
                random.setstate(ts["python_rng"])
        return prm


def load_prm(path: str | os.PathLike, tokenizer: Any = None, resume: bool = False, **overrides) -> ProcessRewardModel:
    """Load any PRM saved by prmgym (the kind is read from ``prm_config.json``).

    >>> load_prm("/nonexistent")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    FileNotFoundError: no PRM directory at '/nonexistent': ...
    """
    import prmgym.rewards  # noqa: F401  (registers every kind)

    cfg = read_prm_config(path)
    cls = PRM_CLASSES.get(cfg["kind"])
    if cls is None:
        raise ValueError(f"unknown PRM kind {cfg['kind']!r} in {os.fspath(path)}; known: {sorted(PRM_CLASSES)}")
    return cls.load(path, tokenizer=tokenizer, resume=resume, **overrides)
