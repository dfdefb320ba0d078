"""One compute budget for every planner and trainer.

A `Budget` holds optional limits and running counts in the same five units:

* ``generated``  policy tokens generated (sampled)
* ``encoded``    policy tokens encoded (prompt/prefix tokens run through the model)
* ``prm``        tokens scored by a process reward / value model
* ``sandbox``    sandbox executions
* ``seconds``    wall-clock seconds since the budget started

It lives at the top of the package (not in ``prmgym.search``) because agents and planners
both report it and agents may not import search (docs/architecture.md, import rules).

>>> b = Budget(generated=100)
>>> b.charge(generated=60, encoded=10)
>>> b.exhausted()
False
>>> b.charge(generated=50)
>>> b.exhausted(), b.used["generated"]
(True, 110)
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

UNITS = ("generated", "encoded", "prm", "sandbox", "seconds")


@dataclass
class Budget:
    """Limits (``None`` = unlimited) and usage counters.

    Planners call `charge` after every policy/PRM/sandbox call and stop expanding once
    `exhausted` is true, or before a call that `would_exceed` the limit.
    """

    generated: int | None = None
    encoded: int | None = None
    prm: int | None = None
    sandbox: int | None = None
    seconds: float | None = None
    used: dict = field(default_factory=lambda: {u: 0 for u in UNITS if u != "seconds"})
    _start: float = field(default_factory=time.perf_counter, repr=False)

    def __post_init__(self) -> None:
        for unit in UNITS:
            limit = getattr(self, unit)
            if limit is not None and limit < 0:
                raise ValueError(f"Budget.{unit} must be >= 0 or None (unlimited), got {limit}")

    @classmethod
    def parse(cls, spec: str | dict | None) -> "Budget":
        """Build from ``"generated=2000,prm=5000"`` or a dict; ``None``/``""`` = unlimited."""
        if spec is None or spec == "":
            return cls()
        if isinstance(spec, Budget):
            return spec
        if isinstance(spec, str):
            items = {}
            for part in spec.split(","):
                if "=" not in part:
                    raise ValueError(
                        f"bad budget entry {part!r}: write unit=number, units are {', '.join(UNITS)}"
                    )
                k, v = part.split("=", 1)
                items[k.strip()] = float(v) if k.strip() == "seconds" else int(float(v))
            spec = items
        unknown = set(spec) - set(UNITS)
        if unknown:
            raise ValueError(f"unknown budget unit(s) {sorted(unknown)}; valid units: {', '.join(UNITS)}")
        return cls(**spec)

    def restart(self) -> None:
        """Zero the counters and the clock."""
        self.used = {u: 0 for u in UNITS if u != "seconds"}
        self._start = time.perf_counter()

    def elapsed(self) -> float:
        return time.perf_counter() - self._start

    def charge(self, generated: int = 0, encoded: int = 0, prm: int = 0, sandbox: int = 0) -> None:
        self.used["generated"] += int(generated)
        self.used["encoded"] += int(encoded)
        self.used["prm"] += int(prm)
        self.used["sandbox"] += int(sandbox)

    def remaining(self, unit: str) -> float:
        """Units left before the limit (``inf`` when unlimited)."""
        limit = getattr(self, unit)
        if limit is None:
            return float("inf")
        used = self.elapsed() if unit == "seconds" else self.used[unit]
        return limit - used

    def would_exceed(self, generated: int = 0, encoded: int = 0, prm: int = 0, sandbox: int = 0) -> bool:
        """True if charging these amounts would pass any limit."""
        ask = {"generated": generated, "encoded": encoded, "prm": prm, "sandbox": sandbox}
        return any(ask[u] > self.remaining(u) for u in ask) or self.remaining("seconds") <= 0

    def exhausted(self) -> bool:
        """True once any limit is reached."""
        return any(self.remaining(u) <= 0 for u in UNITS)

    def as_dict(self) -> dict:
        """Usage in all five units (what every planner and trainer reports)."""
        out = dict(self.used)
        out["seconds"] = round(self.elapsed(), 4)
        return out
