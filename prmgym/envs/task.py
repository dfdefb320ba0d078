"""The unit of work every environment, trainer and planner shares: a `Task`."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping


@dataclass(frozen=True)
class Task:
    """One reasoning problem.

    Attributes:
        id: stable identifier, unique within its source and split (e.g. ``"chain/train/17"``).
        prompt: the problem statement shown to the policy (no trailing step delimiter).
        answer: the reference final answer as text, or ``None`` when only tests decide.
        tests: code tasks only: test programs; each one is run against the candidate
            program in a sandbox and counts as one test. Empty for non-code tasks.
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
        # Normalise list inputs to tuples so tasks stay hashable and immutable.
        if not isinstance(self.tests, tuple):
            object.__setattr__(self, "tests", tuple(self.tests))
        if self.expert_steps is not None and not isinstance(self.expert_steps, tuple):
            object.__setattr__(self, "expert_steps", tuple(self.expert_steps))

    @property
    def is_code(self) -> bool:
        """True for program-synthesis tasks, which are verified by running ``tests``."""
        return bool(self.tests)
