"""``prmgym train --config FILE [--set key=value ...] [--resume RUN_DIR]``.

Trains with GRPO or ReST-GRPO as the config says; writes ``config.yaml`` (the resolved
config), ``metrics.jsonl``, TensorBoard events (``tb/``), ``checkpoints/`` and
``summary.json`` to the run directory. ``--resume RUN_DIR`` reloads the run's own config
and its latest checkpoint and continues exactly (``--set steps=N`` extends a run).
"""

from __future__ import annotations

import argparse
import json
import os
import sys


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="YAML run config (see examples/configs/)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config value, e.g. --set trainer.learning_rate=1e-4 --set steps=50 (repeatable)")
    parser.add_argument("--resume", metavar="RUN_DIR", help="continue a run from its latest checkpoint")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    from prmgym.recipes.train import load_run_config
    from prmgym.config import ConfigError, apply_overrides, load_yaml

    try:
        if args.resume:
            cfg_path = os.path.join(args.resume, "config.yaml")
            if not os.path.exists(cfg_path):
                raise ConfigError(f"--resume {args.resume!r}: no config.yaml there; pass the directory of a run started by `prmgym train`")
            data = load_yaml(cfg_path)
            data["run_dir"] = args.resume
        elif args.config:
            data = load_yaml(args.config)
        else:
            raise ConfigError("pass --config FILE (e.g. examples/configs/grpo_chain.yaml) or --resume RUN_DIR")
        data = apply_overrides(data, args.overrides)
        cfg = load_run_config(data)
        from prmgym.recipes.train import check_names

        check_names(cfg)
    except ConfigError as e:
        print(f"prmgym train: {e}", file=sys.stderr)
        return 2
    return train_from_config(cfg, resume=bool(args.resume), progress=not args.no_progress)


def train_from_config(cfg, resume: bool = False, progress: bool = True) -> int:
    if cfg.algorithm == "sb3_ppo":  # stable-baselines3 runs its own loop, logger and checkpoints
        from prmgym.recipes.sb3 import train_sb3

        return train_sb3(cfg, resume=resume, progress=progress)
    from prmgym.agents.common import NonFiniteLossError, latest_checkpoint
    from prmgym.recipes.train import build_trainer, save_run_config, truncate_metrics
    from prmgym.config import to_dict
    from prmgym.logging import Logger

    try:  # transformers' per-save/load progress bars would interleave with ours
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    except ImportError:
        pass
    ckpt = latest_checkpoint(cfg.run_dir) if resume else None
    if resume and ckpt is None:
        print(f"prmgym train: --resume {cfg.run_dir!r} has no checkpoint yet; start it again with --config", file=sys.stderr)
        return 2
    if not resume and os.path.exists(os.path.join(cfg.run_dir, "metrics.jsonl")):
        print(f"prmgym train: {cfg.run_dir!r} already holds a run; use --resume {cfg.run_dir} or another run_dir "
              "(--set run_dir=...)", file=sys.stderr)
        return 2
    save_run_config(cfg, cfg.run_dir)
    if ckpt is not None:
        import torch

        step = int(torch.load(os.path.join(ckpt, "trainer_state.pt"), map_location="cpu", weights_only=False)["step"])
        truncate_metrics(cfg.run_dir, step)
    logger = Logger(cfg.run_dir, formats=("jsonl", "tensorboard"), hparams=None if resume else to_dict(cfg))
    try:
        trainer = build_trainer(cfg, logger=logger, progress=progress)
    except (ValueError, TypeError, FileNotFoundError) as e:  # ConfigError is a ValueError
        logger.close()
        print(f"prmgym train: {e}", file=sys.stderr)
        return 2
    summary_path = os.path.join(cfg.run_dir, "summary.json")
    summary = json.load(open(summary_path)) if (resume and os.path.exists(summary_path)) else {}
    try:
        if ckpt is not None:
            trainer.load(ckpt)
            print(f"resumed from {ckpt} (step {trainer.num_steps})", file=sys.stderr)
        elif cfg.eval_tasks:
            summary["pass@1_before"] = trainer.evaluate(cfg.eval_tasks)
            print(f"held-out pass@1 before training: {summary['pass@1_before']:.3f}", file=sys.stderr)
        remaining = max(0, cfg.steps - trainer.num_steps)
        try:
            trainer.train(remaining, progress=progress)
        except NonFiniteLossError as e:
            print(f"prmgym train: {e}", file=sys.stderr)
            return 1
        except KeyboardInterrupt:
            print(f"interrupted at step {trainer.num_steps}; resume with: prmgym train --resume {cfg.run_dir}", file=sys.stderr)
            return 130
        final = trainer.save_checkpoint()
        summary["steps"] = trainer.num_steps
        summary["final_checkpoint"] = final
        summary["policy_dir"] = os.path.join(final, "policy")
        if cfg.eval_tasks:
            summary["pass@1_after"] = trainer.evaluate(cfg.eval_tasks)
            print(f"held-out pass@1 after {trainer.num_steps} steps: {summary['pass@1_after']:.3f}", file=sys.stderr)
        with open(summary_path, "w") as f:
            json.dump(summary, f, indent=2)
        print(f"run directory: {cfg.run_dir} (tensorboard --logdir {cfg.run_dir})", file=sys.stderr)
        return 0
    finally:
        trainer.close()
