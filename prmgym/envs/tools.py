"""Tool steps: a reasoning step that runs Python in the env's sandbox and reads the output.

A **code cell** is a step fenced as a Python code block, on one line or several::

    ```python print(347*29)```
    ```python
    s = sum(k * k for k in range(1, 38))
    print(s)
    ```

`ToolEnv` (a `ReasoningEnv`) runs every code cell in its sandbox (`LocalSandbox` by default,
``sandbox="docker"`` or any `prmgym.sandbox.Sandbox`) and stores the step as the cell, the
delimiter, and a **tool segment** holding what the cell printed::

    ```python print(347*29)```
    ```output
    10063
    ```

The tool segment is part of the observation (and of ``env.steps``, so PRMs score a tool
step after seeing its output and planners branch after it with ``get_state``/``set_state``
without running it again), but the policy did not write it: `prmgym.agents` packing
(`prmgym.agents.common.pack_trajectories`) keeps its tokens as context and never as loss
targets.

**Output** (`tool_output`): the cell's stdout; when the cell raised, the stdout it printed
first and then the error's last line (``ZeroDivisionError: division by zero``); a timeout,
memory or output-limit stop, or a cell that ended the interpreter, adds one line naming it. Trailing newlines are dropped and the text
is cut to ``tool_output_chars`` characters (default `TOOL_OUTPUT_CHARS` = 512), the cut
marked ``...[N more characters]``.

**State between cells**: a cell sees the variables of the episode's earlier cells because
every run re-executes them first (their output discarded, their errors ignored; cells that
timed out, hit a limit or ended the interpreter are skipped), then runs the new cell. We chose this over a
per-episode interpreter in the sandbox: each run stays one fresh, single-use, isolated
process (nothing of one episode can leak into another or outlive a job), ``set_state`` is
free (there is no process to fork or rewind when a planner branches), and in the short
traces of reasoning tasks (a few cells) re-running costs little: benchmarks/tool_cells.py
measures the cost per step against the number of earlier cells (figures in docs/envs.md).
Its limits: a cell must be deterministic to see the same values again (``random`` without a
seed differs across re-runs) and a slow cell slows every later step.

**Caching**: the output of a cell is cached per (earlier cells, cell) text, so replaying a
stored trace (a ReST-GRPO partial state, a Monte-Carlo prefix) does not run the sandbox
again; ``info["tool"].ran`` says whether this step ran it (what the search budget counts).
A step that already carries an output block (a stored step being replayed, or a policy that
wrote one) has that block replaced by the real output.

>>> from prmgym.envs.tools import cell_code
>>> cell_code("```python print(2+3)```")
'print(2+3)'
>>> cell_code("2+3=5") is None
True
"""

from __future__ import annotations

import random
import textwrap
from dataclasses import dataclass, replace
from typing import Any, NamedTuple, Sequence

from prmgym.envs.core import EnvState, ReasoningEnv
from prmgym.envs.sources import ProceduralSource, TaskSource, format_answer
from prmgym.envs.task import Task
from prmgym.envs.verifiers import Verifier

CELL_OPEN = "```python"
OUTPUT_OPEN = "```output"
FENCE = "```"
#: default length (characters) a tool segment's output is cut to
TOOL_OUTPUT_CHARS = 512
#: statuses after which a cell is not re-run before later cells (it would stop them again);
#: ``"exited"``: the cell ended the interpreter (``sys.exit``, ``os._exit``) before its end
_SKIP_ON_RERUN = ("timeout", "memory", "output_limit", "sandbox_error", "exited")
#: what a tool run prints after its cell completed (removed from the output)
CELL_DONE = "\x1eprmgym-cell-done\x1e"


def split_tool_step(step: str) -> tuple[str, str | None]:
    """``(the cell part, the output text)`` of a stored tool step; the output is ``None`` when
    the step carries no output block.

    >>> split_tool_step("```python print(1)```\\n```output\\n1\\n```")
    ('```python print(1)```', '1')
    """
    i = step.find("\n" + OUTPUT_OPEN)
    if i < 0:
        return step, None
    block = step[i + 1 + len(OUTPUT_OPEN):]
    if block.startswith("\n"):
        block = block[1:]
    if block.endswith(FENCE):
        block = block[: -len(FENCE)]
    return step[:i], block[:-1] if block.endswith("\n") else block


def cell_code(step: str) -> str | None:
    """The Python code of a code-cell step (a claimed output block ignored), or ``None`` if the
    step is not a code cell. An empty cell is not a cell."""
    s = split_tool_step(step)[0].strip()
    if not (s.startswith(CELL_OPEN) and s.endswith(FENCE)) or len(s) < len(CELL_OPEN) + len(FENCE):
        return None
    body = s[len(CELL_OPEN): len(s) - len(FENCE)]
    code = textwrap.dedent(body.lstrip(" ").strip("\n")).strip("\n")
    return code if code.strip() else None


def render_tool_segment(output: str) -> str:
    """The tool segment that follows a cell in the trace: ```` ```output\\n<output>\\n``` ````."""
    return f"{OUTPUT_OPEN}\n{output}\n{FENCE}"


def cut_output(text: str, limit: int = TOOL_OUTPUT_CHARS) -> str:
    """``text`` without trailing newlines, cut to ``limit`` characters (the cut marked)."""
    text = text.rstrip("\n")
    if len(text) <= limit:
        return text
    return text[:limit] + f"\n...[{len(text) - limit} more characters]"


def tool_output(result: Any, limit: int = TOOL_OUTPUT_CHARS, timeout_s: float | None = None,
                memory_mb: int | None = None) -> str:
    """What the tool segment shows for a sandbox `ExecResult` (see the module docstring)."""
    status = result.status
    if status == "passed":
        if result.stdout.endswith(CELL_DONE):
            return cut_output(result.stdout[: -len(CELL_DONE)], limit)
        return cut_output(result.stdout.rstrip("\n") + "\nSystemExit: the cell ended the interpreter", limit)
    if status in ("runtime_error", "compile_error"):
        lines = [ln for ln in (result.stderr or "").splitlines() if ln.strip()]
        if not lines:
            msg = str((result.details or {}).get("error", {}).get("msg", "")) if isinstance(result.details, dict) else ""
            lines = [ln for ln in msg.splitlines() if ln.strip()] or [f"Error ({status})"]
        printed = result.stdout.rstrip("\n")
        return cut_output((printed + "\n" if printed else "") + lines[-1].strip(), limit)
    if status == "timeout":
        return cut_output(f"TimeoutError: the cell ran longer than {timeout_s:g}s" if timeout_s else "TimeoutError: the cell ran too long", limit)
    if status == "memory":
        return cut_output(f"MemoryError: the cell used more than {memory_mb} MB" if memory_mb else "MemoryError", limit)
    if status == "output_limit":
        return cut_output(result.stdout, limit) + "\n[output limit reached: the cell was stopped]"
    return f"SandboxError: the sandbox failed to run the cell ({status})"


def cell_program(earlier: Sequence[str], code: str) -> str:
    """The program one tool run executes: ``earlier`` cells (output discarded, errors and
    ``sys.exit`` ignored) then ``code``, all in one namespace, then `CELL_DONE` on stdout (a
    cell that ends the interpreter early, e.g. ``os._exit``, never prints it). Cells are
    embedded as string literals and compiled inside the run, so a cell with a syntax error
    fails at run time like any other error."""
    return (
        "import io as _io, sys as _sys\n"
        "_g = {'__name__': '__main__', '__builtins__': __builtins__}\n"
        f"for _i, _c in enumerate({list(earlier)!r}):\n"
        "    _out, _sys.stdout = _sys.stdout, _io.StringIO()\n"
        "    try:\n"
        "        exec(compile(_c, '<cell %d>' % (_i + 1), 'exec'), _g)\n"
        "    except BaseException:\n"
        "        pass\n"
        "    finally:\n"
        "        _sys.stdout = _out\n"
        f"exec(compile({code!r}, '<cell>', 'exec'), _g)\n"
        f"_sys.stdout.flush()\n_sys.stdout.write({CELL_DONE!r})\n"
    )


@dataclass(frozen=True)
class ToolRun:
    """What one code-cell step did (``info["tool"]`` after that step, ``None`` after others).

    Attributes:
        code: the cell's code.
        output: the text of its tool segment.
        status: the sandbox status (``"passed"``, ``"runtime_error"``, ``"timeout"``, ...), or
            ``"exited"`` when the cell ended the interpreter before its end (``os._exit``).
        ran: True if this step ran the sandbox (False: the output came from the cache).
        wall_s: the sandbox's wall time for the run (0 when cached).
    """

    code: str
    output: str
    status: str
    ran: bool
    wall_s: float = 0.0


class ToolEnvState(NamedTuple):
    """`ToolEnv.get_state`: the `EnvState` plus the episode's cells ``(code, status)``."""

    env: EnvState
    cells: tuple[tuple[str, str], ...]


class ToolEnv(ReasoningEnv):
    """A `ReasoningEnv` whose code-cell steps run in a sandbox (see the module docstring).

    In **code tasks** (``task.tests``: ProgramSynthesis, HumanEval) a cell is a "run my code
    on an example" step: it runs the program written so far (``code_prefix`` and the lines,
    cells left out) followed by the cell, e.g. ```` ```python print(f(3))``` ````, and shows
    the output; the cell is not part of the submitted program and the hidden tests never run
    in it.

    Args:
        source, verifier, split: as for `ReasoningEnv`.
        sandbox: ``"local"`` (default; the process-wide shared `LocalSandbox`), ``"docker"``
            (shared `DockerSandbox`) or a `prmgym.sandbox.Sandbox` instance (not closed here).
        tool_timeout_s / tool_memory_mb: limits of one tool run (all earlier cells included).
        tool_output_chars: the output is cut to this many characters.
        tool_cache: remember this many cell outputs (0 disables the cache).
        **env_kwargs: the other `ReasoningEnv` keywords. ``max_step_chars`` bounds what the
            policy writes; the tool segment comes on top of it (``max_chars`` still bounds
            the whole trace).
    """

    def __init__(self, source: TaskSource, verifier: Verifier, split: str = "train", *, sandbox: Any = "local",
                 tool_timeout_s: float = 5.0, tool_memory_mb: int = 256, tool_output_chars: int = TOOL_OUTPUT_CHARS,
                 tool_cache: int = 4096, **env_kwargs: Any) -> None:
        super().__init__(source, verifier, split, **env_kwargs)
        from prmgym.sandbox.base import Sandbox

        if not (isinstance(sandbox, Sandbox) or sandbox in ("local", "docker")):
            raise ValueError(f"sandbox must be 'local', 'docker' or a prmgym.sandbox.Sandbox instance, got {sandbox!r:.80}")
        if not tool_timeout_s > 0:
            raise ValueError(f"tool_timeout_s must be > 0, got {tool_timeout_s!r}")
        if not (isinstance(tool_memory_mb, int) and tool_memory_mb >= 16):
            raise ValueError(f"tool_memory_mb must be an integer >= 16 (Python needs it to start), got {tool_memory_mb!r}")
        if not (isinstance(tool_output_chars, int) and tool_output_chars >= 1):
            raise ValueError(f"tool_output_chars must be a positive integer, got {tool_output_chars!r}")
        if not (isinstance(tool_cache, int) and tool_cache >= 0):
            raise ValueError(f"tool_cache must be an integer >= 0 (0 disables it), got {tool_cache!r}")
        self._sandbox_spec = sandbox
        self.tool_timeout_s = float(tool_timeout_s)
        self.tool_memory_mb = tool_memory_mb
        self.tool_output_chars = tool_output_chars
        self._tool_cache_size = tool_cache
        self._tool_cache: dict[tuple[tuple[str, ...], str], tuple[str, str]] = {}
        self._cells: tuple[tuple[str, str], ...] = ()
        self._last_tool: ToolRun | None = None
        self.tool_runs = 0  # sandbox runs made by this env (cache hits excluded)

    @property
    def sandbox(self) -> Any:
        if isinstance(self._sandbox_spec, str):
            from prmgym.envs.verifiers import shared_sandbox

            return shared_sandbox(self._sandbox_spec)
        return self._sandbox_spec

    # ------------------------------------------------------------------ gym API
    def _info(self) -> dict[str, Any]:
        return {**super()._info(), "tool": self._last_tool}

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[str, dict[str, Any]]:
        self._cells, self._last_tool = (), None
        return super().reset(seed=seed, options=options)

    def program(self, steps: tuple[str, ...] | None = None, task: Task | None = None) -> str:
        """`ReasoningEnv.program` without the code-cell steps (a cell tries the program; it is
        not part of it)."""
        steps = self._state.steps if steps is None else steps
        return super().program(tuple(s for s in steps if cell_code(s) is None), task)

    def step(self, action: str) -> tuple[str, float, bool, bool, dict[str, Any]]:
        self._last_tool = None
        return super().step(action)

    def _parse(self, action: str) -> tuple[str, bool, str | None]:
        """A code cell runs here (see `ReasoningEnv._parse`): the stored step is the cell, the
        delimiter and the tool segment; other steps are parsed as usual."""
        body = action[: -len(self.delimiter)] if action.endswith(self.delimiter) else action
        code = cell_code(body)
        cell = split_tool_step(body)[0].strip()
        if code is None or len(cell) > self.max_step_chars:
            return super()._parse(action)
        run = self._run_cell(code)
        self._cells += ((code, run.status),)
        self._last_tool = run
        step = cell + self.delimiter + render_tool_segment(run.output)
        room = self.max_chars - self._state.trace_chars - len(self.delimiter)
        if len(step) > room:
            return step[: max(room, 0)], True, None
        return step, False, None

    def pending_submission(self, action: str) -> str | None:
        if isinstance(action, str) and cell_code(action.removesuffix(self.delimiter)) is not None:
            return None  # a cell never submits (and must not run here)
        return super().pending_submission(action)

    def _run_cell(self, code: str) -> ToolRun:
        from prmgym.sandbox.base import Job

        if self._state.task.is_code:  # the program written so far, then the cell, as one cell
            earlier: tuple[str, ...] = ()
            code_run = self.program() + code
        else:
            earlier = tuple(c for c, status in self._cells if status not in _SKIP_ON_RERUN)
            code_run = code
        key = (earlier, code_run)
        hit = self._tool_cache.get(key)
        if hit is not None:
            return ToolRun(code, hit[0], hit[1], ran=False)
        job = Job(cell_program(earlier, code_run), timeout_s=self.tool_timeout_s, memory_mb=self.tool_memory_mb)
        result = self.sandbox.run(job)
        self.tool_runs += 1
        output = tool_output(result, self.tool_output_chars, self.tool_timeout_s, self.tool_memory_mb)
        status = "exited" if result.status == "passed" and not result.stdout.endswith(CELL_DONE) else result.status
        if self._tool_cache_size > 0 and result.status != "sandbox_error":
            if len(self._tool_cache) >= self._tool_cache_size:
                self._tool_cache.pop(next(iter(self._tool_cache)))
            self._tool_cache[key] = (output, status)
        return ToolRun(code, output, status, ran=True, wall_s=float(result.wall_s))

    # ------------------------------------------------------------------ planners
    def get_state(self) -> ToolEnvState:
        """The `EnvState` (its steps hold the tool outputs) and the cells run so far."""
        return ToolEnvState(super().get_state(), self._cells)

    def set_state(self, state: ToolEnvState) -> None:
        if not isinstance(state, ToolEnvState):
            raise TypeError(f"ToolEnv.set_state expects the ToolEnvState returned by its get_state(), got {type(state).__name__}")
        super().set_state(state.env)
        self._cells, self._last_tool = state.cells, None


def tool_trace(cells: Sequence[str], answer: Any) -> tuple[str, ...]:
    """Expert steps that compute with ``cells`` (code, one cell each) and then submit ``answer``.

    >>> tool_trace(["print(2+3)"], 5)
    ('```python print(2+3)```', 'Answer: 5')
    """
    steps = [f"{CELL_OPEN} {c}{FENCE}" if "\n" not in c else f"{CELL_OPEN}\n{c}\n{FENCE}" for c in cells]
    return tuple(steps) + (format_answer(answer),)


def tool_examples(env: Any, tasks: Sequence[Task]) -> list[tuple[str, str]]:
    """Supervised pairs from tasks' expert traces played in a `ToolEnv`: one pair
    ``(observation before the step, step + delimiter)`` per expert step, so the prompt side
    holds the tool outputs of earlier cells and the completion side only what the policy
    writes (a tool segment is never a training target). Cells run in the env's sandbox
    (cached per cell, as in any episode).

    >>> from prmgym.envs import make
    >>> env = make("prmgym/ToolMath-v0")
    >>> pairs = tool_examples(env, ToolMath().tasks("train", 1))
    >>> [c for _, c in pairs][0].startswith("```python print(")
    True
    >>> "```output" in pairs[1][0]
    True
    """
    u = getattr(env, "unwrapped", env)
    if not isinstance(u, ToolEnv):
        raise TypeError(f"tool_examples needs a ToolEnv (e.g. make('prmgym/ToolMath-v0')), got {type(u).__name__}")
    out = []
    for t in tasks:
        if not t.expert_steps:
            raise ValueError(f"task {t.id!r} has no expert_steps to replay")
        obs, _ = u.reset(options={"task": t})
        for step in t.expert_steps:
            out.append((str(obs), step + u.delimiter))
            obs, _, term, trunc, info = u.step(step)
            if trunc:
                raise ValueError(f"the expert trace of task {t.id!r} was truncated at step {step!r:.60}; raise max_steps / max_chars")
        if not term:
            raise ValueError(f"the expert trace of task {t.id!r} does not end the episode")
    return out


def example_cell(task: Task) -> str | None:
    """A "run my code on an example" cell for a code task: ``print(f(1))`` for
    ProgramSynthesis (``metadata["ops"]``), the first ``>>> call`` of a HumanEval docstring;
    ``None`` when the task shows no example."""
    if not task.is_code:
        return None
    entry = task.metadata.get("entry_point")
    if "ops" in task.metadata and entry:
        return f"print({entry}(1))"
    for line in task.prompt.split("\n"):
        s = line.strip()
        if s.startswith(">>> ") and entry and entry + "(" in s:
            return f"print(repr({s[4:].strip()}))"
    return None


def with_example_step(task: Task, code_end: str = "```") -> Task:
    """``task`` with an example cell (`example_cell`) before the end-of-code marker of its
    expert steps (unchanged when it has no example or no expert steps)."""
    cell = example_cell(task)
    steps = task.expert_steps
    if cell is None or not steps or steps[-1].strip() != code_end:
        return task
    return replace(task, expert_steps=steps[:-1] + (f"{CELL_OPEN} {cell}{FENCE}", steps[-1]))


class ExampleSteps(TaskSource):
    """A code-task source whose expert traces try the program on an example (`with_example_step`)
    before submitting it; tasks, splits and sampling are the wrapped source's."""

    def __init__(self, source: TaskSource, code_end: str = "```") -> None:
        self.source, self.code_end = source, code_end
        self.name, self.splits = source.name, source.splits

    def tasks(self, split: str = "train", n: int | None = None, seed: int = 0, *, at_most: bool = False) -> list[Task]:
        return [with_example_step(t, self.code_end) for t in self.source.tasks(split, n, seed, at_most=at_most)]

    def sample(self, split: str, rng: Any) -> Task:
        return with_example_step(self.source.sample(split, rng), self.code_end)

    def describe(self) -> str:
        return self.source.describe() + ", with an example run before the submission"


# ----------------------------------------------------------------------------- ToolMath
_TOOL_MATH_LEVELS = {
    1: dict(families=("expr",), n_ops=(2, 2), operand=(10, 99), tools=True),
    2: dict(families=("expr", "sumsq", "powmod"), n_ops=(2, 3), operand=(10, 999), tools=True),
    3: dict(families=("expr", "sumsq", "powmod", "chain_sum", "basic_arithmetic"), n_ops=(2, 3), operand=(10, 999),
            tools=True),
}
#: ToolMath families drawn from reasoning-gym datasets (the dataset's question and answer; the
#: expert cell prints the dataset's own expression)
RG_FAMILIES = ("chain_sum", "basic_arithmetic")
_FAMILIES = ("expr", "sumsq", "powmod") + RG_FAMILIES
#: items indexed per reasoning-gym family (the dataset is built once, seed 0; reasoning-gym makes
#: an item when it is asked for it)
RG_SIZE = 100_000


def hand_steps(expr: str) -> tuple[list[str], int]:
    """Steps that evaluate ``expr`` (integers and ``+ - *``) by hand, one operation per step:
    products first, left to right, then sums and differences.

    >>> hand_steps("47*83-129")
    (['47*83=3901', '3901-129=3772'], 3772)
    """
    import re

    items = re.findall(r"\d+|[+\-*]", expr)
    vals, ops = [int(x) for x in items[0::2]], items[1::2]
    steps = []
    for wanted in ("*", "+-"):
        i = 0
        while i < len(ops):
            if ops[i] in wanted:
                a, b, op = vals[i], vals[i + 1], ops[i]
                v = a * b if op == "*" else a + b if op == "+" else a - b
                steps.append(f"{a}{op}{b}={v}")
                vals[i: i + 2], ops[i: i + 1] = [v], []
            else:
                i += 1
    return steps, vals[0]


class ToolMath(ProceduralSource):
    """Arithmetic whose expert traces compute with code cells, then submit the value.

    Families: ``expr`` ("Compute 47*83-129." solved by ```` ```python print(47*83-129)``` ````),
    ``sumsq`` ("Compute the sum of k*k for k=1..37.", two cells: one assigns, the next
    prints, so the trace relies on state between cells) and ``powmod`` ("Compute 7**23 mod
    1000."), and two families drawn from **reasoning-gym** datasets (`RG_FAMILIES`:
    ``chain_sum``, "State the final answer to the following arithmetic problem: 57 + 87 + 70 =",
    and ``basic_arithmetic``, "Calculate ( 56 + -33 ) - 84.", with negations, parentheses and
    exact divisions), whose expert cell prints the dataset's expression (```` print(round(...)) ````
    when it divides) and whose answer is the dataset's. ``difficulty=1``: ``expr`` with two
    operations on operands 10-99 (the preset the learning tests use); ``difficulty=2``: the
    three procedural families, 2-3 operations, operands up to 999; ``difficulty=3``: those and
    the two reasoning-gym families (``n_ops`` and ``operand`` do not apply to these). Preset fields can be overridden: ``families``, ``n_ops`` (min, max), ``operand`` (min, max),
    ``tools``: ``False`` gives the same problems with expert traces that compute by hand, one
    operation per step (`hand_steps`; ``expr`` only): the no-tool baseline of
    benchmarks/tool_pretrain.py.

    >>> t = ToolMath().tasks("train", 1)[0]
    >>> t.expert_steps[0].startswith("```python print(")
    True
    """

    name = "toolmath"

    def __init__(self, difficulty: int = 1, test_fraction: float = 0.2, **overrides: Any) -> None:
        if difficulty not in _TOOL_MATH_LEVELS:
            raise ValueError(f"difficulty must be one of {sorted(_TOOL_MATH_LEVELS)}, got {difficulty!r}")
        cfg = dict(_TOOL_MATH_LEVELS[difficulty])
        unknown = set(overrides) - set(cfg)
        if unknown:
            raise ValueError(f"ToolMath has no option(s) {sorted(unknown)}; valid: difficulty, test_fraction, {', '.join(cfg)}")
        cfg.update(overrides)
        bad = set(cfg["families"]) - set(_FAMILIES)
        if not cfg["families"] or bad:
            raise ValueError(f"families must be a non-empty subset of {_FAMILIES}, got {cfg['families']!r}")
        if not 1 <= cfg["n_ops"][0] <= cfg["n_ops"][1] or not 1 <= cfg["operand"][0] <= cfg["operand"][1]:
            raise ValueError(f"n_ops and operand must be (min, max) with 1 <= min <= max, got {cfg['n_ops']!r}, {cfg['operand']!r}")
        if not cfg["tools"] and set(cfg["families"]) != {"expr"}:
            raise ValueError("ToolMath(tools=False) has hand-computed traces for the 'expr' family only; pass families=('expr',)")
        self.difficulty, self.cfg, self.test_fraction = difficulty, cfg, test_fraction
        self._rg: dict[str, Any] = {}

    def _rg_task(self, family: str, rng: random.Random) -> tuple[str, str, list[str]] | None:
        """``(prompt, answer, cells)`` of a random item of the reasoning-gym dataset ``family``;
        ``None`` (draw again) when the printed value would not be the dataset's answer."""
        if family not in self._rg:
            from prmgym.envs.sources import make_reasoning_gym_dataset

            self._rg[family] = make_reasoning_gym_dataset(family, {}, seed=0, size=RG_SIZE)
        entry = self._rg[family][rng.randrange(RG_SIZE)]
        expr, answer = " ".join(str(entry["metadata"]["expression"]).split()), str(entry["answer"]).strip()
        if not set(expr) <= set("0123456789+-*/() "):
            return None
        # reasoning-gym's divisions are exact: the cell rounds the float `/` gives back to the integer
        cell = f"print(round({expr}))" if "/" in expr else f"print({expr})"
        try:
            value = eval(expr, {"__builtins__": {}})  # noqa: S307  (digits, + - * / and parentheses only)
        except ZeroDivisionError:
            return None
        if str(round(value)) != answer or abs(value - round(value)) > 1e-9:
            return None
        return str(entry["question"]).strip(), answer, [cell]

    def generate(self, rng: random.Random) -> Task | None:
        c = self.cfg
        family = rng.choice(c["families"])
        lo, hi = c["operand"]
        if family == "expr":
            n = rng.randint(*c["n_ops"])
            expr = str(rng.randint(lo, hi)) + "".join(rng.choice("+-*") + str(rng.randint(lo, hi)) for _ in range(n))
            value = eval(expr, {"__builtins__": {}})  # noqa: S307  (digits and + - * only, generated here)
            prompt, cells = f"Compute {expr}.", [f"print({expr})"]
        elif family == "sumsq":
            n = rng.randint(lo, hi)
            value = sum(k * k for k in range(1, n + 1))
            prompt, cells = f"Compute the sum of k*k for k=1..{n}.", [f"s = sum(k*k for k in range(1, {n + 1}))", "print(s)"]
        elif family in RG_FAMILIES:
            got = self._rg_task(family, rng)
            if got is None:
                return None
            prompt, value, cells = got
        else:
            b, e, m = rng.randint(2, 19), rng.randint(10, 60), rng.choice((100, 1000, 10007))
            value = pow(b, e, m)
            prompt, cells = f"Compute {b}**{e} mod {m}.", [f"print(pow({b}, {e}, {m}))"]
        steps = tool_trace(cells, value) if c["tools"] else tuple(hand_steps(prompt[len("Compute "):-1])[0]) + (format_answer(value),)
        return Task(id="toolmath", prompt=prompt, answer=str(value), expert_steps=steps,
                    metadata={"difficulty": self.difficulty, "family": family})

    def describe(self) -> str:
        return f"tool math, difficulty {self.difficulty}: {self.cfg}"
