"""`ObservationFormatter`: how a trace (prompt + steps) becomes token ids, for policies and PRMs.

Two formats, chosen by ``prompt_format``:

* ``"plain"`` (default): the trace text of `prmgym.envs.trace.render_trace`, unchanged. A
  policy encodes the observation string the tokenizer's way (special tokens such as a
  ``<bos>`` added); a PRM encodes ``<bos>``, then ``prompt + delimiter``, then each
  ``step + delimiter`` segment by segment.
* ``"chat"``: through the tokenizer's ``apply_chat_template``. The prompt is the user turn
  (after the `PromptTemplate`'s optional system turn and few-shot user/assistant turns, its
  instruction appended to every user text); the steps are the open assistant turn, each
  ``step + delimiter`` tokenised on its own and appended. The assistant turn is never closed,
  so the token ids of a prefix are a prefix of the whole trace's ids: a PRM's one forward pass
  over the whole trace equals scoring each prefix (`ScalarHeadPRM.score_steps`). Policies and
  PRMs get the same ids (`encode_observation` of a trace equals `encode_trace`'s ids).

A policy receives observations as strings. Observations rendered by prmgym
(`render_trace`: env observations, search nodes) are `TraceText` strings that carry their
prompt, steps and template; the chat format re-renders those parts. A bare string is read as
a prompt with no steps yet (one trailing delimiter dropped).

>>> from prmgym.models.tokenizer import char_tokenizer
>>> fmt = ObservationFormatter(char_tokenizer(), "plain")
>>> ids, bounds = fmt.encode_trace("Q", ["a", "bc"])
>>> bounds                               # last token of "<bos>Q\\n", "a\\n", "bc\\n"
[2, 4, 7]
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any, Sequence

from prmgym.envs.trace import DEFAULT_DELIMITER, PromptTemplate, render_trace

PROMPT_FORMATS = ("plain", "chat")


def check_prompt_format(mode: str) -> str:
    if mode not in PROMPT_FORMATS:
        raise ValueError(f"unknown prompt_format {mode!r}; valid: {' | '.join(PROMPT_FORMATS)}")
    return mode


def encode_text(tokenizer: Any, text: str) -> list[int]:
    """Token ids of ``text`` without special tokens (HF tokenizers and minimal ones)."""
    try:
        ids = tokenizer.encode(text, add_special_tokens=False)
    except TypeError:  # minimal tokenizers without the keyword
        ids = tokenizer.encode(text)
    if hasattr(ids, "tolist"):
        ids = ids.tolist()
    return [int(i) for i in ids]


class ObservationFormatter:
    """Renders and encodes traces in one ``mode`` (``"plain"`` or ``"chat"``).

    Args:
        tokenizer: the model's tokenizer (``"chat"`` needs one with a ``chat_template``).
        mode: ``"plain"`` or ``"chat"``.
        delimiter: the env's step delimiter.
        template: a default `PromptTemplate` for traces that carry none (PRM prompts).
        add_bos: ``encode_trace`` in plain mode starts with the tokenizer's ``<bos>`` (what a
            policy sees first).
        memo_size: segments and chat headers memoised (planners re-encode the same prefixes).
    """

    def __init__(self, tokenizer: Any, mode: str = "plain", delimiter: str = DEFAULT_DELIMITER,
                 template: PromptTemplate | None = None, add_bos: bool = True, memo_size: int = 20000) -> None:
        self.tokenizer = tokenizer
        self.mode = check_prompt_format(mode)
        self.delimiter = delimiter
        self.template = template
        if mode == "chat" and not getattr(tokenizer, "chat_template", None):
            raise ValueError(
                f"prompt_format='chat' needs a tokenizer with a chat template, but this "
                f"{type(tokenizer).__name__} has none. Fix: use an instruct model's tokenizer, or set "
                "tokenizer.chat_template = '<jinja template>' and save it with save_pretrained; "
                "or use prompt_format='plain'."
            )
        bos = getattr(tokenizer, "bos_token_id", None) if add_bos else None
        self.prefix_ids: list[int] = [int(bos)] if bos is not None else []
        self._memo: OrderedDict[Any, list[int]] = OrderedDict()
        self._memo_size = memo_size

    def _memoised(self, key: Any, make) -> list[int]:
        ids = self._memo.get(key)
        if ids is None:
            ids = make()
            self._memo[key] = ids
            if len(self._memo) > self._memo_size:
                self._memo.popitem(last=False)
        return ids

    def segment(self, text: str) -> list[int]:
        """Token ids of one segment (no special tokens), memoised."""
        return self._memoised(("seg", text), lambda: encode_text(self.tokenizer, text))

    # ------------------------------------------------------------------ chat parts
    def messages(self, prompt: str, template: PromptTemplate | None = None, delimiter: str | None = None) -> list[dict]:
        """The chat messages before the assistant turn (system, few-shot turns, the user prompt)."""
        template = template if template is not None else self.template
        return (template or PromptTemplate()).messages(prompt, delimiter or self.delimiter)

    def header_text(self, prompt: str, template: PromptTemplate | None = None, delimiter: str | None = None) -> str:
        """Chat mode: the templated text up to and including the assistant turn's opening."""
        return self.tokenizer.apply_chat_template(self.messages(prompt, template, delimiter), tokenize=False,
                                                  add_generation_prompt=True)

    def prompt_ids(self, prompt: str, template: PromptTemplate | None = None, delimiter: str | None = None) -> list[int]:
        """Token ids of the prompt part (everything before the first step), memoised.

        plain: ``<bos>`` + ``prompt + delimiter`` (the template's plain text in front of the
        prompt); chat: the chat template's header, tokenised as ``apply_chat_template`` does
        (the template writes its own special tokens, so none are added).
        """
        template = template if template is not None else self.template
        d = delimiter or self.delimiter
        if self.mode == "chat":
            return self._memoised(("chat", prompt, template, d),
                                  lambda: encode_text(self.tokenizer, self.header_text(prompt, template, d)))
        text = (template.plain_prompt(prompt, d) if template is not None else prompt) + d
        return list(self.prefix_ids) + self.segment(text)

    # ------------------------------------------------------------------ traces
    def render(self, prompt: str, steps: Sequence[str], template: PromptTemplate | None = None) -> str:
        """The trace as text: `render_trace` (plain) or the chat header followed by the steps."""
        template = template if template is not None else self.template
        if self.mode == "plain":
            return render_trace(prompt, steps, self.delimiter, template)
        return self.header_text(prompt, template) + "".join(self.step_text(s, self.delimiter) for s in steps)

    def step_text(self, step: str, delimiter: str | None = None) -> str:
        """The text of one step's segment: ``step + delimiter``; in chat mode a tool step
        (`prmgym.envs.tools`: a code cell and its output block) becomes the cell, the
        delimiter and a **tool turn** holding the output (`tool_turn`), when the template
        renders one; otherwise the output stays text in the assistant turn."""
        d = delimiter or self.delimiter
        if self.mode != "chat":
            return step + d
        from prmgym.envs.tools import split_tool_step

        cell, output = split_tool_step(step)
        turn = self.tool_turn(output) if output is not None else None
        return step + d if turn is None else cell + d + turn

    def tool_turn(self, output: str) -> str | None:
        """Chat mode: the text that closes the assistant turn, holds ``output`` as a turn of
        role ``"tool"`` and opens the next assistant turn, as the chat template writes it;
        None when the template has no such turn (it fails on the role or drops the content)."""
        memo = self.__dict__.setdefault("_tool_turns", {})
        if output in memo:
            return memo[output]
        user = [{"role": "user", "content": "U"}]
        turn = None
        try:
            head = self.tokenizer.apply_chat_template(user, tokenize=False, add_generation_prompt=True)
            full = self.tokenizer.apply_chat_template(
                user + [{"role": "assistant", "content": "A"}, {"role": "tool", "content": output}],
                tokenize=False, add_generation_prompt=True)
            tail = full[len(head) + 1:]
            if full.startswith(head + "A") and output in tail:
                turn = tail
        except Exception:  # noqa: BLE001  (a template without a tool role: plain text instead)
            turn = None
        memo[output] = turn
        return turn

    def encode_trace(self, prompt: str, steps: Sequence[str], template: PromptTemplate | None = None,
                     delimiter: str | None = None) -> tuple[list[int], list[int]]:
        """Token ids of the trace and the boundary positions ``[prompt_end, step_1_end, ...]``.

        Position ``k`` is the index of the last token of segment ``k`` (segment 0 is the prompt
        part, segment ``i >= 1`` is ``steps[i-1] + delimiter``); a PRM reads its head there.
        Append-only in both modes: the ids of ``steps[:k]`` are a prefix of the ids of ``steps``.
        """
        d = delimiter or self.delimiter
        ids = self.prompt_ids(prompt, template, d)
        if len(ids) == len(self.prefix_ids) and self.mode == "plain":
            raise ValueError("the prompt tokenises to no tokens (empty text and empty delimiter): the PRM has no "
                             "position to read; use a non-empty delimiter")
        ids = list(ids)
        bounds = [len(ids) - 1]
        for k, s in enumerate(steps):
            seg = self.segment(self.step_text(s, d))
            if not seg:
                raise ValueError(f"step {k} tokenises to no tokens (empty text and empty delimiter): the PRM has no "
                                 "position to read; use a non-empty delimiter or drop empty steps")
            ids.extend(seg)
            bounds.append(len(ids) - 1)
        return ids, bounds

    def encode_observation(self, observation: str) -> list[int]:
        """Token ids a policy feeds for ``observation``.

        plain: the string tokenised the tokenizer's way (special tokens added), as before
        formatters existed. chat: `encode_trace`'s ids of the observation's parts (a
        `TraceText`; a bare string is a prompt without steps).
        """
        if self.mode == "plain":
            ids = list(self.tokenizer(str(observation), add_special_tokens=True)["input_ids"])
            if not ids:  # an empty observation with a tokenizer that adds nothing
                start = self.tokenizer.bos_token_id
                ids = [start if start is not None else self.tokenizer.eos_token_id]
            return ids
        prompt, steps, template, delimiter = self.parts(observation)
        return self.encode_trace(prompt, steps, template, delimiter)[0]

    def parts(self, observation: str) -> tuple[str, tuple, PromptTemplate | None, str]:
        """(prompt, steps, template, delimiter) of an observation string (see the module docstring)."""
        prompt = getattr(observation, "prompt", None)
        if prompt is not None:
            return prompt, tuple(observation.steps), observation.template, observation.delimiter
        text = str(observation)
        if self.delimiter and text.endswith(self.delimiter):
            text = text[: -len(self.delimiter)]
        return text, (), None, self.delimiter
