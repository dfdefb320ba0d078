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
