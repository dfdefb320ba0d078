"""Building blocks shared by the quickstart and the benchmarks: each one trains or loads one
component of the loop and returns it, so a recipe is a short list of calls.

* `tiny_policy_dir` — the directory of the tiny SFT policy (`prmgym.recipes.tiny.pretrain`, cached).
* `train_grpo` — GRPO on the env, with the AIRL step reward trained online (AIRL-S) or
  outcome-only; returns the trained policy and (for AIRL) the discriminator PRM.
* `train_offline_prm` — ORM / MC-PRM / implicit PRM from policy rollouts.
* `train_value_model` — MCTS collection on training tasks -> value targets -> value model.
* `compare` — every method at every per-task budget on the same held-out tasks.
* `plot_accuracy` — the accuracy-against-budget PNG.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, field
from typing import Any, Callable


def say(msg: str) -> None:
    print(f"[prmgym] {msg}", flush=True)


def make_env(env_id: str, split: str, env_kwargs: dict | None = None):
    from prmgym.envs import make  # gym.make with the list of registered envs in its unknown-id error

    return make(env_id, split=split, **(env_kwargs or {}))


def tiny_policy_dir(env_id: str, env_kwargs: dict | None = None, out_dir: str | None = None, **overrides) -> str:
    """Directory of the tiny SFT policy (trained once, then loaded from the cache)."""
    from prmgym.recipes.tiny import pretrain

    return pretrain(env_id, out_dir, env_kwargs=dict(env_kwargs or {}), progress=False, **overrides)


def deadline_callback(seconds: float):
    """A trainer callback that stops training once ``seconds`` have passed since it was made."""
    from prmgym.agents import FunctionCallback

    start = time.perf_counter()
    return FunctionCallback(lambda trainer, metrics: time.perf_counter() - start < seconds)


def train_grpo(policy_dir: str, env_id: str, out_dir: str, *, env_kwargs: dict | None = None, reward: str = "airl",
               steps: int = 20, seconds: float | None = None, process_reward_weight: float = 0.5,
               airl_options: dict | None = None, seed: int = 0, policy_config: dict | None = None,
               dtype: str = "fp32", device: str | None = None, prompt_format: str = "plain", **grpo_overrides) -> dict:
    """GRPO from ``policy_dir``; ``reward="airl"`` adds the online AIRL step reward
    (AIRL-S), ``reward="outcome"`` is plain GRPO. Saves the policy to ``out_dir/policy`` and
    the AIRL PRM to ``out_dir/prm_airl``. Returns paths, step count, the number of policy episodes
    sampled (``episodes``: the rollouts the discriminator was trained against) and metrics history.
    ``policy_config`` picks the generation backend (`prmgym.models.backend.PolicyConfig`);
    ``dtype`` / ``device`` are the trainer's and the AIRL PRM's (`prmgym.models.optim.OptimKnobs`);
    ``prompt_format`` (plain | chat) is how the policy, and the AIRL PRM built on it, read traces."""
    from prmgym.agents import GRPOConfig, GRPOTrainer
    from prmgym.models.backend import close_policy, load_policy

    if reward not in ("airl", "outcome"):
        raise ValueError(f"reward must be 'airl' or 'outcome', got {reward!r}")
    policy = load_policy(policy_dir, policy_config, device=device, prompt_format=prompt_format)
    cfg_kw = dict(num_generations=4, batch_size=16, max_new_tokens=24, max_steps=10, learning_rate=5e-5,
                  num_iterations=2, rollout_workers=1, seed=seed, dtype=dtype, device=device,
                  process_reward_weight=process_reward_weight if reward == "airl" else 0.0)
    cfg_kw.update(grpo_overrides)
    cfg = GRPOConfig(**cfg_kw)
    provider = None
    if reward == "airl":
        from prmgym.rewards.rl import AIRLRewardProvider

        # AIRL's own defaults (docs/rewards.md), with the env's demonstrations (expert_tasks)
        provider = AIRLRewardProvider.from_config(policy, {"dtype": dtype, "seed": seed, **(airl_options or {})},
                                                  env=(env_id, dict(env_kwargs or {})))
    callbacks = [deadline_callback(seconds)] if seconds else []
    trainer = GRPOTrainer(policy, env_id, cfg, env_kwargs=dict(env_kwargs or {}), process_reward=provider,
                          run_dir=out_dir, callbacks=callbacks)
    try:
        history = trainer.train(steps)
    finally:
        trainer.close()
        close_policy(policy)
    pol_dir = policy.save(os.path.join(out_dir, "policy"))
    out = {"policy": pol_dir, "steps": trainer.num_steps, "episodes": trainer.num_steps * cfg.batch_size,
           "history": history, "prm": None}
    if provider is not None:
        out["prm"] = provider.save(os.path.join(out_dir, "prm_airl"))
    return out


def train_offline_prm(kind: str, policy_dir: str, env_id: str, out_dir: str, *, env_kwargs: dict | None = None,
                      steps: int = 20, seed: int = 0, learning_rate: float | None = None, dtype: str = "fp32",
                      device: str | None = None, prompt_format: str = "plain", **cfg_overrides) -> str:
    """Train a PRM of ``kind`` (``orm``, ``mc``, ``implicit``, ``airl``, ...) offline from the
    policy in ``policy_dir`` (`prmgym.rewards.train`); ``learning_rate`` overrides the learner's
    default (its ``Options``), ``cfg_overrides`` the `PRMTrainConfig` fields.
    Returns the PRM directory."""
    from prmgym.logger import Logger
    from prmgym.models import TransformersPolicy
    from prmgym.rewards.train import OfflinePRMTrainer, PRMTrainConfig, build_prm

    policy = TransformersPolicy.from_pretrained(policy_dir, device=device, prompt_format=prompt_format)
    prm = build_prm(kind, policy_dir, dtype=dtype, device=device, prompt_format=prompt_format,
                    **({} if learning_rate is None else {"learning_rate": learning_rate}))
    kw = dict(kind=kind, steps=steps, tasks_per_step=8, rollouts_per_task=4, mc_rollouts=2, max_new_tokens=24,
              max_steps=10, seed=seed)
    kw.update(cfg_overrides)
    cfg = PRMTrainConfig(**kw)
    with Logger(out_dir, formats=("jsonl", "tensorboard")) as log:
        tr = OfflinePRMTrainer(prm, policy, lambda: make_env(env_id, "train", env_kwargs), cfg, run_dir=out_dir, logger=log)
        try:
            tr.train()
        finally:
            tr.close()
    return out_dir


def train_value_model(policy_dir: str, env_id: str, out_dir: str, *, env_kwargs: dict | None = None,
                      n_tasks: int = 16, iterations: int = 10, expansions: int = 4, steps: int = 40,
                      seed: int = 0, max_trace_tokens: int = 160, dtype: str = "fp32", device: str | None = None,
                      prompt_format: str = "plain") -> dict:
    """ReST-RL: collection MCTS on training tasks (every completion verified) writes value
    targets; a value model is trained on them by MSE. Returns paths and counts."""
    from prmgym.logger import Logger
    from prmgym.models import TransformersPolicy
    from prmgym.rewards.train import OfflinePRMTrainer, PRMTrainConfig, build_prm
    from prmgym.rewards.value import load_value_targets
    from prmgym.search.mcts import MCTS, collect_value_targets

    policy = TransformersPolicy.from_pretrained(policy_dir, device=device, prompt_format=prompt_format)
    env = make_env(env_id, "train", env_kwargs)
    tasks = env.unwrapped.source.tasks("train", n_tasks, seed=seed + 101)
    planner = MCTS.collection(iterations=iterations, expansions=expansions, rollout_max_new_tokens=max_trace_tokens,
                              max_new_tokens=32, seed=seed)
    targets_path = os.path.join(out_dir, "value_targets.jsonl")
    os.makedirs(out_dir, exist_ok=True)
    collect_value_targets(env, policy, tasks, targets_path, planner=planner)
    env.close()
    targets = load_value_targets(targets_path)
    prm = build_prm("value", policy_dir, dtype=dtype, device=device, prompt_format=prompt_format)
    cfg = PRMTrainConfig(kind="value", steps=steps, batch_size=32, seed=seed)
    with Logger(out_dir, formats=("jsonl", "tensorboard")) as log:
        OfflinePRMTrainer(prm, None, None, cfg, targets=targets, run_dir=out_dir, logger=log).train()
    return {"prm": out_dir, "targets": targets_path, "n_targets": len(targets),
            "prefixes": planner.high_value_prefixes(min_value=0.5, min_visits=2)}


def load_scorer(path: str | None, **knobs):
    """The PRM in ``path`` (None for None); ``knobs``: ``dtype`` / ``device`` overrides."""
    if path is None:
        return None
    from prmgym.rewards import load_prm

    return load_prm(path, **knobs)


@dataclass
class Method:
    """One row of a comparison: a planner name (`prmgym.search.evaluate.make_planner`), the
    scorer it uses (a key into the scorers dict, or None) and planner options."""

    name: str
    planner: str
    scorer: str | None = None
    options: dict = field(default_factory=dict)
    #: run the planner this many times with different seeds and report the mean accuracy (e.g. plain
    #: sampling: pass@1 estimated from that many samples per task instead of one)
    repeats: int = 1

    def __post_init__(self) -> None:
        if self.repeats < 1:
            raise ValueError(f"Method {self.name!r}: repeats must be >= 1, got {self.repeats}")


#: seed offset between the repeats of a `Method`
REPEAT_SEED_STRIDE = 7919


def compare(methods: list[Method], scorers: dict[str, Any], policy, env_id: str, *, budgets: list[int],
            n_tasks: int, env_kwargs: dict | None = None, seed: int = 0, logger=None, results_dir: str | None = None,
            on_row: Callable[[dict], None] | None = None, runner=None,
            per_task: bool = False) -> tuple[list[dict], dict[str, str]]:
    """Every method at every per-task ``generated``-token budget on the same held-out tasks.

    Methods whose scorer is missing from ``scorers`` are skipped and listed in the second
    return value with the reason. Rows: method, budget, accuracy, stderr, n and the mean
    usage per task in every budget unit; with ``per_task``, also ``correct``: 1/0 per task in task
    order (every method sees the same tasks, so rows can be compared task by task).

    ``runner``: a `prmgym.search.distributed.RaySearchRunner` whose actors hold the same policy and,
    under the same names, the scorers (`ray_compare_runner`): the tasks are solved on them and the
    rows are the same (``mean_seconds`` aside); ``policy`` and ``scorers`` are then used only for
    which methods run.
    """
    from prmgym.search.evaluate import evaluate_planner, make_planner

    env = make_env(env_id, "test", env_kwargs)
    tasks = env.unwrapped.source.tasks("test", n_tasks, seed=seed)
    rows, absent = [], {}
    for m in methods:
        if m.scorer is not None and scorers.get(m.scorer) is None:
            absent[m.name] = f"its scorer '{m.scorer}' is not available"
    for b in budgets:
        for m in methods:
            if m.name in absent:
                continue
            runs = []
            k = m.repeats
            while results_dir and os.path.exists(stale := os.path.join(results_dir, f"{m.name}-g{b}-r{k}.jsonl")):
                os.remove(stale)  # left by an earlier run with more repeats
                k += 1
            for k in range(m.repeats):
                planner = make_planner(m.planner, seed=seed + k * REPEAT_SEED_STRIDE, **m.options)
                path = os.path.join(results_dir, f"{m.name}-g{b}{f'-r{k}' if k else ''}.jsonl") if results_dir else None
                if path and os.path.exists(path):
                    os.remove(path)
                runs.append(evaluate_planner(planner, env, policy, scorers.get(m.scorer) if m.scorer else None, tasks,
                                             {"generated": b}, results_path=path,
                                             runner=runner.using(m.scorer) if runner is not None else None))
            res, n = runs[0], runs[0]["n"]
            per = [sum(float(r["rows"][i]["correct"]) for r in runs) / len(runs) for i in range(n)]  # per task
            acc = sum(per) / n if n else 0.0
            if len(runs) == 1:  # binomial
                se = math.sqrt(acc * (1 - acc) / n) if n else 0.0
            else:  # over tasks of the per-task mean
                se = math.sqrt(sum((p - acc) ** 2 for p in per) / (n - 1) / n) if n > 1 else 0.0
            row = {"method": m.name, "budget": b, "accuracy": acc, "n": n, "stderr": se,
                   **{f"mean_{u}": sum(r["budget"][u] for r in runs) / len(runs) for u in res["budget"]}}
            if len(runs) > 1:
                row["repeats"], row["accuracy_first"] = len(runs), res["accuracy"]
            if per_task:
                row["correct"] = per if len(runs) > 1 else [int(r["correct"]) for r in res["rows"]]
            rows.append(row)
            if logger is not None:
                logger.record(f"compare/{m.name}/accuracy", acc)
                logger.record(f"compare/{m.name}/generated", res["budget"]["generated"])
                logger.record(f"compare/{m.name}/prm_tokens", res["budget"]["prm"])
                logger.dump(step=b)
            if on_row:
                on_row(row)
    env.close()
    return rows, absent


def ray_compare_runner(policy_dir: str, scorer_dirs: dict[str, str | None], env_id: str,
                       env_kwargs: dict | None = None, *, workers: int = 2, address: str | None = None,
                       prompt_format: str = "plain"):
    """A `RaySearchRunner` for `compare`: ``workers`` actors on the Ray at ``address`` (a local Ray
    without one), each holding the policy and every scorer of ``scorer_dirs`` that has a directory,
    with the held-out env. Errors (Ray missing, address unreachable) are `ConfigError` naming the fix."""
    from prmgym.cluster import connect
    from prmgym.config import ConfigError

    try:
        connect(address)
    except (ImportError, ConnectionError, ValueError) as e:
        raise ConfigError(f"--ray: {e}") from None
    from prmgym.search.distributed import RaySearchRunner

    return RaySearchRunner(policy_dir, None, env_id, {**(env_kwargs or {}), "split": "test"}, workers=workers,
                           scorers={k: d for k, d in scorer_dirs.items() if d is not None}, prompt_format=prompt_format)


def plot_accuracy(rows: list[dict], path: str, title: str = "accuracy at equal generated-token budget",
                  err_key: str | None = "stderr") -> str:
    """Accuracy against the per-task generated-token budget, one line per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name in dict.fromkeys(r["method"] for r in rows):
        rs = sorted((r for r in rows if r["method"] == name), key=lambda r: r["budget"])
        xs, ys = [r["budget"] for r in rs], [r["accuracy"] for r in rs]
        errs = [r.get(err_key, 0.0) for r in rs] if err_key else None
        ax.errorbar(xs, ys, yerr=errs, marker="o", capsize=3, label=name)
    ax.set_xlabel("generated-token budget per task")
    ax.set_ylabel("held-out accuracy")
    ax.set_ylim(-0.02, 1.02)
    budgets = sorted({r["budget"] for r in rows})
    if len(budgets) > 1:
        ax.set_xscale("log")
        ax.minorticks_off()
    ax.set_xticks(budgets)
    ax.set_xticklabels([str(b) for b in budgets])
    ax.grid(alpha=0.3)
    ax.set_title(title)
    ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
