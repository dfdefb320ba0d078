"""SB3 PPO (token-level, `prmgym.integrations.sb3`) for benchmarks/learning_curves.py ``--algos sb3_ppo``.

`run_sb3_ppo` trains SB3's PPO with `LMActorCriticPolicy` from the same pretrained tiny policy
as GRPO, for a budget of *generated tokens* (SB3 timesteps: one timestep is one sampled
token), and measures held-out pass@1 with GRPO's own evaluation (`GRPOTrainer.evaluate`,
greedy, the same test tasks) at evenly spaced token counts. It also returns seconds per 1k
generated tokens. The episode limits mirror the GRPO trainer settings: ``max_steps`` steps of
at most ``max_new_tokens`` tokens each.
"""

from __future__ import annotations

import time

import numpy as np
import torch

#: PPO settings (SB3 names). One rollout = n_envs * n_steps tokens.
SB3_PPO = dict(n_envs=8, n_steps=128, batch_size=256, n_epochs=2, learning_rate=5e-5, gamma=1.0, gae_lambda=0.95,
               clip_range=0.2, ent_coef=0.0, vf_coef=0.5, max_grad_norm=1.0, target_kl=0.05)


def grpo_tokens(hist: list[dict]) -> int:
    """Generated tokens of a GRPO run from its step metrics."""
    return int(sum(m.get("budget/generated", 0.0) for m in hist))


def _evaluator(env_id: str, policy, trainer_kw: dict, seed: int):
    """A GRPOTrainer over ``policy`` used only for its `pass_at_1` (the same held-out protocol as GRPO)."""
    from prmgym.agents import GRPOConfig, GRPOTrainer
    from prmgym.agents.grpo import _env_factory
    from prmgym.config import from_dict

    cfg = from_dict(GRPOConfig, {**trainer_kw, "seed": seed})
    return GRPOTrainer(policy, env_id, cfg, env_kwargs={"split": "train"},
                       eval_env=_env_factory(env_id, {"split": "test"}))


def run_sb3_ppo(env_id: str, policy_dir: str, seed: int, token_budget: int, n_evals: int, eval_tasks: int,
                trainer_kw: dict, ppo_kw: dict | None = None, reuse_past: bool = True) -> dict:
    """Train SB3 PPO for ``token_budget`` generated tokens; pass@1 at ``n_evals`` + 1 points."""
    from stable_baselines3.common.env_util import make_vec_env
    from stable_baselines3.common.vec_env import DummyVecEnv

    from prmgym.integrations.sb3 import token_env_fn
    from prmgym.integrations.sb3_policy import make_ppo
    from prmgym.models import TransformersPolicy

    kw = {**SB3_PPO, **(ppo_kw or {})}
    n_envs = kw.pop("n_envs")
    max_steps, max_new = int(trainer_kw["max_steps"]), int(trainer_kw["max_new_tokens"])
    make = token_env_fn(env_id, policy_dir, {"split": "train", "max_steps": max_steps},
                        max_length=min(512, 128 + max_steps * max_new), max_chunk_tokens=max_new)
    venv = make_vec_env(make, n_envs=n_envs, seed=seed, vec_env_cls=DummyVecEnv)
    torch.manual_seed(seed)
    ppo = make_ppo(policy_dir, venv, reuse_past=reuse_past, seed=seed, verbose=0, **kw)
    base = TransformersPolicy.from_pretrained(policy_dir)
    policy = TransformersPolicy(ppo.policy.lm, base.tokenizer)  # shares the PPO policy's LM module
    ev = _evaluator(env_id, policy, trainer_kw, seed)
    ppo.policy.lm.eval()
    curve = [(0, ev.pass_at_1(eval_tasks))]
    per_rollout = n_envs * kw["n_steps"]
    marks = sorted({max(per_rollout, int(round(token_budget * (i + 1) / n_evals / per_rollout)) * per_rollout)
                    for i in range(n_evals)})
    seconds = 0.0
    rewards: list[float] = []
    for mark in marks:
        t0 = time.perf_counter()
        ppo.learn(mark - ppo.num_timesteps, reset_num_timesteps=False)
        seconds += time.perf_counter() - t0
        rewards += [float(np.mean([e["r"] for e in ppo.ep_info_buffer]))] if ppo.ep_info_buffer else []
        ppo.policy.lm.eval()
        curve.append((int(ppo.num_timesteps), ev.pass_at_1(eval_tasks)))
    ev.close()
    venv.close()
    tokens = int(ppo.num_timesteps)
    return {"curve": curve, "train_seconds": seconds, "train_rewards": rewards, "tokens_generated": tokens,
            "seconds_per_1k_tokens": seconds / max(tokens, 1) * 1000, "ppo": {**SB3_PPO, **(ppo_kw or {})},
            "past_stats": dict(ppo.policy.past_stats)}
