"""LoRA through PEFT: low-rank adapters for the policy, its KL reference and the PRMs.

* `LoRAConfig` -- rank, alpha, dropout and the target modules (a default per architecture:
  GPT-2 ``c_attn``/``c_proj``; Llama, Qwen2, Mistral ``q_proj``/``k_proj``/``v_proj``/``o_proj``).
* `apply_lora(model, cfg)` -- wraps a causal LM in a ``peft.PeftModel`` whose base weights are
  frozen; `add_adapter` puts a second, independently trained adapter on the same model (a PRM
  sharing the policy's frozen backbone).
* `reference_model(model)` -- the GRPO KL reference: for a LoRA model the same module run with
  its adapters off (no second copy of the weights); for a fully trained model a frozen copy.
* `save_adapter` / `load_adapter` -- PEFT's own format (``adapter_config.json`` +
  ``adapter_model.safetensors``), loadable with ``peft.PeftModel.from_pretrained(base, dir)``.

Switching adapters. PEFT's ``set_adapter`` and ``disable_adapter()`` also flip
``requires_grad`` (only the active adapter stays trainable), which would freeze a PRM adapter
that shares the policy's model. `adapter_active` and `adapters_disabled` switch what the
forward pass uses and nothing else; each owner (policy, PRM) keeps its own optimizer over its
own adapter's parameters. The switch is model-wide state: run the owners of one shared model
from one thread.

>>> cfg = LoRAConfig(r=4)
>>> cfg.alpha, cfg.target_modules
(8, None)
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from typing import Any, Iterator

from prmgym.config import help_field

_f = help_field

#: the policy's adapter name (PEFT's default); PRMs sharing its backbone add their own
POLICY_ADAPTER = "default"
ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"

#: model_type -> (target module names, fan_in_fan_out: weights stored (in, out) as GPT-2's Conv1D)
DEFAULT_TARGETS: dict[str, tuple[tuple[str, ...], bool]] = {
    "gpt2": (("c_attn", "c_proj"), True),
    "llama": (("q_proj", "k_proj", "v_proj", "o_proj"), False),
    "qwen2": (("q_proj", "k_proj", "v_proj", "o_proj"), False),
    "qwen3": (("q_proj", "k_proj", "v_proj", "o_proj"), False),
    "mistral": (("q_proj", "k_proj", "v_proj", "o_proj"), False),
}

_INSTALL = "pip install -e '.[lora]' (or pip install 'peft>=0.11')"


@dataclass
class LoRAConfig:
    """Low-rank adapters (Hu et al. 2021): each target weight W becomes W + (alpha / r) B A with
    A (r x in), B (out x r), B starting at zero, so the adapted model starts equal to the base."""

    r: int = _f(8, "adapter rank")
    alpha: float = _f(16.0, "scaling numerator: the update is scaled by alpha / r")
    dropout: float = _f(0.0, "dropout on the adapter's input (training only)")
    target_modules: list[str] | None = _f(None, "module names to adapt; None = the architecture's default "
                                          "(gpt2: c_attn, c_proj; llama/qwen2/mistral: q_proj, k_proj, v_proj, o_proj)")

    def __post_init__(self) -> None:
        if self.r < 1:
            raise ValueError(f"lora.r must be >= 1, got {self.r}")
        if self.alpha <= 0:
            raise ValueError(f"lora.alpha must be > 0, got {self.alpha}")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"lora.dropout must be in [0, 1), got {self.dropout}")
        if self.target_modules is not None and not self.target_modules:
            raise ValueError("lora.target_modules is empty; list module names (e.g. [q_proj, v_proj]) or drop the key")


def lora_config(value: Any) -> LoRAConfig | None:
    """``None``/``False`` -> None; ``True``/``{}`` -> defaults; a mapping -> its fields; a config as is."""
    from prmgym.config import from_dict

    if value is None or value is False:
        return None
    if value is True:
        return LoRAConfig()
    return from_dict(LoRAConfig, value, where="lora")


def _peft():
    try:
        import peft
    except ImportError as e:
        raise ImportError(f"LoRA needs the 'peft' package: {_INSTALL}") from e
    return peft


def is_peft_model(model: Any) -> bool:
    try:
        from peft import PeftModel
    except ImportError:
        return False
    return isinstance(model, PeftModel)


def base_model(model: Any) -> Any:
    """The underlying transformers model (adapter layers injected in it) of a PEFT model; else ``model``."""
    return model.get_base_model() if is_peft_model(model) else model


def default_targets(model: Any) -> tuple[list[str], bool]:
    """(target module names, fan_in_fan_out) for ``model``'s architecture."""
    mtype = getattr(getattr(base_model(model), "config", None), "model_type", None)
    if mtype not in DEFAULT_TARGETS:
        import torch

        linear = sorted({n.rsplit(".", 1)[-1] for n, m in base_model(model).named_modules()
                         if isinstance(m, torch.nn.Linear) or type(m).__name__ == "Conv1D"})
        raise ValueError(
            f"no default LoRA target modules for model_type {mtype!r} (known: {', '.join(DEFAULT_TARGETS)}); "
            f"set lora.target_modules to some of this model's linear layers: {', '.join(linear[:12])}"
        )
    names, fifo = DEFAULT_TARGETS[mtype]
    return list(names), fifo


def _peft_config(model: Any, cfg: LoRAConfig):
    peft = _peft()
    targets, fifo = default_targets(model) if cfg.target_modules is None else (list(cfg.target_modules), None)
    if fifo is None:
        mtype = getattr(getattr(base_model(model), "config", None), "model_type", None)
        fifo = DEFAULT_TARGETS.get(mtype, ((), False))[1]
    return peft.LoraConfig(r=int(cfg.r), lora_alpha=cfg.alpha, lora_dropout=float(cfg.dropout),
                           target_modules=targets, fan_in_fan_out=fifo, bias="none", task_type="CAUSAL_LM")


def apply_lora(model: Any, cfg: LoRAConfig | None = None, adapter: str = POLICY_ADAPTER) -> Any:
    """``model`` wrapped in a ``peft.PeftModel`` with one adapter named ``adapter``: the base
    weights are frozen, the adapter's are trainable. Its initial outputs equal the base model's.
    A model that already is a PEFT model gets ``adapter`` added (see `add_adapter`)."""
    cfg = cfg or LoRAConfig()
    if is_peft_model(model):
        return add_adapter(model, cfg, adapter)
    peft = _peft()
    try:
        out = peft.get_peft_model(model, _peft_config(model, cfg), adapter_name=adapter)
    except ValueError as e:
        if "target modules" in str(e).lower():
            raise ValueError(f"lora.target_modules {cfg.target_modules} match no module of this model ({e})") from e
        raise
    set_trainable(out, adapter)
    return out


def add_adapter(model: Any, cfg: LoRAConfig, adapter: str) -> Any:
    """Add a second adapter ``adapter`` to the PEFT model ``model`` (in place; returns it).
    Every adapter stays trainable by its own optimizer; the active one stays what it was."""
    if not is_peft_model(model):
        raise TypeError("add_adapter needs a PEFT model: wrap the model with apply_lora first")
    if adapter in model.peft_config:
        raise ValueError(f"the model already has an adapter named {adapter!r}; choose another name")
    active = _active_names(model)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    model.add_adapter(adapter, _peft_config(model, cfg))
    for n, p in model.named_parameters():  # PEFT re-marks only the active adapter trainable
        if n in trainable:
            p.requires_grad_(True)
    set_trainable(model, adapter)
    _set_active(model, active)
    return model


def set_trainable(model: Any, adapter: str) -> None:
    for p in adapter_parameters(model, adapter):
        p.requires_grad_(True)


def adapter_parameters(model: Any, adapter: str = POLICY_ADAPTER) -> list:
    """The parameters of adapter ``adapter`` (the LoRA A and B matrices), in a fixed order."""
    return [p for n, p in model.named_parameters() if _param_adapter(n) == adapter]


def _param_adapter(name: str) -> str | None:
    parts = name.split(".")
    for i, part in enumerate(parts[:-1]):
        if part.startswith("lora_") and i + 1 < len(parts):
            return parts[i + 1]
    return None


def policy_parameters(model: Any) -> list:
    """What a policy trainer optimises: the parameters with ``requires_grad``, except the
    adapters of PRMs that share this model (`prm_adapter`)."""
    return [p for n, p in model.named_parameters()
            if p.requires_grad and (_param_adapter(n) or POLICY_ADAPTER) == POLICY_ADAPTER]


def trainable_parameters(model: Any) -> list[tuple[str, int]]:
    """``[(name, numel)]`` of the parameters with ``requires_grad``."""
    return [(n, p.numel()) for n, p in model.named_parameters() if p.requires_grad]


def parameter_summary(model: Any) -> dict[str, float]:
    """Trainable and total parameter counts (tied weights counted once) and the trainable fraction."""
    seen, total, trainable = set(), 0, 0
    for _, p in model.named_parameters():
        if p.data_ptr() in seen:
            continue
        seen.add(p.data_ptr())
        total += p.numel()
        trainable += p.numel() if p.requires_grad else 0
    return {"trainable": trainable, "total": total, "trainable_frac": trainable / max(total, 1)}


# ------------------------------------------------------------------ switching
def _tuner_layers(model: Any) -> Iterator[Any]:
    from peft.tuners.tuners_utils import BaseTunerLayer

    for m in model.modules():
        if isinstance(m, BaseTunerLayer):
            yield m


def _active_names(model: Any) -> list[str]:
    for layer in _tuner_layers(model):
        return list(layer.active_adapters)
    return [POLICY_ADAPTER]


def _set_active(model: Any, names: list[str]) -> None:
    for layer in _tuner_layers(model):
        layer._active_adapter = list(names)


@contextlib.contextmanager
def adapter_active(model: Any, adapter: str | None) -> Iterator[None]:
    """Run ``model`` with adapter ``adapter`` active (None or a non-PEFT model: unchanged).
    Only the forward pass changes: ``requires_grad`` of every adapter stays as it is."""
    if adapter is None or not is_peft_model(model):
        yield
        return
    if adapter not in model.peft_config:
        raise ValueError(f"the model has no adapter {adapter!r}; it has {', '.join(model.peft_config)}")
    before = _active_names(model)
    _set_active(model, [adapter])
    try:
        yield
    finally:
        _set_active(model, before)


@contextlib.contextmanager
def adapters_disabled(model: Any) -> Iterator[None]:
    """Run the PEFT model ``model`` as its base model (every adapter off); ``requires_grad`` unchanged."""
    layers = list(_tuner_layers(model))
    before = [layer._disable_adapters for layer in layers]
    for layer in layers:
        layer._disable_adapters = True
    try:
        yield
    finally:
        for layer, b in zip(layers, before):
            layer._disable_adapters = b


class AdaptersOff:
    """The frozen base of a PEFT model, called like a model: the same module run with its
    adapters off. Holds no weights of its own (``state_dict()`` is empty), so a GRPO reference
    costs no memory and its checkpoint nothing."""

    def __init__(self, model: Any) -> None:
        self.model = model

    def __call__(self, *args, **kwargs):
        with adapters_disabled(self.model):
            return self.model(*args, **kwargs)

    def parameters(self):
        return self.model.parameters()

    def eval(self) -> "AdaptersOff":
        return self

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        if state:
            raise ValueError("this run's reference model is the LoRA base (adapters off) but the checkpoint holds "
                             "a full reference model: resume with the run's own lora setting")


def reference_model(model: Any) -> Any:
    """The KL reference: `AdaptersOff` for a PEFT model, else a frozen deep copy."""
    if is_peft_model(model):
        return AdaptersOff(model)
    import copy

    ref = copy.deepcopy(model).eval()
    for p in ref.parameters():
        p.requires_grad_(False)
    return ref


# ------------------------------------------------------------------ save / load (PEFT format)
def save_adapter(model: Any, path: str | os.PathLike, adapter: str = POLICY_ADAPTER) -> str:
    """Write adapter ``adapter`` of ``model`` in PEFT's format (``adapter_config.json`` +
    ``adapter_model.safetensors``); ``peft.PeftModel.from_pretrained(base, path)`` reads it."""
    peft = _peft()
    from safetensors.torch import save_file

    path = os.fspath(path)
    os.makedirs(path, exist_ok=True)
    sd = peft.get_peft_model_state_dict(model, adapter_name=adapter)
    save_file({k: v.detach().contiguous().cpu() for k, v in sd.items()}, os.path.join(path, ADAPTER_WEIGHTS),
              metadata={"format": "pt"})
    cfg = model.peft_config[adapter]
    base = base_model(model)
    cfg.base_model_name_or_path = getattr(base, "name_or_path", None) or getattr(base.config, "_name_or_path", None)
    cfg.inference_mode = False
    cfg.save_pretrained(path)
    return path


def is_adapter_dir(path: str | os.PathLike) -> bool:
    return os.path.exists(os.path.join(os.fspath(path), ADAPTER_CONFIG))


def load_adapter(model: Any, path: str | os.PathLike, adapter: str = POLICY_ADAPTER) -> Any:
    """Load the PEFT adapter directory ``path`` into ``model``: into its adapter ``adapter`` when
    ``model`` is a PEFT model that has it (resuming; weights replaced in place), else as a new
    trainable adapter. Returns the (PEFT) model."""
    peft = _peft()
    from safetensors.torch import load_file

    path = os.fspath(path)
    if not is_adapter_dir(path):
        raise FileNotFoundError(f"{path!r} holds no PEFT adapter ({ADAPTER_CONFIG}); save one with save_adapter")
    if is_peft_model(model) and adapter in model.peft_config:
        sd = load_file(os.path.join(path, ADAPTER_WEIGHTS))
        res = peft.set_peft_model_state_dict(model, sd, adapter_name=adapter)
        bad = [k for k in res.unexpected_keys if "lora_" in k]
        missing = [k for k in res.missing_keys if f".{adapter}." in k and "lora_" in k]
        if bad or missing:
            raise ValueError(f"adapter {path!r} does not fit the model: unexpected {bad[:3]}, missing {missing[:3]}; "
                             "load it onto the base model and lora settings it was trained with")
        return model
    if is_peft_model(model):
        active = _active_names(model)
        trainable = [p for p in model.parameters() if p.requires_grad]
        model.load_adapter(path, adapter_name=adapter, is_trainable=True)
        for p in trainable:
            p.requires_grad_(True)
        set_trainable(model, adapter)
        _set_active(model, active)
        return model
    out = peft.PeftModel.from_pretrained(model, path, adapter_name=adapter, is_trainable=True)
    set_trainable(out, adapter)
    return out


def base_model_path(path: str | os.PathLike) -> str:
    """The base model directory an adapter directory names (``base_model_name_or_path``)."""
    import json

    with open(os.path.join(os.fspath(path), ADAPTER_CONFIG)) as f:
        base = json.load(f).get("base_model_name_or_path")
    if not base or not os.path.isdir(base):
        raise FileNotFoundError(
            f"the adapter in {os.fspath(path)!r} names base model {base!r}, which is not a local directory; "
            "load the base yourself and attach the adapter with prmgym.models.lora.load_adapter(model, path)"
        )
    return base


def save_base(model: Any, path: str | os.PathLike) -> str:
    """Write the base weights of a PEFT model (adapters left out) with ``save_pretrained``."""
    base = base_model(model)
    sd = {k.replace(".base_layer.", "."): v for k, v in base.state_dict().items() if "lora_" not in k}
    base.save_pretrained(os.fspath(path), state_dict=sd)
    return os.fspath(path)


# ------------------------------------------------------------------ PRM adapters
#: name of a PRM's adapter (``prm``, ``prm_1``, ... when several share one model)
PRM_ADAPTER = "prm"
ADAPTER_DIR = "adapter"


def prm_adapter(model: Any, lora: Any, share: bool) -> tuple[Any, str | None]:
    """(model, adapter name) of a PRM backbone. ``lora`` (a `LoRAConfig` mapping or None) puts a
    fresh PRM adapter on it; ``share`` puts that adapter on the policy's own PEFT model (whose
    frozen base then serves both) instead of a private copy."""
    cfg = lora_config(lora)
    if share:
        if cfg is None:
            raise ValueError("share_backbone needs a lora section: the PRM trains its own adapter (and head) on the "
                             "shared frozen backbone; add lora: {} (defaults) or set share_backbone: false")
        if not is_peft_model(model):
            raise ValueError("share_backbone needs a LoRA policy, whose backbone is frozen: add a lora: section to "
                             "the run config (or apply_lora to the policy's model), or set share_backbone: false")
    elif is_peft_model(model):
        raise ValueError("this PRM backbone is a PEFT (LoRA) model it does not own: build the PRM with "
                         "from_backbone(policy) (a private, merged copy) or pass share_backbone=True with lora")
    if cfg is None:
        return model, None
    if not is_peft_model(model):
        return apply_lora(model, cfg, adapter=PRM_ADAPTER), PRM_ADAPTER
    name, k = PRM_ADAPTER, 0
    while name in model.peft_config:
        k += 1
        name = f"{PRM_ADAPTER}_{k}"
    return add_adapter(model, cfg, name), name


def private_copy(model: Any, copy: bool = True) -> Any:
    """A deep copy of ``model`` (``copy=False``: ``model`` itself, for one loaded just for this);
    a PEFT model's active adapter is merged into plain weights."""
    import copy as _copy

    out = _copy.deepcopy(model) if copy else model
    return out.merge_and_unload() if is_peft_model(out) else out
