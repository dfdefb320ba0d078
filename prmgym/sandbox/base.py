"""The sandbox contract shared by every backend (no torch, no other prmgym imports)."""

from __future__ import annotations

import abc
import atexit
import weakref
from dataclasses import dataclass, field
from typing import Sequence

STATUSES = (
    "passed",          # every expected test reported success and the run ended cleanly
    "failed",          # ran to the end, but at least one test failed or never reported
    "timeout",         # wall-clock or CPU deadline hit
    "memory",          # memory limit hit
    "output_limit",    # stdout/stderr exceeded the cap
    "runtime_error",   # the program raised / crashed before the tests could run
    "compile_error",   # the program is not valid Python
    "sandbox_error",   # the infrastructure failed; never the program's fault
)


def string_tuple(value: object, what: str, example: str) -> tuple[str, ...]:
    """``value`` (a list, tuple or other iterable of strings) as a tuple of strings.

    A bare string is refused: iterating it would make one item per character (a test per
    character, which then mostly fail). ``what`` names the field and ``example`` the right form
    of the call, both shown in the error.

    >>> string_tuple(["assert f(1) == 1"], "Job.tests", "")
    ('assert f(1) == 1',)
    >>> string_tuple("assert f(1) == 1", "Job.tests", "Job(code, tests=(...,))")
    Traceback (most recent call last):
    ...
    TypeError: Job.tests must be a sequence of strings, got one str ('assert f(1) == 1'), which would count each of its 16 characters as an item. Wrap it: Job(code, tests=(...,))
    """
    if isinstance(value, (str, bytes)):
        raise TypeError(
            f"{what} must be a sequence of strings, got one {type(value).__name__} ({value!r:.60}), which would "
            f"count each of its {len(value)} characters as an item. Wrap it: {example}"
        )
    try:
        items = tuple(value)  # type: ignore[arg-type]
    except TypeError:
        raise TypeError(f"{what} must be a sequence of strings, got {type(value).__name__}. Example: {example}") from None
    for i, item in enumerate(items):
        if not isinstance(item, str):
            raise TypeError(f"{what}[{i}] must be a string, got {type(item).__name__} ({item!r:.60}). Example: {example}")
    return items


@dataclass(frozen=True)
class Job:
    """One untrusted program and the tests that judge it.

    Attributes:
        code: the candidate program (Python source).
        tests: test programs (a tuple or list of strings); each is executed after ``code`` in
            the same namespace and counts as one test (a HumanEval ``check`` function plus its
            call is one test). A bare string is refused with a ``TypeError``: wrap it,
            ``tests=("assert f(1) == 1",)``, to make it one test.
        entry_point: name of the function under test, if any; tests may refer to it as
            ``candidate``.
        stdin: text fed to the program's standard input (``None`` = empty/closed).
        timeout_s: wall-clock deadline for the whole job, enforced from outside.
        memory_mb: address-space / memory limit.
    """

    code: str
    tests: tuple[str, ...] = ()
    entry_point: str | None = None
    stdin: str | None = None
    timeout_s: float = 10.0
    memory_mb: int = 512

    def __post_init__(self) -> None:
        if not isinstance(self.code, str):
            raise TypeError(f"Job.code must be a string of Python source, got {type(self.code).__name__}")
        if not (isinstance(self.tests, tuple) and all(isinstance(t, str) for t in self.tests)):
            example = (f"Job(code, tests=({self.tests[:40]!r},)) for one test" if isinstance(self.tests, str)
                       else 'Job(code, tests=("assert f(1) == 1", "assert f(2) == 4"))')
            tests = string_tuple(self.tests, "Job.tests", example)
            object.__setattr__(self, "tests", tests)
        if self.timeout_s <= 0:
            raise ValueError(f"Job.timeout_s must be > 0, got {self.timeout_s}")
        if self.memory_mb < 16:
            raise ValueError(f"Job.memory_mb must be >= 16 (Python needs it to start), got {self.memory_mb}")


@dataclass
class ExecResult:
    """What happened to one `Job`. ``passed`` is true only for status ``"passed"``."""

    status: str
    tests_passed: int = 0
    tests_total: int = 0
    exit_code: int | None = None
    signal: int | None = None
    stdout: str = ""
    stderr: str = ""
    truncated: bool = False
    wall_s: float = 0.0
    cpu_s: float = 0.0
    details: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise ValueError(f"unknown status {self.status!r}; valid: {', '.join(STATUSES)}")

    @property
    def passed(self) -> bool:
        return self.status == "passed"

    @property
    def fraction_passed(self) -> float:
        return self.tests_passed / self.tests_total if self.tests_total else float(self.passed)


class Sandbox(abc.ABC):
    """Runs untrusted code. Backends: `LocalSandbox` (default), `DockerSandbox`."""

    @abc.abstractmethod
    def run(self, job: Job) -> ExecResult:
        """Run one job; infrastructure failures are retried once, then ``sandbox_error``."""

    def run_batch(self, jobs: Sequence[Job]) -> list[ExecResult]:
        """Run many jobs in parallel; results keep the order of ``jobs``."""
        return [self.run(j) for j in jobs]

    def close(self) -> None:
        """Release workers/containers. Safe to call twice."""

    def __enter__(self) -> "Sandbox":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# Sandboxes not closed yet; the interpreter closes them at exit (weak references: a sandbox that
# is garbage-collected earlier closes itself in ``__del__``).
_OPEN: "weakref.WeakSet[Sandbox]" = weakref.WeakSet()


def close_at_exit(sandbox: Sandbox) -> None:
    """Have ``sandbox.close()`` run when the interpreter exits (``sys.exit``, an uncaught
    exception, the end of the script) if the caller never closed it. Every backend calls this in
    its constructor, so a script that forgets ``close()`` exits promptly without leaving
    containers or server processes behind. It runs before the interpreter tears down its
    threads, while the backend's clean-up may still use them."""
    _OPEN.add(sandbox)


@atexit.register
def _close_open_sandboxes() -> None:
    for sandbox in list(_OPEN):
        try:
            sandbox.close()
        except Exception:  # noqa: BLE001  (exit goes on; the next DockerSandbox sweeps stale containers)
            pass
