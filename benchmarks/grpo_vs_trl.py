"""Seconds per optimizer step: prmgym's GRPOTrainer against TRL's GRPOTrainer, same run.

Both trainers get the same tiny GPT-2 (same initial weights, character tokenizer), the
same number of completions per step (``--batch`` = prompts x ``--generations``), the same
completion length cap (``--length`` tokens), one optimizer step per batch (num_iterations
1, beta 0, no reference model), sampling at temperature 1, on CPU with the same thread
count. The task is one step long (prmgym: a one-step env whose stop string the model
cannot emit, so each completion runs to ``--length`` tokens or eos -- exactly TRL's
stopping rule). A step is: generate the batch, score it, compute advantages, forward +
backward, optimizer step. Measurements alternate between the two trainers in blocks so
that machine load hits both alike; the first ``--warmup`` steps of each are not timed.

TRL is a benchmark-only extra (``pip install trl``); without it the script reports
prmgym alone and says why. Run::

    python benchmarks/grpo_vs_trl.py --steps 10
"""

from __future__ import annotations

import argparse
import copy
import logging
import os
import warnings
import statistics
import sys
import time

import gymnasium as gym
import numpy as np
import torch

from prmgym.agents import GRPOConfig, GRPOTrainer
from prmgym.envs.task import Task
from prmgym.envs.trace import render_trace
from prmgym.models import tiny

STOP = "\x7f"  # DEL: in the charset of neither the prompts nor the model's training -> never a stop


class Verdict:
    def __init__(self, reward):
        self.reward, self.correct, self.details = reward, reward > 0, {}


def reward_of(text: str) -> float:
    return float(text[:1].isdigit())


class OneStepEnv(gym.Env):
    """Prompt ``Q<i>: say a digit``; one step; reward 1 if it starts with a digit."""

    def __init__(self):
        cs = "".join(chr(i) for i in range(1, 128))
        self.observation_space = gym.spaces.Text(max_length=100_000, charset=cs)
        self.action_space = gym.spaces.Text(max_length=100_000, charset=cs)
        self.delimiter = STOP

    def reset(self, seed=None, options=None):
        super().reset(seed=seed)
        i = int(self.np_random.integers(1000))
        self.task = (options or {}).get("task") or Task(id=f"q/{i}", prompt=f"Q{i}: say a digit")
        self.steps = []
        return render_trace(self.task.prompt, [], self.delimiter), {"task": self.task}

    def step(self, action):
        self.steps.append(action)
        r = reward_of(action)
        return render_trace(self.task.prompt, self.steps, self.delimiter), r, True, False, {"verdict": Verdict(r), "task": self.task}


def time_prmgym(policy, args, n_steps):
    cfg = GRPOConfig(num_generations=args.generations, batch_size=args.batch, num_iterations=1,
                     max_new_tokens=args.length, max_steps=1, learning_rate=1e-5, beta=0.0, seed=0)
    trainer = GRPOTrainer(policy, OneStepEnv, cfg)
    times, lengths = [], []

    def run(k):
        for _ in range(k):
            t = time.perf_counter()
            m = trainer.step()
            times.append(time.perf_counter() - t)
            lengths.append(m["completion_tokens_mean"])

    return run, times, lengths


def time_trl(policy, args):
    try:
        import trl
        from datasets import Dataset
        from transformers import TrainerCallback
    except ImportError as e:
        return None, f"TRL not installed ({e}); pip install trl datasets"
    times, lengths = [], []

    class Timer(TrainerCallback):
        def on_step_begin(self, a, state, control, **kw):
            self.t = time.perf_counter()

        def on_step_end(self, a, state, control, **kw):
            times.append(time.perf_counter() - self.t)

    def reward_fn(prompts, completions, **kw):
        lengths.append(float(np.mean([len(c) for c in completions])))
        return [reward_of(c) for c in completions]

    total = args.warmup + args.steps
    prompts = [f"Q{i}: say a digit{STOP}" for i in range(total * args.batch // args.generations + 8)]
    cfg = trl.GRPOConfig(
        output_dir="/tmp/prmgym_bench_trl", report_to="none", use_cpu=True, bf16=False, fp16=False,
        per_device_train_batch_size=args.batch, gradient_accumulation_steps=1, num_generations=args.generations,
        max_completion_length=args.length, num_iterations=1, beta=0.0, learning_rate=1e-5, temperature=1.0,
        max_steps=total, logging_steps=10**6, save_strategy="no", seed=0, disable_dropout=True,
        dataloader_num_workers=0, disable_tqdm=True,
    )
    model = policy.model
    tok = policy.tokenizer
    try:
        trainer = trl.GRPOTrainer(model=model, reward_funcs=reward_fn, args=cfg,
                                  train_dataset=Dataset.from_dict({"prompt": prompts}), processing_class=tok,
                                  callbacks=[Timer()])
        trainer.train()
    except Exception as e:  # report exactly why TRL could not run
        return None, f"TRL {trl.__version__} failed: {type(e).__name__}: {e}"
    return (times[args.warmup:], lengths[args.warmup:]), None


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=10, help="timed optimizer steps per trainer")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--batch", type=int, default=32, help="completions per step")
    p.add_argument("--generations", type=int, default=8, help="completions per prompt (G)")
    p.add_argument("--length", type=int, default=32, help="completion length cap in tokens")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--n-layer", type=int, default=4, help="tiny GPT-2 layers (4 x 128 = the pretrained tiny policy's size)")
    p.add_argument("--n-embd", type=int, default=128)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    logging.getLogger("transformers").setLevel(logging.ERROR)

    base = tiny.random_tiny_policy(seed=0, n_layer=args.n_layer, n_embd=args.n_embd, n_head=4)
    ours_policy = copy.deepcopy(base)
    trl_policy = copy.deepcopy(base)

    # prmgym: warm up, then alternate with TRL? TRL's train() runs all its steps in one call,
    # so we interleave by running prmgym in two halves around TRL.
    run, ours_t, ours_len = time_prmgym(ours_policy, args, args.steps)
    run(args.warmup)
    del ours_t[:], ours_len[:]
    half = args.steps // 2
    run(half)
    trl_out, why = time_trl(trl_policy, args)
    run(args.steps - half)

    def fmt(ts):
        return f"{statistics.median(ts):.3f} s (mean {statistics.mean(ts):.3f}, min {min(ts):.3f}, max {max(ts):.3f})"

    print(f"setup: {args.batch} completions/step ({args.batch // args.generations} prompts x {args.generations}), "
          f"<= {args.length} tokens each, tiny GPT-2 ({sum(p.numel() for p in base.model.parameters())} params), "
          f"CPU, {args.threads} thread(s), {args.steps} timed steps after {args.warmup} warm-up")
    print(f"prmgym GRPOTrainer: {fmt(ours_t)} per optimizer step; mean completion {np.mean(ours_len):.1f} tokens")
    if trl_out is None:
        print(f"TRL GRPOTrainer: not measured -- {why}")
        return 0
    trl_t, trl_len = trl_out
    import trl

    print(f"TRL {trl.__version__} GRPOTrainer: {fmt(trl_t)} per optimizer step; mean completion {np.mean(trl_len):.1f} chars")
    ratio = statistics.median(trl_t) / statistics.median(ours_t)
    print(f"ratio TRL / prmgym (median seconds per step): {ratio:.2f}x  "
          f"({'prmgym faster' if ratio > 1 else 'prmgym slower'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
