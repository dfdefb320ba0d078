"""Register your own reasoning environment in a few lines, then use it like any Gymnasium env.

    python examples/register_own_env.py

Two ways: (1) a fixed list of problems (`TaskList`), (2) a procedural generator with an exact
solver (subclass `ProceduralSource`, implement `generate(rng)`), so every problem has an
expert trace. Both are registered with `register_reasoning_env(id, source, verifier)`.
"""

from __future__ import annotations

import random

import gymnasium as gym

import prmgym  # noqa: F401  (registers prmgym's own envs)
from prmgym.envs import ProceduralSource, Task, TaskList, format_answer, register_reasoning_env

# (1) A fixed list of problems, checked by exact match ---------------------------------------
capitals = TaskList(
    train=[Task(id="cap/fr", prompt="Capital of France?", answer="Paris"),
           Task(id="cap/de", prompt="Capital of Germany?", answer="Berlin")],
    test=[Task(id="cap/it", prompt="Capital of Italy?", answer="Rome")],
)
register_reasoning_env("mylab/Capitals-v0", capitals, verifier="exact", description="world capitals", max_steps=4)


# (2) A procedural source with an exact solver: convert minutes to hours and minutes ----------
class MinutesToHours(ProceduralSource):
    """'Write 135 minutes as h:mm.' -> steps '135//60=2', '135%60=15', 'Answer: 2:15'."""

    name = "minutes"

    def __init__(self, max_minutes: int = 600) -> None:
        self.max_minutes = max_minutes

    def generate(self, rng: random.Random) -> Task:
        m = rng.randint(61, self.max_minutes)
        h, r = divmod(m, 60)
        answer = f"{h}:{r:02d}"
        return Task(
            id="minutes",  # ProceduralSource rewrites ids as "<name>/<split>/<hash of prompt>"
            prompt=f"Write {m} minutes as h:mm.",
            answer=answer,
            expert_steps=(f"{m}//60={h}", f"{m}%60={r}", format_answer(answer)),
        )


register_reasoning_env("mylab/Minutes-v0", MinutesToHours, verifier="exact",
                       description="minutes to h:mm, two steps", max_steps=6)


def main() -> None:
    env = gym.make("mylab/Capitals-v0", split="test")
    obs, info = env.reset(seed=0)
    obs, reward, terminated, truncated, info = env.step("Answer: Rome")
    print(f"Capitals-v0: {obs!r} reward={reward}")

    env = gym.make("mylab/Minutes-v0")
    rewards = []
    for task in env.unwrapped.source.tasks("test", 20, seed=0):
        env.reset(options={"task": task})
        for step in task.expert_steps:
            obs, reward, terminated, truncated, info = env.step(step)
        rewards.append(reward)
    print(f"Minutes-v0: expert replay on 20 test tasks, mean reward {sum(rewards) / len(rewards):.2f}")
    print(obs)

    envs = gym.make_vec("mylab/Minutes-v0", num_envs=4)
    obs, infos = envs.reset(seed=0)
    obs, rewards, terminated, truncated, infos = envs.step(tuple(t.expert_steps[0] for t in infos["task"]))
    print("make_vec works:", len(obs), "envs, first observation:", repr(obs[0]))
    envs.close()


if __name__ == "__main__":
    main()
