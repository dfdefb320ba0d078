"""The ``prmgym`` command. Each subcommand lives in the module that owns the feature and
exposes ``add_arguments(parser)`` and ``run(args) -> int``; only the chosen one is imported,
so ``prmgym envs`` does not pay for torch.

Errors look the same in every command: one line ``prmgym CMD: error: ...`` on stderr, exit
code 2 for usage errors (bad options or config keys, missing files or directories, unknown
ids: `prmgym.config.ConfigError`, ``FileNotFoundError``, Gymnasium's unknown-id errors),
1 for failures while running, 130 on Ctrl-C. ``prmgym --debug CMD ...`` (or
``PRMGYM_DEBUG=1``) shows the traceback as well.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import traceback

from prmgym.config import ConfigError

EXIT_RUNTIME, EXIT_USAGE, EXIT_INTERRUPTED = 1, 2, 130

#: commands that take ``--import MODULE`` (a user's env registrations, imported before anything is made)
IMPORTING = ("demo", "pretrain", "train", "train-prm", "search")

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
    lines = ["usage: prmgym [--debug] COMMAND [options]", "", "commands:"]
    lines += [f"  {name:<{width}}  {desc}" for name, (_, desc) in COMMANDS.items()]
    lines += ["", "Run 'prmgym COMMAND --help' for the options of one command; --debug shows tracebacks."]
    return "\n".join(lines)


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """``--help`` shows each option's default (unless its help already says it or there is none)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if ("default" not in text and action.default not in (None, False, [], argparse.SUPPRESS)
                and action.option_strings and action.nargs != 0):
            text += " (default: %(default)s)"
        return text


class _Parser(argparse.ArgumentParser):
    """Argument errors become a `ConfigError`, reported in one line like every other error."""

    def __init__(self, *a, **kw):
        kw.setdefault("formatter_class", HelpFormatter)
        super().__init__(*a, **kw)

    def error(self, message: str):
        raise ConfigError(f"{message} (see {self.prog} --help)")


def is_usage_error(e: BaseException) -> bool:
    """True for errors in what the user passed (exit 2), False for failures while running (exit 1)."""
    if isinstance(e, (ConfigError, FileNotFoundError, NotADirectoryError)):
        return True
    gym_error = sys.modules.get("gymnasium.error")
    unknown_id = tuple(getattr(gym_error, n) for n in ("NameNotFound", "NamespaceNotFound", "VersionNotFound")
                       if hasattr(gym_error, n))
    return bool(unknown_id) and isinstance(e, unknown_id)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = os.environ.get("PRMGYM_DEBUG", "") not in ("", "0")
    while argv and argv[0] == "--debug":
        debug, argv = True, argv[1:]
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(_usage())
        return 0
    if argv[0] in ("-V", "--version"):
        from prmgym import __version__

        print(__version__)
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"prmgym: error: unknown command {name!r}. Valid commands: {', '.join(COMMANDS)}", file=sys.stderr)
        return EXIT_USAGE
    module_name, desc = COMMANDS[name]
    if os.environ.get("PRMGYM_LOADING_BARS", "") != "1":  # transformers' weight loading/saving bars: off
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # (read when huggingface_hub is imported)
    try:
        module = importlib.import_module(module_name)
        parser = _Parser(prog=f"prmgym {name}", description=desc)
        module.add_arguments(parser)
        if name in IMPORTING:
            from prmgym.config import add_import_arg, import_modules

            add_import_arg(parser)
        args = parser.parse_args(rest)
        if name in IMPORTING:
            import_modules(args.imports)
        return int(module.run(args) or 0)
    except KeyboardInterrupt:
        if debug:
            traceback.print_exc()
        print(f"prmgym {name}: interrupted; checkpoints and logs written so far are kept", file=sys.stderr)
        return EXIT_INTERRUPTED
    except SystemExit as e:  # argparse's --help (code 0) or a command that exits by itself
        if isinstance(e.code, str):
            print(e.code, file=sys.stderr)
            return EXIT_RUNTIME
        return int(e.code or 0)
    except Exception as e:  # noqa: BLE001  (the one place errors become messages)
        usage = is_usage_error(e)
        if debug:
            traceback.print_exc()
        what = str(e) if usage or isinstance(e, ValueError) else f"{type(e).__name__}: {e}"
        hint = "" if debug else " (run with prmgym --debug ... for the traceback)"
        print(f"prmgym {name}: error: {_one_line(what)}" + ("" if usage else hint), file=sys.stderr)
        return EXIT_USAGE if usage else EXIT_RUNTIME


def _one_line(text: str) -> str:
    return " ".join(str(text).split()) or "(no message)"


if __name__ == "__main__":
    sys.exit(main())
