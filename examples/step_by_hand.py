"""Step reasoning environments by hand: text in, text out.

    python examples/step_by_hand.py

Shows the observation layout, the answer step, rewards, get_state/set_state branching (what
planners do) and a code environment whose program runs in the local sandbox.
"""

from __future__ import annotations

import gymnasium as gym

import prmgym  # noqa: F401  (registers the envs)


def chain_arithmetic() -> None:
    env = gym.make("prmgym/ChainArithmetic-v0", render_mode="ansi")
    u = env.unwrapped
    obs, info = env.reset(seed=42)
    task = info["task"]
    print("observation:", repr(obs))                 # the prompt + "\n"
    print("expert solution:", task.expert_steps)

    obs, reward, terminated, truncated, info = env.step(task.expert_steps[0])
    print("after one step:", repr(obs), "reward", reward)

    snapshot = u.get_state()                          # cheap: task reference + tuple of steps
    for s in task.expert_steps[1:]:
        obs, reward, terminated, truncated, info = env.step(s)
    print(f"branch A (expert): reward={reward} answer={info['answer']!r}")

    u.set_state(snapshot)                             # back to after step 1
    obs, reward, terminated, truncated, info = env.step(u.format_answer(int(task.answer) + 1))
    print(f"branch B (wrong answer): reward={reward} verdict={info['verdict']}")
    print(env.render())


def countdown() -> None:
    env = gym.make("prmgym/Countdown-v0")
    obs, info = env.reset(seed=7)
    print("\n" + obs, end="")
    for s in info["task"].expert_steps:
        obs, reward, terminated, truncated, info = env.step(s)
        print(f"  {s:<20} reward={reward}")


def program_synthesis() -> None:
    env = gym.make("prmgym/ProgramSynthesis-v0")  # sandbox="local" by default
    obs, info = env.reset(seed=3)
    print("\n" + obs, end="")
    for s in info["task"].expert_steps:           # one line of code per step, then "```"
        obs, reward, terminated, truncated, info = env.step(s)
    d = info["verdict"].details
    print(f"reward={reward} status={d['status']} tests {d['tests_passed']}/{d['tests_total']}")


if __name__ == "__main__":
    chain_arithmetic()
    countdown()
    program_synthesis()
