"""Verifiers turn a final answer (or a program) into a `Verdict`.

Every verifier has ``score(task, text) -> Verdict`` and ``score_batch(tasks, texts)``.
``text`` is what the episode submitted: the extracted answer for answer tasks (what follows
``Answer:``), the whole candidate program for code tasks.

>>> from prmgym.envs.task import Task
>>> t = Task(id="demo/0", prompt="What is 3/4?", answer="\\\\boxed{3/4}")
>>> MathVerifier().score(t, "0.75").correct
True
>>> ExactMatchVerifier().score(t, "0.75").reward
0.0
"""

from __future__ import annotations

import ast
import re
import threading
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any, Callable, Sequence

from prmgym.envs._math_worker import check as _math_verify_in_main_thread
from prmgym.envs.task import Task


@dataclass(frozen=True)
class Verdict:
    """The judgement of one submission.

    Attributes:
        reward: score in [0, 1] (the env's terminal reward).
        correct: True when the submission is fully right (reward 1.0 for the built-in verifiers).
        details: what the verifier saw: parsed values, test counts, sandbox status, and
            ``sandbox_error=True`` when infrastructure (not the program) failed, so that
            trainers can mask the sample instead of scoring it 0.
    """

    reward: float
    correct: bool
    details: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        r = float(self.reward)
        if not 0.0 <= r <= 1.0:
            raise ValueError(f"Verdict.reward must be in [0, 1], got {self.reward}")
        object.__setattr__(self, "reward", r)
        object.__setattr__(self, "correct", bool(self.correct))


class Verifier:
    """Base class. Subclasses implement `score`; `score_batch` may run in parallel."""

    #: True if the verifier can judge code tasks (tasks with ``tests``).
    handles_code: bool = False

    def score(self, task: Task, text: str) -> Verdict:
        raise NotImplementedError

    def score_batch(self, tasks: Sequence[Task], texts: Sequence[str]) -> list[Verdict]:
        """Score many submissions; the default runs `score` one by one."""
        if len(tasks) != len(texts):
            raise ValueError(f"score_batch needs one text per task, got {len(tasks)} tasks and {len(texts)} texts")
        return [self.score(t, x) for t, x in zip(tasks, texts)]

    def close(self) -> None:
        """Release resources (sandboxes). Safe to call twice."""


def _need_answer(task: Task, verifier: str) -> str:
    if task.answer is None:
        raise ValueError(
            f"{verifier} needs a reference answer but task {task.id!r} has answer=None; "
            "give the task an answer or use a verifier that does not need one (CodeVerifier, ReasoningGymVerifier)"
        )
    return task.answer


# ----------------------------------------------------------------------------- exact match
class ExactMatchVerifier(Verifier):
    """Reward 1.0 iff the answer equals the reference after stripping surrounding whitespace
    (and, with ``case_sensitive=False``, ignoring case)."""

    def __init__(self, case_sensitive: bool = True) -> None:
        self.case_sensitive = case_sensitive

    def score(self, task: Task, text: str) -> Verdict:
        gold = _need_answer(task, "ExactMatchVerifier").strip()
        pred = (text or "").strip()
        if not self.case_sensitive:
            gold, pred = gold.casefold(), pred.casefold()
        ok = gold == pred
        return Verdict(float(ok), ok, {"expected": gold, "got": pred})


# ----------------------------------------------------------------------------- math
_NUM = re.compile(r"^[+-]?(\d+(\.\d*)?|\.\d+)(/\d+)?$")
_SIGN_SPACE = re.compile(r"(^|[\s(\[{=,])([+-])\s+(?=[\d.\\(])")


def _normalise(s: str) -> str:
    """Whitespace the checker would otherwise misread: '- 5' -> '-5', thousands '1 000' kept."""
    s = s.strip().strip("$").strip().replace("\u2212", "-")  # unicode minus sign
    s = _SIGN_SPACE.sub(lambda m: m.group(1) + m.group(2), s)
    return s


_THOUSANDS = re.compile(r"^[+-]?\d{1,3}(,\d{3})+(\.\d*)?$")


def _plain_number(s: str) -> Fraction | None:
    s = s.replace(" ", "")
    if _THOUSANDS.match(s):  # 1,000 -> 1000, but "1,2" stays a list
        s = s.replace(",", "")
    if not _NUM.match(s):
        return None
    try:
        if "/" in s:
            num, den = s.split("/")
            return Fraction(num) / Fraction(den)
        return Fraction(s)
    except (ValueError, ZeroDivisionError):
        return None


class _MathWorker:
    """A helper process that runs math-verify for callers outside the main thread.

    math-verify bounds its work with ``signal.alarm``, which only works in the main thread; in
    other threads a pathological answer (``10^10000000``) would hang the caller. So off the
    main thread we ask a helper process (``_math_worker.py``, whose main thread can use the
    alarm) and kill it if it does not answer within ``deadline_s``.
    """

    _lock = threading.Lock()
    _proc: Any = None

    @classmethod
    def check(cls, gold: str, pred: str, float_rounding: int, deadline_s: float = 20.0) -> tuple[bool, list[str], str]:
        import json
        import os
        import select
        import subprocess
        import sys

        with cls._lock:
            if cls._proc is None or cls._proc.poll() is not None:
                script = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_math_worker.py")
                cls._proc = subprocess.Popen([sys.executable, script], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                             stderr=subprocess.DEVNULL, text=True, bufsize=1)
                deadline_s += 30.0  # first call: the helper imports sympy and math-verify
            proc = cls._proc
            try:
                proc.stdin.write(json.dumps([gold, pred, float_rounding]) + "\n")
                proc.stdin.flush()
                ready, _, _ = select.select([proc.stdout], [], [], deadline_s)
                if ready:
                    line = proc.stdout.readline()
                    if line:
                        ok, parsed, note = json.loads(line)
                        return bool(ok), list(parsed), str(note)
            except (OSError, ValueError):
                pass
            proc.kill()
            proc.wait()
            cls._proc = None
            return False, [], f"timeout: math-verify gave no answer within {deadline_s:.0f}s"


class MathVerifier(Verifier):
    """Numeric / symbolic equivalence of math answers, built on ``math-verify`` (with sympy).

    Equal: ``\\boxed{3/4}`` and ``0.75``; ``\\frac{1}{2}`` and ``1/2``; ``- 5`` and ``-5``;
    ``32`` and ``32.0``; ``x = 12`` and ``12``. Plain numbers (integers, decimals, ``a/b``)
    are compared exactly with fractions before falling back to math-verify, which keeps the
    common case fast. A reference answer math-verify cannot parse (``"Paris"``) is compared as
    a stripped string. math-verify bounds its work with ``signal.alarm`` (5 s), which only works
    in the main thread; from other threads the check runs in a helper process that is killed
    if it hangs (a pathological answer like ``10^10000000`` then scores 0 with
    ``details["error"]``).

    Args:
        float_rounding: decimals math-verify rounds floats to before comparing.
    """

    def __init__(self, float_rounding: int = 6) -> None:
        self.float_rounding = float_rounding

    def score(self, task: Task, text: str) -> Verdict:
        gold_raw = _need_answer(task, "MathVerifier")
        pred_raw = text or ""
        gold, pred = _normalise(gold_raw), _normalise(pred_raw)
        if not pred:
            return Verdict(0.0, False, {"method": "empty", "expected": gold_raw, "got": pred_raw})
        if gold == pred:
            return Verdict(1.0, True, {"method": "string", "expected": gold_raw, "got": pred_raw})
        g, p = _plain_number(gold), _plain_number(pred)
        if g is not None and p is not None:
            ok = g == p
            return Verdict(float(ok), ok, {"method": "fraction", "expected": gold_raw, "got": pred_raw})
        if threading.current_thread() is threading.main_thread():
            ok, parsed, note = _math_verify_in_main_thread(gold, pred, self.float_rounding)
        else:
            ok, parsed, note = _MathWorker.check(gold, pred, self.float_rounding)
        details: dict[str, Any] = {"method": "math_verify", "expected": gold_raw, "got": pred_raw, "parsed": parsed}
        if note == "gold_unparsed":  # not mathematical ("Paris"): the string comparison above already decided
            details["method"] = "string (reference is not mathematical)"
        elif note:
            details["error"] = note
        return Verdict(float(ok), ok, details)


# ----------------------------------------------------------------------------- reasoning-gym
class ReasoningGymVerifier(Verifier):
    """Scores with the reasoning-gym dataset's own ``score_answer(answer, entry)``.

    The task must carry the dataset entry in ``task.metadata["entry"]`` (the `ReasoningGym`
    source puts it there). ``correct`` is ``score >= 1``; the reward is the score clipped to [0, 1].

    Args:
        dataset: a reasoning-gym ``ProceduralDataset`` instance, or the dataset name
            (then ``config`` builds it with ``reasoning_gym.create_dataset``).
    """

    def __init__(self, dataset: Any, **config: Any) -> None:
        if isinstance(dataset, str):
            from prmgym.envs.sources import make_reasoning_gym_dataset

            dataset = make_reasoning_gym_dataset(dataset, config)
        self.dataset = dataset

    def score(self, task: Task, text: str) -> Verdict:
        entry = task.metadata.get("entry")
        if entry is None:
            raise ValueError(
                f"task {task.id!r} has no reasoning-gym entry in metadata['entry']; "
                "ReasoningGymVerifier scores tasks made by prmgym.envs.ReasoningGym"
            )
        try:
            raw = float(self.dataset.score_answer(text, entry))
        except Exception as e:  # some scorers raise on malformed answers (int("abc")): that is a wrong answer
            return Verdict(0.0, False, {"score_answer": None, "error": f"score_answer raised {e!r}"[:300]})
        score = min(1.0, max(0.0, raw))
        return Verdict(score, score >= 1.0, {"score_answer": raw})


# ----------------------------------------------------------------------------- countdown
_ALLOWED_BINOPS = {ast.Add: "+", ast.Sub: "-", ast.Mult: "*", ast.Div: "/"}


def _eval_countdown(node: ast.AST, used: list[int]) -> Fraction:
    if isinstance(node, ast.Expression):
        return _eval_countdown(node.body, used)
    if isinstance(node, ast.Constant) and type(node.value) is int:
        used.append(node.value)
        return Fraction(node.value)
    if isinstance(node, ast.BinOp) and type(node.op) in _ALLOWED_BINOPS:
        a = _eval_countdown(node.left, used)
        b = _eval_countdown(node.right, used)
        if isinstance(node.op, ast.Add):
            return a + b
        if isinstance(node.op, ast.Sub):
            return a - b
        if isinstance(node.op, ast.Mult):
            return a * b
        if b == 0:
            raise ZeroDivisionError("division by zero")
        return a / b
    raise ValueError(f"not allowed in a Countdown expression: {ast.dump(node)[:60]}")


class CountdownVerifier(Verifier):
    """Checks a Countdown answer: an arithmetic expression over the given numbers.

    The submitted answer must be an expression built from ``+ - * /`` and parentheses that
    uses every given number exactly once (``task.metadata["numbers"]``) and evaluates exactly
    (rational arithmetic, no rounding) to the target (``task.answer``). ``×``/``÷`` are read as
    ``*``/``/``, and a trailing ``= target`` is ignored. A bare number is accepted only if the
    task has a single number, so writing the target alone does not score. Intermediate steps
    are not checked: only the final expression decides the reward (binary).
    """

    def score(self, task: Task, text: str) -> Verdict:
        target = Fraction(_need_answer(task, "CountdownVerifier"))
        numbers = task.metadata.get("numbers")
        if numbers is None:
            raise ValueError(f"task {task.id!r} lacks metadata['numbers']; CountdownVerifier scores Countdown tasks")
        expr = (text or "").replace("×", "*").replace("÷", "/").replace("−", "-").strip()
        if "=" in expr:
            expr = expr.split("=")[0].strip()
        details: dict[str, Any] = {"expression": expr, "target": str(target)}
        try:
            used: list[int] = []
            value = _eval_countdown(ast.parse(expr, mode="eval"), used)
        except (SyntaxError, ValueError, ZeroDivisionError, RecursionError) as e:
            details["reason"] = f"invalid expression: {e}"
            return Verdict(0.0, False, details)
        details["value"] = str(value)
        if sorted(used) != sorted(numbers):
            details["reason"] = f"must use each of {sorted(numbers)} exactly once, used {sorted(used)}"
            return Verdict(0.0, False, details)
        ok = value == target
        if not ok:
            details["reason"] = f"evaluates to {value}, not {target}"
        return Verdict(float(ok), ok, details)


# ----------------------------------------------------------------------------- code
_SHARED_SANDBOXES: dict[str, Any] = {}
_SHARED_LOCK = threading.Lock()


def shared_sandbox(kind: str) -> Any:
    """One sandbox of each kind ("local", "docker") per process, shared by all code verifiers
    (so `gym.make_vec` with 8 envs starts one warm worker pool, not 8). Closed at exit."""
    with _SHARED_LOCK:
        box = _SHARED_SANDBOXES.get(kind)
        if box is None:
            if kind == "local":
                try:
                    from prmgym.sandbox.local import LocalSandbox
                except ImportError as e:
                    raise ImportError(f"sandbox='local' needs prmgym.sandbox.local.LocalSandbox, which failed to import: {e}") from e
                box = LocalSandbox()
            elif kind == "docker":
                try:
                    from prmgym.sandbox.docker import DockerSandbox
                except ImportError as e:
                    raise ImportError(f"sandbox='docker' needs prmgym.sandbox.docker.DockerSandbox, which failed to import: {e}") from e
                box = DockerSandbox()
            else:
                raise ValueError(f"unknown sandbox {kind!r}; use 'local', 'docker' or a prmgym.sandbox.Sandbox instance")
            _SHARED_SANDBOXES[kind] = box
            import atexit

            atexit.register(box.close)
        return box


def _top_level_names(program: str) -> list[str] | None:
    """Names a program binds at module level (functions, classes, assignments, imports), in
    order; None if it does not parse."""
    try:
        tree = ast.parse(program)
    except (SyntaxError, ValueError):
        return None
    names: list[str] = []
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.append(node.name)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names += [(a.asname or a.name).split(".")[0] for a in node.names]
        elif isinstance(node, (ast.Assign, ast.AnnAssign, ast.AugAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names += [n.id for t in targets for n in ast.walk(t) if isinstance(n, ast.Name)]
    return list(dict.fromkeys(names))


def missing_entry_point(program: str, entry_point: str, test_errors: Sequence[dict] = ()) -> str | None:
    """The reason to show when the tests could not find ``entry_point`` in the program (the
    judge then reports only ``KeyError: "'sub'"`` or a ``NameError``): the program does not
    define it at module level, and a test error names it. None otherwise.

    >>> missing_entry_point("def add(a, b): return a + b", "sub", [{"msg": "NameError: name 'sub' is not defined"}])
    "the program does not define 'sub', the function the tests call (entry point); it defines: add"
    """
    names = _top_level_names(program)
    if names is None or entry_point in names:
        return None
    if test_errors and not any(entry_point in str(e.get("msg", "")) for e in test_errors if isinstance(e, dict)):
        return None
    defined = ", ".join(names[:20]) if names else "nothing at module level"
    return f"the program does not define {entry_point!r}, the function the tests call (entry point); it defines: {defined}"


class CodeVerifier(Verifier):
    """Runs the candidate program against ``task.tests`` in a sandbox.

    Builds a `prmgym.sandbox.Job` (code = the program, tests = ``task.tests``, entry point =
    ``task.metadata["entry_point"]``) and runs it. The verdict is decided by the sandbox,
    outside the executed program.

    Reward: with ``reward="fraction"`` (default) the fraction of tests passed
    (``tests_passed / tests_total``); with ``reward="binary"`` 1.0 iff the run passed.
    ``correct`` is always "every test passed and the run ended cleanly" (status ``passed``).
    ``details`` holds ``status``, ``tests_passed``, ``tests_total``, ``fraction``,
    ``sandbox_error`` (True when the infrastructure failed: reward 0, mask it in training), the
    judge's ``test_errors`` (which test failed and its message) and ``program_errors`` when
    there are any, and ``reason`` when the program lacks the entry point the tests call
    (``"the program does not define 'sub', ...; it defines: add"``).

    Args:
        sandbox: ``"local"`` (default, a process-wide shared `LocalSandbox`), ``"docker"``
            (shared `DockerSandbox`) or a `prmgym.sandbox.Sandbox` instance (not closed by us).
        timeout_s, memory_mb: limits of each job.
        reward: ``"fraction"`` or ``"binary"``.
    """

    handles_code = True

    def __init__(self, sandbox: Any = "local", timeout_s: float = 10.0, memory_mb: int = 512, reward: str = "fraction") -> None:
        from prmgym.sandbox.base import Sandbox

        if reward not in ("fraction", "binary"):
            raise ValueError(f"CodeVerifier reward must be 'fraction' or 'binary', got {reward!r}")
        if not isinstance(sandbox, (str, Sandbox)):
            raise TypeError(
                f"sandbox must be 'local', 'docker' or a prmgym.sandbox.Sandbox instance, got {type(sandbox).__name__}"
            )
        if isinstance(sandbox, str) and sandbox not in ("local", "docker"):
            raise ValueError(f"unknown sandbox {sandbox!r}; use 'local', 'docker' or a prmgym.sandbox.Sandbox instance")
        self._sandbox_spec = sandbox
        self.timeout_s = timeout_s
        self.memory_mb = memory_mb
        self.reward = reward

    @property
    def sandbox(self) -> Any:
        if isinstance(self._sandbox_spec, str):
            return shared_sandbox(self._sandbox_spec)
        return self._sandbox_spec

    def job(self, task: Task, program: str) -> Any:
        from prmgym.sandbox.base import Job

        if not task.tests:
            raise ValueError(f"task {task.id!r} has no tests; CodeVerifier needs Task.tests to judge a program")
        return Job(
            code=program,
            tests=task.tests,
            entry_point=task.metadata.get("entry_point"),
            timeout_s=self.timeout_s,
            memory_mb=self.memory_mb,
        )

    def _verdict(self, result: Any, job: Any = None) -> Verdict:
        sandbox_error = result.status == "sandbox_error"
        frac = 0.0 if sandbox_error else float(result.fraction_passed)
        reward = frac if self.reward == "fraction" else float(result.passed)
        details = {
            "status": result.status,
            "tests_passed": result.tests_passed,
            "tests_total": result.tests_total,
            "fraction": frac,
            "sandbox_error": sandbox_error,
            "wall_s": result.wall_s,
            "stderr": result.stderr[-2000:],
        }
        for key in ("test_errors", "program_errors"):  # why tests failed, as the sandbox's judge saw it
            if result.details.get(key):
                details[key] = result.details[key]
        if sandbox_error:
            details["infra"] = result.details.get("infra", result.details)
        elif job is not None and job.entry_point and not result.passed:
            missing = missing_entry_point(job.code, job.entry_point, details.get("test_errors", ()))
            if missing:
                details["reason"] = missing
        return Verdict(reward, result.passed and not sandbox_error, details)

    def score(self, task: Task, text: str) -> Verdict:
        job = self.job(task, text)
        return self._verdict(self.sandbox.run(job), job)

    def score_batch(self, tasks: Sequence[Task], texts: Sequence[str]) -> list[Verdict]:
        """Runs all programs with the sandbox's parallel ``run_batch`` (order kept)."""
        if len(tasks) != len(texts):
            raise ValueError(f"score_batch needs one text per task, got {len(tasks)} tasks and {len(texts)} texts")
        jobs = [self.job(t, x) for t, x in zip(tasks, texts)]
        return [self._verdict(r, j) for r, j in zip(self.sandbox.run_batch(jobs), jobs)] if jobs else []


# ----------------------------------------------------------------------------- dispatch
class AutoVerifier(Verifier):
    """Code tasks (with ``tests``) go to ``code``, the others to ``answer``.

    Used by sources that mix both (JSONL files). ``code`` is built lazily, so a file without
    code tasks never starts a sandbox.
    """

    handles_code = True

    def __init__(self, answer: Verifier | None = None, code: Verifier | None = None, sandbox: Any = "local") -> None:
        self.answer = answer if answer is not None else MathVerifier()
        self._code = code
        self._sandbox = sandbox

    @property
    def code(self) -> Verifier:
        if self._code is None:
            self._code = CodeVerifier(sandbox=self._sandbox)
        return self._code

    def score(self, task: Task, text: str) -> Verdict:
        return (self.code if task.is_code else self.answer).score(task, text)

    def score_batch(self, tasks: Sequence[Task], texts: Sequence[str]) -> list[Verdict]:
        if len(tasks) != len(texts):
            raise ValueError(f"score_batch needs one text per task, got {len(tasks)} tasks and {len(texts)} texts")
        out: list[Verdict | None] = [None] * len(tasks)
        code_idx = [i for i, t in enumerate(tasks) if t.is_code]
        if code_idx:
            for i, v in zip(code_idx, self.code.score_batch([tasks[i] for i in code_idx], [texts[i] for i in code_idx])):
                out[i] = v
        for i, t in enumerate(tasks):
            if out[i] is None:
                out[i] = self.answer.score(t, texts[i])
        return out  # type: ignore[return-value]

    def close(self) -> None:
        if self._code is not None:
            self._code.close()


class FunctionVerifier(Verifier):
    """A plain function ``score(task, text) -> float | Verdict`` as a `Verifier`.

    A number is the reward (in [0, 1]; ``correct`` iff it is 1.0), a bool is 1.0/0.0, a
    `Verdict` is used as is.

    >>> from prmgym.envs.task import Task
    >>> v = FunctionVerifier(lambda task, text: float(text.strip() == task.answer))
    >>> v.score(Task(id="t", prompt="1+1?", answer="2"), " 2 ")
    Verdict(reward=1.0, correct=True, details={})
    """

    def __init__(self, fn: Callable[[Task, str], Any]) -> None:
        if not callable(fn):
            raise TypeError(f"FunctionVerifier needs a function score(task, text), got {type(fn).__name__}")
        self.fn = fn
        self.name = getattr(fn, "__qualname__", type(fn).__name__)

    def score(self, task: Task, text: str) -> Verdict:
        out = self.fn(task, text)
        if isinstance(out, Verdict):
            return out
        if isinstance(out, bool):
            return Verdict(float(out), out)
        if isinstance(out, (int, float)) or type(out).__name__ in ("float32", "float64", "int64"):
            r = float(out)
            if not 0.0 <= r <= 1.0:
                raise ValueError(f"the verifier function {self.name} returned {r}; a reward must be in [0, 1]")
            return Verdict(r, r == 1.0)
        raise TypeError(f"the verifier function {self.name} returned {type(out).__name__}; "
                        "it must return a float in [0, 1] or a prmgym.envs.Verdict")

    def __repr__(self) -> str:
        return f"FunctionVerifier({self.name})"


def callable_kind(fn: Any) -> str:
    """``"factory"`` (called with no argument, returns a `Verifier`: a Verifier class, a
    ``lambda: MathVerifier()``) or ``"score"`` (a function ``score(task, text)``), from the
    signature; a ``TypeError`` that says how to fix any other callable."""
    if isinstance(fn, type):
        return "factory"
    import inspect

    name = getattr(fn, "__qualname__", type(fn).__name__)
    try:
        params = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):
        raise TypeError(f"cannot read the signature of the verifier callable {name}; pass a Verifier instance, "
                        "or wrap a score function as FunctionVerifier(fn)") from None
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    required = [p for p in positional if p.default is p.empty]
    required_kw = [p for p in params if p.kind == p.KEYWORD_ONLY and p.default is p.empty]
    varargs = any(p.kind == p.VAR_POSITIONAL for p in params)
    if not required_kw:
        if len(required) == 2 or (len(required) < 2 and varargs) or (len(required) == 1 and len(positional) >= 2):
            return "score"
        if not required and len(positional) < 2 and not varargs:
            return "factory"
    sig = ", ".join(p.name for p in params)
    raise TypeError(
        f"the verifier callable {name}({sig}) is neither a score function score(task, text) -> float | Verdict "
        "(two positional parameters) nor a zero-argument factory returning a Verifier. Fix: define it as "
        "def score(task, text): ..., or pass a Verifier instance"
    )


def verifier_from_factory(factory: Callable[[], Any]) -> "Verifier":
    """Call a verifier factory and check that it returned a `Verifier`."""
    v = factory()
    if not isinstance(v, Verifier):
        name = getattr(factory, "__qualname__", type(factory).__name__)
        raise TypeError(f"the verifier factory {name}() returned {type(v).__name__}, not a prmgym.envs.Verifier; "
                        "to use a scoring function pass score(task, text) -> float | Verdict itself")
    return v


def as_verifier(v: Any, sandbox: Any = "local") -> "Verifier":
    """A `Verifier` from an instance, a name, a score function or a factory (see `callable_kind`)."""
    if isinstance(v, Verifier) or isinstance(v, str):
        return make_verifier(v, sandbox)
    if callable(v):
        return FunctionVerifier(v) if callable_kind(v) == "score" else verifier_from_factory(v)
    raise TypeError(f"verifier must be a Verifier, a name, a score(task, text) function or a factory, got {type(v).__name__}")


def make_verifier(name: str | Verifier | Callable, sandbox: Any = "local") -> Verifier:
    """``"math"``, ``"exact"``, ``"code"``, ``"auto"``, a `Verifier` instance, or a function
    ``score(task, text) -> float | Verdict`` (wrapped in `FunctionVerifier`)."""
    if isinstance(name, Verifier):
        return name
    if callable(name) and not isinstance(name, str):
        return as_verifier(name, sandbox)
    table = {
        "math": MathVerifier,
        "exact": ExactMatchVerifier,
        "countdown": CountdownVerifier,
        "code": lambda: CodeVerifier(sandbox=sandbox),
        "auto": lambda: AutoVerifier(sandbox=sandbox),
    }
    if name not in table:
        raise ValueError(f"unknown verifier {name!r}; valid: {', '.join(table)} or a prmgym.envs.Verifier instance")
    return table[name]()
