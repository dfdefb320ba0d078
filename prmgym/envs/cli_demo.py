"""``prmgym demo``: step an environment by hand with its expert solution, then a wrong answer.

    prmgym demo                                  # ChainArithmetic
    prmgym demo --env prmgym/Countdown-v0 --seed 3
    prmgym demo --env prmgym/ProgramSynthesis-v0  # runs the program in the local sandbox
    prmgym demo --env prmgym/ReasoningGym-v0 --env-arg task=gcd
    prmgym demo --env prmgym/Jsonl-v0 --env-arg path=problems.jsonl --split all
"""

from __future__ import annotations

import argparse

from prmgym.config import ConfigError, add_env_arg, apply_overrides


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--env", default="prmgym/ChainArithmetic-v0", help="environment id (see `prmgym envs`)")
    parser.add_argument("--seed", type=int, default=0, help="reset seed: picks the task")
    parser.add_argument("--split", default=None, help="split to draw the task from (default: the env's)")
    add_env_arg(parser)


def _wrong(task, env) -> str:
    """A wrong submission: for code tasks a body that returns None, else a wrong number."""
    if task.is_code:
        return env.format_answer("    return None")
    try:
        return env.format_answer(int(task.answer) + 1)
    except (TypeError, ValueError):
        return env.format_answer("not the answer")


def run(args: argparse.Namespace) -> int:
    import prmgym  # noqa: F401  (registers)

    kwargs = {"render_mode": "ansi", **apply_overrides({}, args.env_arg, flag="--env-arg")}
    if args.split:
        kwargs["split"] = args.split
    from prmgym.envs.registration import make

    try:
        env = make(args.env, **kwargs)
    except TypeError as e:  # a keyword the env does not take
        raise ConfigError(f"--env-arg: {args.env} cannot be made with {kwargs}: {e}") from None
    u = env.unwrapped
    obs, info = env.reset(seed=args.seed)
    task = info["task"]
    print(f"env: {args.env}   task: {task.id}")
    print(f"observation after reset (the prompt + delimiter):\n{obs!r}\n")
    if task.expert_steps is None:
        print("this task has no expert steps; submitting the reference answer")
        steps = [u.format_answer(task.answer)]
    else:
        steps = list(task.expert_steps)
    total = 0.0
    for i, step in enumerate(steps, 1):
        obs, reward, terminated, truncated, info = env.step(step)
        total += reward
        print(f"step {i}: {step!r:<30} reward={reward:.3f} terminated={terminated} truncated={truncated}")
        if terminated or truncated:
            break
    print("\n" + env.render())
    print(f"\nexpert return: {total:.3f}  verdict: {info['verdict']}\n")

    obs, info = env.reset(seed=args.seed)
    wrong = _wrong(task, u)
    obs, reward, terminated, truncated, info = env.step(wrong)
    print(f"same task, wrong submission {wrong!r}: reward={reward:.3f} terminated={terminated}")
    print(env.render())
    env.close()
    return 0
