"""One switch for the generation backend: `PolicyConfig`, `load_policy`, `add_backend_arg`.

Everything that builds a policy from a model directory goes through `load_policy`: the
``policy:`` section of a training config (``prmgym train``), ``prmgym search --backend``,
``prmgym quickstart --backend`` and ``benchmarks/learning_curves.py --backend``.

* ``backend: hf`` -- `TransformersPolicy` (torch generates and scores).
* ``backend: vllm`` -- `VLLMPolicy`: a colocated ``vllm.LLM`` engine generates; the torch
  `TransformersPolicy` of the same directory is its ``scorer`` (``logprobs``, the trainer's
  ``model``). Trainers push the torch weights into the engine after each optimizer step
  (`prmgym.agents.sync`). The engine options below pass through to ``vllm.LLM``.

.. code-block:: yaml

    policy: {backend: vllm, dtype: bfloat16, gpu_memory_utilization: 0.3, max_model_len: 4096}

vLLM's CPU attention supports only some head sizes (not the tiny model's default 24), so
`tiny_layout` gives the layout to pretrain the tiny model with for a backend.
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass
from typing import Any

from prmgym.config import ConfigError, help_field

BACKENDS = ("hf", "vllm")
#: the tiny model's layout change for vLLM on CPU: 3 heads of 32 (the default 4 heads of 24 is rejected)
TINY_VLLM_LAYOUT = {"n_head": 3}
DTYPES = ("auto", "float32", "bfloat16", "float16")
#: the commands' --dtype names -> the engine's
ENGINE_DTYPES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}

_f = help_field


@dataclass
class PolicyConfig:
    """Which backend generates, and the vLLM engine's options (ignored by ``hf``)."""

    backend: str = _f("hf", "hf (TransformersPolicy: torch generates) | vllm (VLLMPolicy: a colocated vLLM engine "
                            "generates, the torch model scores and trains)")
    dtype: str = _f("float32", "vllm: the engine's dtype (auto | float32 | bfloat16 | float16); float32 matches "
                               "a float32 trainer's log-probs")
    gpu_memory_utilization: float | None = _f(None, "vllm: fraction of GPU memory for weights + KV cache "
                                                    "(default: vLLM's on a GPU, 0.1 on CPU)")
    kv_cache_memory_bytes: int | None = _f(None, "vllm: KV cache bytes (default: 1 GiB on CPU, vLLM's choice on a GPU)")
    tensor_parallel_size: int = _f(1, "vllm: GPUs the engine shards the model over")
    max_model_len: int | None = _f(None, "vllm: context length (default: the model's)")
    enforce_eager: bool = _f(True, "vllm: no CUDA graphs / torch.compile (faster start; turn off for long GPU runs)")
    seed: int = _f(0, "vllm: the engine's seed (seeded propose calls do not use it)")
    engine_kwargs: dict = _f({}, "vllm: any other vllm.LLM keyword argument")

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise ValueError(f"unknown backend {self.backend!r}; valid: {', '.join(BACKENDS)}")
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {self.dtype!r}")
        if self.gpu_memory_utilization is not None and not 0 < self.gpu_memory_utilization <= 1:
            raise ValueError(f"gpu_memory_utilization must be in (0, 1], got {self.gpu_memory_utilization}")
        if self.tensor_parallel_size < 1:
            raise ValueError(f"tensor_parallel_size must be >= 1, got {self.tensor_parallel_size}")
        if self.max_model_len is not None and self.max_model_len < 1:
            raise ValueError(f"max_model_len must be >= 1, got {self.max_model_len}")
        if self.kv_cache_memory_bytes is not None and self.kv_cache_memory_bytes < 1:
            raise ValueError(f"kv_cache_memory_bytes must be >= 1, got {self.kv_cache_memory_bytes}")

    def engine_options(self) -> dict:
        """The keyword arguments `VLLMPolicy` takes (besides path and scorer)."""
        return dict(dtype=self.dtype, seed=self.seed, max_model_len=self.max_model_len,
                    gpu_memory_utilization=self.gpu_memory_utilization,
                    kv_cache_memory_bytes=self.kv_cache_memory_bytes,
                    tensor_parallel_size=self.tensor_parallel_size, enforce_eager=self.enforce_eager,
                    **self.engine_kwargs)


def as_policy_config(config: PolicyConfig | dict | str | None) -> PolicyConfig:
    """A `PolicyConfig` from a config, a ``policy:`` mapping, a backend name or None (hf)."""
    from prmgym.config import from_dict

    if config is None:
        return PolicyConfig()
    if isinstance(config, str):
        return from_dict(PolicyConfig, {"backend": config}, where="policy")
    return from_dict(PolicyConfig, config, where="policy")


def load_policy(path: str | os.PathLike, config: PolicyConfig | dict | str | None = None,
                device: str | None = None, prompt_format: str = "plain"):
    """The policy of the local model directory ``path`` on ``config``'s backend.

    ``hf``: a `TransformersPolicy`. ``vllm``: a `VLLMPolicy` whose scorer (and trainer model)
    is the `TransformersPolicy` of the same directory on ``device``; both encode observations
    with ``prompt_format`` (plain | chat). Close a VLLMPolicy (``close()`` or ``with``) when done.
    """
    from prmgym.models.hf import TransformersPolicy

    cfg = as_policy_config(config)
    torch_policy = TransformersPolicy.from_pretrained(path, device=device, prompt_format=prompt_format)
    if cfg.backend == "hf":
        return torch_policy
    from prmgym.models.vllm_policy import VLLMPolicy

    return VLLMPolicy(path, scorer=torch_policy, prompt_format=prompt_format, **cfg.engine_options())


def close_policy(policy: Any) -> None:
    """Shut a policy's engine down if it has one (a VLLMPolicy); nothing for ``hf``."""
    close = getattr(policy, "close", None)
    if callable(close):
        close()


def tiny_layout(config: PolicyConfig | dict | str | None) -> dict:
    """Pretrain overrides the tiny model needs on this backend (``{"n_head": 3}`` for vllm)."""
    return dict(TINY_VLLM_LAYOUT) if as_policy_config(config).backend == "vllm" else {}


def add_backend_arg(parser: argparse.ArgumentParser) -> None:
    """``--backend hf|vllm`` and the engine options (``--gpu-memory-utilization``,
    ``--tensor-parallel-size``, ``--max-model-len``), with the one ``--dtype`` / ``--device`` pair of
    every command (`prmgym.config.add_precision_args`; the engine's dtype follows ``--dtype``); read
    them back with `policy_config_from_args`."""
    from prmgym.config import add_precision_args

    g = parser.add_argument_group("generation backend")
    g.add_argument("--backend", default="hf", choices=BACKENDS,
                   help="hf: torch generates; vllm: a colocated vLLM engine generates (pip install -e '.[vllm]')")
    add_precision_args(g)
    g.add_argument("--gpu-memory-utilization", type=float, default=None, help="vllm: fraction of GPU memory")
    g.add_argument("--tensor-parallel-size", type=int, default=1, help="vllm: GPUs to shard the model over")
    g.add_argument("--max-model-len", type=int, default=None, help="vllm: context length (default: the model's)")


def policy_config_from_args(args: argparse.Namespace) -> PolicyConfig:
    """The `PolicyConfig` of `add_backend_arg`'s options (a bad value is a `ConfigError`)."""
    try:
        dtype = ENGINE_DTYPES.get(getattr(args, "dtype", None) or "fp32", args.dtype)  # --dtype bf16 -> bfloat16
        return PolicyConfig(backend=args.backend, dtype=dtype, gpu_memory_utilization=args.gpu_memory_utilization,
                            tensor_parallel_size=args.tensor_parallel_size, max_model_len=args.max_model_len)
    except ValueError as e:
        raise ConfigError(f"--backend options: {e}") from None
