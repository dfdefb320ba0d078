"""``prmgym envs``: list the registered reasoning environments, one line each."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--reasoning-gym", action="store_true", help="also list the reasoning-gym task names usable with prmgym/ReasoningGym-v0")


def run(args: argparse.Namespace) -> int:
    import prmgym  # noqa: F401  (registers)
    from prmgym.envs.registration import DESCRIPTIONS

    width = max(len(i) for i in DESCRIPTIONS)
    for env_id, desc in DESCRIPTIONS.items():
        print(f"{env_id:<{width}}  {desc}")
    if getattr(args, "reasoning_gym", False):
        from prmgym.envs.sources import reasoning_gym_names

        names = reasoning_gym_names()
        print(f"\nreasoning-gym tasks ({len(names)}), e.g. gym.make('prmgym/ReasoningGym-v0', task='{names[0]}'):")
        print("  " + ", ".join(names))
    return 0
