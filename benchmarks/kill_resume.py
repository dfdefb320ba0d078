"""Faults during training: ``kill -9`` the ``prmgym train`` process at random points, resume it
each time, and check that the result is the one an uninterrupted run gives, bit for bit.

The same config runs twice in fresh processes: once straight through, once killed ``--kills``
times (SIGKILL: no handler runs, no checkpoint is saved on the way out) and resumed with
``prmgym train --resume`` after each kill. A kill lands once the run has logged a randomly
drawn step, after a random extra delay, so it can hit a rollout, an update, the logging or a
checkpoint being written. Printed: where each kill landed, the steps done again, the wall
time of both runs (ratio), and the checks: final parameters equal (max |difference|),
``metrics.jsonl`` equal row for row (all but wall-clock times) with no step twice, TensorBoard showing each step once,
``pass@1_before`` kept.

    python benchmarks/kill_resume.py                        # a larger run (tiny model, Chain, 30 steps)
    python benchmarks/kill_resume.py --steps 12 --batch 8   # quicker

``tests/test_kill_resume.py`` runs `kill_resume` on a tiny config.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import time

import yaml


def _cli(*argv: str) -> list[str]:
    return [sys.executable, "-m", "prmgym.cli", *argv]


def _env() -> dict:
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    path = os.pathsep.join(p for p in (here, os.environ.get("PYTHONPATH", "")) if p)
    return dict(os.environ, PYTHONPATH=path, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")


def _last_step(run_dir: str) -> int:
    path = os.path.join(run_dir, "metrics.jsonl")
    if not os.path.exists(path):
        return 0
    step = 0
    with open(path) as f:
        for line in f:
            try:
                step = max(step, int(json.loads(line)["step"]))
            except (ValueError, KeyError):
                pass
    return step


def _run_to_end(argv: list[str], log) -> float:
    t = time.perf_counter()
    proc = subprocess.run(argv, stdout=log, stderr=log, env=_env())
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} exited {proc.returncode}; see its log")
    return time.perf_counter() - t


def _run_and_kill(argv: list[str], run_dir: str, at_step: int, delay: float, log, timeout: float) -> dict:
    """Start ``argv``; once ``run_dir`` logged ``at_step``, wait ``delay`` s and SIGKILL it."""
    t = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=log, stderr=log, env=_env())
    try:
        while _last_step(run_dir) < at_step:
            if proc.poll() is not None:
                raise RuntimeError(f"the run ended (exit {proc.returncode}) before step {at_step}; see its log")
            if time.perf_counter() - t > timeout:
                raise RuntimeError(f"step {at_step} not reached in {timeout:.0f} s")
            time.sleep(0.01)
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return {"logged_step": _last_step(run_dir), "seconds": time.perf_counter() - t, "exit": proc.returncode}


def _weights(run_dir: str) -> dict:
    import torch
    from safetensors.torch import load_file

    from prmgym.checkpoints import latest_checkpoint

    ckpt = latest_checkpoint(run_dir)
    return {k: v.to(torch.float64) for k, v in load_file(os.path.join(ckpt, "policy", "model.safetensors")).items()}


def _rows(run_dir: str) -> list[dict]:
    """The rows of ``metrics.jsonl`` without the wall-clock fields (``time``, ``time/...``)."""
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        return [{k: v for k, v in json.loads(line).items() if not k.startswith("time")} for line in f]


def _tb_steps(run_dir: str, tag: str = "train/reward_mean") -> list[int]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(os.path.join(run_dir, "tb"))
    acc.Reload()
    return [e.step for e in acc.Scalars(tag)]


def kill_resume(config: dict, out: str, kills: int = 5, seed: int = 0, max_delay: float = 0.3,
                timeout: float = 600.0) -> dict:
    """Run ``config`` uninterrupted and killed-and-resumed ``kills`` times; returns the figures
    and checks (see the module docstring). ``config["steps"]`` must exceed ``kills``."""
    steps = int(config["steps"])
    if steps <= kills:
        raise ValueError(f"steps ({steps}) must be more than kills ({kills}): each kill lands at a later step")
    from prmgym.checkpoints import checkpoint_step, latest_checkpoint

    os.makedirs(out, exist_ok=True)
    rng = random.Random(seed)
    ref_dir, run_dir = os.path.join(out, "uninterrupted"), os.path.join(out, "killed")
    paths = {}
    for name, run in (("ref", ref_dir), ("run", run_dir)):
        paths[name] = os.path.join(out, f"{name}.yaml")
        with open(paths[name], "w") as f:
            yaml.safe_dump({**config, "run_dir": run}, f)
    # kill points: increasing steps in 1 .. steps-1, spread over the run
    targets = sorted(rng.sample(range(1, steps), kills))
    with open(os.path.join(out, "log.txt"), "w") as log:
        ref_seconds = _run_to_end(_cli("train", "--config", paths["ref"], "--overwrite", "--no-progress"), log)
        events, t0 = [], time.perf_counter()
        argv = _cli("train", "--config", paths["run"], "--overwrite", "--no-progress")
        for target in targets:
            delay = rng.uniform(0.0, max_delay)
            ckpt = latest_checkpoint(run_dir)
            before = checkpoint_step(ckpt) if ckpt else 0
            ev = _run_and_kill(argv, run_dir, target, delay, log, timeout)
            ckpt = latest_checkpoint(run_dir)
            ev.update(target=target, delay=round(delay, 3), resumed_from=before,
                      checkpoint_after=checkpoint_step(ckpt) if ckpt else 0)
            ev["steps_lost"] = max(0, ev["logged_step"] - ev["checkpoint_after"])
            events.append(ev)
            argv = _cli("train", "--resume", run_dir, "--no-progress")
        _run_to_end(argv, log)
        run_seconds = time.perf_counter() - t0
    wa, wb = _weights(ref_dir), _weights(run_dir)
    max_diff = max(float((wa[k] - wb[k]).abs().max()) for k in wa)
    rows_ref, rows_run = _rows(ref_dir), _rows(run_dir)
    sa = json.load(open(os.path.join(ref_dir, "summary.json")))
    sb = json.load(open(os.path.join(run_dir, "summary.json")))
    # training rows only: eval/pass@1 also has rows of its own at step 0 and at the end
    steps_logged = [r["step"] for r in rows_run if any(k.startswith("train/") for k in r)]
    return {
        "kills": events,
        "steps": steps,
        "steps_redone": sum(e["steps_lost"] for e in events),
        "seconds_uninterrupted": ref_seconds,
        "seconds_killed_and_resumed": run_seconds,
        "weights_equal": set(wa) == set(wb) and max_diff == 0.0,
        "max_abs_weight_diff": max_diff,
        "metrics_equal": rows_ref == rows_run,
        "no_step_twice": steps_logged == sorted(set(steps_logged)) == list(range(1, steps + 1)),
        "tensorboard_steps": _tb_steps(run_dir),
        "pass@1_before_kept": sa.get("pass@1_before") == sb.get("pass@1_before"),
        "summary": {k: sb.get(k) for k in ("pass@1_before", "pass@1_after", "steps")},
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--kills", type=int, default=5)
    p.add_argument("--batch", type=int, default=32, help="episodes per step")
    p.add_argument("--generations", type=int, default=8)
    p.add_argument("--save-every", type=int, default=3)
    p.add_argument("--eval-tasks", type=int, default=32)
    p.add_argument("--model", default="tiny", help="'tiny' (the pretrained tiny policy, cached) or a model directory")
    p.add_argument("--seed", type=int, default=0, help="seed of the kill points and delays")
    p.add_argument("--out", default="benchmarks/results/kill_resume")
    args = p.parse_args(argv)
    config = {
        "algorithm": "grpo", "env": "prmgym/ChainArithmetic-v0", "model": args.model, "steps": args.steps,
        "eval_tasks": args.eval_tasks,
        "trainer": {"num_generations": args.generations, "batch_size": args.batch, "learning_rate": 1e-4,
                    "max_new_tokens": 24, "max_steps": 8, "save_every": args.save_every, "rollout_workers": 1},
    }
    res = kill_resume(config, args.out, kills=args.kills, seed=args.seed)
    print(f"{args.kills} x kill -9 during {args.steps} GRPO steps ({args.batch} episodes/step, checkpoint every "
          f"{args.save_every}):")
    for i, e in enumerate(res["kills"], 1):
        print(f"  kill {i}: started from step {e['resumed_from']}, killed {e['delay']:.3f} s after step {e['target']} "
              f"was logged (at step {e['logged_step']}); newest checkpoint: step {e['checkpoint_after']} "
              f"-> {e['steps_lost']} step(s) to do again")
    ratio = res["seconds_killed_and_resumed"] / res["seconds_uninterrupted"]
    print(f"steps done again: {res['steps_redone']}; wall time uninterrupted {res['seconds_uninterrupted']:.1f} s, "
          f"killed and resumed {res['seconds_killed_and_resumed']:.1f} s ({ratio:.2f}x, process starts included)")
    print(f"final parameters equal: {res['weights_equal']} (max |diff| {res['max_abs_weight_diff']:.3g}); "
          f"metrics.jsonl equal: {res['metrics_equal']}; no step twice: {res['no_step_twice']}; "
          f"TensorBoard steps once each: {res['tensorboard_steps'] == list(range(1, args.steps + 1))}; "
          f"pass@1_before kept: {res['pass@1_before_kept']} {res['summary']}")
    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump(res, f, indent=2)
    ok = res["weights_equal"] and res["metrics_equal"] and res["no_step_twice"] and res["pass@1_before_kept"]
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
