"""The one text layout of a reasoning trace, shared by envs, policies, PRMs and planners.

A trace is the prompt followed by the steps, each step followed by the delimiter:

>>> render_trace("Compute 2+3.", ["2 + 3 = 5", "Answer: 5"])
'Compute 2+3.\\n2 + 3 = 5\\nAnswer: 5\\n'
>>> step_end_offsets("Q", ["a", "bc"])
[4, 7]
"""

from __future__ import annotations

from typing import Sequence

DEFAULT_DELIMITER = "\n"


def render_trace(prompt: str, steps: Sequence[str], delimiter: str = DEFAULT_DELIMITER) -> str:
    """The observation a policy sees after ``steps``: prompt + delimiter + each step + delimiter."""
    return prompt + delimiter + "".join(s + delimiter for s in steps)


def step_end_offsets(prompt: str, steps: Sequence[str], delimiter: str = DEFAULT_DELIMITER) -> list[int]:
    """Character offset just past each step's delimiter in `render_trace` (where a PRM reads)."""
    pos = len(prompt) + len(delimiter)
    out = []
    for s in steps:
        pos += len(s) + len(delimiter)
        out.append(pos)
    return out
