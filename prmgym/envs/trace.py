"""The one text layout of a reasoning trace, shared by envs, policies, PRMs and planners.

A trace is the prompt followed by the steps, each step followed by the delimiter:

>>> render_trace("Compute 2+3.", ["2 + 3 = 5", "Answer: 5"])
'Compute 2+3.\\n2 + 3 = 5\\nAnswer: 5\\n'
>>> step_end_offsets("Q", ["a", "bc"])
[4, 7]

An env may carry a `PromptTemplate` (system text, few-shot examples, a step-format
instruction). In the plain text layout it is written in front of the prompt; a chat formatter
(`prmgym.models.formatting.ObservationFormatter`) turns the same parts into chat turns. The
rendered trace is a `TraceText`: a ``str`` that remembers its parts, so a policy can re-render
it through its tokenizer's chat template without parsing the text.

>>> t = PromptTemplate(system="Solve step by step.", instruction="End with 'Answer: N'.",
...                    examples=[("1+1?", ["1 + 1 = 2", "Answer: 2"])])
>>> obs = render_trace("2+3?", [], template=t)
>>> print(obs, end="")
Solve step by step.
<BLANKLINE>
1+1?
End with 'Answer: N'.
1 + 1 = 2
Answer: 2
<BLANKLINE>
2+3?
End with 'Answer: N'.
>>> obs.prompt, obs.steps
('2+3?', ())
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

DEFAULT_DELIMITER = "\n"


@dataclass(frozen=True)
class PromptTemplate:
    """What a policy is told besides the task's prompt.

    Args:
        system: system text (a chat system turn; in plain text, the first paragraph).
        examples: few-shot examples, each ``(prompt, steps)`` (or a dict with those keys):
            a solved user turn followed by its assistant turn.
        instruction: the step-format instruction, appended to every user prompt on its own
            line (e.g. "Write one step per line and end with 'Answer: N'.").

    Hashable (examples are stored as tuples), so formatters memoise on it.
    """

    system: str = ""
    examples: tuple = ()
    instruction: str = ""

    def __post_init__(self) -> None:
        for name in ("system", "instruction"):
            if not isinstance(getattr(self, name), str):
                raise TypeError(f"PromptTemplate.{name} must be a string, got {type(getattr(self, name)).__name__}")
        if isinstance(self.examples, (str, dict)):
            raise TypeError("PromptTemplate.examples must be a list of (prompt, steps) pairs")
        norm = []
        for i, ex in enumerate(self.examples):
            if isinstance(ex, dict):
                if set(ex) != {"prompt", "steps"}:
                    raise ValueError(f"PromptTemplate.examples[{i}] must have exactly the keys 'prompt' and 'steps', got {sorted(ex)}")
                ex = (ex["prompt"], ex["steps"])
            if (not isinstance(ex, (tuple, list)) or len(ex) != 2 or not isinstance(ex[0], str)
                    or isinstance(ex[1], str) or not all(isinstance(s, str) for s in ex[1])):
                raise TypeError(f"PromptTemplate.examples[{i}] must be (prompt: str, steps: list[str]), got {ex!r}")
            norm.append((ex[0], tuple(ex[1])))
        object.__setattr__(self, "examples", tuple(norm))

    @classmethod
    def from_dict(cls, d: "PromptTemplate | dict | None") -> "PromptTemplate | None":
        """A template from a YAML/JSON mapping (keys ``system``, ``examples``, ``instruction``)."""
        if d is None or isinstance(d, PromptTemplate):
            return d
        if not isinstance(d, dict):
            raise TypeError(f"prompt_template must be a PromptTemplate or a mapping, got {type(d).__name__}")
        unknown = set(d) - {"system", "examples", "instruction"}
        if unknown:
            raise ValueError(f"unknown prompt_template key(s) {sorted(unknown)}; valid: system, examples, instruction")
        return cls(**d)

    def user_text(self, prompt: str) -> str:
        """The user turn: the prompt, then the instruction on its own line."""
        return prompt + ("\n" + self.instruction if self.instruction else "")

    def plain_prompt(self, prompt: str, delimiter: str = DEFAULT_DELIMITER) -> str:
        """The prompt part of the plain text layout: system, examples, user text, blank-line separated."""
        blocks = [self.system] if self.system else []
        for q, steps in self.examples:
            blocks.append(self.user_text(q) + delimiter + delimiter.join(steps))
        blocks.append(self.user_text(prompt))
        return "\n\n".join(blocks)

    def messages(self, prompt: str, delimiter: str = DEFAULT_DELIMITER) -> list[dict]:
        """Chat messages up to the user turn of ``prompt`` (the assistant turn is the steps)."""
        out = [{"role": "system", "content": self.system}] if self.system else []
        for q, steps in self.examples:
            out.append({"role": "user", "content": self.user_text(q)})
            out.append({"role": "assistant", "content": "".join(s + delimiter for s in steps)})
        out.append({"role": "user", "content": self.user_text(prompt)})
        return out


class TraceText(str):
    """A rendered trace (a ``str``, byte for byte `render_trace`'s text) that keeps its parts:
    ``prompt``, ``steps``, ``delimiter`` and ``template`` (a `PromptTemplate` or None)."""

    prompt: str
    steps: tuple
    delimiter: str
    template: PromptTemplate | None

    def __new__(cls, text: str, prompt: str, steps: Sequence[str], delimiter: str,
                template: PromptTemplate | None = None) -> "TraceText":
        obj = super().__new__(cls, text)
        obj.prompt, obj.steps, obj.delimiter, obj.template = prompt, tuple(steps), delimiter, template
        return obj

    def __reduce__(self) -> tuple[Any, ...]:
        return (TraceText, (str(self), self.prompt, self.steps, self.delimiter, self.template))


def _prompt_part(prompt: str, delimiter: str, template: PromptTemplate | None) -> str:
    return template.plain_prompt(prompt, delimiter) if template is not None else prompt


def render_trace(prompt: str, steps: Sequence[str], delimiter: str = DEFAULT_DELIMITER,
                 template: PromptTemplate | None = None) -> TraceText:
    """The observation a policy sees after ``steps``: prompt + delimiter + each step + delimiter
    (with a ``template``, its plain text layout stands in for the prompt)."""
    text = _prompt_part(prompt, delimiter, template) + delimiter + "".join(s + delimiter for s in steps)
    return TraceText(text, prompt, steps, delimiter, template)


def step_end_offsets(prompt: str, steps: Sequence[str], delimiter: str = DEFAULT_DELIMITER,
                     template: PromptTemplate | None = None) -> list[int]:
    """Character offset just past each step's delimiter in `render_trace` (where a PRM reads)."""
    pos = len(_prompt_part(prompt, delimiter, template)) + len(delimiter)
    out = []
    for s in steps:
        pos += len(s) + len(delimiter)
        out.append(pos)
    return out
