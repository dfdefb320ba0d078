"""The unit of work every environment, trainer and planner shares: a `Task`."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

from prmgym.sandbox.base import string_tuple


@dataclass(frozen=True)
class Task:
    """One reasoning problem.

    Attributes:
        id: stable identifier, unique within its source and split (e.g. ``"chain/train/17"``).
        prompt: the problem statement shown to the policy (no trailing step delimiter).
        answer: the reference final answer as text, or ``None`` when only tests decide.
        tests: code tasks only: test programs (a tuple or list of strings); each one is run
            against the candidate program in a sandbox and counts as one test. Empty for
            non-code tasks. A bare string is refused with a ``TypeError`` (wrap it in a tuple).
        expert_steps: a correct list of reasoning steps whose last step submits the final
            answer (so replaying it in the environment earns reward 1.0), or ``None`` when
            no solver exists for the source.
        metadata: anything else the source knows (difficulty, ``entry_point`` for code
            tasks, the reasoning-gym entry needed by its scorer, ...).

    >>> t = Task(id="demo/0", prompt="What is 2 + 3?", answer="5", expert_steps=("2 + 3 = 5", "Answer: 5"))
    >>> t.is_code
    False
    """

    id: str
    prompt: str
    answer: str | None = None
    tests: tuple[str, ...] = ()
    expert_steps: tuple[str, ...] | None = None
    metadata: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.id, str) or not self.id:
            raise ValueError(f"Task.id must be a non-empty string, got {self.id!r}")
        if not isinstance(self.prompt, str):
            raise TypeError(f"Task.prompt must be a string, got {type(self.prompt).__name__}")
        # Lists become tuples so tasks stay hashable and immutable; a bare string is refused (it
        # would be one test, or one step, per character).
        if not (isinstance(self.tests, tuple) and all(isinstance(t, str) for t in self.tests)):
            example = (f"Task(..., tests=({self.tests[:40]!r},)) for one test" if isinstance(self.tests, str)
                       else 'Task(..., tests=("assert f(1) == 1", "assert f(2) == 4"))')
            object.__setattr__(self, "tests", string_tuple(self.tests, f"Task {self.id!r}: tests", example))
        if self.expert_steps is not None and not isinstance(self.expert_steps, tuple):
            example = (f"Task(..., expert_steps=({self.expert_steps[:40]!r},)) for one step"
                       if isinstance(self.expert_steps, str) else 'Task(..., expert_steps=("2 + 3 = 5", "Answer: 5"))')
            steps = string_tuple(self.expert_steps, f"Task {self.id!r}: expert_steps", example)
            object.__setattr__(self, "expert_steps", steps)

    @property
    def is_code(self) -> bool:
        """True for program-synthesis tasks, which are verified by running ``tests``."""
        return bool(self.tests)
