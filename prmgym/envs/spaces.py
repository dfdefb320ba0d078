"""The Text space used for observations and actions of every reasoning environment.

Gymnasium's default `Text` charset is alphanumeric only, which rejects ``"2 + 2 = 4."``.
Tasks and models produce far more: reasoning-gym questions contain ``×``, ``÷``, ``→``,
box-drawing characters, emoji and even Unicode tag characters (``emoji_mystery`` hides its
message in variation selectors from the supplementary planes), and a language model's
tokenizer can emit any Unicode code point. So `ReasoningText`:

* **samples** from an explicit charset, `CHARSET`: printable ASCII, newline, tab and a fixed
  set of common non-ASCII characters (Latin-1, Greek, arrows, math operators, box drawing);
* **admits** (``contains``) every string that is valid Unicode text: any code point except
  the lone surrogates ``U+D800..U+DFFF``, which cannot be encoded as UTF-8.

>>> space = ReasoningText(max_length=64)
>>> "2 + 2 = 4." in space and "x ≤ 3 → ✅" in space and "\\n\\t" in space
True
>>> "\\ud800" in space
False
"""

from __future__ import annotations

import string
from collections.abc import Sequence
from typing import Any

import numpy as np
from gymnasium.spaces import Text


def _ranges(*pairs: tuple[int, int]) -> str:
    return "".join(chr(c) for a, b in pairs for c in range(a, b + 1) if chr(c).isprintable())


#: Characters `ReasoningText.sample()` draws from (a space plus 94 printable ASCII, "\n", "\t",
#: and Latin-1 letters/symbols, Greek, general punctuation, super/subscripts, arrows, math
#: operators, box drawing, check/cross marks). Every one of them is also admitted by ``contains``.
CHARSET: str = (
    string.printable.replace("\r", "").replace("\x0b", "").replace("\x0c", "")
    + _ranges(
        (0x00A1, 0x00FF),  # Latin-1 supplement: ¬ ° × ÷ é ...
        (0x0391, 0x03C9),  # Greek
        (0x2010, 0x2027),  # general punctuation: dashes, quotes, ellipsis
        (0x2070, 0x209C),  # superscripts / subscripts
        (0x2190, 0x21FF),  # arrows
        (0x2200, 0x22FF),  # mathematical operators
        (0x2500, 0x257F),  # box drawing
        (0x2580, 0x259F),  # block elements
        (0x2705, 0x2705), (0x274C, 0x274C), (0x2714, 0x2716),  # ✅ ❌ ✔ ✕ ✖
    )
)


def is_text(x: Any) -> bool:
    """True if ``x`` is a ``str`` without lone surrogates (i.e. encodable as UTF-8)."""
    if not isinstance(x, str):
        return False
    try:
        x.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


class ReasoningText(Text):
    """A `gymnasium.spaces.Text` that samples from `CHARSET` and admits any valid Unicode text.

    Args:
        max_length: longest string in the space (inclusive).
        min_length: shortest string in the space (inclusive, default 0: an empty step is legal).
        charset: the characters ``sample()`` draws from (default `CHARSET`).
        seed: seed for sampling.
    """

    def __init__(
        self,
        max_length: int,
        *,
        min_length: int = 0,
        charset: str = CHARSET,
        seed: int | np.random.Generator | None = None,
    ) -> None:
        super().__init__(max_length, min_length=min_length, charset=charset, seed=seed)

    def contains(self, x: Any) -> bool:
        return is_text(x) and self.min_length <= len(x) <= self.max_length

    def __repr__(self) -> str:
        return f"ReasoningText({self.min_length}, {self.max_length}, charset=CHARSET+any Unicode)"

    def __eq__(self, other: Any) -> bool:
        return (
            isinstance(other, ReasoningText)
            and self.min_length == other.min_length
            and self.max_length == other.max_length
            and self.character_set == other.character_set
        )

    __hash__ = None  # type: ignore[assignment]  (mutable RNG state; spaces are not hashed)


# AsyncVectorEnv passes observations through shared memory. Gymnasium's Text layout stores
# indices into the sampling charset, which cannot carry characters outside it, so
# ReasoningText stores Unicode code points instead (int32, -1 = padding): exact for any text.
from gymnasium.vector.utils.shared_memory import (  # noqa: E402
    create_shared_memory,
    read_from_shared_memory,
    write_to_shared_memory,
)


@create_shared_memory.register(ReasoningText)
def _create_reasoning_text_shm(space: ReasoningText, n: int = 1, ctx: Any = None) -> Any:
    import multiprocessing as mp

    ctx = ctx or mp
    return ctx.Array(np.dtype(np.int32).char, n * space.max_length, lock=True)


@write_to_shared_memory.register(ReasoningText)
def _write_reasoning_text_shm(space: ReasoningText, index: int, values: str, shared_memory: Any) -> None:
    size = space.max_length
    if len(values) > size:
        raise ValueError(f"observation of {len(values)} chars exceeds the space's max_length={size}")
    dest = np.frombuffer(shared_memory.get_obj(), dtype=np.int32)[index * size : (index + 1) * size]
    dest[:] = -1
    if values:
        dest[: len(values)] = np.frombuffer(values.encode("utf-32-le"), dtype=np.int32)


class SharedTextView(Sequence):
    """The live view AsyncVectorEnv keeps of the shared buffer (like a numpy view for arrays):
    indexing decodes the current text; ``deepcopy`` (what AsyncVectorEnv returns with
    ``copy=True``, the default) gives a plain tuple of strings."""

    def __init__(self, shared_memory: Any, n: int, max_length: int) -> None:
        self._data = np.frombuffer(shared_memory.get_obj(), dtype=np.int32).reshape((n, max_length))

    def __len__(self) -> int:
        return self._data.shape[0]

    def __getitem__(self, i: Any) -> Any:
        if isinstance(i, slice):
            return tuple(self[j] for j in range(*i.indices(len(self))))
        row = self._data[i]
        neg = row < 0
        end = int(np.argmax(neg)) if neg.any() else len(row)
        return row[:end].astype("<i4").tobytes().decode("utf-32-le")

    def __deepcopy__(self, memo: dict) -> tuple[str, ...]:
        return tuple(self)

    def __eq__(self, other: Any) -> bool:
        return tuple(self) == (tuple(other) if isinstance(other, (tuple, list, SharedTextView)) else other)

    def __repr__(self) -> str:
        return repr(tuple(self))


@read_from_shared_memory.register(ReasoningText)
def _read_reasoning_text_shm(space: ReasoningText, shared_memory: Any, n: int = 1) -> SharedTextView:
    return SharedTextView(shared_memory, n, space.max_length)
