"""Optimisation knobs every trainer shares: the LR schedule, grad-norm clipping, gradient
accumulation over micro-batches, mixed precision, the device and gradient checkpointing.

* `OptimKnobs` -- the fields (with help text and checks) that `GRPOConfig`, `SFTConfig` and
  the PRMs' `PRMOptions` inherit, so one YAML key means the same thing everywhere.
* `lr_at` -- the schedule: linear warm-up over ``warmup_steps`` updates, then ``constant``, or a
  ``linear`` / ``cosine`` decay to ``min_lr_ratio * learning_rate`` at update ``schedule_steps``.
* `Optimization` -- an AdamW (or any torch optimizer) driven by those knobs: it sets the
  learning rate of every update, scales the loss for fp16, clips, refuses non-finite gradient
  norms and reports ``lr`` and ``grad_norm`` (the trainers log them as ``train/lr`` and
  ``train/grad_norm``); its `~Optimization.state_dict` resumes the schedule exactly.
* `micro_batches` -- how a batch is cut into micro-batches and what share of the loss's
  normaliser each one carries, so the weighted sum of micro-batch losses *is* the batch loss
  and the accumulated gradient equals the one-batch gradient.
* `autocast` / `check_precision` -- ``bf16`` / ``fp16`` autocast of the forward passes with the
  weights (and the AdamW state) kept in fp32; losses are computed from fp32 logits. ``fp16``
  needs CUDA (it needs a `torch.amp.GradScaler`): on CPU it is refused with the fix.
* `resolve_device` -- ``"auto"`` is ``cuda`` when a GPU is visible, else ``cpu``.
* `enable_gradient_checkpointing` -- Hugging Face activation checkpointing, checked.

>>> knobs = OptimKnobs(learning_rate=1.0, lr_schedule="linear", warmup_steps=2, schedule_steps=6)
>>> [round(lr_at(knobs, u), 2) for u in range(7)]
[0.5, 1.0, 1.0, 0.75, 0.5, 0.25, 0.0]
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import Any, Iterable, Sequence

import torch

from prmgym.config import ConfigError, help_field

LR_SCHEDULES = ("constant", "linear", "cosine")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
#: spellings of the dtypes that are accepted and mapped to the short names
DTYPE_ALIASES = {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16", "half": "fp16", "float": "fp32"}

_f = help_field


@dataclass
class OptimKnobs:
    """Optimiser, memory and precision knobs (inherited by the trainer and PRM configs).

    Units: ``warmup_steps`` and ``schedule_steps`` count *optimizer updates* (GRPO makes
    ``num_iterations x num_mini_batches`` of them per trainer step; `prmgym train` fills
    ``schedule_steps`` from ``steps`` when a decaying schedule is asked for)."""

    learning_rate: float = _f(1e-4, "peak AdamW learning rate")
    lr_schedule: str = _f("constant", "constant | linear | cosine (after the warm-up; decays to "
                          "min_lr_ratio * learning_rate at schedule_steps)")
    warmup_steps: int = _f(0, "optimizer updates of linear warm-up from learning_rate / warmup_steps to learning_rate")
    schedule_steps: int = _f(0, "optimizer updates the linear/cosine schedule spans, warm-up included (needed by them)")
    min_lr_ratio: float = _f(0.0, "linear/cosine: the final learning rate as a fraction of the peak")
    max_grad_norm: float = _f(1.0, "clip the gradient norm of every update to this (0 = off; the norm is still logged)")
    micro_batch_size: int = _f(0, "gradient accumulation: forward/backward this many sequences at a time and "
                               "take one optimizer step per batch, with the same loss (0 = the whole batch at once)")
    gradient_checkpointing: bool = _f(False, "recompute activations in the backward pass (Hugging Face "
                                      "gradient_checkpointing_enable): less memory, ~30% more compute")
    dtype: str = _f("fp32", "compute precision of the forward passes: fp32 | bf16 | fp16 (autocast; weights and "
                    "optimizer state stay fp32, losses are computed in fp32; fp16 needs CUDA)")
    device: str | None = _f(None, "move the model here first: auto (cuda if visible, else cpu) | cpu | cuda | "
                            "cuda:N | mps; None = leave it where it is")

    def __post_init__(self) -> None:
        check_knobs(self)


def check_knobs(k: Any) -> None:
    """The checks of `OptimKnobs` (also usable on any object with its fields)."""
    if not k.learning_rate > 0:
        raise ValueError(f"learning_rate must be > 0, got {k.learning_rate}")
    if k.lr_schedule not in LR_SCHEDULES:
        raise ValueError(f"unknown lr_schedule {k.lr_schedule!r}; choose one of {', '.join(LR_SCHEDULES)}")
    for name in ("warmup_steps", "schedule_steps", "micro_batch_size"):
        if getattr(k, name) < 0:
            raise ValueError(f"{name} must be >= 0, got {getattr(k, name)}")
    if k.lr_schedule != "constant" and k.schedule_steps < 1:
        raise ValueError(
            f"lr_schedule {k.lr_schedule} decays over schedule_steps optimizer updates, and schedule_steps is 0; set it "
            "to the run's optimizer updates (prmgym train fills it from steps), or use lr_schedule: constant"
        )
    if not 0.0 <= k.min_lr_ratio <= 1.0:
        raise ValueError(f"min_lr_ratio must be in [0, 1], got {k.min_lr_ratio}")
    if k.max_grad_norm < 0:
        raise ValueError(f"max_grad_norm must be >= 0 (0 = no clipping), got {k.max_grad_norm}")
    k.dtype = dtype_name(k.dtype)
    if k.device is not None:
        check_device_name(k.device)


def dtype_name(dtype: Any) -> str:
    """``"bf16"`` for ``"bf16"``, ``"bfloat16"`` or ``torch.bfloat16``; a clear error otherwise."""
    if isinstance(dtype, torch.dtype):
        for name, d in DTYPES.items():
            if d == dtype:
                return name
    name = DTYPE_ALIASES.get(str(dtype).lower(), str(dtype).lower())
    if name not in DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; choose one of {', '.join(DTYPES)}")
    return name


def torch_dtype(dtype: Any) -> torch.dtype:
    """The torch dtype of a dtype name (`dtype_name` spellings)."""
    return DTYPES[dtype_name(dtype)]


def check_device_name(device: Any) -> str:
    """``device`` if torch can parse it (or it is ``"auto"``); a clear error otherwise."""
    if isinstance(device, torch.device) or device == "auto":
        return str(device)
    try:
        torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"unknown device {device!r}; use auto, cpu, cuda, cuda:N or mps") from None
    return str(device)


def resolve_device(device: Any = "auto") -> torch.device:
    """A `torch.device` for ``"auto"`` (``cuda`` when a GPU is visible, else ``cpu``), None (cpu),
    or a device name; a device this machine lacks is refused with the fix.

    >>> resolve_device("cpu")
    device(type='cpu')
    """
    if device is None:
        return torch.device("cpu")
    if isinstance(device, torch.device):
        dev = device
    elif device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        dev = torch.device(check_device_name(device))
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} asked for, but torch sees no CUDA GPU here; use device cpu (or auto)")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise ValueError(f"device {device!r}: only {torch.cuda.device_count()} CUDA device(s) visible")
    if dev.type == "mps" and not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
        raise ValueError(f"device {device!r} asked for, but MPS is not available here; use device cpu (or auto)")
    return dev


# --------------------------------------------------------------------------- precision
def check_precision(dtype: Any, device: Any) -> str:
    """The dtype name if ``dtype`` can run on ``device``; fp16 off CUDA is refused."""
    name = dtype_name(dtype)
    dev = device if isinstance(device, torch.device) else resolve_device(device)
    if name == "fp16" and dev.type != "cuda":
        raise ValueError(
            f"dtype fp16 needs a CUDA device (fp16 training needs loss scaling, done here with "
            f"torch.amp.GradScaler on CUDA only); the model is on {dev.type}. Use dtype bf16 (or fp32) on {dev.type}"
        )
    return name


def autocast(dtype: Any, device: Any) -> contextlib.AbstractContextManager:
    """``torch.autocast`` to ``dtype`` on ``device``'s type, or a no-op for fp32.

    Inside, matrix multiplications run in bf16/fp16 while the weights stay fp32; callers cast
    logits with ``.float()`` before ``log_softmax`` / the loss, so losses are fp32."""
    name = check_precision(dtype, device)
    if name == "fp32":
        return contextlib.nullcontext()
    dev = device if isinstance(device, torch.device) else resolve_device(device)
    return torch.autocast(device_type=dev.type, dtype=DTYPES[name])


def resolve_precision(dtype: Any, device: Any) -> tuple[str, torch.device]:
    """For the commands: ``(dtype name, device)`` of a ``--dtype`` / ``--device`` pair, with every
    problem (unknown names, a device this machine lacks, fp16 off CUDA) as a `ConfigError`."""
    try:
        dev = resolve_device(device if device is not None else "auto")
        return check_precision(dtype if dtype is not None else "fp32", dev), dev
    except ValueError as e:
        raise ConfigError(str(e)) from None


def model_device(model: torch.nn.Module) -> torch.device:
    for p in model.parameters():
        return p.device
    return torch.device("cpu")


# --------------------------------------------------------------------------- gradient checkpointing
def enable_gradient_checkpointing(model: torch.nn.Module) -> None:
    """Turn on activation checkpointing of a Hugging Face model (non-reentrant, so inputs need no
    gradient). The trainers' loss forwards pass ``use_cache=False``: a cache is useless there and
    Hugging Face disables checkpointing next to one. Raises for a model that cannot do it."""
    if not getattr(model, "supports_gradient_checkpointing", False) or not hasattr(model, "gradient_checkpointing_enable"):
        raise ValueError(
            f"gradient_checkpointing: {type(model).__name__} does not support it (it needs a Hugging Face "
            "PreTrainedModel with supports_gradient_checkpointing); set gradient_checkpointing: false"
        )
    if hasattr(model, "activation_checkpointing_enable"):  # its name from transformers 5.x on
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if getattr(model, "config", None) is not None and hasattr(model.config, "use_cache"):
        model.config.use_cache = False


def gradient_checkpointing_on(model: torch.nn.Module) -> bool:
    """Whether ``model`` (or a module inside it) has activation checkpointing switched on."""
    return any(getattr(m, "gradient_checkpointing", False) is True for m in model.modules())


# --------------------------------------------------------------------------- schedule
def lr_at(knobs: Any, update: int) -> float:
    """Learning rate of optimizer update ``update`` (0-based).

    Warm-up: ``learning_rate * (update + 1) / warmup_steps`` for the first ``warmup_steps``
    updates. Then ``constant``: ``learning_rate``; ``linear`` / ``cosine``: from
    ``learning_rate`` down to ``min_lr_ratio * learning_rate`` over the updates up to
    ``schedule_steps``, and that floor after it."""
    lr, warm = knobs.learning_rate, knobs.warmup_steps
    if warm and update < warm:
        return lr * (update + 1) / warm
    if knobs.lr_schedule == "constant":
        return lr
    frac = min(1.0, (update - warm) / max(1, knobs.schedule_steps - warm))
    shape = 1.0 - frac if knobs.lr_schedule == "linear" else 0.5 * (1.0 + math.cos(math.pi * frac))
    return lr * (knobs.min_lr_ratio + (1.0 - knobs.min_lr_ratio) * shape)


# --------------------------------------------------------------------------- micro-batches
def micro_batches(weights: Sequence[float], micro_batch_size: int) -> list[tuple[list[int], float]]:
    """Cut ``len(weights)`` sequences into consecutive micro-batches of ``micro_batch_size``
    (0 = one micro-batch) and give each its share of the loss normaliser.

    ``weights[i]`` is sequence i's part of the normaliser of the batch loss: its trained token
    count for a token-mean loss, 1 (if it has a trained token) for a sequence mean, 1 for a
    constant-per-sequence normaliser. A micro-batch's loss, normalised over its own sequences,
    times its share ``sum(weights[micro]) / sum(weights)`` summed over micro-batches is the batch
    loss; so are the gradients.

    >>> micro_batches([3, 1, 0, 4], 2)
    [([0, 1], 0.5), ([2, 3], 0.5)]
    """
    n = len(weights)
    size = micro_batch_size if 0 < micro_batch_size < n else max(n, 1)
    chunks = [list(range(s, min(n, s + size))) for s in range(0, n, size)] or [[]]
    total = float(sum(weights))
    if total <= 0:  # nothing trained: every micro-batch loss is 0; keep the graph, weight equally
        return [(c, 1.0 / len(chunks)) for c in chunks]
    return [(c, float(sum(weights[i] for i in c)) / total) for c in chunks]


# --------------------------------------------------------------------------- the optimizer
class Optimization:
    """An optimizer run by `OptimKnobs`: schedule, fp16 loss scaling, clipping, logging values.

    Use per optimizer update::

        opt.zero_grad()
        for idx, share in micro_batches(weights, knobs.micro_batch_size):
            with opt.autocast():
                loss = loss_of(idx)              # normalised over the micro-batch
            opt.backward(loss * share)
        info = opt.step()                        # {"lr": ..., "grad_norm": ..., "skipped": ...}

    ``params`` are parameters or parameter groups (a group's ``lr_scale`` multiplies the scheduled
    learning rate for its parameters); ``optimizer_kwargs`` go to the optimizer
    (AdamW: betas, weight_decay). ``device`` is where the model lives (for autocast / fp16).
    `step` sets the learning rate from `lr_at`, unscales (fp16), clips to ``max_grad_norm`` and
    steps; a non-finite gradient norm skips the update (fp16: the scaler lowers its scale and
    that is normal; otherwise ``skipped`` is 1 and the caller decides -- the trainers stop)."""

    def __init__(self, knobs: Any, params: Iterable[Any], device: Any = "cpu",
                 optimizer_cls: type = torch.optim.AdamW, **optimizer_kwargs: Any) -> None:
        self.knobs = knobs
        self.device = device if isinstance(device, torch.device) else resolve_device(device)
        self.dtype = check_precision(knobs.dtype, self.device)
        self.optimizer = optimizer_cls(params, lr=lr_at(knobs, 0), **optimizer_kwargs)
        self.scaler = torch.amp.GradScaler("cuda") if self.dtype == "fp16" else None
        self.updates = 0

    def params(self) -> list[torch.nn.Parameter]:
        return [p for g in self.optimizer.param_groups for p in g["params"]]

    @property
    def lr(self) -> float:
        """The learning rate the next update will use."""
        return lr_at(self.knobs, self.updates)

    def autocast(self) -> contextlib.AbstractContextManager:
        return autocast(self.dtype, self.device)

    def zero_grad(self) -> None:
        self.optimizer.zero_grad(set_to_none=True)

    def backward(self, loss: torch.Tensor) -> None:
        (self.scaler.scale(loss) if self.scaler is not None else loss).backward()

    def step(self) -> dict[str, float]:
        lr = self.lr
        for g in self.optimizer.param_groups:
            g["lr"] = lr * g.get("lr_scale", 1.0)  # a group may run at a multiple of the schedule (a PRM's head)
        params = [p for p in self.params() if p.grad is not None]
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)
        clip = self.knobs.max_grad_norm if self.knobs.max_grad_norm > 0 else float("inf")
        gnorm = float(torch.nn.utils.clip_grad_norm_(params, clip)) if params else 0.0
        skipped = 0.0
        if self.scaler is not None:
            scale = self.scaler.get_scale()
            self.scaler.step(self.optimizer)  # skips the update on inf/nan gradients
            self.scaler.update()
            skipped = float(self.scaler.get_scale() < scale)
        elif math.isfinite(gnorm):
            self.optimizer.step()
        else:
            skipped = 1.0
        self.zero_grad()
        if not skipped:
            self.updates += 1
        return {"lr": lr, "grad_norm": gnorm, "skipped": skipped}

    def state_dict(self) -> dict:
        return {"optimizer": self.optimizer.state_dict(), "updates": self.updates,
                "scaler": self.scaler.state_dict() if self.scaler is not None else None}

    def load_state_dict(self, state: dict) -> None:
        """Restore `state_dict` (a bare optimizer state dict of older checkpoints is accepted:
        the schedule then restarts at update 0)."""
        if "optimizer" not in state or "updates" not in state:
            self.optimizer.load_state_dict(state)
            return
        self.optimizer.load_state_dict(state["optimizer"])
        self.updates = int(state["updates"])
        if self.scaler is not None and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])


def prepare_model(target: Any, knobs: Any) -> torch.device:
    """Apply the model-side knobs to a policy (anything with ``.model``) or a model: ``device``
    (if set: move there, keeping a policy's ``device`` attribute in step; else it stays where it
    is) and ``gradient_checkpointing``; check ``dtype`` against the device. Returns the device."""
    # a module is the model itself (Llama/Qwen2 causal LMs have a .model attribute too: their body)
    model = target if isinstance(target, torch.nn.Module) else getattr(target, "model", target)
    if knobs.device is not None:
        dev = resolve_device(knobs.device)
        model.to(dev)
        if model is not target and hasattr(target, "device"):
            target.device = dev
    if knobs.gradient_checkpointing:
        enable_gradient_checkpointing(model)
    dev = model_device(model)
    check_precision(knobs.dtype, dev)
    return dev
