"""The tiny character-level policy: model and tokenizer construction.

* `tiny_config` — a transformers config (GPT-2, Llama or Qwen2 layout) for a tiny causal LM.
* `random_tiny_policy` — a freshly initialised tiny model over the character tokenizer, built
  in memory from a fixed seed (no files, no download). For interface tests.

Training it (SFT on expert traces), its settings (``PretrainConfig``), cache and manifest are
the recipe `prmgym.recipes.tiny`; held-out pass@1 is `prmgym.envs.episodes.evaluate_policy`.

>>> policy = random_tiny_policy(seed=0)
>>> sum(p.numel() for p in policy.model.parameters()) < 200_000
True
"""

from __future__ import annotations

import torch

from prmgym.models.hf import TransformersPolicy
from prmgym.models.tokenizer import DEFAULT_CHARSET, add_chat_template, char_tokenizer

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
    chat_template: str | None = None,
    prompt_format: str = "plain",
) -> TransformersPolicy:
    """A randomly initialised tiny causal LM (GPT-2 by default) with the character tokenizer.

    Deterministic given ``seed`` (the global torch RNG is left untouched). ``chat_template``
    (``"qwen2"`` or ``"llama"``, `prmgym.models.tokenizer.add_chat_template`) gives the
    tokenizer a chat template, as an instruct model has; ``prompt_format`` is the policy's.
    """
    from transformers import AutoModelForCausalLM

    tokenizer = char_tokenizer(charset, model_max_length=n_positions)
    if chat_template is not None:
        add_chat_template(tokenizer, chat_template)
    config = tiny_config(tokenizer, arch=arch, n_layer=n_layer, n_embd=n_embd, n_head=n_head,
                         n_positions=n_positions)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config)
    return TransformersPolicy(model, tokenizer, device=device, prompt_format=prompt_format)
