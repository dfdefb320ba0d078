"""``prmgym train-prm``: train a process reward / value model offline.

    prmgym train-prm --kind airl --policy runs/tiny-chain --env prmgym/ChainArithmetic-v0 --out runs/prm-airl --steps 100
    prmgym train-prm --kind value --policy runs/tiny-chain --targets runs/mcts/targets.jsonl --out runs/vm
    prmgym train-prm --kind airl ... --out runs/prm-airl --resume      # continue from runs/prm-airl/checkpoint

The PRM lands in ``--out`` (load it with ``prmgym.rewards.load_prm``); metrics go to
``--out/metrics.jsonl`` and TensorBoard (``tensorboard --logdir OUT``).
"""

from __future__ import annotations

import argparse
import os
import sys

from prmgym.config import ConfigError, add_env_arg, apply_overrides

KINDS = ("airl", "repirl", "orm", "mc", "value", "implicit")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--kind", required=True, choices=KINDS, help="which PRM to train")
    p.add_argument("--policy", required=True, help="policy directory (save_pretrained): rollouts and log-probs")
    p.add_argument("--env", default=None, help="Gymnasium id, e.g. prmgym/ChainArithmetic-v0 (not needed for --kind value)")
    add_env_arg(p)
    p.add_argument("--out", required=True, help="run directory: the trained PRM, checkpoint/, logs")
    p.add_argument("--backbone", default=None, help="causal LM directory for the PRM body (default: the policy)")
    p.add_argument("--targets", default=None, help="value-targets JSONL (kind value; format in docs/rewards.md)")
    p.add_argument("--steps", type=int, default=100, help="PRM updates (total, counting resumed ones)")
    p.add_argument("--tasks-per-step", type=int, default=8)
    p.add_argument("--rollouts-per-task", type=int, default=4)
    p.add_argument("--mc-rollouts", type=int, default=4, help="MC-PRM completions per step prefix")
    p.add_argument("--mc-labels", choices=("hard", "soft"), default="soft")
    p.add_argument("--batch-size", type=int, default=32, help="value model: targets per update")
    p.add_argument("--lr", type=float, default=None, help="learning rate (default: 1e-5 for airl, 1e-4 for the others; "
                   "see prmgym.rewards.train.OFFLINE_LR)")
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.add_argument("--max-steps", type=int, default=12)
    p.add_argument("--no-expert", action="store_true", help="do not add the tasks' expert solutions as positives")
    p.add_argument("--airl-negatives", choices=("rollouts", "prefixes", "both"), default=None,
                   help="AIRL: the policy steps it learns against: whole rollouts, steps proposed at expert prefixes, "
                        "or both (default: PRMTrainConfig's; docs/rewards.md)")
    p.add_argument("--proposals-per-prefix", type=int, default=None, help="AIRL with prefixes/both: samples per expert prefix")
    p.add_argument("--freeze-backbone", action="store_true", help="train only the head")
    p.add_argument("--search-score", choices=("g", "f"), default="g", help="AIRL: what score_steps returns")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--save-every", type=int, default=0)
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint")
    p.add_argument("--quiet", action="store_true", help="no stdout metric tables")


def run(args: argparse.Namespace) -> int:
    import torch

    from prmgym.logger import Logger
    from prmgym.rewards.scalar import load_prm
    from prmgym.rewards.train import CHECKPOINT, OfflinePRMTrainer, PRMTrainConfig, build_prm, offline_lr

    if args.kind != "value" and not args.env:
        print("prmgym train-prm: --env is required for --kind " + args.kind, file=sys.stderr)
        return 2
    if args.kind == "value" and not args.targets:
        print("prmgym train-prm: --kind value trains from --targets FILE (JSONL, see docs/rewards.md)", file=sys.stderr)
        return 2
    airl_opts = {k: getattr(args, k) for k in ("airl_negatives", "proposals_per_prefix") if getattr(args, k) is not None}
    if airl_opts and args.kind != "airl":
        flags = " and ".join("--" + k.replace("_", "-") for k in airl_opts)
        print(f"prmgym train-prm: {flags} only apply to --kind airl, not {args.kind}; leave them out", file=sys.stderr)
        return 2
    try:
        cfg = PRMTrainConfig(
            kind=args.kind, steps=args.steps, tasks_per_step=args.tasks_per_step, rollouts_per_task=args.rollouts_per_task,
            use_expert=not args.no_expert, mc_rollouts=args.mc_rollouts, mc_labels=args.mc_labels,
            temperature=args.temperature, max_new_tokens=args.max_new_tokens, max_steps=args.max_steps,
            batch_size=args.batch_size, seed=args.seed, save_every=args.save_every,
            **airl_opts,
        )
    except ValueError as e:
        print(f"prmgym train-prm: {e}", file=sys.stderr)
        return 2
    ckpt = os.path.join(args.out, CHECKPOINT)
    if args.resume and not os.path.isdir(ckpt):
        print(f"prmgym train-prm: --resume but no checkpoint at {ckpt}", file=sys.stderr)
        return 2
    torch.manual_seed(args.seed)
    from prmgym.models import TransformersPolicy

    policy = TransformersPolicy.from_pretrained(args.policy)
    targets = None
    if args.kind == "value":
        from prmgym.rewards.value import load_value_targets

        try:
            targets = load_value_targets(args.targets)
        except ValueError as e:  # a bad line in the user's file: a usage error (exit 2)
            raise ConfigError(f"--targets: {e}") from None
    env_fn = None
    delimiter = "\n"
    if args.env:
        import gymnasium as gym

        import prmgym  # noqa: F401  (registers the environments)

        kw = {"split": "train", **apply_overrides({}, args.env_arg, flag="--env-arg")}
        env_fn = lambda: gym.make(args.env, **kw)  # noqa: E731
        try:
            probe = env_fn()
        except gym.error.Error as e:
            print(f"prmgym train-prm: cannot make environment {args.env!r}: {e} (list them with 'prmgym envs')", file=sys.stderr)
            return 2
        delimiter = getattr(probe.unwrapped, "delimiter", "\n")
        probe.close()
    if args.resume:
        prm = load_prm(ckpt, resume=True)
        if prm.kind != args.kind:
            print(f"prmgym train-prm: {ckpt} holds a {prm.kind!r} PRM, not {args.kind!r}", file=sys.stderr)
            return 2
        print(f"resuming {prm.kind} PRM from {ckpt} at update {prm.updates}")
    else:
        opts = {**offline_lr(args.kind, args.lr), "delimiter": delimiter, "train_backbone": not args.freeze_backbone}
        if args.kind == "airl":
            opts["search_score"] = args.search_score
        prm = build_prm(args.kind, args.backbone or policy, **opts)
    formats = ("jsonl", "tensorboard") if args.quiet else ("stdout", "jsonl", "tensorboard")
    logger = Logger(args.out, formats=formats, hparams={"kind": args.kind, "policy": args.policy, "env": args.env, **vars(cfg)})
    trainer = OfflinePRMTrainer(prm, policy, env_fn, cfg, targets=targets, run_dir=args.out, logger=logger)
    try:
        trainer.train()
    finally:
        trainer.close()
        logger.close()
    print(f"trained {args.kind} PRM ({prm.updates} updates) saved to {args.out}")
    return 0
