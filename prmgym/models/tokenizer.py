"""A character-level tokenizer saved and loaded as a standard Hugging Face tokenizer.

One token per character, four special tokens (``<pad>`` 0, ``<bos>`` 1, ``<eos>`` 2,
``<unk>`` 3), and a post-processor that puts ``<bos>`` in front of every encoded text. It is a
``PreTrainedTokenizerFast`` over a ``tokenizers`` WordLevel model, so
``AutoTokenizer.from_pretrained(dir)`` loads what `save_pretrained` wrote, without prmgym.

>>> tok = char_tokenizer()
>>> ids = tok("2 + 3 = 5\\n")["input_ids"]
>>> ids[0] == tok.bos_token_id, len(ids)
(True, 11)
>>> tok.decode(ids, skip_special_tokens=True)
'2 + 3 = 5\\n'
"""

from __future__ import annotations

from typing import Iterable

SPECIAL_TOKENS = ("<pad>", "<bos>", "<eos>", "<unk>")
#: Newline, tab and printable ASCII: enough for every procedural environment's text.
DEFAULT_CHARSET = "\n\t" + "".join(chr(i) for i in range(32, 127))


def char_tokenizer(charset: str | Iterable[str] = DEFAULT_CHARSET, model_max_length: int = 1024):
    """Build the character tokenizer over ``charset`` (plus the default charset).

    Characters outside the vocabulary encode to ``<unk>``.
    """
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    chars = []
    seen = set(SPECIAL_TOKENS)
    for ch in list(DEFAULT_CHARSET) + list("".join(charset)):
        if len(ch) != 1:
            raise ValueError(f"charset entries must be single characters, got {ch!r}")
        if ch not in seen:
            seen.add(ch)
            chars.append(ch)
    vocab = {tok: i for i, tok in enumerate(list(SPECIAL_TOKENS) + chars)}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Split(Regex("[\\s\\S]"), behavior="isolated")
    backend.decoder = decoders.Fuse()
    backend.post_processor = processors.TemplateProcessing(
        single="<bos> $A", pair="<bos> $A $B", special_tokens=[("<bos>", vocab["<bos>"])]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token="<pad>",
        bos_token="<bos>",
        eos_token="<eos>",
        unk_token="<unk>",
        model_max_length=model_max_length,
        padding_side="left",
    )


#: Chat templates in the layouts of two instruct families, over special tokens of their own
#: (`add_chat_template`): enough to test chat formatting on tiny local models.
CHAT_TEMPLATES = {
    "qwen2": (
        ("<|im_start|>", "<|im_end|>"),
        "{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>\\n' }}{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}",
    ),
    "llama": (
        ("<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"),
        "{{ bos_token }}{% for m in messages %}{{ '<|start_header_id|>' + m['role'] + '<|end_header_id|>\\n\\n' "
        "+ m['content'] + '<|eot_id|>' }}{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}",
    ),
}


def add_chat_template(tokenizer, style: str = "qwen2"):
    """Give ``tokenizer`` the chat template (and its special tokens) of ``style``
    (``"qwen2"``: ``<|im_start|>``/``<|im_end|>`` turns; ``"llama"``: Llama-3 header turns).
    Returns the tokenizer; a model over it needs ``len(tokenizer)`` embeddings.

    >>> tok = add_chat_template(char_tokenizer(), "qwen2")
    >>> tok.apply_chat_template([{"role": "user", "content": "2+3?"}], tokenize=False, add_generation_prompt=True)
    '<|im_start|>user\\n2+3?<|im_end|>\\n<|im_start|>assistant\\n'
    """
    if style not in CHAT_TEMPLATES:
        raise ValueError(f"unknown chat template style {style!r}; valid: {', '.join(CHAT_TEMPLATES)}")
    specials, template = CHAT_TEMPLATES[style]
    tokenizer.add_tokens(list(specials), special_tokens=True)
    tokenizer.chat_template = template
    return tokenizer


def load_tokenizer(path: str):
    """The tokenizer saved in the local directory ``path``.

    A tokenizer saved as a plain fast tokenizer (``tokenizer_class`` ``TokenizersBackend`` or
    ``PreTrainedTokenizerFast``, e.g. `char_tokenizer`) is loaded as exactly that:
    ``AutoTokenizer`` would pick the model type's own class (``Qwen2Tokenizer`` for a Qwen2
    config), which rewrites the pre-tokenizer and drops whitespace. Anything else goes through
    ``AutoTokenizer``. Nothing is downloaded.
    """
    import json
    import os

    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    cfg_path = os.path.join(path, "tokenizer_config.json")
    cls_name = None
    if os.path.exists(cfg_path):
        with open(cfg_path) as f:
            cls_name = json.load(f).get("tokenizer_class")
    if cls_name in ("TokenizersBackend", "PreTrainedTokenizerFast"):
        return PreTrainedTokenizerFast.from_pretrained(path, local_files_only=True)
    return AutoTokenizer.from_pretrained(path, local_files_only=True)
