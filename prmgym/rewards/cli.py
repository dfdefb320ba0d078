"""``prmgym train-prm``: train a process reward / value model offline.

    prmgym train-prm --kind airl --policy runs/tiny-chain --env prmgym/ChainArithmetic-v0 --out runs/prm-airl --steps 100
    prmgym train-prm --kind mc ... --set mc_rollouts=8 --set prm.learning_rate=3e-4
    prmgym train-prm --config examples/configs/prm_airl_chain.yaml --set steps=200
    prmgym train-prm --kind value --policy runs/tiny-chain --targets runs/mcts/targets.jsonl --out runs/vm
    prmgym train-prm --kind airl ... --out runs/prm-airl --resume      # continue from runs/prm-airl/checkpoint

The run's settings are `prmgym.rewards.train.TrainPRMRun` (a YAML mapping with ``--config``,
then the flags, then every ``--set KEY=VALUE``; ``prm.KEY`` sets a learner option). The PRM
lands in ``--out`` (load it with ``prmgym.rewards.load_prm``); metrics go to
``--out/metrics.jsonl`` and TensorBoard (``tensorboard --logdir OUT``).
"""

from __future__ import annotations

import argparse
import os

from prmgym.config import ConfigError, add_env_arg, add_precision_args, add_set_arg, apply_overrides

#: flags that set a `TrainPRMRun` field of the same name (None = not given)
_FLAGS = ("kind", "policy", "env", "out", "backbone", "targets", "steps", "seed", "dtype", "device", "prompt_format")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", default=None, help="YAML mapping of TrainPRMRun fields (docs/rewards.md)")
    add_set_arg(p, example="steps=200 --set prm.learning_rate=3e-6 --set mc_rollouts=8")
    p.add_argument("--kind", default=None, help="which PRM to train: a registered kind (prmgym.rewards.KINDS; a wrong one lists them)")
    p.add_argument("--policy", default=None, help="policy directory (save_pretrained): rollouts and log-probs")
    p.add_argument("--env", default=None, help="Gymnasium id, e.g. prmgym/ChainArithmetic-v0 (not needed for --kind value)")
    add_env_arg(p)
    p.add_argument("--out", default=None, help="run directory: the trained PRM, checkpoint/, logs")
    p.add_argument("--backbone", default=None, help="causal LM directory for the PRM body (default: the policy)")
    p.add_argument("--targets", default=None, help="value-targets JSONL (kind value; format in docs/rewards.md)")
    p.add_argument("--steps", type=int, default=None, help="PRM updates (total, counting resumed ones)")
    p.add_argument("--seed", type=int, default=None, help="data and initialisation seed")
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint")
    p.add_argument("--prompt-format", choices=("plain", "chat"), default=None,
                   help="how policy and PRM read traces: plain text or the tokenizer's chat template (default: plain)")
    p.add_argument("--quiet", action="store_true", help="no stdout metric tables and no progress bar")
    add_precision_args(p)


def resolve_run(args: argparse.Namespace):
    """The `TrainPRMRun` that ``args`` ask for, checked against the kind's recipe and options;
    nothing is loaded or written. Returns ``(run, kind class, learner options without the
    delimiter)``."""
    from prmgym.config import from_dict, load_yaml
    from prmgym.rewards.scalar import PRM_CLASSES, parse_options
    from prmgym.rewards.train import TrainPRMRun

    data = load_yaml(args.config) if args.config else {}
    for name in _FLAGS:
        if getattr(args, name) is not None:
            data[name] = getattr(args, name)
    if args.quiet:
        data["quiet"] = True
    if args.env_arg:
        data["env_kwargs"] = apply_overrides(data.get("env_kwargs") or {}, args.env_arg, flag="--env-arg")
    data = apply_overrides(data, args.overrides)
    for name, flag in (("kind", "--kind"), ("policy", "--policy DIR"), ("out", "--out DIR")):
        if data.get(name) in (None, ""):
            raise ConfigError(f"train-prm needs {name}: pass {flag} or set {name}: in the --config YAML")
    if getattr(args, "imports", None):
        data["imports"] = list(dict.fromkeys([*(data.get("imports") or []), *args.imports]))
    run = from_dict(TrainPRMRun, data)
    from prmgym.config import import_modules
    from prmgym.models.formatting import check_prompt_format

    import_modules(run.imports, where="imports:")
    try:
        check_prompt_format(run.prompt_format)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    cls = PRM_CLASSES[run.kind]
    if cls.data_source == "env" and not run.env:
        raise ConfigError(f"--env is required for --kind {run.kind} (it trains from policy rollouts)")
    if cls.data_source == "targets" and not run.targets:
        raise ConfigError(f"--kind {run.kind} trains from --targets FILE (JSONL, see docs/rewards.md)")
    others = {f: k for k, c in PRM_CLASSES.items() if k != run.kind for f in c.recipe_fields}
    stray = sorted(f for f in data if f in others and f not in cls.recipe_fields)
    if stray:
        raise ConfigError(f"{', '.join(stray)} only apply to kind {others[stray[0]]}, not {run.kind}; leave them out")
    from prmgym.models.optim import resolve_precision

    resolve_precision(run.prm.get("dtype", run.dtype), run.device)  # a bad --dtype / --device fails before any loading
    return run, cls, parse_options(cls, dict(run.prm), "prm")


def run(args: argparse.Namespace) -> int:
    import dataclasses

    import torch

    from prmgym.config import to_dict
    from prmgym.logger import Logger
    from prmgym.rewards.scalar import load_prm
    from prmgym.rewards.train import CHECKPOINT, OfflinePRMTrainer, build_prm

    cfg, cls, options = resolve_run(args)
    ckpt = os.path.join(cfg.out, CHECKPOINT)
    if args.resume and not os.path.isdir(ckpt):
        raise ConfigError(f"--resume but no checkpoint at {ckpt}")
    torch.manual_seed(cfg.seed)
    from prmgym.models import TransformersPolicy

    from prmgym.models.optim import autocast, resolve_precision

    dtype, device = resolve_precision(cfg.dtype, cfg.device)
    policy = TransformersPolicy.from_pretrained(cfg.policy, device=device, prompt_format=cfg.prompt_format)
    knobs = {"dtype": cfg.prm.get("dtype", dtype), "device": str(device)}  # the PRM's precision and place
    targets = None
    if cls.data_source == "targets":
        from prmgym.rewards.value import load_value_targets

        try:
            targets = load_value_targets(cfg.targets)
        except ValueError as e:  # a bad line in the user's file: a usage error (exit 2)
            raise ConfigError(f"--targets: {e}") from None
    env_fn = None
    delimiter = "\n"
    if cls.data_source == "env":
        import gymnasium as gym

        from prmgym.envs import make

        kw = {"split": "train", **cfg.env_kwargs}
        env_fn = lambda: make(cfg.env, **kw)  # noqa: E731
        try:
            probe = env_fn()
        except (gym.error.Error, TypeError) as e:  # an unknown id or keyword (the message lists the valid ones)
            raise ConfigError(f"cannot make environment {cfg.env!r}: {e}") from None
        delimiter = getattr(probe.unwrapped, "delimiter", "\n")
        probe.close()
    if args.resume:
        prm = load_prm(ckpt, resume=True, **knobs)
        if prm.kind != cfg.kind:
            raise ConfigError(f"{ckpt} holds a {prm.kind!r} PRM, not {cfg.kind!r}")
        print(f"resuming {prm.kind} PRM from {ckpt} at update {prm.updates}")
    else:
        opts = {k: v for k, v in dataclasses.asdict(options).items() if k in cfg.prm}  # the ones set
        prm = build_prm(cfg.kind, cfg.backbone or policy, **{"delimiter": delimiter, "prompt_format": cfg.prompt_format, **opts, **knobs})
    formats = ("jsonl", "tensorboard") if cfg.quiet else ("stdout", "jsonl", "tensorboard")
    logger = Logger(cfg.out, formats=formats, hparams={**to_dict(cfg), "prm": prm.config()})
    trainer = OfflinePRMTrainer(prm, policy, env_fn, cfg.train_config(), targets=targets, run_dir=cfg.out, logger=logger)
    from prmgym.rewards.data_parallel import with_train_workers

    try:
        trainer = with_train_workers(trainer, cfg)  # distributed.train_workers: K data-parallel ranks
        with autocast(dtype, device):  # the policy's rollouts too
            trainer.train(progress=not cfg.quiet)
    finally:
        trainer.close()
        logger.close()
    print(f"trained {cfg.kind} PRM ({prm.updates} updates) saved to {cfg.out}")
    s = trainer.summary
    if s.get("best_score") is not None:  # eval_every: the saved PRM is the best held-out one
        why = "stopped early (patience)" if s["stopped_early"] else "ran all updates"
        print(f"held-out {s['validation']}: best score {s['best_score']:.4f} at update {s['best_update']} ({why}); "
              f"{', '.join(f'{k}={v:.4g}' for k, v in s['best_metrics'].items() if isinstance(v, float))}; "
              f"summary in {os.path.join(cfg.out, 'summary.json')}")
    return 0
