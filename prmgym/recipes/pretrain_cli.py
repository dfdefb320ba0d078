"""``prmgym pretrain``: build and train the tiny character-level policy (cached).

    prmgym pretrain --env prmgym/ChainArithmetic-v0 --out runs/tiny
    prmgym pretrain --env prmgym/ChainArithmetic-v0 --out runs/tiny-weak --num-train-tasks 300
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import fields


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from prmgym.recipes.tiny import DEFAULT_ENV, PretrainConfig

    d = PretrainConfig()
    parser.add_argument("--env", default=DEFAULT_ENV, help=f"environment id with expert solutions (default {DEFAULT_ENV})")
    parser.add_argument("--out", default=None, help="output directory (default: $PRMGYM_CACHE/tiny/<env>-<hash>)")
    parser.add_argument("--env-kwargs", default="{}", help='JSON dict of prmgym.envs.make arguments, e.g. \'{"difficulty": 2}\'')
    parser.add_argument("--num-train-tasks", type=int, default=d.num_train_tasks,
                        help="expert traces to train on (fewer -> lower held-out pass@1; default %(default)s)")
    parser.add_argument("--steps", type=int, default=d.steps, help="optimizer steps: the main knob of held-out pass@1 (default %(default)s)")
    parser.add_argument("--corrupt-rate", type=float, default=d.corrupt_rate,
                        help="fraction of traces with one corrupted intermediate step (default %(default)s)")
    parser.add_argument("--batch-size", type=int, default=d.batch_size)
    parser.add_argument("--learning-rate", type=float, default=d.learning_rate)
    parser.add_argument("--n-layer", type=int, default=d.n_layer)
    parser.add_argument("--n-embd", type=int, default=d.n_embd)
    parser.add_argument("--n-head", type=int, default=d.n_head)
    parser.add_argument("--eval-tasks", type=int, default=d.eval_tasks,
                        help="held-out tasks scored greedily after training (0 skips; default %(default)s)")
    parser.add_argument("--seed", type=int, default=d.seed)
    from prmgym.config import add_precision_args

    add_precision_args(parser)  # --dtype (part of the cache key unless fp32), --device (not part of it)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads (default 1: fastest for this model size on a shared machine; 0 = torch default)")
    parser.add_argument("--force", action="store_true", help="retrain even if --out holds a model")
    parser.add_argument("--quiet", "--no-progress", dest="quiet", action="store_true",
                        help="no progress bar (--no-progress: the older spelling)")


def run(args: argparse.Namespace) -> int:
    from prmgym.recipes.tiny import MANIFEST, PretrainConfig, default_cache_dir, load_manifest, pretrain

    try:
        env_kwargs = json.loads(args.env_kwargs)
    except json.JSONDecodeError as e:
        print(f"prmgym pretrain: --env-kwargs is not valid JSON ({e}); example: '{{\"difficulty\": 2}}'", file=sys.stderr)
        return 2
    if not isinstance(env_kwargs, dict):
        print("prmgym pretrain: --env-kwargs must be a JSON object", file=sys.stderr)
        return 2
    names = {f.name for f in fields(PretrainConfig)}
    values = {k: v for k, v in vars(args).items() if k in names and k not in ("env_id", "env_kwargs", "dtype")}
    from prmgym.config import ConfigError
    from prmgym.models.optim import resolve_precision

    try:
        dtype, device = resolve_precision(args.dtype, args.device)
    except ConfigError as e:
        print(f"prmgym pretrain: {e}", file=sys.stderr)
        return 2
    values["dtype"] = dtype
    try:
        config = PretrainConfig(env_id=args.env, env_kwargs=env_kwargs, **values)
    except ValueError as e:
        print(f"prmgym pretrain: {e}", file=sys.stderr)
        return 2
    import os

    target = args.out or default_cache_dir(config)
    cached = False
    if not args.force and os.path.exists(os.path.join(target, MANIFEST)):
        cached = load_manifest(target).get("key") == config.cache_key()
    try:
        out = pretrain(args.env, args.out, config=config, force=args.force, progress=not args.quiet,
                       device=device, threads=args.threads or None)
    except (FileExistsError, ValueError) as e:
        print(f"prmgym pretrain: {e}", file=sys.stderr)
        return 2
    m = load_manifest(out)
    print(f"{'loaded cached' if cached else 'trained'} tiny policy: {out}")
    print(f"  parameters: {m['n_params']:,}   training examples: {m['n_examples']}   "
          f"train time: {m['train_seconds']:.1f}s wall, {m.get('train_cpu_seconds', float('nan')):.1f}s CPU")
    if m.get("eval"):
        e = m["eval"]
        print(f"  held-out pass@1 (greedy, {e['n_tasks']} {e['split']} tasks): {e['pass@1']:.3f}")
    print(f"  load it: TransformersPolicy.from_pretrained({out!r})")
    return 0
