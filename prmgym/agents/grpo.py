"""GRPO that learns by stepping reasoning environments. Read top to bottom:

1. `GRPOConfig` -- every knob, with help text and validation.
2. `GRPOTrainer.step` -- sample prompts, roll out G episodes each (`RolloutCollector`),
   score (outcome reward + optional process reward), compute advantages
   (`prmgym.agents.advantages`), then ``num_iterations`` passes of ``num_mini_batches``
   clipped-surrogate updates, then log / checkpoint / callbacks.
3. `save` / `load` -- resumable exactly: model, optimizer, Python/numpy/torch RNG, step,
   config.

>>> cfg = GRPOConfig(num_generations=4, batch_size=8)
>>> cfg.prompts_per_step
2
"""

from __future__ import annotations

import copy
import os
import time
from dataclasses import asdict, dataclass
from typing import Any, Callable, Sequence

import numpy as np
import torch

from prmgym.agents import advantages as A
from prmgym.agents.common import (
    POLICY_DIR,
    TRAINER_STATE,
    Callback,
    NonFiniteLossError,
    checkpoint_path,
    latest_checkpoint,
    load_model_weights,
    load_trainer_state,
    pack_trajectories,
    packed_logprobs,
    prune_checkpoints,
    rng_state,
    save_trainer_state,
    set_rng_state,
    write_checkpoint,
)
from prmgym.agents.rollout import Prompt, RolloutCollector, Trajectory
from prmgym.agents.sync import EngineSync
from prmgym.config import help_field
from prmgym.envs.episodes import evaluate_policy
from prmgym.models.lora import policy_parameters, reference_model
from prmgym.models.optim import OptimKnobs, Optimization, micro_batches, prepare_model


_f = help_field  # a dataclass field with help text (short name: the configs below use it on every line)

SAMPLINGS = ("static", "dynamic")

#: named settings of the GRPO family; a trainer section's ``preset: NAME`` starts from these
#: (`apply_preset`), and its own keys win.
PRESETS: dict[str, dict[str, Any]] = {
    # DAPO (Yu et al. 2025): clip-higher, token-level loss, dynamic sampling, overlong shaping, no KL
    "dapo": dict(epsilon_low=0.2, epsilon_high=0.28, loss_type="token_mean", sampling="dynamic",
                 overlong={}, beta=0.0),
    # GSPO (Zheng et al. 2025): sequence ratio, clipped as a whole in a narrow range, sequence-mean loss
    "gspo": dict(ratio="sequence", epsilon_low=3e-4, epsilon_high=4e-4, loss_type="seq_mean"),
    "rloo": dict(advantage="rloo"),
    "reinforce_pp": dict(advantage="reinforce_pp", reward_kl_coef=0.01, reward_kl_estimator="k1"),
}


def apply_preset(trainer: dict) -> dict:
    """``trainer`` with its ``preset: NAME`` key replaced by the preset's values (the
    section's own keys win over the preset's). Without a ``preset`` key: unchanged.

    >>> apply_preset({"preset": "gspo", "epsilon_high": 1e-3})["epsilon_high"], apply_preset({"lr": 1})
    (0.001, {'lr': 1})
    """
    if "preset" not in trainer:
        return dict(trainer)
    rest = {k: v for k, v in trainer.items() if k != "preset"}
    name = trainer["preset"]
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)} (or drop the preset key)")
    return {**copy.deepcopy(PRESETS[name]), **rest}


@dataclass
class GRPOConfig(OptimKnobs):
    """GRPO hyperparameters. One step = ``batch_size`` episodes = ``batch_size / num_generations``
    prompts x ``num_generations`` episodes, then ``num_iterations x num_mini_batches`` updates.
    The optimiser, precision and memory knobs (learning_rate, lr_schedule, warmup_steps,
    max_grad_norm, micro_batch_size, gradient_checkpointing, dtype, device) are `OptimKnobs`'."""

    num_generations: int = _f(8, "G: episodes per prompt (the group); >= 2")
    batch_size: int = _f(32, "episodes per step; a multiple of num_generations")
    num_iterations: int = _f(2, "passes over each batch (mu); > 1 makes the ratio leave 1 so clipping acts")
    num_mini_batches: int = _f(1, "optimizer steps per pass; the batch's groups are split this many ways")
    weight_decay: float = _f(0.0, "AdamW weight decay")
    adam_beta1: float = _f(0.9, "AdamW beta1")
    adam_beta2: float = _f(0.99, "AdamW beta2")
    epsilon_low: float = _f(0.2, "lower clip range: ratio >= 1 - epsilon_low")
    epsilon_high: float = _f(0.2, "upper clip range: ratio <= 1 + epsilon_high (DAPO clip-higher: 0.28)")
    beta: float = _f(0.0, "KL weight to the frozen initial policy (k3 estimator); 0 = no reference model")
    entropy_coef: float = _f(0.0, "entropy bonus: loss -= entropy_coef * mean token entropy (max-ent RL, e.g. with rePIRL)")
    loss_type: str = _f("token_mean", "token_mean (DAPO/TRL) | seq_mean (original GRPO) | dr_grpo (sum / constant)")
    scale_rewards: bool | None = _f(None, "divide advantages by the group std; None = yes except for loss_type dr_grpo")
    advantage_eps: float = _f(1e-4, "eps in (r - mean) / (std + eps)")
    max_completion_length: int | None = _f(None, "dr_grpo normalizer (tokens per episode); None = max_steps * max_new_tokens")
    max_new_tokens: int = _f(32, "token cap per step (one proposal)")
    max_steps: int = _f(16, "step cap per episode (the env's own limit usually ends it first)")
    temperature: float = _f(1.0, "sampling temperature for rollouts")
    top_p: float = _f(1.0, "nucleus sampling for rollouts")
    process_reward_weight: float = _f(0.0, "weight of the normalized per-step process reward added to the outcome advantage")
    process_advantage: str = _f("return_to_go", "return_to_go (sum of this and later steps) | step (this step only)")
    update_process_reward: bool = _f(True, "call process_reward.update(trajectories) each step if it has one (AIRL learns online)")
    seed: int = _f(0, "seed of every random choice of the trainer (tasks, sampling)")
    log_traces: int = _f(2, "sample traces written to the logs each logged step")
    save_every: int = _f(0, "checkpoint every K steps (0 = only when asked)")
    keep_checkpoints: int = _f(3, "checkpoints kept on disk (oldest deleted first)")
    eval_every: int = _f(0, "held-out pass@1 every K steps (0 = never); needs an eval env")
    eval_tasks: int = _f(32, "held-out tasks per evaluation (greedy, one episode each)")
    rollout_workers: int = _f(8, "threads for the sandboxed terminal steps of code envs")
    advantage: str = _f("grpo", "grpo (group mean/std; Dr. GRPO via loss_type) | rloo (leave-one-out) | reinforce_pp (global batch norm)")
    ratio: str = _f("token", "token (PPO/GRPO) | sequence (GSPO: length-normalised sequence ratio, clipped as a whole)")
    sampling: str = _f("static", "static | dynamic (DAPO: drop zero-spread groups, sample more prompts until the batch is full)")
    max_sampling_rounds: int = _f(4, "sampling: dynamic: cap on the extra generation rounds per step")
    overlong: dict | None = _f(None, "DAPO overlong shaping {max_length, cache_length, factor}; None = off")
    reward_kl_coef: float = _f(0.0, "reinforce_pp: beta of the token-level KL penalty in the reward (needs a reference model)")
    reward_kl_estimator: str = _f("k1", "reinforce_pp: KL estimator in the reward, k1 (logp - ref) | k2 ((logp - ref)^2 / 2)")

    def __post_init__(self) -> None:
        super().__post_init__()  # the OptimKnobs checks
        if self.num_generations < 2:
            raise ValueError(
                f"num_generations must be >= 2 (got {self.num_generations}): group-normalized advantages "
                "need at least two episodes per prompt; set num_generations: 4 or more"
            )
        if self.batch_size < self.num_generations or self.batch_size % self.num_generations:
            raise ValueError(
                f"batch_size ({self.batch_size}) must be a positive multiple of num_generations "
                f"({self.num_generations}); e.g. batch_size: {max(1, self.batch_size // self.num_generations) * self.num_generations}"
            )
        if self.epsilon_low <= 0 or self.epsilon_high <= 0:
            raise ValueError(
                f"clip ranges must be positive (got epsilon_low={self.epsilon_low}, epsilon_high={self.epsilon_high}); "
                "the usual values are 0.2 and 0.2 (or 0.28 for epsilon_high)"
            )
        if self.epsilon_low >= 1:
            raise ValueError(f"epsilon_low must be < 1 (the ratio is clipped to >= 1 - epsilon_low), got {self.epsilon_low}")
        if self.loss_type not in A.LOSS_TYPES:
            raise ValueError(f"unknown loss_type {self.loss_type!r}; choose one of {', '.join(A.LOSS_TYPES)}")
        if self.process_advantage not in A.PROCESS_MODES:
            raise ValueError(f"unknown process_advantage {self.process_advantage!r}; choose one of {', '.join(A.PROCESS_MODES)}")
        for name in ("num_iterations", "num_mini_batches", "max_new_tokens", "max_steps"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.num_mini_batches > self.prompts_per_step:
            raise ValueError(
                f"num_mini_batches ({self.num_mini_batches}) cannot exceed the prompts per step "
                f"({self.prompts_per_step} = batch_size / num_generations); mini-batches split whole groups"
            )
        if self.beta < 0 or self.temperature < 0 or self.process_reward_weight < 0 or self.entropy_coef < 0:
            raise ValueError("beta, temperature, process_reward_weight and entropy_coef must be >= 0")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        self._check_family()

    def _check_family(self) -> None:
        """The GRPO-family options (advantage, ratio, sampling, overlong, reward KL) and their combinations."""
        for name, valid in (("advantage", A.ADVANTAGES), ("ratio", A.RATIOS), ("sampling", SAMPLINGS),
                            ("reward_kl_estimator", A.KL_ESTIMATORS)):
            if getattr(self, name) not in valid:
                raise ValueError(f"unknown {name} {getattr(self, name)!r}; choose one of {', '.join(valid)}")
        if self.advantage != "grpo" and self.scale_rewards is not None:
            how = "RLOO never divides by the std" if self.advantage == "rloo" else "REINFORCE++ normalises over the whole batch"
            raise ValueError(
                f"scale_rewards={self.scale_rewards} has no meaning with advantage: {self.advantage} ({how}); "
                "remove scale_rewards, or use advantage: grpo for group std scaling"
            )
        if self.reward_kl_coef < 0:
            raise ValueError(f"reward_kl_coef must be >= 0, got {self.reward_kl_coef}")
        if self.reward_kl_coef > 0 and self.advantage != "reinforce_pp":
            raise ValueError(
                f"reward_kl_coef={self.reward_kl_coef} puts a KL penalty into the token rewards, which only "
                "advantage: reinforce_pp uses; set advantage: reinforce_pp, or use beta (the KL loss term) instead"
            )
        if self.max_sampling_rounds < 0:
            raise ValueError(f"max_sampling_rounds must be >= 0 (0 = no refill), got {self.max_sampling_rounds}")
        self.overlong_params  # validates the overlong section

    @property
    def overlong_params(self) -> tuple[int, int, float] | None:
        """``(L_max, L_cache, factor)`` of the overlong shaping, defaults filled in; None if off.
        ``max_length`` defaults to `completion_cap`, ``cache_length`` to a fifth of it (DAPO:
        4096 of 20480), ``factor`` (weight of the penalty) to 1."""
        if self.overlong is None:
            return None
        if not isinstance(self.overlong, dict):
            raise ValueError(f"overlong must be a mapping {{max_length, cache_length, factor}} or null, got {self.overlong!r}")
        unknown = set(self.overlong) - {"max_length", "cache_length", "factor"}
        if unknown:
            raise ValueError(f"unknown overlong keys {sorted(unknown)}; valid: max_length, cache_length, factor")
        L = self.overlong.get("max_length") or self.completion_cap
        C = self.overlong.get("cache_length") or max(1, L // 5)
        f = float(self.overlong.get("factor", 1.0))
        if not 0 < C <= L:
            raise ValueError(f"overlong needs 0 < cache_length <= max_length, got cache_length={C}, max_length={L}")
        if L - C >= self.completion_cap:
            raise ValueError(
                f"overlong shaping can never act: episodes stop at {self.completion_cap} generated tokens "
                f"(max_steps x max_new_tokens or max_completion_length) and the penalty starts above "
                f"max_length - cache_length = {L - C}; lower overlong.max_length or raise cache_length"
            )
        if f < 0:
            raise ValueError(f"overlong.factor must be >= 0, got {f}")
        return int(L), int(C), f

    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> "GRPOConfig":
        """A config from a named preset (`PRESETS`), with ``overrides`` on top."""
        return cls(**apply_preset({"preset": name, **overrides}))

    @property
    def prompts_per_step(self) -> int:
        return self.batch_size // self.num_generations

    @property
    def scale_std(self) -> bool:
        return (self.loss_type != "dr_grpo") if self.scale_rewards is None else bool(self.scale_rewards)

    @property
    def completion_cap(self) -> int:
        return self.max_completion_length or self.max_steps * self.max_new_tokens


class GRPOTrainer:
    """Group Relative Policy Optimization over a `ReasoningEnv`.

    Args:
        policy: a `TransformersPolicy` (anything with ``propose``, ``encode``, ``model``,
            ``tokenizer`` and ``save``). Its model is trained in place.
        env: a Gymnasium id (``"prmgym/ChainArithmetic-v0"``) or a zero-argument factory.
        config: `GRPOConfig`.
        env_kwargs: passed to `prmgym.envs.make` when ``env`` is an id.
        eval_env: id or factory for held-out evaluation (default: ``env`` with ``split="test"``
            when ``env`` is an id).
        process_reward: optional dense reward: a `prmgym.rewards.ProcessRewardModel`
            (``score_steps``) or any object with
            ``step_rewards(prompts, step_lists, trajectories) -> list[list[float]]``.
        run_dir: where checkpoints go (and logs, unless ``logger`` is given).
        logger: a `prmgym.logger.Logger`; by default one writing JSONL + TensorBoard to
            ``run_dir`` (no logging if both are None).
        callbacks: `Callback` objects; ``_on_step`` returning False stops `train`.
    """

    algorithm = "grpo"

    def __init__(
        self,
        policy: Any,
        env: str | Callable[[], Any],
        config: GRPOConfig | None = None,
        env_kwargs: dict | None = None,
        eval_env: str | Callable[[], Any] | None = None,
        process_reward: Any = None,
        run_dir: str | None = None,
        logger: Any = None,
        callbacks: Sequence[Callback] = (),
    ) -> None:
        self.config = config or self._default_config()
        cfg = self.config
        self.policy = policy
        self.model: torch.nn.Module = policy.model
        self.device = prepare_model(policy, cfg)  # device, gradient checkpointing (prmgym.models.optim)
        self.engine_sync = EngineSync.attach(policy, self.model)  # a vLLM policy: rescore + weight sync (sync.py)
        self.env_fn = _env_factory(env, env_kwargs or {})
        if eval_env is None and isinstance(env, str):
            eval_env = _env_factory(env, {**(env_kwargs or {}), "split": "test"})
        self.eval_env_fn = _env_factory(eval_env, {}) if isinstance(eval_env, str) else eval_env
        self.collector = RolloutCollector(
            self.env_fn, policy, max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature,
            top_p=cfg.top_p, max_steps=cfg.max_steps, max_workers=cfg.rollout_workers,
        )
        self.process_reward = process_reward
        if process_reward is not None and not (hasattr(process_reward, "step_rewards") or hasattr(process_reward, "score_steps")):
            raise TypeError(
                "process_reward must be a ProcessRewardModel (score_steps) or have "
                "step_rewards(prompts, step_lists, trajectories); got " + type(process_reward).__name__
            )
        self.ref_model = None
        if cfg.beta > 0 or cfg.reward_kl_coef > 0:
            self.ref_model = reference_model(self.model)  # LoRA: the base with adapters off, no copy
        self.optim = Optimization(cfg, policy_parameters(self.model), self.device,
                                  betas=(cfg.adam_beta1, cfg.adam_beta2), weight_decay=cfg.weight_decay)
        self.optimizer = self.optim.optimizer
        self.rng = np.random.default_rng(cfg.seed)
        self.num_steps = 0
        self.run_dir = run_dir
        if logger is None and run_dir is not None:
            from prmgym.logger import Logger

            logger = Logger(run_dir, formats=("jsonl", "tensorboard"), hparams={"algorithm": self.algorithm, **asdict(cfg)})
        self.logger = logger
        self.callbacks = list(callbacks)
        for cb in self.callbacks:
            cb.init_callback(self)
        self.last_good_checkpoint: str | None = None
        self._last_trajectories: list[Trajectory] = []  # the last step's training episodes

    @staticmethod
    def _default_config() -> GRPOConfig:
        return GRPOConfig()

    # ------------------------------------------------------------------ 1. prompts + rollouts
    def sample_prompts(self) -> list[Prompt]:
        """Fresh tasks for this step (drawn by resetting the env with seeds from the trainer RNG)."""
        seed = int(self.rng.integers(2**31 - 1))
        return [Prompt(t) for t in self.collector.sample_tasks(self.config.prompts_per_step, seed)]

    def rollout(self, prompts: Sequence[Prompt]) -> tuple[list[Trajectory], dict]:
        seed = int(self.rng.integers(2**31 - 1))
        with self.optim.autocast():
            trajs, stats = self.collector.collect(prompts, self.config.num_generations, seed=seed)
        return trajs, asdict(stats)

    def select_groups(self, trajs: list[Trajectory]) -> tuple[list[Trajectory], dict]:
        """Hook for ReST-GRPO: which groups enter the update. GRPO keeps all."""
        return trajs, {}

    # ------------------------------------------------------------------ 2. advantages
    def shaped_rewards(self, trajs: Sequence[Trajectory]) -> tuple[torch.Tensor, dict]:
        """The outcome rewards the advantages use: the verifier's, plus ``factor`` x DAPO's
        overlong penalty of each episode's generated length when ``overlong`` is on."""
        rewards = torch.tensor([t.reward for t in trajs], dtype=torch.float32)  # (B,)
        ol = self.config.overlong_params
        if ol is None:
            return rewards, {}
        L, C, factor = ol
        pen = A.overlong_penalty(torch.tensor([t.num_tokens for t in trajs]), L, C)
        valid = torch.tensor([not t.masked for t in trajs])
        return rewards + factor * pen, {"overlong/penalty_mean": float(pen[valid].mean()) if bool(valid.any()) else 0.0,
                                        "overlong/penalized_frac": float((pen[valid] < 0).float().mean()) if bool(valid.any()) else 0.0}

    def compute_advantages(self, trajs: Sequence[Trajectory]) -> tuple[torch.Tensor, dict]:
        """Per-token advantages ``(B, T)``.

        ``advantage: grpo`` -- the group-normalized outcome advantage of the episode (RLOO:
        leave-one-out), plus ``process_reward_weight`` x the normalized process advantage of each
        token's step. ``advantage: reinforce_pp`` -- returns of the token rewards (outcome at
        the last token, ``- reward_kl_coef * KL_t`` at every token, ``process_reward_weight`` x
        each step's process reward at the step's last token), normalised over the whole batch."""
        cfg, G = self.config, self.config.num_generations
        rewards, info = self.shaped_rewards(trajs)
        valid = torch.tensor([not t.masked for t in trajs])
        adv, zero = A.group_advantages(rewards, G, eps=cfg.advantage_eps, scale_std=cfg.scale_std, valid=valid)
        info["zero_spread_frac"] = float(zero.float().mean()) if len(zero) else 0.0
        T = max((t.num_tokens for t in trajs), default=1) or 1
        use_prm = self.process_reward is not None and cfg.process_reward_weight > 0
        step_r = self.step_process_rewards(trajs) if use_prm else None
        if cfg.advantage == "reinforce_pp":
            tok_adv = self._reinforce_pp_advantages(trajs, rewards, step_r, T, info)
        else:
            if cfg.advantage == "rloo":
                adv = A.rloo_advantages(rewards, G, valid=valid)
            tok_adv = adv[:, None].expand(len(trajs), T).clone()  # (B, T)
            if use_prm:
                groups = [[step_r[g * G + k] if valid[g * G + k] else [] for k in range(G)] for g in range(len(trajs) // G)]
                proc = A.process_step_advantages(groups, eps=cfg.advantage_eps, mode=cfg.process_advantage, scale_std=cfg.scale_std)
                for b, t in enumerate(trajs):
                    per_step = proc[b // G][b % G]
                    for k, (s, e) in enumerate(t.step_bounds):
                        if k < len(per_step):
                            tok_adv[b, s:e] += cfg.process_reward_weight * per_step[k]
        if use_prm:
            flat = [x for r in step_r for x in r]
            info["process_reward_mean"] = float(np.mean(flat)) if flat else 0.0
        return tok_adv, info

    def _reinforce_pp_advantages(self, trajs, rewards, step_r, T: int, info: dict) -> torch.Tensor:
        """Token rewards -> `A.reinforce_pp_advantages` (returns, global batch normalisation)."""
        cfg = self.config
        B = len(trajs)
        tok_r = torch.zeros(B, T)
        mask = torch.zeros(B, T, dtype=torch.bool)
        for b, t in enumerate(trajs):
            n = t.num_tokens
            if n == 0 or t.masked:
                continue
            mask[b, :n] = True
            tok_r[b, n - 1] = rewards[b]
            if step_r is not None:
                for k, (s, e) in enumerate(t.step_bounds):
                    if k < len(step_r[b]) and e > s:
                        tok_r[b, e - 1] += cfg.process_reward_weight * step_r[b][k]
        if cfg.reward_kl_coef > 0:
            packed = pack_trajectories(list(trajs), self.policy.encode, self.policy.tokenizer.pad_token_id)
            with torch.no_grad():
                ref, _ = packed_logprobs(self.ref_model, packed)  # (B, T')
            old = torch.zeros(B, T)
            for b, t in enumerate(trajs):
                old[b, :t.num_tokens] = torch.tensor(t.old_logprobs, dtype=torch.float32)
            ref = ref[:, :T] if ref.shape[1] >= T else torch.nn.functional.pad(ref, (0, T - ref.shape[1]))
            kl = A.kl_penalty(old, ref, cfg.reward_kl_estimator)
            tok_r = tok_r - cfg.reward_kl_coef * kl * mask
            info["reward_kl"] = A.masked_mean(kl, mask)
        return A.reinforce_pp_advantages(tok_r, mask)

    def step_process_rewards(self, trajs: Sequence[Trajectory]) -> list[list[float]]:
        """One process reward per *generated* step of each trajectory.

        The reward sees the whole trace (task prompt + prefix steps + generated steps) and
        must return one score per step of it; the prefix steps' scores are dropped."""
        prompts = [t.task.prompt for t in trajs]
        steps = [t.all_steps for t in trajs]
        pr = self.process_reward
        scores = pr.step_rewards(prompts, steps, list(trajs)) if hasattr(pr, "step_rewards") else pr.score_steps(prompts, steps)
        out = []
        for t, s, st in zip(trajs, scores, steps):
            if len(s) != len(st):
                raise ValueError(
                    f"process reward returned {len(s)} scores for a trace of {len(st)} steps; it must return one per step"
                )
            out.append([float(x) for x in s[len(t.prompt.prefix):]])
        return out

    # ------------------------------------------------------------------ 3. the update
    def _loss(self, mb: list[Trajectory], adv: torch.Tensor) -> tuple[torch.Tensor, dict]:
        """Clipped surrogate (+ beta * k3 KL) on one mini-batch, aggregated by ``loss_type``."""
        cfg = self.config
        packed = pack_trajectories(mb, self.policy.encode, self.policy.tokenizer.pad_token_id)
        logp, ent = packed_logprobs(self.model, packed, with_entropy=True, entropy_grad=cfg.entropy_coef > 0)  # (B, T)
        B, T = logp.shape
        old = torch.zeros(B, T)
        mask = torch.zeros(B, T, dtype=torch.bool)
        for b, t in enumerate(mb):
            n = t.num_tokens
            old[b, :n] = torch.tensor(t.old_logprobs, dtype=torch.float32)
            mask[b, :n] = not t.masked
        a = adv[:, :T] if adv.shape[1] >= T else torch.nn.functional.pad(adv, (0, T - adv.shape[1]))
        if cfg.ratio == "sequence":
            out = A.sequence_clipped_surrogate(logp, old, a, mask, cfg.epsilon_low, cfg.epsilon_high)
        else:
            out = A.clipped_surrogate(logp, old, a, cfg.epsilon_low, cfg.epsilon_high)
        per_token = out.loss
        kl = torch.zeros_like(logp)
        if self.ref_model is not None:
            with torch.no_grad():
                ref, _ = packed_logprobs(self.ref_model, packed)
            kl = A.k3_kl(logp, ref)
            per_token = per_token + cfg.beta * kl
        if cfg.entropy_coef > 0:
            per_token = per_token - cfg.entropy_coef * ent
        loss = A.aggregate_loss(per_token, mask, cfg.loss_type, cfg.completion_cap)
        m = {
            "clip_low_frac": A.masked_mean(out.clipped_low, mask),
            "clip_high_frac": A.masked_mean(out.clipped_high, mask),
            "clip_frac": A.masked_mean(out.clipped_low | out.clipped_high, mask),
            "ratio_mean": A.masked_mean(out.ratio.detach(), mask),
            "abs_log_ratio": A.masked_mean((logp.detach() - old).abs(), mask),
            "kl": A.masked_mean(kl.detach(), mask),
            "entropy": A.masked_mean(ent.detach(), mask),
            "rows_per_step_frac": packed.rows_per_step / max(1, len(mb)),
        }
        return loss, m

    def update(self, trajs: list[Trajectory], tok_adv: torch.Tensor) -> dict:
        """``num_iterations`` passes; each shuffles the groups and takes ``num_mini_batches`` steps."""
        cfg, G = self.config, self.config.num_generations
        n_groups = len(trajs) // G
        logs: dict[str, list[float]] = {}
        first_ratio_gap = None
        self.model.train()
        try:
            for it in range(cfg.num_iterations):
                order = self.rng.permutation(n_groups)
                for chunk in np.array_split(order, min(cfg.num_mini_batches, max(n_groups, 1))):
                    idx = [g * G + k for g in chunk for k in range(G)]
                    m = self.optimizer_update([trajs[i] for i in idx], tok_adv[idx], it)
                    if first_ratio_gap is None:
                        first_ratio_gap = m["abs_log_ratio"]  # before any update: sampling vs training layout
                    for k, v in m.items():
                        logs.setdefault(k, []).append(v)
        finally:
            self.model.eval()
        out = {k: float(np.mean(v)) for k, v in logs.items()}
        out["optimizer_steps"] = float(len(logs.get("loss", [])))
        out["first_ratio_gap"] = float(first_ratio_gap or 0.0)
        return out

    def optimizer_update(self, mb: list[Trajectory], adv: torch.Tensor, it: int = 0) -> dict:
        """One optimizer update on mini-batch ``mb``: forward/backward per micro-batch of
        ``micro_batch_size`` episodes, each loss weighted by its share of the ``loss_type``
        normaliser, so the gradient is the whole mini-batch's (`prmgym.models.optim.micro_batches`)."""
        cfg, out = self.config, {}
        weights = A.normaliser_weights([0 if t.masked else t.num_tokens for t in mb], cfg.loss_type)
        for micro, share in self._micro_batches(weights):
            with self.optim.autocast():
                loss, m = self._loss([mb[i] for i in micro], adv[micro])
            if not torch.isfinite(loss):
                self.optim.zero_grad()
                raise NonFiniteLossError(f"loss is {loss.item()} at step {self.num_steps + 1}, pass {it + 1}")
            self.optim.backward(loss * share)
            for k, v in {**m, "loss": float(loss.detach())}.items():
                out[k] = out.get(k, 0.0) + share * v
        out = self._reduce_gradients(out)  # data-parallel ranks sum gradients and metrics here
        info = self.optim.step()  # learning rate of the schedule, clipping (prmgym.models.optim)
        if info["skipped"] and self.optim.scaler is None:
            raise NonFiniteLossError(f"gradient norm is {info['grad_norm']} at step {self.num_steps + 1}, pass {it + 1}")
        return {**out, "grad_norm": info["grad_norm"], "lr": info["lr"]}

    def _micro_batches(self, weights: list) -> list:
        """This process's micro-batches of a mini-batch and their loss shares (all of them here;
        `prmgym.agents.data_parallel` takes every K-th)."""
        return micro_batches(weights, self.config.micro_batch_size)

    def _reduce_gradients(self, metrics: dict) -> dict:
        return metrics

    # ------------------------------------------------------------------ one step
    def step(self) -> dict:
        """Roll out, score, update once; returns the step's metrics (also logged)."""
        t0 = time.perf_counter()
        trajs, metrics = self.collect_batch()
        t1 = time.perf_counter()
        if trajs:
            if self.engine_sync:  # old log-probs from the torch model; engine-vs-torch mismatch logged
                metrics.update(self.engine_sync.rescore(trajs))
            tok_adv, adv_info = self.compute_advantages(trajs)
            metrics.update(adv_info)
            metrics.update(self.update(trajs, tok_adv))
            if self.engine_sync:
                metrics.update(self.engine_sync.push())  # the new weights into the engine
        if self.process_reward is not None and self.config.update_process_reward and hasattr(self.process_reward, "update"):
            prm = self.process_reward.update(trajs) or {}
            metrics.update({f"prm/{k}": v for k, v in prm.items() if isinstance(v, (int, float))})
        self.num_steps += 1
        metrics["time/rollout_s"] = t1 - t0
        metrics["time/update_s"] = time.perf_counter() - t1
        metrics["step"] = self.num_steps
        if self.config.eval_every and self.num_steps % self.config.eval_every == 0 and self.eval_env_fn is not None:
            metrics["eval/pass@1"] = self.pass_at_1(self.config.eval_tasks)
        self._log(metrics, trajs)
        self._last_trajectories = trajs
        return metrics

    def collect_batch(self) -> tuple[list[Trajectory], dict]:
        """This step's training groups and the rollout metrics (on the first round's episodes).

        ``sampling: static`` -- one round: fresh prompts, rolled out, `select_groups`.
        ``sampling: dynamic`` (DAPO) -- groups whose rewards have no spread are dropped, and
        rounds of fresh prompts are rolled out until ``prompts_per_step`` groups with spread
        are held or ``max_sampling_rounds`` extra rounds were spent (then the step trains on
        what it holds); surplus groups of the last round are dropped. Logs ``dynamic/rounds``
        (extra rounds), ``dynamic/generations`` (episodes generated this step),
        ``dynamic/kept_groups`` and ``dynamic/batch_full``. ``budget/generated_total`` counts
        every token generated this step (refills and ReST-GRPO's partial states included)."""
        cfg, G = self.config, self.config.num_generations
        trajs, stats = self.rollout(self.sample_prompts())
        metrics = self._rollout_metrics(trajs, stats)  # on the fresh prompts' episodes
        train, sel = self.select_groups(trajs)  # ReST-GRPO filters and adds partial states here
        metrics.update(sel)
        generated = stats.get("generated", 0) + sel.get("budget/generated_partial", 0)
        episodes = len(trajs) + G * sel.get("rest/partial_prompts", 0)
        if cfg.sampling == "dynamic":
            train = self._with_spread(train)
            rounds = 0
            while len(train) < cfg.batch_size and rounds < cfg.max_sampling_rounds:
                rounds += 1
                more, st = self.rollout(self.sample_prompts())
                kept, s2 = self.select_groups(more)
                train += self._with_spread(kept)
                generated += st.get("generated", 0) + s2.get("budget/generated_partial", 0)
                episodes += len(more) + G * s2.get("rest/partial_prompts", 0)
            metrics["dynamic/batch_full"] = float(len(train) >= cfg.batch_size)
            train = train[: cfg.batch_size]
            metrics.update({"dynamic/rounds": float(rounds), "dynamic/generations": float(episodes),
                            "dynamic/kept_groups": float(len(train) // G)})
        metrics["budget/generated_total"] = float(generated)
        return train, metrics

    def _with_spread(self, trajs: list[Trajectory]) -> list[Trajectory]:
        """The groups of ``trajs`` whose (valid) rewards have spread (`A.group_advantages`'s test)."""
        G = self.config.num_generations
        if not trajs:
            return []
        rewards = torch.tensor([t.reward for t in trajs], dtype=torch.float32)
        _, zero = A.group_advantages(rewards, G, valid=torch.tensor([not t.masked for t in trajs]))
        return [t for g in range(len(trajs) // G) if not zero[g] for t in trajs[g * G:(g + 1) * G]]

    def _rollout_metrics(self, trajs: list[Trajectory], stats: dict) -> dict:
        valid = [t for t in trajs if not t.masked]
        r = np.array([t.reward for t in valid], dtype=np.float64)
        return {
            "reward_mean": float(r.mean()) if len(r) else 0.0,
            "reward_std": float(r.std()) if len(r) else 0.0,
            "pass_rate": float(np.mean([t.correct for t in valid])) if valid else 0.0,
            "completion_tokens_mean": float(np.mean([t.num_tokens for t in valid])) if valid else 0.0,
            "completion_steps_mean": float(np.mean([len(t.steps) for t in valid])) if valid else 0.0,
            "group_reward_std": _mean_group_std(trajs, self.config.num_generations),
            "masked_frac": 1.0 - len(valid) / len(trajs) if trajs else 0.0,
            "episodes": float(len(trajs)),
            "budget/generated": float(stats.get("generated", 0)),
            "budget/encoded": float(stats.get("encoded", 0)),
            "budget/sandbox": float(stats.get("sandbox", 0)),
        }

    def _log(self, metrics: dict, trajs: list[Trajectory]) -> None:
        if self.logger is None:
            return
        for k, v in metrics.items():
            if k != "step" and isinstance(v, (int, float)):
                self.logger.record(k if "/" in k else f"train/{k}", v)
        delim = getattr(self.collector, "delimiter", "\n")
        for i, t in enumerate(trajs[: self.config.log_traces]):
            self.logger.record_text(f"samples/trace_{i}", f"reward={t.reward:.3f} correct={t.correct}\n{t.text(delim)}")
        self.logger.dump(self.num_steps)

    # ------------------------------------------------------------------ evaluation
    def pass_at_1(self, n_tasks: int = 32, seed: int = 0) -> float:
        """Held-out pass@1: one greedy episode on each of ``n_tasks`` test tasks
        (`prmgym.envs.episodes.evaluate_policy` with this trainer's step settings).

        Uses its own seed, so evaluating does not change the training run."""
        if self.eval_env_fn is None:
            raise ValueError("no eval env: pass eval_env= to the trainer (e.g. the env with split='test')")
        cfg = self.config
        return evaluate_policy(self.policy, self.eval_env_fn, n_tasks=n_tasks, seed=seed,
                               max_new_tokens=cfg.max_new_tokens, max_steps=cfg.max_steps,
                               max_workers=cfg.rollout_workers)["pass@1"]

    # ------------------------------------------------------------------ training loop
    def train(self, n_steps: int, progress: bool = False) -> list[dict]:
        """Run ``n_steps`` more steps (stops early if a callback returns False or the loss
        becomes NaN -- then the last good checkpoint is kept and the error is re-raised)."""
        history = []
        for cb in self.callbacks:
            cb.on_training_start()
        bar = None
        if progress:
            from tqdm import tqdm

            bar = tqdm(total=n_steps, desc=self.algorithm, unit="step")
        try:
            for _ in range(n_steps):
                try:
                    metrics = self.step()
                except NonFiniteLossError as e:
                    where = self.last_good_checkpoint or (latest_checkpoint(self.run_dir) if self.run_dir else None)
                    raise NonFiniteLossError(
                        f"{e}; training stopped and no checkpoint was written after it. "
                        + (f"Last good checkpoint: {where}. " if where else "No checkpoint was saved before it. ")
                        + "Lower learning_rate or max_grad_norm, and resume from the checkpoint."
                    ) from None
                history.append(metrics)
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(reward=f"{metrics.get('reward_mean', 0):.3f}", pass_rate=f"{metrics.get('pass_rate', 0):.2f}")
                if self.run_dir and self.config.save_every and self.num_steps % self.config.save_every == 0:
                    self.save_checkpoint()
                if not all(cb.on_step(metrics) for cb in self.callbacks):
                    break
        finally:
            if bar is not None:
                bar.close()
            for cb in self.callbacks:
                cb.on_training_end()
        return history

    # ------------------------------------------------------------------ save / load
    def save_checkpoint(self) -> str:
        """``run_dir/checkpoints/checkpoint-{step}``; keeps the newest ``keep_checkpoints``."""
        if not self.run_dir:
            raise ValueError("save_checkpoint needs run_dir; or call save(dir) with a directory")
        path = checkpoint_path(self.run_dir, self.num_steps)
        self.save(path)
        prune_checkpoints(self.run_dir, self.config.keep_checkpoints)
        self.last_good_checkpoint = path
        return path

    def save(self, path: str) -> str:
        """Write everything needed to continue exactly: ``policy/`` (``save_pretrained``, so
        it also loads with ``TransformersPolicy.from_pretrained``) and ``trainer_state.pt``
        (optimizer, RNG states, step counter, config, reference model when beta > 0)."""

        def write(tmp: str) -> None:
            self.policy.save(os.path.join(tmp, POLICY_DIR))
            state = {
                "algorithm": self.algorithm,
                "step": self.num_steps,
                "config": asdict(self.config),
                "optimizer": self.optim.state_dict(),
                "rng": rng_state(self.rng),
                "ref_model": self.ref_model.state_dict() if self.ref_model is not None else None,
            }
            state.update(self._extra_state())
            save_trainer_state(tmp, state)
            if self.process_reward is not None and hasattr(self.process_reward, "save"):
                self.process_reward.save(os.path.join(tmp, "process_reward"))

        return write_checkpoint(os.fspath(path), write)

    def load(self, path: str) -> "GRPOTrainer":
        """Restore a `save` directory (or the latest checkpoint of a run directory)."""
        path = os.fspath(path)
        if not os.path.exists(os.path.join(path, TRAINER_STATE)):
            latest = latest_checkpoint(path)
            if latest is None:
                raise FileNotFoundError(f"{path!r} is neither a checkpoint nor a run directory with checkpoints/")
            path = latest
        state = load_trainer_state(path, who="GRPOTrainer.save")
        if state.get("algorithm") != self.algorithm:
            raise ValueError(f"checkpoint {path!r} was written by {state.get('algorithm')!r}, not {self.algorithm!r}")
        load_model_weights(self.model, os.path.join(path, POLICY_DIR))
        if self.engine_sync:
            self.engine_sync.push()
        self.optim.load_state_dict(state["optimizer"])
        if self.ref_model is not None and state.get("ref_model") is not None:
            self.ref_model.load_state_dict(state["ref_model"])
        set_rng_state(state["rng"], self.rng)
        self.num_steps = int(state["step"])
        self._load_extra_state(state)
        if self.process_reward is not None and hasattr(self.process_reward, "load") and os.path.isdir(os.path.join(path, "process_reward")):
            self.process_reward.load(os.path.join(path, "process_reward"))
        self.last_good_checkpoint = path
        return self

    def _extra_state(self) -> dict:
        return {}

    def _load_extra_state(self, state: dict) -> None:
        pass

    def close(self) -> None:
        self.collector.close()
        if self.logger is not None:
            self.logger.close()


def _mean_group_std(trajs: Sequence[Trajectory], G: int) -> float:
    """Mean over groups of the population std of the valid rewards (the reward spread)."""
    stds = []
    for g in range(len(trajs) // G):
        r = [t.reward for t in trajs[g * G:(g + 1) * G] if not t.masked]
        stds.append(A.group_std(r))
    return float(np.mean(stds)) if stds else 0.0


def _env_factory(env: str | Callable[[], Any] | None, kwargs: dict) -> Callable[[], Any] | None:
    if env is None or callable(env):
        return env
    from prmgym.envs import make

    return lambda: make(env, **kwargs)
