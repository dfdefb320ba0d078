"""`ReasoningEnv`: a reasoning problem as a Gymnasium environment whose actions are steps.

Observation: ``render_trace(task.prompt, steps, delimiter)`` (the prompt, then each step
followed by the delimiter). Action: one step, a string. Episode end:

* **answer tasks** terminate on a step that starts with the answer prefix (``"Answer:"``,
  leading whitespace ignored); the answer is the rest of the step, stripped
  (`extract_answer`). ``format_answer(a)`` returns ``"Answer: a"``.
* **code tasks** (``task.tests`` non-empty) terminate on the end-of-code marker: a step that
  is exactly ```` ``` ```` (surrounding whitespace ignored), or a multi-line step whose last
  line is. The program is ``metadata["code_prefix"]`` + delimiter + the lines written before
  the marker. ``format_answer(body)`` returns ``body + "\\n```"`` (the whole body in one step).
* **truncation** after ``max_steps`` steps, or when a step is longer than
  ``max_step_chars`` or would push the steps past ``max_chars`` characters (the step is then
  cut to fit, so observations always stay inside the observation space). Truncated episodes
  get reward 0 and no verdict.

Reward: the verifier's ``Verdict.reward`` on the terminating step, 0 on every other step.

A step that contains the delimiter is kept as ONE step (a policy that stops at the
delimiter never produces one; a scripted one may, e.g. a multi-line answer); exactly one
trailing delimiter is stripped, so ``step("7+5=12\\n")`` equals ``step("7+5=12")``.

>>> from prmgym.envs.procedural import ChainArithmetic
>>> from prmgym.envs.verifiers import MathVerifier
>>> env = ReasoningEnv(ChainArithmetic(), MathVerifier())
>>> obs, info = env.reset(seed=0)
>>> for s in info["task"].expert_steps:
...     obs, reward, terminated, truncated, info = env.step(s)
>>> reward, terminated, info["verdict"].correct
(1.0, True, True)
"""

from __future__ import annotations

from typing import Any, NamedTuple, Sequence

import gymnasium as gym
from gymnasium.error import ResetNeeded

from prmgym.envs.sources import ANSWER_PREFIX, CODE_END, TaskSource
from prmgym.envs.spaces import ReasoningText
from prmgym.envs.task import Task
from prmgym.envs.trace import DEFAULT_DELIMITER, PromptTemplate, render_trace
from prmgym.envs.verifiers import Verdict, Verifier, as_verifier


def extract_answer(step: str, prefix: str = ANSWER_PREFIX) -> str | None:
    """The answer a step submits, or ``None`` if it is not an answer step.

    >>> extract_answer("Answer:  42 ")
    '42'
    >>> extract_answer("7+5=12") is None
    True
    """
    s = step.lstrip()
    if not s.startswith(prefix):
        return None
    return s[len(prefix):].strip()


def is_code_end(step: str, code_end: str = CODE_END) -> bool:
    """True if ``step`` finishes a program: it is the marker, or its last line is."""
    lines = step.rstrip().split("\n")
    return lines[-1].strip() == code_end


class EnvState(NamedTuple):
    """Everything `ReasoningEnv.set_state` needs: immutable and cheap to copy."""

    task: Task | None
    steps: tuple[str, ...]
    trace_chars: int
    terminated: bool
    truncated: bool
    answer: str | None
    verdict: Verdict | None


class ReasoningEnv(gym.Env[str, str]):
    """A reasoning problem as an episode of text steps.

    Args:
        source: a `TaskSource` (``reset`` draws from ``source.sample(split, np_random)``).
        verifier: a `Verifier` scoring the submission at termination.
        split: which split of ``source`` to draw from.
        delimiter: step delimiter of the trace (``"\\n"``).
        max_steps: steps before truncation.
        max_step_chars: longest step; a longer one is cut and truncates the episode.
        max_chars: most characters of all steps (with delimiters) before truncation.
        max_prompt_chars: longest prompt accepted (bounds the observation space).
        answer_prefix: how an answer step starts.
        code_end: the step that finishes a program in code tasks.
        render_mode: ``"ansi"`` (``render()`` returns the text) or ``"human"`` (prints it).
        verdict_cache: remember this many verdicts per (task, answer); planners that
            branch with ``set_state`` re-submit the same answers often. 0 disables it.
        prompt_template: a `PromptTemplate` (or a mapping with ``system``, ``examples``,
            ``instruction``): written in front of the prompt in the observation text, and
            turned into chat turns by a policy with ``prompt_format="chat"``.

    ``verifier`` may also be a plain function ``score(task, text) -> float | Verdict``
    (`prmgym.envs.verifiers.FunctionVerifier` wraps it).
    """

    metadata = {"render_modes": ["ansi", "human"], "render_fps": 4}

    def __init__(
        self,
        source: TaskSource,
        verifier: Verifier,
        split: str = "train",
        *,
        delimiter: str = DEFAULT_DELIMITER,
        max_steps: int = 16,
        max_step_chars: int = 2048,
        max_chars: int = 8192,
        max_prompt_chars: int = 32768,
        answer_prefix: str = ANSWER_PREFIX,
        code_end: str = CODE_END,
        render_mode: str | None = None,
        verdict_cache: int = 1024,
        prompt_template: PromptTemplate | dict | None = None,
    ) -> None:
        if not isinstance(source, TaskSource):
            raise TypeError(f"source must be a prmgym.envs.TaskSource (e.g. ChainArithmetic(), Jsonl(path)), got {type(source).__name__}")
        if callable(verifier) and not isinstance(verifier, (Verifier, type)):
            verifier = as_verifier(verifier)  # a score(task, text) function (a factory is refused, clearly)
        if not isinstance(verifier, Verifier):
            raise TypeError(f"verifier must be a prmgym.envs.Verifier (e.g. MathVerifier()) or a function "
                            f"score(task, text) -> float | Verdict, got {type(verifier).__name__}")
        prompt_template = PromptTemplate.from_dict(prompt_template)
        if split not in source.splits:
            raise ValueError(f"unknown split {split!r} for {source.name}; valid splits: {', '.join(source.splits)}")
        if not isinstance(delimiter, str) or not delimiter:
            raise ValueError(f"delimiter must be a non-empty string, got {delimiter!r}")
        for name, v in (("max_steps", max_steps), ("max_step_chars", max_step_chars), ("max_chars", max_chars), ("max_prompt_chars", max_prompt_chars)):
            if not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be a positive integer, got {v!r}")
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise ValueError(f"render_mode must be None, 'ansi' or 'human', got {render_mode!r}")
        if not answer_prefix or not code_end:
            raise ValueError("answer_prefix and code_end must be non-empty")
        self.source = source
        self.verifier = verifier
        self.split = split
        self.delimiter = delimiter
        self.max_steps = max_steps
        self.max_step_chars = max_step_chars
        self.max_chars = max_chars
        self.max_prompt_chars = max_prompt_chars
        self.answer_prefix = answer_prefix
        self.code_end = code_end
        self.render_mode = render_mode
        self.prompt_template = prompt_template
        self.action_space = ReasoningText(max_length=max_step_chars)
        extra = len(prompt_template.plain_prompt("", delimiter)) if prompt_template is not None else 0
        self.observation_space = ReasoningText(max_length=max_prompt_chars + extra + len(delimiter) + max_chars)
        self._cache_size = verdict_cache
        self._cache: dict[tuple[str, str, str], Verdict] = {}
        self._primed: dict[tuple[str, str, str], Verdict] = {}
        self._state = EnvState(None, (), 0, False, False, None, None)

    # ------------------------------------------------------------------ properties
    @property
    def task(self) -> Task | None:
        return self._state.task

    @property
    def steps(self) -> tuple[str, ...]:
        return self._state.steps

    @property
    def done(self) -> bool:
        return self._state.terminated or self._state.truncated

    def format_answer(self, answer: Any) -> str:
        """The step that submits ``answer``: ``"Answer: 5"``; for code tasks the program body
        followed by the end-of-code marker (one step)."""
        if self._state.task is not None and self._state.task.is_code:
            return str(answer).rstrip("\n") + "\n" + self.code_end
        return f"{self.answer_prefix} {answer}"

    def extract_answer(self, step: str) -> str | None:
        return extract_answer(step, self.answer_prefix)

    def program(self, steps: tuple[str, ...] | None = None, task: Task | None = None) -> str:
        """The program that code-task ``steps`` write: ``code_prefix`` + newline + one line per
        step (the end marker excluded), newline-terminated."""
        task = task or self._state.task
        steps = self._state.steps if steps is None else steps
        lines = list(steps)
        if lines and is_code_end(lines[-1], self.code_end):
            last = lines.pop().rstrip().split("\n")[:-1]
            lines.extend(["\n".join(last)] if last else [])
        prefix = task.metadata.get("code_prefix", "") if task is not None else ""
        body = "\n".join(lines)  # program lines are joined by newlines whatever the step delimiter
        return (prefix + "\n" + body if prefix else body) + "\n"

    # ------------------------------------------------------------------ gym API
    def _obs(self) -> str:
        s = self._state
        return render_trace(s.task.prompt, s.steps, self.delimiter, self.prompt_template)

    def _info(self) -> dict[str, Any]:
        s = self._state
        return {"task": s.task, "steps": s.steps, "answer": s.answer, "verdict": s.verdict}

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[str, dict[str, Any]]:
        super().reset(seed=seed)
        options = options or {}
        unknown = set(options) - {"task"}
        if unknown:
            raise ValueError(f"unknown reset option(s) {sorted(unknown)}; the only option is 'task' (a prmgym.envs.Task)")
        task = options.get("task")
        if task is None:
            task = self.source.sample(self.split, self.np_random)
        elif not isinstance(task, Task):
            raise TypeError(f"options['task'] must be a prmgym.envs.Task, got {type(task).__name__}")
        if len(task.prompt) > self.max_prompt_chars:
            raise ValueError(f"task {task.id!r} has a {len(task.prompt)}-char prompt, over max_prompt_chars={self.max_prompt_chars}; raise max_prompt_chars")
        if task.is_code and not getattr(self.verifier, "handles_code", False):
            raise ValueError(f"task {task.id!r} is a code task (it has tests) but the verifier {type(self.verifier).__name__} cannot run code; use CodeVerifier or AutoVerifier")
        self._state = EnvState(task, (), 0, False, False, None, None)
        self._primed.clear()
        if self.render_mode == "human":
            self.render()
        return self._obs(), self._info()

    def step(self, action: str) -> tuple[str, float, bool, bool, dict[str, Any]]:
        if not isinstance(action, str):
            raise TypeError(
                f"action must be a str (one reasoning step), got {type(action).__name__}; "
                "decode token ids to text first, and submit answers with env.unwrapped.format_answer(answer)"
            )
        s = self._state
        if s.task is None:
            raise ResetNeeded("call env.reset() before env.step()")
        if s.terminated or s.truncated:
            raise ResetNeeded("this episode is over (terminated or truncated); call env.reset() before stepping again")
        step, truncated, answer = self._parse(action)
        steps = s.steps + (step,)
        chars = s.trace_chars + len(step) + len(self.delimiter)
        terminated, verdict, reward = False, None, 0.0
        if answer is not None:
            terminated = True
            verdict = self._verify(s.task, answer)
            reward = verdict.reward
        elif not truncated and len(steps) >= self.max_steps:
            truncated = True
        self._state = EnvState(s.task, steps, chars, terminated, truncated, answer, verdict)
        if self.render_mode == "human":
            self.render()
        return self._obs(), reward, terminated, truncated, self._info()

    def _parse(self, action: str) -> tuple[str, bool, str | None]:
        """(the step as stored, cut-to-fit?, the text to verify or None) for ``action``."""
        s = self._state
        step = str(action)
        if step.endswith(self.delimiter):
            step = step[: -len(self.delimiter)]
        truncated = False
        if len(step) > self.max_step_chars:
            step, truncated = step[: self.max_step_chars], True
        room = self.max_chars - s.trace_chars - len(self.delimiter)
        if len(step) > room:
            step, truncated = step[: max(room, 0)], True
        answer = None
        if not truncated:
            if s.task.is_code:
                if is_code_end(step, self.code_end):
                    answer = self.program(s.steps + (step,), s.task)
            else:
                answer = extract_answer(step, self.answer_prefix)
        return step, truncated, answer

    def pending_submission(self, action: str) -> str | None:
        """What ``step(action)`` would hand to the verifier (the extracted answer, or the
        program for code tasks), or ``None`` if that step would not end the episode.
        Used by `step_batch` to verify many envs' submissions in one ``score_batch`` call."""
        s = self._state
        if s.task is None or s.terminated or s.truncated or not isinstance(action, str):
            return None
        return self._parse(action)[2]

    def prime_verdict(self, task: Task, text: str, verdict: Verdict) -> None:
        """Hand in the verdict for (task, text) computed elsewhere; the next ``step`` that
        submits ``text`` for ``task`` uses it instead of calling the verifier."""
        if not isinstance(verdict, Verdict):
            raise TypeError(f"prime_verdict needs a Verdict, got {type(verdict).__name__}")
        self._primed[(task.id, task.prompt, text)] = verdict

    def _verify(self, task: Task, answer: str) -> Verdict:
        key = (task.id, task.prompt, answer)
        v = self._primed.pop(key, None) or self._cache.get(key)
        if v is None:
            v = self.verifier.score(task, answer)
            if self._cache_size > 0 and not v.details.get("sandbox_error"):
                if len(self._cache) >= self._cache_size:
                    self._cache.pop(next(iter(self._cache)))
                self._cache[key] = v
        return v

    # ------------------------------------------------------------------ planners
    def get_state(self) -> EnvState:
        """An immutable snapshot (task reference + tuple of steps): O(1) to take and restore."""
        return self._state

    def set_state(self, state: EnvState) -> None:
        """Restore a snapshot from `get_state` (of this env or one with the same settings)."""
        if not isinstance(state, EnvState):
            raise TypeError(f"set_state expects the EnvState returned by get_state(), got {type(state).__name__}")
        self._state = state

    # ------------------------------------------------------------------ rendering
    def render_text(self) -> str:
        s = self._state
        if s.task is None:
            return "(no episode: call reset())"
        lines = [f"=== {s.task.id} ===", s.task.prompt]
        for i, st in enumerate(s.steps, 1):
            lines.append(f"[{i}] {st}")
        if s.terminated:
            v = s.verdict
            lines.append(f"--- terminated: answer={s.answer!r:.80} reward={v.reward:.3f} correct={v.correct}")
        elif s.truncated:
            lines.append(f"--- truncated after {len(s.steps)} steps (reward 0)")
        return "\n".join(lines)

    def render(self) -> str | None:
        if self.render_mode is None:
            gym.logger.warn("render() called with render_mode=None; pass render_mode='ansi' or 'human' to gym.make")
            return None
        text = self.render_text()
        if self.render_mode == "human":
            print(text)
            return None
        return text

    def close(self) -> None:
        self.verifier.close()


def step_batch(envs: Sequence[gym.Env], actions: Sequence[str]) -> list[tuple[str, float, bool, bool, dict[str, Any]]]:
    """``[env.step(a) for env, a in zip(envs, actions)]``, but every submission that ends an
    episode is verified first in ONE ``verifier.score_batch`` call per verifier, so code
    envs run their sandbox jobs in parallel. Results are identical to stepping one by one.

    >>> import gymnasium as gym, prmgym
    >>> envs = [gym.make("prmgym/ChainArithmetic-v0") for _ in range(2)]
    >>> tasks = [e.reset(seed=i)[1]["task"] for i, e in enumerate(envs)]
    >>> [r[1] for r in step_batch(envs, [t.expert_steps[-1] for t in tasks])]
    [1.0, 1.0]
    """
    if len(envs) != len(actions):
        raise ValueError(f"step_batch needs one action per env, got {len(envs)} envs and {len(actions)} actions")
    groups: dict[int, tuple[Any, list[tuple[ReasoningEnv, Task, str]]]] = {}
    for env, action in zip(envs, actions):
        u = env.unwrapped
        if not isinstance(u, ReasoningEnv):
            continue
        text = u.pending_submission(action)
        if text is None:
            continue
        key = (u.task.id, u.task.prompt, text)
        if key in u._cache or key in u._primed:
            continue
        groups.setdefault(id(u.verifier), (u.verifier, []))[1].append((u, u.task, text))
    for verifier, items in groups.values():
        verdicts = verifier.score_batch([t for _, t, _ in items], [x for _, _, x in items])
        for (u, task, text), v in zip(items, verdicts):
            u.prime_verdict(task, text, v)
    return [env.step(action) for env, action in zip(envs, actions)]
