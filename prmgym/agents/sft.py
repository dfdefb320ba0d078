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

import math
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
from prmgym.envs.trace import DEFAULT_DELIMITER, render_trace


@dataclass
class SFTConfig:
    """Hyperparameters of `SFTTrainer`.

    Attributes:
        learning_rate: peak AdamW learning rate.
        batch_size: examples per optimizer step (sampled with replacement-free epochs).
        warmup_steps: linear warm-up from 0 to ``learning_rate``.
        total_steps: length of the cosine decay to ``min_lr_ratio * learning_rate``;
            0 keeps the rate constant after warm-up.
        min_lr_ratio: final learning rate as a fraction of the peak.
        weight_decay: AdamW weight decay (not applied to biases and norms).
        max_grad_norm: gradient clipping (0 disables).
        add_eos: append the eos token to every completion (the model learns to stop).
        loss_on_prompt: also train on the prompt tokens (off: completion tokens only).
        seed: seeds the batch order (the trainer's own numpy generator).
        log_every: dump the logger every this many steps.
    """

    learning_rate: float = 1e-3
    batch_size: int = 32
    warmup_steps: int = 20
    total_steps: int = 0
    min_lr_ratio: float = 0.1
    weight_decay: float = 0.01
    max_grad_norm: float = 1.0
    add_eos: bool = True
    loss_on_prompt: bool = False
    seed: int = 0
    log_every: int = 10

    def __post_init__(self) -> None:
        if self.learning_rate <= 0:
            raise ValueError(f"learning_rate must be > 0, got {self.learning_rate}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.warmup_steps < 0 or self.total_steps < 0:
            raise ValueError("warmup_steps and total_steps must be >= 0")
        if not 0.0 <= self.min_lr_ratio <= 1.0:
            raise ValueError(f"min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}")
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
        self.device = policy.device
        decay, no_decay = [], []
        for name, p in self.model.named_parameters():
            if p.requires_grad:
                (no_decay if p.ndim < 2 else decay).append(p)
        self.optimizer = torch.optim.AdamW(
            [{"params": decay, "weight_decay": self.config.weight_decay},
             {"params": no_decay, "weight_decay": 0.0}],
            lr=self.config.learning_rate,
        )
        self.rng = np.random.default_rng(self.config.seed)
        self.num_steps = 0
        self._order: list[int] = []

    # ------------------------------------------------------------------ schedule
    def lr_at(self, step: int) -> float:
        """Learning rate for optimizer step ``step`` (0-based): warm-up, then cosine or constant."""
        c = self.config
        if c.warmup_steps and step < c.warmup_steps:
            return c.learning_rate * (step + 1) / c.warmup_steps
        if not c.total_steps:
            return c.learning_rate
        span = max(1, c.total_steps - c.warmup_steps)
        frac = min(1.0, (step - c.warmup_steps) / span)
        return c.learning_rate * (c.min_lr_ratio + (1 - c.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * frac)))

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
        """One optimizer step on one batch; returns its metrics."""
        t0 = time.perf_counter()
        self.model.train()
        ids, attn, lmask = self._batch(self._next_indices())
        pos = (attn.cumsum(-1) - 1).clamp(min=0)
        logits = self.model(input_ids=ids, attention_mask=attn, position_ids=pos).logits  # (B, L, V)
        pred = logits[:, :-1].float()  # (B, L-1, V): position t predicts token t+1
        target = ids[:, 1:]  # (B, L-1)
        m = lmask[:, 1:]  # (B, L-1)
        nll = torch.nn.functional.cross_entropy(pred[m], target[m], reduction="mean")
        if not torch.isfinite(nll):
            raise NonFiniteLossError(f"SFT loss is {nll.item()} at step {self.num_steps}; lower the learning rate")
        lr = self.lr_at(self.num_steps)
        for g in self.optimizer.param_groups:
            g["lr"] = lr
        self.optimizer.zero_grad(set_to_none=True)
        nll.backward()
        if self.config.max_grad_norm:
            gn = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.config.max_grad_norm)
        else:
            gn = torch.sqrt(sum((p.grad.float() ** 2).sum() for p in self.model.parameters() if p.grad is not None))
        self.optimizer.step()
        self.model.eval()
        self.num_steps += 1
        with torch.no_grad():
            acc = (pred[m].argmax(-1) == target[m]).float().mean().item()
        metrics = {
            "train/loss": nll.item(),
            "train/token_accuracy": acc,
            "train/grad_norm": float(gn),
            "train/lr": lr,
            "train/tokens": int(m.sum().item()),
            "train/step": self.num_steps,
            "time/step_seconds": time.perf_counter() - t0,
        }
        if self.logger is not None:
            self.logger.record_dict(metrics)
            if self.num_steps % self.config.log_every == 0:
                self.logger.dump(self.num_steps)
        return metrics

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
                "optimizer": self.optimizer.state_dict(),
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
        self.optimizer.load_state_dict(state["optimizer"])
        set_rng_state(state["rng"], self.rng)
        self._order = list(state["order"])
        self.num_steps = int(state["num_steps"])
        return self
