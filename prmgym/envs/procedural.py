"""Procedural task sources with exact step-by-step solvers (so every problem has an expert trace).

All three use compact fixed formats, short enough for a ~1M-parameter character-level model:

ChainArithmetic (difficulty 1)::

    Compute left to right: 7+5*3-4
    7+5=12
    12*3=36
    36-4=32
    Answer: 32

Countdown (difficulty 1)::

    Use 3 4 6 once each with + - * / to make 18.
    3*4=12
    12+6=18
    Answer: 3*4+6

ProgramSynthesis (difficulty 1)::

    # f(x): add 3, times 2
    def f(x):
        x = x + 3
        x = x * 2
        return x
    ```
"""

from __future__ import annotations

import functools
import random
from dataclasses import dataclass
from typing import Any

from prmgym.envs.sources import CODE_END, ProceduralSource, format_answer
from prmgym.envs.task import Task


def _check_difficulty(difficulty: int, levels: dict) -> dict:
    if difficulty not in levels:
        raise ValueError(f"difficulty must be one of {sorted(levels)}, got {difficulty!r}")
    return dict(levels[difficulty])


# ----------------------------------------------------------------------------- chain arithmetic
_CHAIN_LEVELS = {
    1: dict(min_ops=2, max_ops=3, max_operand=9, max_value=99, ops="+-*"),
    2: dict(min_ops=3, max_ops=4, max_operand=19, max_value=999, ops="+-*/"),
    3: dict(min_ops=4, max_ops=6, max_operand=99, max_value=9999, ops="+-*/"),
}


def _apply(a: int, op: str, b: int) -> int | None:
    if op == "+":
        return a + b
    if op == "-":
        return a - b
    if op == "*":
        return a * b
    if op == "/":
        return a // b if b != 0 and a % b == 0 else None
    raise ValueError(op)


class ChainArithmetic(ProceduralSource):
    """A chain of operations evaluated left to right, one operation per step.

    Difficulty presets (``difficulty=1`` is the default and is meant to be learnable by a
    ~1M-parameter character model in minutes): 1 = 2-3 operations, operands 1-9, ``+ - *``,
    every intermediate value in [0, 99]; 2 = 3-4 operations, operands up to 19, ``/`` (exact)
    too, values up to 999; 3 = 4-6 operations, operands up to 99, values up to 9999.
    Any preset field can be overridden: ``min_ops``, ``max_ops``, ``max_operand``,
    ``max_value``, ``ops``. Intermediate values never go negative.
    """

    name = "chain"

    def __init__(self, difficulty: int = 1, test_fraction: float = 0.2, **overrides: Any) -> None:
        cfg = _check_difficulty(difficulty, _CHAIN_LEVELS)
        unknown = set(overrides) - set(cfg)
        if unknown:
            raise ValueError(f"ChainArithmetic has no option(s) {sorted(unknown)}; valid: difficulty, test_fraction, {', '.join(cfg)}")
        cfg.update(overrides)
        if not 1 <= cfg["min_ops"] <= cfg["max_ops"]:
            raise ValueError(f"need 1 <= min_ops <= max_ops, got min_ops={cfg['min_ops']} max_ops={cfg['max_ops']}")
        if cfg["max_operand"] < 1 or cfg["max_value"] < cfg["max_operand"]:
            raise ValueError("need max_operand >= 1 and max_value >= max_operand")
        if not cfg["ops"] or set(cfg["ops"]) - set("+-*/"):
            raise ValueError(f"ops must be a non-empty subset of '+-*/', got {cfg['ops']!r}")
        self.difficulty = difficulty
        self.cfg = cfg
        self.test_fraction = test_fraction

    @staticmethod
    def solve(start: int, ops: list[tuple[str, int]]) -> tuple[list[str], int]:
        """The exact solver: one step ``"a op b=c"`` per operation, then the value."""
        steps, value = [], start
        for op, b in ops:
            nxt = _apply(value, op, b)
            if nxt is None:
                raise ValueError(f"{value}{op}{b} is not an exact integer operation")
            steps.append(f"{value}{op}{b}={nxt}")
            value = nxt
        return steps, value

    def generate(self, rng: random.Random) -> Task | None:
        c = self.cfg
        n_ops = rng.randint(c["min_ops"], c["max_ops"])
        value = rng.randint(1, c["max_operand"])
        start, ops = value, []
        for _ in range(n_ops):
            for _attempt in range(20):
                op = rng.choice(c["ops"])
                b = rng.randint(1, c["max_operand"])
                nxt = _apply(value, op, b)
                if nxt is not None and 0 <= nxt <= c["max_value"]:
                    break
            else:
                return None
            ops.append((op, b))
            value = nxt
        steps, answer = self.solve(start, ops)
        expr = str(start) + "".join(f"{op}{b}" for op, b in ops)
        return Task(
            id="chain",
            prompt=f"Compute left to right: {expr}",
            answer=str(answer),
            expert_steps=tuple(steps) + (format_answer(answer),),
            metadata={"difficulty": self.difficulty, "start": start, "ops": tuple(ops)},
        )

    def describe(self) -> str:
        return f"chain arithmetic, difficulty {self.difficulty}: {self.cfg}"


# ----------------------------------------------------------------------------- countdown
_COUNTDOWN_LEVELS = {
    1: dict(n_numbers=3, max_number=15, min_target=10, max_target=80),
    2: dict(n_numbers=4, max_number=12, min_target=10, max_target=100),
    3: dict(n_numbers=5, max_number=25, min_target=50, max_target=500),
}
_PREC = {"+": 1, "-": 1, "*": 2, "/": 2}


@dataclass(frozen=True)
class _Expr:
    value: int
    text: str
    prec: int  # 3 for a bare number


def _combine(a: _Expr, op: str, b: _Expr) -> _Expr | None:
    v = _apply(a.value, op, b.value)
    if v is None or v <= 0:  # classic rule: intermediate results are positive integers
        return None
    p = _PREC[op]
    left = a.text if a.prec >= p else f"({a.text})"
    # right operand needs parentheses when it binds looser, or equally for - and /
    right = b.text if (b.prec > p or (b.prec == p and op in "+*")) else f"({b.text})"
    return _Expr(v, f"{left}{op}{right}", p)


def countdown_solve(numbers: tuple[int, ...], target: int) -> tuple[list[str], str] | None:
    """Exact solver: finds steps ``"a op b=c"`` and an expression using every number once.

    Depth-first search over pairs; intermediate results stay positive integers. Returns
    ``(steps, expression)`` or ``None`` if the target cannot be reached.
    """

    def rec(items: list[_Expr], steps: list[str]) -> tuple[list[str], str] | None:
        if len(items) == 1:
            return (steps, items[0].text) if items[0].value == target else None
        for i in range(len(items)):
            for j in range(len(items)):
                if i == j:
                    continue
                a, b = items[i], items[j]
                for op in "+-*/":
                    if op in "+*" and i > j:
                        continue  # commutative: try each pair once
                    e = _combine(a, op, b)
                    if e is None:
                        continue
                    rest = [x for k, x in enumerate(items) if k not in (i, j)] + [e]
                    found = rec(rest, steps + [f"{a.value}{op}{b.value}={e.value}"])
                    if found:
                        return found
        return None

    return rec([_Expr(n, str(n), 3) for n in numbers], [])


@functools.lru_cache(maxsize=65536)
def _reachable(numbers: tuple[int, ...]) -> frozenset[int]:
    """Every value reachable using all of ``numbers`` once (positive integer intermediates)."""
    if len(numbers) == 1:
        return frozenset(numbers)
    out: set[int] = set()
    n = len(numbers)
    for i in range(n):
        for j in range(n):
            if i == j:
                continue
            rest = [x for k, x in enumerate(numbers) if k not in (i, j)]
            for op in "+-*/":
                if op in "+*" and i > j:
                    continue
                v = _apply(numbers[i], op, numbers[j])
                if v is None or v <= 0:
                    continue
                out |= _reachable(tuple(sorted(rest + [v])))
    return frozenset(out)


class Countdown(ProceduralSource):
    """Reach a target with + - * / using every given number exactly once; one operation per step.

    The final step submits an expression (``Answer: 3*4+6``), checked by `CountdownVerifier`.
    Difficulty presets: 1 (default, learnable by a tiny model) = 3 numbers from 1-15, target
    10-80 (about 5,100 distinct problems); 2 = 4 numbers up to 12, target 10-100; 3 = 5 numbers up to 25, target 50-500.
    Override with ``n_numbers``, ``max_number``, ``min_target``, ``max_target``.
    Every generated target is reachable (the solver found it); intermediate values in the
    expert solution are positive integers.
    """

    name = "countdown"

    def __init__(self, difficulty: int = 1, test_fraction: float = 0.2, **overrides: Any) -> None:
        cfg = _check_difficulty(difficulty, _COUNTDOWN_LEVELS)
        unknown = set(overrides) - set(cfg)
        if unknown:
            raise ValueError(f"Countdown has no option(s) {sorted(unknown)}; valid: difficulty, test_fraction, {', '.join(cfg)}")
        cfg.update(overrides)
        if not 2 <= cfg["n_numbers"] <= 6:
            raise ValueError(f"n_numbers must be in 2..6 (the solver is exhaustive), got {cfg['n_numbers']}")
        if cfg["min_target"] > cfg["max_target"]:
            raise ValueError("need min_target <= max_target")
        self.difficulty = difficulty
        self.cfg = cfg
        self.test_fraction = test_fraction

    def generate(self, rng: random.Random) -> Task | None:
        c = self.cfg
        numbers = tuple(sorted(rng.randint(1, c["max_number"]) for _ in range(c["n_numbers"])))
        targets = sorted(v for v in _reachable(numbers) if c["min_target"] <= v <= c["max_target"] and v not in numbers)
        if not targets:
            return None
        target = rng.choice(targets)
        solved = countdown_solve(numbers, target)
        if solved is None:  # cannot happen: target came from the reachable set
            return None
        steps, expr = solved
        nums = " ".join(map(str, numbers))
        return Task(
            id="countdown",
            prompt=f"Use {nums} once each with + - * / to make {target}.",
            answer=str(target),
            expert_steps=tuple(steps) + (format_answer(expr),),
            metadata={"difficulty": self.difficulty, "numbers": numbers, "target": target},
        )

    def describe(self) -> str:
        return f"countdown, difficulty {self.difficulty}: {self.cfg}"


# ----------------------------------------------------------------------------- program synthesis
# (word in the prompt, code line, python function)
_PS_OPS: dict[str, tuple[str, str, Any]] = {
    "add": ("add {k}", "x = x + {k}", lambda x, k: x + k),
    "sub": ("minus {k}", "x = x - {k}", lambda x, k: x - k),
    "mul": ("times {k}", "x = x * {k}", lambda x, k: x * k),
    "div": ("floor div {k}", "x = x // {k}", lambda x, k: x // k),
    "mod": ("mod {k}", "x = x % {k}", lambda x, k: x % k),
    "square": ("square", "x = x * x", lambda x, k: x * x),
    "neg": ("negate", "x = -x", lambda x, k: -x),
    "abs": ("abs", "x = abs(x)", lambda x, k: abs(x)),
}
_PS_LEVELS = {
    1: dict(min_ops=1, max_ops=3, ops=("add", "sub", "mul"), max_const=9, n_tests=4),
    2: dict(min_ops=2, max_ops=3, ops=("add", "sub", "mul", "div", "mod", "neg"), max_const=9, n_tests=5),
    3: dict(min_ops=3, max_ops=5, ops=tuple(_PS_OPS), max_const=20, n_tests=6),
}


class ProgramSynthesis(ProceduralSource):
    """Write ``f(x)`` from a short spec, one line per step; hidden tests judge it.

    The prompt is a comment naming the operations in order plus the signature; the expert
    writes one assignment per operation, ``return x`` and the end-of-code marker (a step that
    is exactly ```` ``` ````). ``tests`` are ``assert f(a) == b`` on inputs not shown in the prompt.
    Difficulty presets: 1 (default) = 1-3 of add/minus/times with constants 1-9, 4 tests;
    2 = 2-3 ops incl. floor div, mod, negate, 5 tests; 3 = 3-5 ops incl. square, abs, 6 tests.
    Override with ``min_ops``, ``max_ops``, ``ops``, ``max_const``, ``n_tests``.
    """

    name = "progsyn"

    def __init__(self, difficulty: int = 1, test_fraction: float = 0.2, code_end: str = CODE_END, **overrides: Any) -> None:
        cfg = _check_difficulty(difficulty, _PS_LEVELS)
        unknown = set(overrides) - set(cfg)
        if unknown:
            raise ValueError(f"ProgramSynthesis has no option(s) {sorted(unknown)}; valid: difficulty, test_fraction, code_end, {', '.join(cfg)}")
        cfg.update(overrides)
        bad = [o for o in cfg["ops"] if o not in _PS_OPS]
        if bad or not cfg["ops"]:
            raise ValueError(f"unknown ops {bad}; valid: {', '.join(_PS_OPS)}")
        if not 1 <= cfg["min_ops"] <= cfg["max_ops"]:
            raise ValueError("need 1 <= min_ops <= max_ops")
        if cfg["n_tests"] < 1:
            raise ValueError("n_tests must be >= 1")
        self.difficulty = difficulty
        self.cfg = cfg
        self.code_end = code_end
        self.test_fraction = test_fraction

    @staticmethod
    def solve(ops: list[tuple[str, int]]) -> list[str]:
        """The exact solver: one indented line per operation, then ``return x``."""
        return ["    " + _PS_OPS[name][1].format(k=k) for name, k in ops] + ["    return x"]

    @staticmethod
    def run(ops: list[tuple[str, int]], x: int) -> int:
        for name, k in ops:
            x = _PS_OPS[name][2](x, k)
        return x

    def generate(self, rng: random.Random) -> Task | None:
        c = self.cfg
        ops = []
        for _ in range(rng.randint(c["min_ops"], c["max_ops"])):
            name = rng.choice(list(c["ops"]))
            k = rng.randint(2, c["max_const"]) if name in ("mul", "div", "mod") else rng.randint(1, c["max_const"])
            ops.append((name, k))
        words = ", ".join(_PS_OPS[name][0].format(k=k) for name, k in ops)
        prompt = f"# f(x): {words}\ndef f(x):"
        inputs = rng.sample(range(-10, 21), c["n_tests"])
        tests = tuple(f"assert f({x}) == {self.run(ops, x)}" for x in inputs)
        return Task(
            id="progsyn",
            prompt=prompt,
            answer=None,
            tests=tests,
            expert_steps=tuple(self.solve(ops)) + (self.code_end,),
            metadata={"difficulty": self.difficulty, "entry_point": "f", "code_prefix": prompt, "ops": tuple(ops)},
        )

    def describe(self) -> str:
        return f"program synthesis, difficulty {self.difficulty}: {self.cfg}"
