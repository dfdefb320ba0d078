"""A training run described by one config file: what `prmgym train` executes.

A run config (YAML; see examples/configs/) names the algorithm, the environment, the
policy, the optional dense reward and the trainer section:

.. code-block:: yaml

    algorithm: grpo                  # grpo | rest_grpo
    env: prmgym/ChainArithmetic-v0
    env_kwargs: {difficulty: 1}
    model: tiny                      # tiny (prmgym.recipes.tiny.pretrain for this env, cached) | a local HF directory
    reward: none                     # none | airl | repirl (prmgym.rewards.REWARDS)
    steps: 100
    run_dir: runs/grpo_chain
    trainer: {num_generations: 8, batch_size: 32, learning_rate: 5.0e-4}
    policy: {backend: hf}            # hf | vllm (+ vLLM engine options; prmgym.models.backend.PolicyConfig)

`build_run` checks every name before anything heavy starts and lists the valid choices.
"""

from __future__ import annotations

import inspect
import os
from dataclasses import dataclass
from typing import Any

from prmgym.config import ConfigError, from_dict, help_field, to_dict

ALGORITHMS = ("grpo", "rest_grpo", "sb3_ppo")


_f = help_field


@dataclass
class RunConfig:
    """Everything `prmgym train` needs. The ``trainer`` section holds `GRPOConfig` fields
    (`ReSTGRPOConfig` fields for ``algorithm: rest_grpo``)."""

    algorithm: str = _f("grpo", "grpo | rest_grpo | sb3_ppo (stable-baselines3 PPO, prmgym.recipes.sb3)")
    env: str = _f("prmgym/ChainArithmetic-v0", "a registered Gymnasium id (prmgym envs list: `prmgym envs`)")
    env_kwargs: dict = _f({}, "keyword arguments for gym.make (split=train is the default)")
    eval_env_kwargs: dict = _f({"split": "test"}, "overrides of env_kwargs for held-out evaluation")
    model: str = _f("tiny", "'tiny' (pretrain the tiny character model for this env, cached) or a local HF model directory")
    model_kwargs: dict = _f({}, "for model: tiny, PretrainConfig overrides passed to prmgym.recipes.tiny.pretrain")
    prompt_format: str = _f("plain", "how the policy (and a PRM built on it) reads observations: plain (the trace "
                            "text) | chat (the tokenizer's chat template, for instruct models); see docs/models.md")
    imports: list = _f([], "modules imported before the env is made (your register_reasoning_env calls); "
                       "like `prmgym train --import MODULE`")
    reward: str = _f("none", "dense process reward: none | a name in prmgym.rewards.REWARDS (airl, repirl)")
    reward_config: dict = _f({}, "options of the process reward (see docs/rewards.md)")
    steps: int = _f(100, "trainer steps in total (a resumed run continues up to this)")
    run_dir: str = _f("runs/train", "where metrics.jsonl, tb/ (TensorBoard) and checkpoints/ go")
    eval_tasks: int = _f(64, "held-out tasks for pass@1 before and after training (0 = skip)")
    device: str | None = _f("auto", "torch device of the policy, trainer and reward: auto (cuda if visible, else cpu) | cpu | "
                             "cuda | cuda:N | mps (prmgym.models.optim.resolve_device)")
    dtype: str = _f("fp32", "compute precision of the trainer's and reward's forward passes: fp32 | bf16 | fp16 "
                            "(autocast; weights and AdamW state stay fp32; fp16 needs CUDA)")
    policy: dict = _f({}, "generation backend: {backend: hf | vllm, dtype, gpu_memory_utilization, "
                          "tensor_parallel_size, max_model_len, ...} (prmgym.models.backend.PolicyConfig)")
    trainer: dict = _f({}, "trainer hyperparameters (GRPOConfig / ReSTGRPOConfig fields)")
    distributed: dict = _f({}, "scale-out on Ray {backend: ray, address, sandbox_workers, rollout_workers, "
                           "train_workers} "
                           "(prmgym.cluster.DistributedConfig; docs/distributed.md)")
    logging: list[str] = _f(["tensorboard"], "writers besides metrics.jsonl: any of tensorboard, csv, wandb, stdout")
    wandb: dict = _f({}, "wandb.init keywords (project, entity, name, mode, tags); WANDB_MODE=offline keeps it on disk")
    lora: dict | None = _f(None, "LoRA adapters on the policy {r, alpha, dropout, target_modules} ({} = defaults; "
                           "null = train every weight); see prmgym.models.lora.LoRAConfig")

    def __post_init__(self) -> None:
        if self.algorithm not in ALGORITHMS:
            raise ValueError(f"unknown algorithm {self.algorithm!r}; valid: {', '.join(ALGORITHMS)}")
        if self.steps < 0:
            raise ValueError(f"steps must be >= 0, got {self.steps}")
        from prmgym.models.formatting import check_prompt_format

        check_prompt_format(self.prompt_format)
        from prmgym.models.optim import check_device_name, dtype_name

        self.dtype = dtype_name(self.dtype)
        self.device = self.device or "auto"  # configs written before device had a default said null
        check_device_name(self.device)
        from prmgym.logger import RUN_FORMATS

        bad = [f for f in self.logging if f not in RUN_FORMATS]
        if bad:
            raise ValueError(f"unknown logging writer(s) {bad}; valid: {', '.join(RUN_FORMATS)} (metrics.jsonl is always written)")
        if self.lora is not None:
            if self.algorithm == "sb3_ppo":
                raise ValueError("lora applies to algorithm grpo and rest_grpo, not sb3_ppo; drop the lora section")
            from prmgym.models.lora import lora_config

            lora_config(self.lora)  # validates the section (errors name lora.KEY)
        if self.distributed:
            if self.algorithm == "sb3_ppo":
                raise ValueError("distributed applies to algorithm grpo and rest_grpo, not sb3_ppo; drop the section")
            from prmgym.recipes.distributed import check_train_workers

            # validates the section (errors name distributed.KEY)
            check_train_workers(self.distributed, self.policy.get("backend", "hf"))

    def policy_config(self):
        """The typed ``policy`` section (errors name the ``policy.`` key)."""
        from prmgym.models.backend import PolicyConfig

        return from_dict(PolicyConfig, self.policy, where="policy")

    def trainer_config(self):
        """The typed trainer section (validated; errors name the ``trainer.`` key)."""
        from prmgym.agents.grpo import GRPOConfig, apply_preset
        from prmgym.agents.rest_grpo import ReSTGRPOConfig

        if self.algorithm == "sb3_ppo":
            from prmgym.recipes.sb3 import SB3PPOConfig

            return from_dict(SB3PPOConfig, self.trainer, where="trainer")
        cls = ReSTGRPOConfig if self.algorithm == "rest_grpo" else GRPOConfig
        try:
            section = apply_preset(self.trainer)  # trainer.preset: dapo | gspo | rloo | reinforce_pp
        except ValueError as e:
            raise ConfigError(f"trainer: {e}") from e
        return from_dict(cls, self._with_knobs(cls, section), where="trainer")

    def _with_knobs(self, cls: type, section: dict) -> dict:
        """The trainer section with the run's ``dtype`` and ``device`` and, for a decaying
        ``lr_schedule`` without ``schedule_steps``, the run's optimizer updates
        (``steps x num_iterations x num_mini_batches``)."""
        for key in ("dtype", "device"):
            if key in section and section[key] != getattr(self, key):
                raise ConfigError(f"trainer.{key}: set {key} at the top level of the run config (it also places the "
                                  f"policy and the reward), e.g. {key}: {section[key]}")
        section = {**section, "dtype": self.dtype, "device": self.device}
        if section.get("lr_schedule", "constant") != "constant" and "schedule_steps" not in section:
            per_step = section.get("num_iterations", cls.num_iterations) * section.get("num_mini_batches", cls.num_mini_batches)
            section["schedule_steps"] = max(1, int(self.steps) * int(per_step))
        return section


def load_run_config(data: dict) -> RunConfig:
    cfg = from_dict(RunConfig, data)
    cfg.trainer_config()  # validate the trainer section now
    cfg.policy_config()
    return cfg


def valid_rewards() -> list[str]:
    names = ["none"]
    try:
        from prmgym.rewards import REWARDS

        names += sorted(REWARDS)
    except ImportError:
        pass
    return names


def check_names(cfg: RunConfig) -> None:
    """Unknown env / model / reward -> `ConfigError` naming it and listing the valid ones."""
    import gymnasium as gym

    import prmgym  # noqa: F401  (registers the envs)
    from prmgym.config import import_modules

    import_modules(cfg.imports, where="imports:")
    env_id = cfg.env
    if ":" in env_id:  # Gymnasium's module:id form: importing the module registers the id
        module, env_id = env_id.split(":", 1)
        import_modules([module], where=f"env {cfg.env!r}:")
    if env_id not in gym.registry:
        ours = sorted(k for k in gym.registry if k.startswith("prmgym/"))
        raise ConfigError(
            f"unknown env {cfg.env!r}. Valid prmgym envs: {', '.join(ours) or '(none registered)'} "
            "(any other registered Gymnasium id with the ReasoningEnv API works too)"
        )
    if cfg.model != "tiny":
        if not os.path.isdir(cfg.model):
            raise ConfigError(
                f"model {cfg.model!r} is neither 'tiny' nor an existing directory. Valid: 'tiny' (the tiny "
                "character model, pretrained for the env and cached) or the path of a local Hugging Face "
                "model directory (save_pretrained output with config.json)"
            )
        if not os.path.exists(os.path.join(cfg.model, "config.json")):
            raise ConfigError(f"model directory {cfg.model!r} has no config.json; save the model with save_pretrained")
    rewards = valid_rewards()
    if cfg.reward not in rewards:
        raise ConfigError(f"unknown reward {cfg.reward!r}; valid: {', '.join(rewards)}")
    check_env_kwargs(cfg)


def check_env_kwargs(cfg: RunConfig) -> None:
    """Make the train and eval envs once (cheap: tasks are drawn lazily), so a keyword the env
    does not take, or a value it refuses, is a `ConfigError` before anything is written."""
    from prmgym.envs import make

    env_kwargs = {"split": "train", **cfg.env_kwargs}
    for key, kwargs in (("env_kwargs", env_kwargs), ("eval_env_kwargs", {**env_kwargs, **cfg.eval_env_kwargs})):
        try:
            make(cfg.env, **kwargs).close()
        except (TypeError, ValueError) as e:
            raise ConfigError(f"{key}: {cfg.env} cannot be made with {kwargs}: {e}") from None


def load_policy(cfg: RunConfig, progress: bool = False):
    """The run's policy on the ``policy.backend`` (`prmgym.models.backend.load_policy`): the
    tiny model pretrained for ``cfg.env`` (trained once, then loaded from the cache; with 3
    heads of 32 for vllm) or the Hugging Face directory ``cfg.model``."""
    from prmgym.models import backend

    pc = cfg.policy_config()
    if cfg.lora is not None and pc.backend != "hf":
        raise ConfigError("lora with policy.backend vllm is not supported: the weight sync pushes full weights, "
                          "not adapters. Drop the lora section or use policy.backend hf")
    if pc.backend != "hf" and (cfg.distributed or {}).get("rollout_workers"):
        raise ConfigError("distributed.rollout_workers generates on Ray actors with the hf backend; with "
                          "policy.backend vllm the engine generates in this process: drop rollout_workers")
    if cfg.model == "tiny":
        from prmgym.recipes.tiny import pretrain  # lazy: the training recipe composes agents.sft

        path = pretrain(cfg.env, progress=progress, **{**backend.tiny_layout(pc), **cfg.model_kwargs})
    else:
        path = cfg.model
    from prmgym.models.optim import resolve_device

    policy = backend.load_policy(path, pc, device=resolve_device(cfg.device),
                                 prompt_format=cfg.prompt_format)
    if cfg.lora is not None:
        from prmgym.models.lora import apply_lora, lora_config

        policy.model = apply_lora(policy.model, lora_config(cfg.lora))
        policy.model.eval()
    return policy


def build_reward(cfg: RunConfig, policy: Any):
    """The dense process reward of ``cfg`` (None for ``reward: none``); a bad ``reward_config``
    is a `ConfigError` naming the section."""
    if cfg.reward == "none":
        return None
    from prmgym.rewards import REWARDS

    try:
        options = dict(cfg.reward_config)
        if cfg.dtype != "fp32":  # the reward's PRM runs in the run's precision unless its section says otherwise
            options.setdefault("dtype", cfg.dtype)
        factory = REWARDS[cfg.reward]
        params = inspect.signature(factory).parameters.values()
        takes_env = any(p.name == "env" or p.kind is inspect.Parameter.VAR_KEYWORD for p in params)
        # the environment (for a provider's expert_tasks) goes to a factory that takes it
        if not takes_env:
            return factory(policy, options)
        options.setdefault("seed", int(dict(cfg.trainer or {}).get("seed", 0)))  # the trainer seed: of the provider's expert_tasks draws
        return factory(policy, options, env=(cfg.env, dict(cfg.env_kwargs)))
    except ConfigError as e:
        raise ConfigError(f"reward_config: {e}") from None
    except (TypeError, ValueError) as e:  # the reward's own check of its options
        raise ConfigError(f"reward_config ({cfg.reward}): {e}") from None


def build_trainer(cfg: RunConfig, policy: Any = None, logger: Any = None, progress: bool = False,
                  reward: Any = "build"):
    """Check names, build policy and reward (unless given) and the trainer for ``cfg``."""
    from prmgym.agents.grpo import GRPOTrainer
    from prmgym.agents.rest_grpo import ReSTGRPOTrainer

    check_names(cfg)
    tcfg = cfg.trainer_config()
    policy = policy or load_policy(cfg, progress=progress)
    reward = build_reward(cfg, policy) if reward == "build" else reward
    from prmgym.recipes.distributed import with_ray_rollouts, with_ray_sandbox, with_train_workers

    env_kwargs = with_ray_sandbox(cfg.distributed, cfg.env, {"split": "train", **cfg.env_kwargs})
    eval_kwargs = {**env_kwargs, **cfg.eval_env_kwargs}
    from prmgym.agents.grpo import _env_factory

    cls = ReSTGRPOTrainer if cfg.algorithm == "rest_grpo" else GRPOTrainer
    trainer = cls(
        policy, cfg.env, tcfg, env_kwargs=env_kwargs, eval_env=_env_factory(cfg.env, eval_kwargs),
        process_reward=reward, run_dir=cfg.run_dir, logger=logger,
    )
    trainer = with_ray_rollouts(cfg.distributed, trainer, cfg.env, {"split": "train", **cfg.env_kwargs})
    return with_train_workers(cfg.distributed, trainer, cfg)


#: what `prmgym train` writes into a run directory (``--overwrite`` removes these and nothing else)
RUN_OUTPUTS = ("config.yaml", "metrics.jsonl", "metrics.csv", "hparams.json", "summary.json", "tb", "wandb",
               "wandb_group.txt", "checkpoints")


def run_outputs(run_dir: str) -> list[str]:
    """The entries of `RUN_OUTPUTS` present in ``run_dir``."""
    return [name for name in RUN_OUTPUTS if os.path.exists(os.path.join(run_dir, name))]


def clear_run(run_dir: str) -> None:
    """Remove a run's outputs (`RUN_OUTPUTS`) from ``run_dir``, leaving anything else there."""
    import shutil

    for name in run_outputs(run_dir):
        path = os.path.join(run_dir, name)
        shutil.rmtree(path) if os.path.isdir(path) else os.remove(path)


def save_run_config(cfg: RunConfig, run_dir: str) -> str:
    import yaml

    os.makedirs(run_dir, exist_ok=True)
    path = os.path.join(run_dir, "config.yaml")
    with open(path, "w") as f:
        yaml.safe_dump(to_dict(cfg), f, sort_keys=False)
    return path
