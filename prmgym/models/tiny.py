"""The tiny character-level policy: a random one for tests, a trained one for everything else.

* `random_tiny_policy` — a freshly initialised tiny GPT-2 over the character tokenizer, built
  in memory from a fixed seed (no files, no download). For interface tests.
* `PretrainConfig`, `default_cache_dir`, `load_manifest`, `corrupt_step` — the settings, cache
  layout and manifest of the trained tiny policy. The training itself (``pretrain``, by SFT
  on expert traces) is the recipe `prmgym.recipes.tiny.pretrain`: it needs the SFT trainer
  of `prmgym.agents`, which `prmgym.models` may not import.
* `evaluate_pass_at_1` — rolls an environment step by step with ``propose`` and counts solved
  held-out tasks.

>>> policy = random_tiny_policy(seed=0)
>>> sum(p.numel() for p in policy.model.parameters()) < 200_000
True
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
from dataclasses import asdict, dataclass, field

import torch

from prmgym.models.hf import TransformersPolicy
from prmgym.models.tokenizer import DEFAULT_CHARSET, char_tokenizer

ARCHS = ("gpt2", "llama", "qwen2")


def tiny_config(tokenizer, arch: str = "gpt2", n_layer: int = 2, n_embd: int = 64, n_head: int = 2,
                n_positions: int = 512, dropout: float = 0.0):
    """A transformers config for a tiny causal LM over ``tokenizer``'s vocabulary."""
    common = dict(
        vocab_size=len(tokenizer),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    if n_embd % n_head:
        raise ValueError(f"n_embd ({n_embd}) must be divisible by n_head ({n_head})")
    if arch == "gpt2":
        from transformers import GPT2Config

        return GPT2Config(
            n_layer=n_layer, n_embd=n_embd, n_head=n_head, n_positions=n_positions,
            resid_pdrop=dropout, embd_pdrop=dropout, attn_pdrop=dropout,
            activation_function="gelu",  # torch's fused GELU: faster on CPU than GPT-2's "gelu_new"
            **common,
        )
    if arch in ("llama", "qwen2"):
        from transformers import LlamaConfig, Qwen2Config

        cls = LlamaConfig if arch == "llama" else Qwen2Config
        return cls(
            num_hidden_layers=n_layer, hidden_size=n_embd, num_attention_heads=n_head,
            num_key_value_heads=max(1, n_head // 2) if n_head % 2 == 0 else n_head,
            intermediate_size=2 * n_embd, max_position_embeddings=n_positions,
            attention_dropout=dropout, tie_word_embeddings=True, **common,
        )
    raise ValueError(f"unknown arch {arch!r}; choose one of {', '.join(ARCHS)}")


def random_tiny_policy(
    seed: int = 0,
    n_layer: int = 2,
    n_embd: int = 64,
    n_head: int = 2,
    n_positions: int = 512,
    arch: str = "gpt2",
    charset: str = DEFAULT_CHARSET,
    device: str | None = None,
) -> TransformersPolicy:
    """A randomly initialised tiny causal LM (GPT-2 by default) with the character tokenizer.

    Deterministic given ``seed`` (the global torch RNG is left untouched).
    """
    from transformers import AutoModelForCausalLM

    tokenizer = char_tokenizer(charset, model_max_length=n_positions)
    config = tiny_config(tokenizer, arch=arch, n_layer=n_layer, n_embd=n_embd, n_head=n_head,
                         n_positions=n_positions)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config)
    return TransformersPolicy(model, tokenizer, device=device)


# =========================================================================== pretraining settings
DEFAULT_ENV = "prmgym/ChainArithmetic-v0"
MANIFEST = "manifest.json"
_RECIPE_VERSION = 1  # bump when the recipe changes so old caches are not reused


@dataclass
class PretrainConfig:
    """Every argument that decides the trained model (the cache key is a hash of these).

    Attributes:
        env_id: a registered prmgym environment whose tasks have ``expert_steps``.
        env_kwargs: extra ``gym.make`` arguments (e.g. ``{"difficulty": 2}``).
        num_train_tasks: expert traces drawn from the train split (fewer -> lower held-out
            pass@1; a weaker knob than ``steps`` at the default budget). A source with fewer
            distinct problems (Countdown difficulty 1: ~4,100; a small JSONL file) trains on
            all of them.
        steps: optimizer steps. **The main knob of held-out skill** on ChainArithmetic
            difficulty 1: 200 -> 0.035, 600 (default) -> 0.32, 1200 -> 0.77 greedy pass@1
            (docs/models.md has the measured table).
        corrupt_rate: fraction of training traces in which one intermediate step's last
            number is replaced by a wrong one (the trace is otherwise unchanged): a third
            knob that lowers accuracy without changing the data size.
        batch_size, learning_rate, warmup_steps: SFT settings (cosine decay to 10%).
        n_layer, n_embd, n_head, n_positions: GPT-2 size (defaults: ~0.4M parameters).
        eval_tasks: held-out test tasks scored (greedy) after training; 0 skips.
        seed: data, initialisation and batch order.
    """

    env_id: str = DEFAULT_ENV
    env_kwargs: dict = field(default_factory=dict)
    num_train_tasks: int = 6000
    steps: int = 600
    corrupt_rate: float = 0.0
    batch_size: int = 32
    learning_rate: float = 5e-3
    warmup_steps: int = 30
    n_layer: int = 3
    n_embd: int = 96
    n_head: int = 4
    n_positions: int = 512
    eval_tasks: int = 200
    seed: int = 0

    def __post_init__(self) -> None:
        if self.num_train_tasks < 1:
            raise ValueError(f"num_train_tasks must be >= 1, got {self.num_train_tasks}")
        if self.steps < 1:
            raise ValueError(f"steps must be >= 1, got {self.steps}")
        if not 0.0 <= self.corrupt_rate <= 1.0:
            raise ValueError(f"corrupt_rate must be in [0, 1], got {self.corrupt_rate}")
        if self.eval_tasks < 0:
            raise ValueError(f"eval_tasks must be >= 0, got {self.eval_tasks}")

    def cache_key(self) -> str:
        blob = json.dumps({"recipe": _RECIPE_VERSION, **asdict(self)}, sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


def default_cache_dir(config: PretrainConfig) -> str:
    """``$PRMGYM_CACHE`` (default ``~/.cache/prmgym``) ``/tiny/<env>-<key>``."""
    root = os.environ.get("PRMGYM_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "prmgym")
    name = config.env_id.split("/")[-1].replace(" ", "_")
    return os.path.join(root, "tiny", f"{name}-{config.cache_key()}")


def corrupt_step(step: str, rng: random.Random) -> str | None:
    """Replace the last integer in ``step`` with a different one; None if it has none.

    >>> corrupt_step("3 + 4 = 7", random.Random(0)) != "3 + 4 = 7"
    True
    """
    matches = list(re.finditer(r"-?\d+", step))
    if not matches:
        return None
    m = matches[-1]
    value = int(m.group())
    delta = rng.choice([d for d in range(-9, 10) if d != 0])
    return step[: m.start()] + str(value + delta) + step[m.end():]


def _make_env(env_id: str, split: str, env_kwargs: dict | None):
    import gymnasium as gym

    import prmgym  # noqa: F401  (registers the environments)

    try:
        return gym.make(env_id, split=split, **(env_kwargs or {}))
    except gym.error.Error as e:
        raise ValueError(
            f"cannot make environment {env_id!r} ({e}); list the registered ones with `prmgym envs`"
        ) from e


def load_manifest(path: str | os.PathLike) -> dict:
    """The manifest of a directory written by `prmgym.recipes.tiny.pretrain`."""
    p = os.path.join(os.fspath(path), MANIFEST)
    if not os.path.exists(p):
        raise FileNotFoundError(f"no {MANIFEST} in {os.fspath(path)!r}: not written by prmgym.recipes.tiny.pretrain")
    with open(p) as f:
        return json.load(f)


# =========================================================================== evaluation
def evaluate(
    policy,
    env_id: str = DEFAULT_ENV,
    n_tasks: int = 100,
    seed: int = 0,
    split: str = "test",
    env_kwargs: dict | None = None,
    temperature: float = 0.0,
    max_new_tokens: int = 64,
    batch_size: int = 128,
    max_turns: int = 64,
) -> dict:
    """Roll ``n_tasks`` held-out tasks step by step with ``policy.propose`` (one proposal per
    step, ``stop`` = the env's delimiter) and score them with the env's verifier.

    Decoding is greedy by default (``temperature=0``); pass a temperature to sample (then
    ``seed`` seeds the sampling). Returns ``{"pass@1", "solved", "n_tasks", "mean_steps",
    "truncated", "tokens_generated", "tokens_encoded", "temperature", "split", "sample"}``.
    """
    import numpy as np

    if n_tasks < 1:
        raise ValueError(f"n_tasks must be >= 1, got {n_tasks}")
    proto = _make_env(env_id, split, env_kwargs)
    tasks = proto.unwrapped.source.tasks(split, n_tasks, seed=seed)
    delimiter = getattr(proto.unwrapped, "delimiter", "\n")
    proto.close()
    solved, steps_taken, truncated, gen, enc = [], [], 0, 0, 0
    sample = ""
    for start in range(0, len(tasks), batch_size):
        chunk = tasks[start:start + batch_size]
        envs, obs = [], []
        for i, task in enumerate(chunk):
            e = _make_env(env_id, split, env_kwargs)
            o, _ = e.reset(seed=seed + start + i, options={"task": task})
            envs.append(e)
            obs.append(o)
        live = list(range(len(chunk)))
        done_correct = [False] * len(chunk)
        n_steps = [0] * len(chunk)
        for turn in range(max_turns):
            if not live:
                break
            ctx = getattr(policy, "context_length", None)
            if ctx is not None and hasattr(policy, "encode"):
                # a trace that no longer fits the model's context is a failure, not an error
                fits = [i for i in live if len(policy.encode(obs[i])) < ctx]
                truncated += len(live) - len(fits)
                live = fits
                if not live:
                    break
            props = policy.propose([obs[i] for i in live], n=1, stop=delimiter, max_new_tokens=max_new_tokens,
                                   temperature=temperature, seed=seed * 100_003 + start * 1009 + turn)
            still = []
            for i, [p] in zip(live, props):
                gen += p.tokens_generated
                enc += p.tokens_encoded
                o, reward, term, trunc, info = envs[i].step(p.text)
                obs[i] = o
                n_steps[i] += 1
                if term or trunc:
                    verdict = info.get("verdict")
                    done_correct[i] = bool(getattr(verdict, "correct", reward >= 1.0)) if verdict is not None else reward >= 1.0
                    truncated += int(bool(trunc) and not term)
                else:
                    still.append(i)
            live = still
        truncated += len(live)  # still running after max_turns
        if not sample:
            sample = obs[0]
        for e in envs:
            e.close()
        solved += done_correct
        steps_taken += n_steps
    return {
        "pass@1": float(np.mean(solved)),
        "solved": int(sum(solved)),
        "n_tasks": len(tasks),
        "mean_steps": float(np.mean(steps_taken)),
        "truncated": truncated,
        "tokens_generated": gen,
        "tokens_encoded": enc,
        "temperature": temperature,
        "split": split,
        "sample": sample,
    }


def evaluate_pass_at_1(policy, env_id: str = DEFAULT_ENV, n_tasks: int = 100, seed: int = 0, **kwargs) -> float:
    """Fraction of ``n_tasks`` held-out tasks solved (greedy unless ``temperature`` is given);
    see `evaluate` for the other arguments."""
    return evaluate(policy, env_id, n_tasks=n_tasks, seed=seed, **kwargs)["pass@1"]
