"""``prmgym train`` with ``algorithm: sb3_ppo``: stable-baselines3's PPO over `TokenEnv`.

The run directory gets ``config.yaml``, ``tb/`` (SB3's own logger, TensorBoard format),
``checkpoints/ppo_<timesteps>_steps.zip`` (SB3's ``CheckpointCallback``; each zip loads with
``PPO.load``), ``policy/`` (the trained LM and tokenizer as a Hugging Face directory, for
evaluation and search) and ``summary.json``. ``steps`` counts PPO updates: each one follows a
rollout of ``n_envs * n_steps`` generated tokens.

``--resume RUN_DIR`` loads the newest checkpoint zip (weights, Adam state, timestep count) and
continues to ``steps``; the episodes in flight when it was written restart from a reset, and
the sampling RNG is seeded again (SB3 does not save RNG states), so a resumed run continues
the same training but does not replay the same samples.
"""

from __future__ import annotations

import json
import os
import re
import sys
from dataclasses import dataclass

from prmgym.config import help_field as _f

CHECKPOINT = re.compile(r"^ppo_(\d+)_steps\.zip$")


@dataclass
class SB3PPOConfig:
    """The ``trainer`` section of an ``algorithm: sb3_ppo`` run (SB3 PPO names where they exist)."""

    n_envs: int = _f(8, "parallel TokenEnvs (one token each per rollout step)")
    n_steps: int = _f(128, "rollout steps per env per update (tokens per update = n_envs * n_steps)")
    batch_size: int = _f(256, "PPO minibatch size (tokens)")
    n_epochs: int = _f(2, "passes over each rollout")
    learning_rate: float = _f(5e-5, "Adam learning rate (LM and value head)")
    gamma: float = _f(1.0, "discount per token")
    gae_lambda: float = _f(0.95, "GAE lambda")
    clip_range: float = _f(0.2, "PPO clip")
    ent_coef: float = _f(0.0, "entropy bonus")
    vf_coef: float = _f(0.5, "value loss weight")
    max_grad_norm: float = _f(1.0, "gradient clipping")
    target_kl: float | None = _f(0.05, "stop an update's epochs early above this KL (None: never)")
    max_length: int = _f(320, "TokenEnv observation length (prompt + generated tokens; <= the model's positions)")
    max_chunk_tokens: int = _f(32, "a step longer than this many tokens is handed to the env as is")
    max_steps: int = _f(8, "env steps per episode (the env's max_steps)")
    vec_env: str = _f("dummy", "dummy (one process) | subproc (one process per env)")
    reuse_past: bool = _f(True, "reuse each env's key/value cache during rollouts")
    checkpoint_every: int = _f(10, "updates between checkpoints")
    seed: int = _f(0, "SB3 seed (envs, sampling, value head)")

    def __post_init__(self) -> None:
        for name in ("n_envs", "n_steps", "batch_size", "n_epochs", "max_length", "max_chunk_tokens", "max_steps", "checkpoint_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"trainer.{name} must be >= 1, got {getattr(self, name)}")
        if self.vec_env not in ("dummy", "subproc"):
            raise ValueError(f"trainer.vec_env must be 'dummy' or 'subproc', got {self.vec_env!r}")


def latest_checkpoint(run_dir: str) -> str | None:
    """The newest ``checkpoints/ppo_<timesteps>_steps.zip`` of a run, or None."""
    d = os.path.join(run_dir, "checkpoints")
    found = [(int(m.group(1)), f) for f in (os.listdir(d) if os.path.isdir(d) else []) if (m := CHECKPOINT.match(f))]
    return os.path.join(d, max(found)[1]) if found else None


def model_dir(cfg) -> str:
    """The local model directory the run starts from (``tiny``: pretrained for the env, cached)."""
    if cfg.model != "tiny":
        return cfg.model
    from prmgym.recipes.tiny import pretrain

    return pretrain(cfg.env, progress=False, **cfg.model_kwargs)


def _vec_env(cfg, tcfg: SB3PPOConfig, path: str):
    from stable_baselines3.common.env_util import make_vec_env
    from stable_baselines3.common.vec_env import DummyVecEnv, SubprocVecEnv

    from prmgym.integrations.sb3 import token_env_fn

    make = token_env_fn(cfg.env, path, {"split": "train", "max_steps": tcfg.max_steps, **cfg.env_kwargs},
                        max_length=tcfg.max_length, max_chunk_tokens=tcfg.max_chunk_tokens)
    cls = SubprocVecEnv if tcfg.vec_env == "subproc" else DummyVecEnv
    return make_vec_env(make, n_envs=tcfg.n_envs, seed=tcfg.seed, vec_env_cls=cls)


def _pass_at_1(cfg, path: str, tcfg: SB3PPOConfig) -> float:
    from prmgym.models import TransformersPolicy
    from prmgym.models.optim import resolve_device
    from prmgym.envs.episodes import evaluate_policy

    env_kwargs = {**cfg.env_kwargs, "max_steps": tcfg.max_steps}
    split = {**cfg.env_kwargs, **cfg.eval_env_kwargs}.get("split", "test")
    env_kwargs.pop("split", None)
    policy = TransformersPolicy.from_pretrained(path, device=resolve_device(cfg.device))  # "auto": cuda if visible
    r = evaluate_policy(policy, cfg.env, n_tasks=cfg.eval_tasks, split=split, env_kwargs=env_kwargs,
                        max_new_tokens=tcfg.max_chunk_tokens, max_steps=tcfg.max_steps)
    return r["pass@1"]


def train_sb3(cfg, resume: bool = False, progress: bool = True) -> int:
    """Run (or resume) an ``algorithm: sb3_ppo`` config; returns the process exit code."""
    from stable_baselines3 import PPO
    from stable_baselines3.common.callbacks import CheckpointCallback
    from stable_baselines3.common.logger import configure

    from prmgym.integrations.sb3_policy import export_lm, make_ppo
    from prmgym.models.optim import resolve_device
    from prmgym.recipes.train import save_run_config

    def fail(msg: str) -> int:
        print(f"prmgym train: {msg}", file=sys.stderr)
        return 2

    if cfg.reward != "none":
        return fail(f"algorithm sb3_ppo takes reward: none (got {cfg.reward!r}); a learned PRM must be trained alongside "
                    "the policy, which the SB3 path does not do. Use GRPO for airl/repirl, or TokenEnv(prm=...) from Python with a trained PRM")
    tcfg = cfg.trainer_config()
    ckpt = latest_checkpoint(cfg.run_dir)
    if resume and ckpt is None:
        return fail(f"--resume {cfg.run_dir!r} has no checkpoint yet; start it again with --config")
    if not resume and ckpt is not None:
        return fail(f"{cfg.run_dir!r} already holds a run; use --resume {cfg.run_dir} or another run_dir (--set run_dir=...)")
    save_run_config(cfg, cfg.run_dir)
    path = model_dir(cfg)
    summary_path = os.path.join(cfg.run_dir, "summary.json")
    summary = json.load(open(summary_path)) if (resume and os.path.exists(summary_path)) else {}
    venv = _vec_env(cfg, tcfg, path)
    try:
        device = resolve_device(cfg.device)  # "auto" (the run config's default): cuda if visible, else cpu
        if ckpt is not None:
            model = PPO.load(ckpt, env=venv, device=device)
            print(f"resumed from {ckpt} ({model.num_timesteps} timesteps)", file=sys.stderr)
        else:
            kw = {k: getattr(tcfg, k) for k in ("n_steps", "batch_size", "n_epochs", "learning_rate", "gamma", "gae_lambda",
                                                 "clip_range", "ent_coef", "vf_coef", "max_grad_norm", "target_kl")}
            model = make_ppo(path, venv, reuse_past=tcfg.reuse_past, seed=tcfg.seed, device=device, verbose=0, **kw)
            if cfg.eval_tasks:
                summary["pass@1_before"] = _pass_at_1(cfg, path, tcfg)
                print(f"held-out pass@1 before training: {summary['pass@1_before']:.3f}", file=sys.stderr)
        model.set_logger(configure(os.path.join(cfg.run_dir, "tb"), ["tensorboard"] + (["stdout"] if progress else [])))
        per_update = tcfg.n_envs * tcfg.n_steps
        total = cfg.steps * per_update
        ckpt_dir = os.path.join(cfg.run_dir, "checkpoints")
        callback = CheckpointCallback(save_freq=tcfg.checkpoint_every * tcfg.n_steps, save_path=ckpt_dir, name_prefix="ppo")
        try:
            model.learn(max(0, total - model.num_timesteps), callback=callback, reset_num_timesteps=False)
        except KeyboardInterrupt:
            model.save(os.path.join(ckpt_dir, f"ppo_{model.num_timesteps}_steps.zip"))
            print(f"interrupted at {model.num_timesteps} timesteps; resume with: prmgym train --resume {cfg.run_dir}", file=sys.stderr)
            return 130
        final = os.path.join(ckpt_dir, f"ppo_{model.num_timesteps}_steps.zip")
        model.save(final)
        policy_dir = export_lm(model, path, os.path.join(cfg.run_dir, "policy"))
        summary.update(steps=model.num_timesteps // per_update, timesteps=model.num_timesteps,
                       final_checkpoint=final, policy_dir=policy_dir)
        if cfg.eval_tasks:
            summary["pass@1_after"] = _pass_at_1(cfg, policy_dir, tcfg)
            print(f"held-out pass@1 after {summary['steps']} updates: {summary['pass@1_after']:.3f}", file=sys.stderr)
        with open(summary_path, "w") as f:
            json.dump(summary, f, indent=2)
        print(f"run directory: {cfg.run_dir} (tensorboard --logdir {cfg.run_dir})", file=sys.stderr)
        return 0
    finally:
        venv.close()
