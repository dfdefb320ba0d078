"""The tiny-model recipe: SFT of the tiny character-level policy on expert traces, cached.

Read top to bottom:

1. `PretrainConfig` — every argument that decides the trained model (its hash is the cache
   key); `default_cache_dir`, `load_manifest` — where a trained model lives and what it
   records.
2. `expert_examples` — the SFT pairs built from tasks' expert steps (`corrupt_step` makes
   the ``corrupt_rate`` knob).
3. `pretrain` — builds the tokenizer and a small GPT-2 (`prmgym.models.tiny`), trains it by
   SFT (`prmgym.agents.sft.SFTTrainer`), scores held-out pass@1 with
   `prmgym.envs.episodes.evaluate_policy` and saves it with ``save_pretrained``.

This module lives in ``recipes`` because it composes models with agents.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import os
import random
import re
import time
from dataclasses import asdict, dataclass, field, fields

import torch

from prmgym.agents.sft import trace_example
from prmgym.envs.episodes import evaluate_policy
from prmgym.models.tiny import random_tiny_policy

__all__ = ["pretrain", "expert_examples", "PretrainConfig", "DEFAULT_ENV", "MANIFEST", "corrupt_step",
           "default_cache_dir", "load_manifest"]

# =========================================================================== settings, cache, manifest
DEFAULT_ENV = "prmgym/ChainArithmetic-v0"
MANIFEST = "manifest.json"
_RECIPE_VERSION = 1  # bump when the recipe changes so old caches are not reused


@dataclass
class PretrainConfig:
    """Every argument that decides the trained model (the cache key is a hash of these).

    Attributes:
        env_id: a registered prmgym environment whose tasks have ``expert_steps``. In a tool
            env (`prmgym.envs.tools.ToolEnv`, e.g. ``prmgym/ToolMath-v0``) the traces are
            played in the env so that they hold the cells' outputs, and each step is one
            example whose prompt holds the earlier outputs (never a training target).
        env_kwargs: extra `prmgym.envs.make` arguments (e.g. ``{"difficulty": 2}``).
        num_train_tasks: expert traces drawn from the train split (fewer -> lower held-out
            pass@1; a weaker knob than ``steps`` at the default budget). A source with fewer
            distinct problems (Countdown difficulty 1: ~4,100; a small JSONL file) trains on
            all of them.
        steps: optimizer steps. **The main knob of held-out skill** on ChainArithmetic
            difficulty 1: 200 -> 0.035, 600 (default) -> 0.32, 1200 -> 0.77 greedy pass@1
            (docs/models.md has the measured table).
        corrupt_rate: fraction of training traces in which one intermediate step's last
            number is replaced by a wrong one (the trace is otherwise unchanged): a third
            knob that lowers accuracy without changing the data size.
        batch_size, learning_rate, warmup_steps: SFT settings (cosine decay to 10%).
        n_layer, n_embd, n_head, n_positions: GPT-2 size (defaults: ~0.4M parameters).
        eval_tasks: held-out test tasks scored (greedy) after training; 0 skips.
        seed: data, initialisation and batch order.
        dtype: SFT compute precision, fp32 | bf16 | fp16 (autocast; `prmgym.models.optim`).
    """

    env_id: str = DEFAULT_ENV
    env_kwargs: dict = field(default_factory=dict)
    num_train_tasks: int = 6000
    steps: int = 600
    corrupt_rate: float = 0.0
    batch_size: int = 32
    learning_rate: float = 5e-3
    warmup_steps: int = 30
    n_layer: int = 3
    n_embd: int = 96
    n_head: int = 4
    n_positions: int = 512
    eval_tasks: int = 200
    seed: int = 0
    dtype: str = "fp32"

    def __post_init__(self) -> None:
        if self.num_train_tasks < 1:
            raise ValueError(f"num_train_tasks must be >= 1, got {self.num_train_tasks}")
        if self.steps < 1:
            raise ValueError(f"steps must be >= 1, got {self.steps}")
        if not 0.0 <= self.corrupt_rate <= 1.0:
            raise ValueError(f"corrupt_rate must be in [0, 1], got {self.corrupt_rate}")
        if self.eval_tasks < 0:
            raise ValueError(f"eval_tasks must be >= 0, got {self.eval_tasks}")
        from prmgym.models.optim import dtype_name

        self.dtype = dtype_name(self.dtype)

    def cache_key(self) -> str:
        fields_ = asdict(self)
        if fields_["dtype"] == "fp32":  # keys of fp32 models are those from before dtype existed
            del fields_["dtype"]
        blob = json.dumps({"recipe": _RECIPE_VERSION, **fields_}, sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


def default_cache_dir(config: PretrainConfig) -> str:
    """``$PRMGYM_CACHE`` (default ``~/.cache/prmgym``) ``/tiny/<env>-<key>``."""
    root = os.environ.get("PRMGYM_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "prmgym")
    name = config.env_id.split("/")[-1].replace(" ", "_")
    return os.path.join(root, "tiny", f"{name}-{config.cache_key()}")


def corrupt_step(step: str, rng: random.Random) -> str | None:
    """Replace the last integer in ``step`` with a different one; None if it has none.

    >>> corrupt_step("3 + 4 = 7", random.Random(0)) != "3 + 4 = 7"
    True
    """
    matches = list(re.finditer(r"-?\d+", step))
    if not matches:
        return None
    m = matches[-1]
    value = int(m.group())
    delta = rng.choice([d for d in range(-9, 10) if d != 0])
    return step[: m.start()] + str(value + delta) + step[m.end():]


def _make_env(env_id: str, split: str, env_kwargs: dict | None):
    import gymnasium as gym

    from prmgym.envs import make

    try:
        return make(env_id, split=split, **(env_kwargs or {}))
    except gym.error.Error as e:
        raise ValueError(
            f"cannot make environment {env_id!r} ({e}); list the registered ones with `prmgym envs`"
        ) from e


def load_manifest(path: str | os.PathLike) -> dict:
    """The manifest of a directory written by `prmgym.recipes.tiny.pretrain`."""
    p = os.path.join(os.fspath(path), MANIFEST)
    if not os.path.exists(p):
        raise FileNotFoundError(f"no {MANIFEST} in {os.fspath(path)!r}: not written by prmgym.recipes.tiny.pretrain")
    with open(p) as f:
        return json.load(f)


# =========================================================================== recipe
def expert_examples(tasks, delimiter: str = "\n", corrupt_rate: float = 0.0, seed: int = 0) -> list[tuple[str, str]]:
    """SFT pairs ``(prompt + delimiter, steps each + delimiter)`` from tasks' expert steps.

    With ``corrupt_rate`` > 0 that fraction of traces gets one non-final step corrupted by
    `corrupt_step` (the final answer step is left alone).
    """
    rng = random.Random(seed)
    out = []
    for t in tasks:
        if not t.expert_steps:
            raise ValueError(
                f"task {t.id!r} has no expert_steps; the tiny-model recipe needs an environment "
                "with a solver (e.g. prmgym/ChainArithmetic-v0 or prmgym/Countdown-v0)"
            )
        steps = list(t.expert_steps)
        if corrupt_rate and len(steps) > 1 and rng.random() < corrupt_rate:
            order = list(range(len(steps) - 1))
            rng.shuffle(order)
            for i in order:
                bad = corrupt_step(steps[i], rng)
                if bad is not None:
                    steps[i] = bad
                    break
        out.append(trace_example(t.prompt, steps, delimiter))
    return out


def pretrain(
    env_id: str = DEFAULT_ENV,
    out_dir: str | os.PathLike | None = None,
    *,
    config: PretrainConfig | None = None,
    force: bool = False,
    progress: bool = True,
    device: str | None = None,
    threads: int | None = 1,
    **overrides,
) -> str:
    """Train the tiny character-level policy on expert traces of ``env_id``; return its directory.

    Cached: ``out_dir/manifest.json`` records the arguments' hash; a second call with the
    same arguments loads nothing and returns at once. A directory trained with other
    arguments is not overwritten unless ``force=True``. ``out_dir`` defaults to
    `default_cache_dir`. Keyword ``overrides`` set `PretrainConfig` fields, e.g.
    ``pretrain(out_dir=d, num_train_tasks=500, steps=300)``.

    The directory holds the model and tokenizer (``save_pretrained``: load with
    ``AutoModelForCausalLM.from_pretrained(d)`` or ``TransformersPolicy.from_pretrained(d)``),
    ``manifest.json`` (arguments, training time, held-out pass@1) and ``logs/`` (JSONL +
    TensorBoard).

    ``threads`` sets torch's CPU threads for the call (restored afterwards; None keeps the
    current setting). The default 1 is deliberate: the tiny model's matrices are too small
    to gain from intra-op threads, and on a shared machine extra threads slow it down
    several-fold. ``threads`` and ``device`` are not part of the cache key.
    """
    from dataclasses import replace

    config = config or PretrainConfig(env_id=env_id)
    if env_id != config.env_id:
        config = replace(config, env_id=env_id)
    if overrides:
        unknown = set(overrides) - {f.name for f in fields(PretrainConfig)}
        if unknown:
            raise TypeError(f"unknown pretrain argument(s) {sorted(unknown)}; valid: {[f.name for f in fields(PretrainConfig)]}")
        config = replace(config, **overrides)
    out_dir = os.path.abspath(os.fspath(out_dir) if out_dir is not None else default_cache_dir(config))
    key = config.cache_key()
    manifest_path = os.path.join(out_dir, MANIFEST)
    # One trainer per directory: a second process with the same arguments waits, then loads.
    os.makedirs(os.path.dirname(out_dir), exist_ok=True)
    with open(out_dir.rstrip(os.sep) + ".lock", "w") as lock:
        import fcntl

        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            return _pretrain_locked(config, out_dir, key, manifest_path, force, progress, device, threads)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _pretrain_locked(config, out_dir, key, manifest_path, force, progress, device, threads) -> str:
    if os.path.exists(manifest_path) and not force:
        with open(manifest_path) as f:
            manifest = json.load(f)
        if manifest.get("key") == key and os.path.exists(os.path.join(out_dir, "config.json")):
            return out_dir
        raise FileExistsError(
            f"{out_dir!r} holds a tiny model trained with other arguments ({manifest.get('config')}); "
            "choose another --out directory or pass force=True (--force) to retrain over it"
        )
    if os.path.isdir(out_dir) and os.listdir(out_dir) and not force and not os.path.exists(manifest_path):
        raise FileExistsError(
            f"{out_dir!r} exists and is not a prmgym tiny-model directory; choose an empty or new "
            "directory, or pass force=True (--force) to write into it"
        )
    os.makedirs(out_dir, exist_ok=True)
    if os.path.exists(manifest_path):
        os.remove(manifest_path)  # a half-written retrain must not look cached

    old_threads = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        return _pretrain(config, out_dir, key, manifest_path, progress, device)
    finally:
        torch.set_num_threads(old_threads)


def _pretrain(config: PretrainConfig, out_dir: str, key: str, manifest_path: str, progress: bool, device) -> str:
    from prmgym.agents.sft import SFTConfig, SFTTrainer
    from prmgym.logger import Logger
    from prmgym.models.optim import resolve_device

    t_start, cpu_start = time.perf_counter(), time.process_time()
    env = _make_env(config.env_id, "train", config.env_kwargs)
    u = env.unwrapped
    delimiter = getattr(u, "delimiter", "\n")
    # a source may hold fewer distinct problems than asked (Countdown-1: ~4k, a small JSONL file):
    # train on all of them rather than fail (the manifest records n_examples). A user's own source
    # written without the at_most keyword is called as before.
    extra = {"at_most": True} if "at_most" in inspect.signature(u.source.tasks).parameters else {}
    tasks = u.source.tasks("train", config.num_train_tasks, seed=config.seed, **extra)
    from prmgym.envs.tools import ToolEnv, tool_examples

    if isinstance(u, ToolEnv):  # tool traces: one pair per step, tool outputs on the prompt side only
        if config.corrupt_rate:
            raise ValueError("corrupt_rate applies to plain expert traces; a tool env's traces are replayed as they are (use corrupt_rate=0)")
        examples = tool_examples(u, tasks)
    else:
        examples = expert_examples(tasks, delimiter, config.corrupt_rate, seed=config.seed)
    env.close()
    charset = sorted(set("".join(p + c for p, c in examples)))
    policy = random_tiny_policy(
        seed=config.seed, n_layer=config.n_layer, n_embd=config.n_embd, n_head=config.n_head,
        n_positions=config.n_positions, charset="".join(charset), device=resolve_device(device),
    )
    n_params = sum(p.numel() for p in policy.model.parameters())
    hparams = {**asdict(config), "n_params": n_params, "n_examples": len(examples)}
    logger = Logger(os.path.join(out_dir, "logs"), formats=("jsonl", "tensorboard"), hparams=hparams)
    sft = SFTConfig(
        learning_rate=config.learning_rate, batch_size=config.batch_size, warmup_steps=config.warmup_steps,
        lr_schedule="cosine", schedule_steps=config.steps, seed=config.seed, dtype=config.dtype, log_every=max(1, min(50, config.steps // 20)),
    )
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.seed)
            trainer = SFTTrainer(policy, examples, sft, logger=logger)
            last = trainer.train(config.steps, progress=progress)
        train_seconds = time.perf_counter() - t_start
        train_cpu_seconds = time.process_time() - cpu_start
        result = {}
        if config.eval_tasks:
            result = evaluate_policy(policy, config.env_id, n_tasks=config.eval_tasks, seed=config.seed,
                                     env_kwargs=config.env_kwargs)
            logger.record("eval/pass@1", result["pass@1"])
            logger.record_text("eval/sample", result["sample"])
            logger.dump(trainer.num_steps)
    finally:
        logger.close()
    policy.save(out_dir)
    manifest = {
        "key": key,
        "recipe_version": _RECIPE_VERSION,
        "config": asdict(config),
        "n_params": n_params,
        "n_examples": len(examples),
        "final_train_loss": last.get("train/loss"),
        "train_seconds": round(train_seconds, 2),  # wall clock (includes waiting on a busy CPU)
        "train_cpu_seconds": round(train_cpu_seconds, 2),  # CPU time of this process
        "eval": {k: v for k, v in result.items() if k not in ("sample", "mean_reward")},
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    with open(manifest_path, "w") as f:
        json.dump(manifest, f, indent=2)
    return out_dir
