"""Roll a `Policy` through reasoning environments for a trainer: `RolloutCollector`.

The episodes are played by the one episode runner, `prmgym.envs.episodes.run_episodes`
(one ``propose`` per round over all live episodes, the group's prompt encoded once in the
first round, code submissions scored in one ``score_batch`` call). This module keeps what a
trainer adds: a pool of environments reused across steps and the sampling settings of its
config. `Prompt`, `Trajectory` and `RolloutStats` are the runner's types.

Sandbox infrastructure failures (``verdict.details["sandbox_error"]``) do not score the
sample 0: the trajectory is marked ``masked`` and trainers leave it out of the group
statistics and the loss.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

from prmgym.envs.episodes import EnvPool, Prompt, RunStats, Trajectory, run_episodes
from prmgym.envs.task import Task

#: compute spent by one `RolloutCollector.collect` call (the runner's `RunStats`)
RolloutStats = RunStats

__all__ = ["Prompt", "RolloutCollector", "RolloutStats", "Trajectory"]


class RolloutCollector:
    """Plays groups of episodes with a policy.

    Args:
        env_fn: builds one environment (e.g. ``lambda: prmgym.envs.make("prmgym/Countdown-v0")``).
            The collector keeps a pool of them and reuses it across calls.
        policy: any `prmgym.models.Policy`.
        max_new_tokens: token cap per step (one proposal).
        temperature, top_p: sampling settings passed to ``propose``.
        max_steps: safety cap on generated steps per episode (the env's own step limit
            usually ends episodes first).
        max_workers: threads for the terminal steps of code environments.
    """

    def __init__(
        self,
        env_fn: Callable[[], Any],
        policy: Any,
        max_new_tokens: int = 32,
        temperature: float = 1.0,
        top_p: float = 1.0,
        max_steps: int = 32,
        max_workers: int = 8,
    ) -> None:
        self.env_fn = env_fn
        self.policy = policy
        self.max_new_tokens = int(max_new_tokens)
        self.temperature = float(temperature)
        self.top_p = float(top_p)
        self.max_steps = int(max_steps)
        self.max_workers = int(max_workers)
        self._pool = EnvPool(env_fn)

    @property
    def delimiter(self) -> str:
        return self._pool.delimiter

    def sample_tasks(self, n: int, seed: int) -> list[Task]:
        """``n`` tasks drawn by resetting an environment with seeds ``seed, seed+1, ...``."""
        env = self._pool.get(1)[0]
        tasks = []
        for i in range(n):
            _, info = env.reset(seed=int(seed) + i)
            tasks.append(info.get("task") if isinstance(info, dict) and info.get("task") is not None else env.unwrapped.task)
        return tasks

    def close(self) -> None:
        self._pool.close()

    def collect(
        self, prompts: Sequence[Prompt | Task], group_size: int, seed: int, greedy: bool = False
    ) -> tuple[list[Trajectory], RolloutStats]:
        """Play ``group_size`` episodes for every prompt; trajectories come grouped in order.

        ``seed`` fixes the environment resets and every ``propose`` call, so a collect is
        reproducible. ``greedy=True`` samples at temperature 0 (evaluation). A prompt's
        prefix must leave at least one step to take (ValueError otherwise).
        """
        if group_size < 1:
            raise ValueError(f"group_size must be >= 1, got {group_size}")
        return run_episodes(
            self._pool.get(len(prompts) * group_size), self.policy, prompts, group_size, seed=seed,
            max_new_tokens=self.max_new_tokens, temperature=self.temperature, top_p=self.top_p,
            max_steps=self.max_steps, greedy=greedy, max_workers=self.max_workers,
        )
