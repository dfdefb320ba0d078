"""Supervised fine-tuning on (prompt, completion) pairs — the first prmgym agent.

Loss: token-level cross-entropy on the completion tokens only (the prompt is context),
averaged over all completion tokens of the batch. Each example is laid out exactly as a
`TransformersPolicy` reads it: ``policy.encode(prompt) + tokens(completion) [+ eos]``, with
position ids counted from the first real token, so what is trained is what ``propose`` and
``logprobs`` see.

For reasoning environments the pair is (``render_trace(prompt, [])``, the steps each followed
by the delimiter) — see `trace_example`.

>>> from prmgym.models import tiny
>>> policy = tiny.random_tiny_policy(seed=0)
>>> trainer = SFTTrainer(policy, [("2+3=", "5\\n"), ("1+1=", "2\\n")], SFTConfig(batch_size=2))
>>> metrics = trainer.step()
>>> sorted(k for k in metrics if k.startswith("train/"))[:2]
['train/grad_norm', 'train/loss']
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass, fields
from typing import Iterable, Sequence

import numpy as np
import torch

from prmgym.agents.common import (
    POLICY_DIR,
    Callback,
    FunctionCallback,
    NonFiniteLossError,
    load_model_weights,
    load_trainer_state,
    rng_state,
    save_trainer_state,
    set_rng_state,
    write_checkpoint,
    write_json,
)
from prmgym.config import help_field as _f
from prmgym.envs.trace import DEFAULT_DELIMITER, render_trace
from prmgym.models.optim import OptimKnobs, Optimization, lr_at, micro_batches, prepare_model


@dataclass
class SFTConfig(OptimKnobs):
    """Hyperparameters of `SFTTrainer`. The optimiser, precision and memory knobs
    (learning_rate, lr_schedule, warmup_steps, schedule_steps, min_lr_ratio, max_grad_norm,
    micro_batch_size, gradient_checkpointing, dtype, device) are `OptimKnobs`'; their steps are
    SFT steps (one optimizer update each)."""

    learning_rate: float = _f(1e-3, "peak AdamW learning rate")
    warmup_steps: int = _f(20, "steps of linear warm-up to learning_rate")
    min_lr_ratio: float = _f(0.1, "linear/cosine: the final learning rate as a fraction of the peak")
    batch_size: int = _f(32, "examples per optimizer step (epochs drawn without replacement)")
    weight_decay: float = _f(0.01, "AdamW weight decay (not applied to biases and norms)")
    add_eos: bool = _f(True, "append the eos token to every completion (the model learns to stop)")
    loss_on_prompt: bool = _f(False, "also train on the prompt tokens (off: completion tokens only)")
    seed: int = _f(0, "seeds the batch order (the trainer's own numpy generator)")
    log_every: int = _f(10, "dump the logger every this many steps")

    def __post_init__(self) -> None:
        super().__post_init__()  # the OptimKnobs checks
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.log_every < 1:
            raise ValueError(f"log_every must be >= 1, got {self.log_every}")


def trace_example(prompt: str, steps: Sequence[str], delimiter: str = DEFAULT_DELIMITER) -> tuple[str, str]:
    """The SFT pair for a reasoning trace: the first observation and the steps after it.

    >>> trace_example("Compute 2+3.", ["2 + 3 = 5", "Answer: 5"])
    ('Compute 2+3.\\n', '2 + 3 = 5\\nAnswer: 5\\n')
    """
    first = render_trace(prompt, [], delimiter)
    return first, render_trace(prompt, steps, delimiter)[len(first):]


class SFTTrainer:
    """Supervised fine-tuning of a `TransformersPolicy` (trains ``policy.model`` in place).

    Args:
        policy: the policy to train (its tokenizer lays out the examples).
        examples: (prompt, completion) string pairs.
        config: `SFTConfig`.
        logger: a `prmgym.logger.Logger` (optional); metrics are recorded every step and
            dumped every ``config.log_every`` steps.
        callbacks: `Callback` objects or functions ``fn(trainer, metrics) -> bool | None``;
            returning False stops `train`.
    """

    def __init__(self, policy, examples: Iterable[tuple[str, str]], config: SFTConfig | None = None,
                 logger=None, callbacks: Sequence = ()) -> None:
        self.policy = policy
        self.config = config or SFTConfig()
        self.device = prepare_model(policy, self.config)  # device, gradient checkpointing (prmgym.models.optim)
        self.logger = logger
        self.callbacks: list[Callback] = [c if isinstance(c, Callback) else FunctionCallback(c) for c in callbacks]
        for cb in self.callbacks:
            cb.init_callback(self)
        tok = policy.tokenizer
        self.examples: list[tuple[list[int], list[int]]] = []
        for i, ex in enumerate(examples):
            if not (isinstance(ex, (tuple, list)) and len(ex) == 2 and all(isinstance(s, str) for s in ex)):
                raise TypeError(f"examples[{i}] must be a (prompt, completion) pair of strings, got {ex!r}")
            prompt_ids = policy.encode(ex[0])
            comp_ids = list(tok(ex[1], add_special_tokens=False)["input_ids"])
            if self.config.add_eos:
                comp_ids.append(tok.eos_token_id)
            if not comp_ids:
                raise ValueError(f"examples[{i}] has an empty completion and add_eos=False: nothing to train on")
            self.examples.append((prompt_ids, comp_ids))
        if not self.examples:
            raise ValueError("SFTTrainer needs at least one (prompt, completion) example")
        ctx = policy.context_length
        longest = max(len(p) + len(c) for p, c in self.examples)
        if ctx is not None and longest > ctx:
            raise ValueError(
                f"the longest example is {longest} tokens but the model's context is {ctx}; "
                "build the model with a larger n_positions or drop long examples"
            )
        self.model = policy.model
        decay, no_decay = [], []
        for name, p in self.model.named_parameters():
            if p.requires_grad:
                (no_decay if p.ndim < 2 else decay).append(p)
        self.optim = Optimization(self.config, [{"params": decay, "weight_decay": self.config.weight_decay},
                                                {"params": no_decay, "weight_decay": 0.0}], self.device)
        self.optimizer = self.optim.optimizer
        self.rng = np.random.default_rng(self.config.seed)
        self.num_steps = 0
        self._order: list[int] = []

    # ------------------------------------------------------------------ schedule
    def lr_at(self, step: int) -> float:
        """Learning rate for optimizer step ``step`` (0-based): `prmgym.models.optim.lr_at`."""
        return lr_at(self.config, step)

    # ------------------------------------------------------------------ batches
    def _next_indices(self) -> list[int]:
        out = []
        while len(out) < self.config.batch_size:
            if not self._order:
                self._order = self.rng.permutation(len(self.examples)).tolist()
            out.append(self._order.pop())
        return out

    def _batch(self, idx: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(input_ids, attention_mask, loss_mask), each (B, L), right padded."""
        rows = [self.examples[i] for i in idx]
        L = max(len(p) + len(c) for p, c in rows)
        pad = self.policy.tokenizer.pad_token_id
        ids = torch.full((len(rows), L), pad, dtype=torch.long)
        attn = torch.zeros((len(rows), L), dtype=torch.long)
        lmask = torch.zeros((len(rows), L), dtype=torch.bool)
        for r, (p, c) in enumerate(rows):
            seq = p + c
            ids[r, : len(seq)] = torch.tensor(seq)
            attn[r, : len(seq)] = 1
            lmask[r, (1 if self.config.loss_on_prompt else len(p)) : len(seq)] = True
        return ids.to(self.device), attn.to(self.device), lmask.to(self.device)

    # ------------------------------------------------------------------ training
    def step(self) -> dict[str, float]:
        """One optimizer step on one batch (accumulated over micro-batches of ``micro_batch_size``
        examples, each weighted by its share of the batch's completion tokens); returns its metrics."""
        t0 = time.perf_counter()
        self.model.train()
        idx = self._next_indices()
        weights = [self._trained_tokens(i) for i in idx]
        loss = acc = 0.0
        try:
            for micro, share in micro_batches(weights, self.config.micro_batch_size):
                ids, attn, lmask = self._batch([idx[i] for i in micro])
                pos = (attn.cumsum(-1) - 1).clamp(min=0)
                with self.optim.autocast():
                    logits = self.model(input_ids=ids, attention_mask=attn, position_ids=pos, use_cache=False).logits  # (B, L, V)
                pred = logits[:, :-1].float()  # (B, L-1, V): position t predicts token t+1; the loss in fp32
                target, m = ids[:, 1:], lmask[:, 1:]  # (B, L-1)
                nll = torch.nn.functional.cross_entropy(pred[m], target[m], reduction="mean")
                if not torch.isfinite(nll):
                    self.optim.zero_grad()
                    raise NonFiniteLossError(f"SFT loss is {nll.item()} at step {self.num_steps}; lower the learning rate")
                self.optim.backward(nll * share)
                loss += share * nll.item()
                with torch.no_grad():
                    acc += share * (pred[m].argmax(-1) == target[m]).float().mean().item()
            info = self.optim.step()  # schedule, clipping (prmgym.models.optim)
            if info["skipped"] and self.optim.scaler is None:
                raise NonFiniteLossError(f"SFT gradient norm is {info['grad_norm']} at step {self.num_steps}; lower the learning rate")
        finally:
            self.model.eval()
        self.num_steps += 1
        metrics = {
            "train/loss": loss,
            "train/token_accuracy": acc,
            "train/grad_norm": info["grad_norm"],
            "train/lr": info["lr"],
            "train/tokens": int(sum(weights)),
            "train/step": self.num_steps,
            "time/step_seconds": time.perf_counter() - t0,
        }
        if self.logger is not None:
            self.logger.record_dict(metrics)
            if self.num_steps % self.config.log_every == 0:
                self.logger.dump(self.num_steps)
        return metrics

    def _trained_tokens(self, i: int) -> int:
        p, c = self.examples[i]
        return len(c) + (len(p) - 1 if self.config.loss_on_prompt else 0)

    def train(self, num_steps: int, progress: bool = True) -> dict[str, float]:
        """Run ``num_steps`` steps (fewer if a callback returns False); returns the last metrics.

        A tqdm progress bar shows the running loss (``progress=False`` hides it).
        """
        from tqdm.auto import tqdm

        for cb in self.callbacks:
            cb.on_training_start()
        metrics: dict[str, float] = {}
        bar = tqdm(total=num_steps, desc="sft", disable=not progress, dynamic_ncols=True)
        ema = None
        try:
            for _ in range(num_steps):
                metrics = self.step()
                ema = metrics["train/loss"] if ema is None else 0.9 * ema + 0.1 * metrics["train/loss"]
                bar.update(1)
                bar.set_postfix(loss=f"{ema:.4f}", acc=f"{metrics['train/token_accuracy']:.3f}")
                if not all([cb.on_step(metrics) for cb in self.callbacks]):
                    break
        finally:
            bar.close()
            if self.logger is not None and self.num_steps % self.config.log_every:
                self.logger.dump(self.num_steps)
            for cb in self.callbacks:
                cb.on_training_end()
        return metrics

    # ------------------------------------------------------------------ checkpoints
    def save(self, path: str | os.PathLike) -> str:
        """Write the policy (``save_pretrained`` into ``path/policy``) and the trainer state
        (optimizer, RNG states, step counter, config) into ``path/trainer_state.pt``, atomically
        (`prmgym.checkpoints.write_checkpoint`: ``path`` is replaced as a whole)."""

        def write(tmp: str) -> None:
            self.policy.save(os.path.join(tmp, POLICY_DIR))
            save_trainer_state(tmp, {
                "optimizer": self.optim.state_dict(),
                "rng": rng_state(self.rng),
                "order": list(self._order),
                "num_steps": self.num_steps,
                "config": asdict(self.config),
            })
            write_json(os.path.join(tmp, "sft_config.json"), asdict(self.config))

        return write_checkpoint(path, write)

    def load(self, path: str | os.PathLike) -> "SFTTrainer":
        """Resume from `save`: model weights, optimizer, RNG, batch order and step counter.
        Training continues exactly as if it had not stopped."""
        path = os.fspath(path)
        state = load_trainer_state(path, who="SFTTrainer.save")
        saved_cfg = state.get("config", {})
        known = {f.name for f in fields(SFTConfig)}
        diff = {k: (v, getattr(self.config, k)) for k, v in saved_cfg.items() if k in known and getattr(self.config, k) != v}
        if diff:
            raise ValueError(f"checkpoint config differs from this trainer's config (saved, current): {diff}")
        load_model_weights(self.model, os.path.join(path, POLICY_DIR))
        self.optim.load_state_dict(state["optimizer"])
        set_rng_state(state["rng"], self.rng)
        self._order = list(state["order"])
        self.num_steps = int(state["num_steps"])
        return self
