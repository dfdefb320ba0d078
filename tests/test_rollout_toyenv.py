"""A tiny reasoning env with the pinned `ReasoningEnv` API, used by the agents' tests.

``ToyEnv``: the prompt asks for a digit; every step is appended to the trace; a step
starting with ``"Answer:"`` -- or, with ``one_step=True``, any step -- ends the episode;
the reward is 1 if the final step's first character after ``"Answer:"`` is a digit in
``targets``. ``episode_len=k`` ends every episode after exactly k steps (the last one is graded).
``sandbox_error_ids`` makes the verdict of those task ids a sandbox error.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import gymnasium as gym
import pytest

from prmgym.envs.task import Task
from prmgym.envs.trace import render_trace


@dataclass
class Verdict:
    reward: float
    correct: bool
    details: dict = field(default_factory=dict)


class ToySource:
    def tasks(self, split, n, seed=0):
        base = 0 if split == "train" else 10_000
        return [Task(id=f"toy/{split}/{base + seed + i}", prompt=f"Q{(base + seed + i) % 97}: say a digit", answer="7") for i in range(n)]


class ToyVerifier:
    def __init__(self, targets, sandbox_error_ids=()):
        self.targets = targets
        self.sandbox_error_ids = set(sandbox_error_ids)

    def score(self, task, text):
        if task.id in self.sandbox_error_ids:
            return Verdict(0.0, False, {"sandbox_error": "worker died"})
        last = text.rstrip("\n").split("\n")[-1]
        body = last[len("Answer:"):].strip() if last.startswith("Answer:") else last
        ok = bool(body) and body[0] in self.targets
        return Verdict(float(ok), ok, {})


class ToyEnv(gym.Env):
    metadata = {"render_modes": []}

    def __init__(self, split="train", targets="0123456789", one_step=True, max_steps=4, sandbox_error_ids=(), episode_len=None):
        self.split = split
        self.source = ToySource()
        self.verifier = ToyVerifier(targets, sandbox_error_ids)
        self.delimiter = "\n"
        self.one_step = one_step
        self.max_steps = max_steps
        self.episode_len = episode_len
        self.observation_space = gym.spaces.Text(max_length=10_000, charset="".join(chr(i) for i in range(1, 127)))
        self.action_space = gym.spaces.Text(max_length=10_000, charset="".join(chr(i) for i in range(1, 127)))
        self.task = None
        self.steps = []

    def reset(self, seed=None, options=None):
        super().reset(seed=seed)
        options = options or {}
        if options.get("task") is not None:
            self.task = options["task"]
        else:
            self.task = self.source.tasks(self.split, 1, seed=int(self.np_random.integers(1000)))[0]
        self.steps = []
        return self._obs(), {"task": self.task, "steps": []}

    def _obs(self):
        return render_trace(self.task.prompt, self.steps, self.delimiter)

    def step(self, action):
        self.steps.append(action)
        done = self.one_step or action.startswith("Answer:")
        if self.episode_len is not None:
            done = len(self.steps) >= self.episode_len
        trunc = not done and len(self.steps) >= self.max_steps
        info = {"task": self.task, "steps": list(self.steps), "answer": None, "verdict": None}
        reward = 0.0
        if done:
            v = self.verifier.score(self.task, self._obs())
            info["verdict"], info["answer"], reward = v, action, v.reward
        return self._obs(), reward, done, trunc, info

    def get_state(self):
        return (self.task, tuple(self.steps))

    def set_state(self, state):
        self.task, steps = state
        self.steps = list(steps)

    def format_answer(self, answer):
        return f"Answer: {answer}"


def test_toy_env_contract():
    env = ToyEnv(one_step=False)
    obs, info = env.reset(seed=3)
    assert obs == info["task"].prompt + "\n"
    obs, r, term, trunc, _ = env.step("thinking")
    assert (r, term, trunc) == (0.0, False, False)
    obs, r, term, trunc, info = env.step(env.format_answer("7"))
    assert term and r == 1.0 and info["verdict"].correct
    assert obs.endswith("thinking\nAnswer: 7\n")


def test_toy_env_fixed_length():
    env = ToyEnv(one_step=False, episode_len=2)
    env.reset(seed=0)
    assert env.step("x")[2] is False
    _, r, term, _, _ = env.step("3")
    assert term and r == 1.0


def test_toy_env_truncates():
    env = ToyEnv(one_step=False, max_steps=2)
    env.reset(seed=0)
    env.step("a")
    _, r, term, trunc, _ = env.step("b")
    assert trunc and not term and r == 0.0


if __name__ == "__main__":
    pytest.main([__file__])
