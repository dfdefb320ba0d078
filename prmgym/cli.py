"""The ``prmgym`` command. Each subcommand lives in the module that owns the feature and
exposes ``add_arguments(parser)`` and ``run(args) -> int``; only the chosen one is imported,
so ``prmgym envs`` does not pay for torch."""

from __future__ import annotations

import argparse
import importlib
import sys

# name -> (module, one-line description)
COMMANDS: dict[str, tuple[str, str]] = {
    "envs": ("prmgym.envs.cli", "list the registered reasoning environments"),
    "demo": ("prmgym.envs.cli_demo", "step an environment by hand with its expert solution"),
    "sandbox": ("prmgym.sandbox.cli", "sandbox tools: build-image, check"),
    "pretrain": ("prmgym.recipes.pretrain_cli", "build and train the tiny character-level policy (cached)"),
    "train": ("prmgym.recipes.train_cli", "train a policy with GRPO / ReST-GRPO (optionally with a learned PRM)"),
    "train-prm": ("prmgym.rewards.cli", "train a process reward / value model offline"),
    "search": ("prmgym.search.cli", "run a planner (best-of-N, beam, DVTS, MCTS) on held-out tasks"),
    "quickstart": ("prmgym.recipes.quickstart", "the whole loop on CPU: policy, AIRL+GRPO, PRMs, search, report"),
}


def _usage() -> str:
    width = max(len(c) for c in COMMANDS)
    lines = ["usage: prmgym COMMAND [options]", "", "commands:"]
    lines += [f"  {name:<{width}}  {desc}" for name, (_, desc) in COMMANDS.items()]
    lines += ["", "Run 'prmgym COMMAND --help' for the options of one command."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(_usage())
        return 0
    if argv[0] in ("-V", "--version"):
        from prmgym import __version__

        print(__version__)
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"prmgym: unknown command {name!r}. Valid commands: {', '.join(COMMANDS)}", file=sys.stderr)
        return 2
    module_name, desc = COMMANDS[name]
    module = importlib.import_module(module_name)
    parser = argparse.ArgumentParser(prog=f"prmgym {name}", description=desc)
    module.add_arguments(parser)
    args = parser.parse_args(rest)
    try:
        return int(module.run(args) or 0)
    except KeyboardInterrupt:
        print("interrupted; checkpoints and logs written so far are kept", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
