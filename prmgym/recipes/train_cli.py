"""``prmgym train --config FILE [--set key=value ...] [--overwrite] | --resume RUN_DIR [--set ...]``.

Trains with GRPO or ReST-GRPO as the config says; writes ``config.yaml`` (the resolved
config), ``metrics.jsonl``, TensorBoard events (``tb/``), ``checkpoints/`` and
``summary.json`` to the run directory.

Starting and continuing never send you to each other:

* ``--config`` refuses a run directory that already holds a run (``--resume`` it, or
  ``--overwrite`` to start again); every config error is reported before the directory is
  created.
* ``--resume RUN_DIR`` reloads the run's own config and its latest checkpoint and continues
  exactly; a run stopped before its first checkpoint starts again from step 0 (its
  ``pass@1_before`` is kept). ``--set steps=N`` extends a run; a finished run is reported
  as finished and nothing is written.
* Ctrl-C or SIGTERM finishes the current step and saves a checkpoint (a second Ctrl-C stops
  at once). After a resume no step is logged twice: rows after the checkpoint are dropped
  from ``metrics.jsonl`` and TensorBoard hides the events after it.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading

from prmgym.config import ConfigError, add_precision_args, add_set_arg


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="YAML run config (see examples/configs/)")
    add_set_arg(parser, example="trainer.learning_rate=1e-4 --set steps=50")
    parser.add_argument("--resume", metavar="RUN_DIR", help="continue a run from its latest checkpoint (from step 0 "
                        "if it stopped before its first one)")
    parser.add_argument("--overwrite", action="store_true", help="with --config: replace the run already in run_dir")
    parser.add_argument("--quiet", "--no-progress", dest="quiet", action="store_true",
                        help="no progress bar (--no-progress: the older spelling)")
    parser.add_argument("--list-keys", action="store_true", help="print every config key (run and trainer "
                        "sections) with its default and help text, then exit")
    add_precision_args(parser)  # --dtype, --device: the run config's dtype / device


def resolve_config(args: argparse.Namespace):
    """The `RunConfig` that ``args`` ask for, fully checked; nothing is written."""
    from prmgym.config import apply_overrides, load_yaml
    from prmgym.recipes.train import check_names, load_run_config

    if args.resume and args.config:
        raise ConfigError("pass either --config FILE (a new run) or --resume RUN_DIR (continue a run), not both")
    if args.resume and args.overwrite:
        raise ConfigError("--overwrite starts a run again and --resume continues it: pass one of them")
    if args.resume:
        cfg_path = os.path.join(args.resume, "config.yaml")
        if not os.path.exists(cfg_path):
            raise ConfigError(f"--resume {args.resume!r}: no config.yaml there; pass the directory of a run started "
                              "by `prmgym train`")
        data = apply_overrides(load_yaml(cfg_path), args.overrides)
        if os.path.normpath(str(data.get("run_dir", args.resume))) != os.path.normpath(args.resume) and any(
                o.startswith("run_dir=") for o in args.overrides):
            raise ConfigError("--resume continues a run in its own directory; --set run_dir=... cannot move it")
        data["run_dir"] = args.resume
    elif args.config:
        data = apply_overrides(load_yaml(args.config), args.overrides)
    else:
        raise ConfigError("pass --config FILE (e.g. examples/configs/grpo_chain.yaml) or --resume RUN_DIR")
    if getattr(args, "imports", None):  # recorded in config.yaml, so --resume imports them again
        data["imports"] = list(dict.fromkeys([*(data.get("imports") or []), *args.imports]))
    for key in ("dtype", "device"):  # the flags win over the config (a run may resume on another device)
        if getattr(args, key, None) is not None:
            data[key] = getattr(args, key)
    cfg = load_run_config(data)
    check_names(cfg)
    return cfg


def list_keys() -> str:
    """Every key of a run config and of its ``trainer:`` section, with default and help."""
    import dataclasses

    from prmgym.agents.grpo import GRPOConfig
    from prmgym.agents.rest_grpo import ReSTGRPOConfig
    from prmgym.models.backend import PolicyConfig
    from prmgym.models.lora import LoRAConfig
    from prmgym.recipes.train import RunConfig

    def rows(cls, prefix: str, skip=()) -> list[str]:
        out = []
        for f in dataclasses.fields(cls):
            if f.name in skip:
                continue
            default = f.default if f.default is not dataclasses.MISSING else (
                f.default_factory() if f.default_factory is not dataclasses.MISSING else None)
            out.append(f"  {prefix}{f.name} = {default!r}\n      {f.metadata.get('help', '')}")
        return out

    grpo = {f.name for f in dataclasses.fields(GRPOConfig)}
    lines = ["run config keys (YAML top level; --set KEY=VALUE):", *rows(RunConfig, ""),
             "", "trainer keys (trainer: section, GRPOConfig; --set trainer.KEY=VALUE):", *rows(GRPOConfig, "trainer."),
             "", "extra trainer keys for algorithm: rest_grpo (ReSTGRPOConfig):", *rows(ReSTGRPOConfig, "trainer.", grpo),
             "", "policy: section keys (PolicyConfig, the generation backend):", *rows(PolicyConfig, "policy."),
             "", "lora: section keys (LoRAConfig):", *rows(LoRAConfig, "lora.")]
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    if args.list_keys:
        print(list_keys())
        return 0
    cfg = resolve_config(args)
    return train_from_config(cfg, resume=bool(args.resume), overwrite=args.overwrite, progress=not args.quiet)


class StopOnSignal:
    """While installed, the first SIGINT/SIGTERM lets the current step finish and then stops
    training (`should_continue` turns False) so a checkpoint can be written; a second signal
    raises KeyboardInterrupt at once. Only the main thread can own signal handlers; elsewhere
    this does nothing."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.signum: int | None = None
        self._old: dict = {}

    def __enter__(self) -> "StopOnSignal":
        if threading.current_thread() is threading.main_thread():
            self._old = {s: signal.signal(s, self._handle) for s in self.SIGNALS}
        return self

    def __exit__(self, *exc) -> None:
        for s, old in self._old.items():
            signal.signal(s, old)
        self._old = {}

    def _handle(self, signum, frame) -> None:
        if self.signum is not None:
            raise KeyboardInterrupt
        self.signum = signum
        print(f"\n{signal.Signals(signum).name}: stopping after this step to save a checkpoint "
              "(Ctrl-C again stops at once, losing the step)", file=sys.stderr, flush=True)

    def should_continue(self, trainer=None, metrics=None) -> bool:
        return self.signum is None


def _has_row(path: str, step: int, key: str) -> bool:
    """Whether ``metrics.jsonl`` at ``path`` has a row at ``step`` holding ``key`` (a line cut short
    by a kill does not count)."""
    if not os.path.exists(path):
        return False
    with open(path) as f:
        for line in f:
            try:
                row = json.loads(line)
            except ValueError:
                continue
            if row.get("step") == step and key in row:
                return True
    return False


def _write_summary(path: str, summary: dict) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(summary, f, indent=2)
    os.replace(tmp, path)


def _quiet_transformers() -> None:
    try:  # transformers' per-save/load progress bars would interleave with ours
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    except ImportError:
        pass


def train_from_config(cfg, resume: bool = False, overwrite: bool = False, progress: bool = True) -> int:
    """Start (or, with ``resume``, continue) the run ``cfg`` describes; returns the exit code."""
    if cfg.algorithm == "sb3_ppo":  # stable-baselines3 runs its own loop, logger and checkpoints
        from prmgym.recipes.sb3 import train_sb3

        return train_sb3(cfg, resume=resume, progress=progress)
    from prmgym.agents.common import FunctionCallback, NonFiniteLossError
    from prmgym.checkpoints import checkpoint_step, latest_checkpoint
    from prmgym.config import to_dict
    from prmgym.logger import Logger
    from prmgym.models.backend import close_policy
    from prmgym.recipes.train import load_policy, build_reward, build_trainer, clear_run, run_outputs, save_run_config

    _quiet_transformers()
    run_dir = cfg.run_dir
    summary_path = os.path.join(run_dir, "summary.json")
    ckpt = latest_checkpoint(run_dir) if resume else None
    start = checkpoint_step(ckpt) if ckpt else 0
    summary = json.load(open(summary_path)) if (resume and os.path.exists(summary_path)) else {}
    if resume and start >= cfg.steps and summary.get("steps", -1) >= cfg.steps and "final_checkpoint" in summary:
        print(f"prmgym train: the run in {run_dir} is finished ({start} of {cfg.steps} steps; summary.json holds its "
              f"results); nothing to do. Extend it with: prmgym train --resume {run_dir} --set steps=N", file=sys.stderr)
        return 0
    held = run_outputs(run_dir) if not resume else []
    if held and not overwrite:
        raise ConfigError(f"{run_dir!r} already holds a run ({', '.join(held)}); continue it with --resume {run_dir}, "
                          "start it again with --overwrite, or choose another run_dir (--set run_dir=...)")
    policy = load_policy(cfg, progress=progress)
    reward = build_reward(cfg, policy)  # a bad reward_config fails here, before the run directory is touched
    if held:
        clear_run(run_dir)
    save_run_config(cfg, run_dir)
    logger = Logger(run_dir, formats=("jsonl", *cfg.logging), hparams=None if resume else to_dict(cfg),
                    resume_step=start if resume else None, wandb=cfg.wandb)
    stop = StopOnSignal()
    trainer = build_trainer(cfg, policy=policy, logger=logger, progress=progress, reward=reward)
    trainer.callbacks.append(FunctionCallback(stop.should_continue))
    trainer.callbacks[-1].init_callback(trainer)
    how_to_resume = f"continue with: prmgym train --resume {run_dir}"
    try:
        if ckpt is not None:
            trainer.load(ckpt)
            print(f"resumed from {ckpt} (step {trainer.num_steps} of {cfg.steps})", file=sys.stderr)
        elif resume:
            print(f"{run_dir} has no checkpoint yet: training from step 0", file=sys.stderr)
        if cfg.eval_tasks and trainer.num_steps == 0:
            if "pass@1_before" not in summary:
                summary["pass@1_before"] = trainer.pass_at_1(cfg.eval_tasks)
                _write_summary(summary_path, summary)
                print(f"held-out pass@1 before training: {summary['pass@1_before']:.3f}", file=sys.stderr)
            # step 0 of the eval/pass@1 curve, once: a kill between the summary and this row is
            # mended on resume from the summary, without evaluating again
            if not _has_row(os.path.join(run_dir, "metrics.jsonl"), 0, "eval/pass@1"):
                logger.record("eval/pass@1", summary["pass@1_before"])
                logger.dump(0)
        with stop:
            history = trainer.train(max(0, cfg.steps - trainer.num_steps), progress=progress)
        if stop.signum is not None:
            where = trainer.save_checkpoint()
            print(f"stopped at step {trainer.num_steps} of {cfg.steps}; checkpoint {where}; {how_to_resume}",
                  file=sys.stderr)
            return 128 + stop.signum
        final = trainer.save_checkpoint()
        summary.update(steps=trainer.num_steps, final_checkpoint=final, policy_dir=os.path.join(final, "policy"))
        if cfg.eval_tasks:
            summary["pass@1_after"] = trainer.pass_at_1(cfg.eval_tasks)
            # once per step: not when the last step evaluated already, nor when a run killed after
            # this row and before its summary is resumed
            if not (history and "eval/pass@1" in history[-1]) and not _has_row(
                    os.path.join(run_dir, "metrics.jsonl"), trainer.num_steps, "eval/pass@1"):
                logger.record("eval/pass@1", summary["pass@1_after"])
                logger.dump(trainer.num_steps)
            print(f"held-out pass@1 after {trainer.num_steps} steps: {summary['pass@1_after']:.3f}", file=sys.stderr)
        _write_summary(summary_path, summary)
        print(f"run directory: {run_dir} (tensorboard --logdir {run_dir})", file=sys.stderr)
        return 0
    except NonFiniteLossError as e:
        print(f"prmgym train: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        last = latest_checkpoint(run_dir)
        print(f"interrupted at step {trainer.num_steps}; last checkpoint: "
              + (last if last else "none yet (the run starts again from step 0)") + f"; {how_to_resume}", file=sys.stderr)
        return 130
    finally:
        trainer.close()
        close_policy(policy)  # a vLLM engine shuts down here
