"""What reusing past key/values saves in SB3 PPO, and what SB3's API makes cost the full prefix.

One PPO setup (`prmgym.integrations.sb3`, the pretrained tiny policy, ChainArithmetic or
Countdown), timed in the same run, alternating which goes first:

* **rollout** (``collect_rollouts``): seconds per 1k generated tokens with ``reuse_past`` on
  (each env row runs only its new token when it extends its cached row) and off (every step
  runs the whole padded batch of prefixes);
* **update** (``train``): seconds per 1k tokens of PPO's update, where SB3 hands the policy
  shuffled single (observation, action) pairs, so every token's log-prob and value cost a
  forward and backward pass over its whole prefix (``reuse_past`` has no effect there).

Also prints the mean prefix length (the positions a full pass computes per token, against 1
for an incremental one) and the share of incremental calls.

    python benchmarks/sb3_past_reuse.py --env chain --repeats 3
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np
import torch

ENVS = {"chain": "prmgym/ChainArithmetic-v0", "countdown": "prmgym/Countdown-v0"}


def _timed(ppo, times: dict) -> None:
    for name, key in (("collect_rollouts", "rollout"), ("train", "update")):
        orig = getattr(ppo, name)

        def wrapper(*a, _orig=orig, _key=key, **k):
            t = time.perf_counter()
            out = _orig(*a, **k)
            times[_key] += time.perf_counter() - t
            return out

        setattr(ppo, name, wrapper)


def measure(env_id: str, model: str, reuse: bool, updates: int, n_envs: int, n_steps: int, seed: int) -> dict:
    from stable_baselines3.common.env_util import make_vec_env

    from prmgym.integrations.sb3 import token_env_fn
    from prmgym.integrations.sb3_policy import make_ppo

    venv = make_vec_env(token_env_fn(env_id, model, {"split": "train", "max_steps": 8}, max_length=384, max_chunk_tokens=32),
                        n_envs=n_envs, seed=seed)
    ppo = make_ppo(model, venv, reuse_past=reuse, seed=seed, n_steps=n_steps, batch_size=min(256, n_envs * n_steps), n_epochs=2,
                   learning_rate=5e-5, gamma=1.0, target_kl=None)
    times = {"rollout": 0.0, "update": 0.0}
    _timed(ppo, times)
    ppo.learn(updates * n_envs * n_steps)
    lengths = ppo.rollout_buffer.observations["length"].reshape(-1)
    tokens = ppo.num_timesteps
    venv.close()
    stats = ppo.policy.past_stats
    calls = stats["incremental"] + stats["full"]
    return {"rollout_s_per_1k": times["rollout"] / tokens * 1000, "update_s_per_1k": times["update"] / tokens * 1000,
            "mean_prefix": float(np.mean(lengths)), "incremental_share": stats["incremental"] / calls if calls else 0.0}


def measure_grpo(env_id: str, model: str, steps: int, seed: int) -> float:
    """GRPO's training seconds per 1k generated tokens (learning_curves.py's trainer settings)."""
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from learning_curves import TRAINER

    from prmgym.agents import GRPOConfig, GRPOTrainer
    from prmgym.config import from_dict
    from prmgym.models import TransformersPolicy

    tr = GRPOTrainer(TransformersPolicy.from_pretrained(model), env_id, from_dict(GRPOConfig, {**TRAINER, "seed": seed}),
                     env_kwargs={"split": "train"})
    t = time.perf_counter()
    hist = tr.train(steps)
    seconds = time.perf_counter() - t
    tr.close()
    return seconds / sum(m["budget/generated"] for m in hist) * 1000


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--env", default="chain", choices=list(ENVS))
    p.add_argument("--model", default=None, help="local HF model directory (default: the cached tiny SFT policy)")
    p.add_argument("--updates", type=int, default=3)
    p.add_argument("--n-envs", type=int, default=8)
    p.add_argument("--n-steps", type=int, default=128)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--grpo-steps", type=int, default=2, help="GRPO steps timed per repeat, for seconds per 1k tokens (0: skip)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    model = args.model
    if model is None:
        from prmgym.recipes.tiny import pretrain

        model = pretrain(ENVS[args.env], progress=False)
    rows = {True: [], False: []}
    grpo = []
    for r in range(args.repeats):
        for reuse in ((True, False) if r % 2 == 0 else (False, True)):
            m = measure(ENVS[args.env], model, reuse, args.updates, args.n_envs, args.n_steps, seed=r)
            rows[reuse].append(m)
            print(f"repeat {r} reuse_past={reuse}: " + ", ".join(f"{k} {v:.3f}" for k, v in m.items()), flush=True)
        if args.grpo_steps:
            grpo.append(measure_grpo(ENVS[args.env], model, args.grpo_steps, seed=r))
            print(f"repeat {r} grpo: {grpo[-1]:.3f} s / 1k tokens", flush=True)

    def med(reuse, key):
        return float(np.median([m[key] for m in rows[reuse]]))

    print(f"\n{args.env}, {args.n_envs} envs x {args.n_steps} steps, {args.updates} updates, {args.repeats} repeats (medians):")
    print("| reuse_past | rollout s / 1k tokens | update s / 1k tokens | mean prefix (positions per full pass) | incremental calls |")
    print("| --- | --- | --- | --- | --- |")
    for reuse in (True, False):
        print(f"| {reuse} | {med(reuse, 'rollout_s_per_1k'):.2f} | {med(reuse, 'update_s_per_1k'):.2f} "
              f"| {med(reuse, 'mean_prefix'):.0f} | {med(reuse, 'incremental_share'):.0%} |")
    if grpo:
        sb3 = med(True, "rollout_s_per_1k") + med(True, "update_s_per_1k")
        print(f"GRPO (same run, {args.grpo_steps} steps x {len(grpo)}): {float(np.median(grpo)):.2f} s / 1k tokens; "
              f"SB3 PPO (reuse on) {sb3:.2f} s / 1k = {sb3 / float(np.median(grpo)):.2f}x GRPO's")
    print(f"rollout speed-up from reuse: {med(False, 'rollout_s_per_1k') / med(True, 'rollout_s_per_1k'):.2f}x; "
          f"update / rollout time (reuse on): {med(True, 'update_s_per_1k') / med(True, 'rollout_s_per_1k'):.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
