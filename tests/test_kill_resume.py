"""Faults during training: kill -9 `prmgym train` at random points 5 times in a row, resume each
time, and get the parameters of an uninterrupted run exactly (benchmarks/kill_resume.py does
the same at a larger size and prints the figures)."""

from __future__ import annotations

import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks"))

import kill_resume  # noqa: E402


@pytest.mark.slow
def test_five_kill_9s_and_resumes_give_the_uninterrupted_parameters(tmp_path):
    from prmgym.models import tiny

    model_dir = tiny.random_tiny_policy(seed=0).save(str(tmp_path / "model"))
    config = {
        "algorithm": "grpo", "env": "prmgym/ChainArithmetic-v0", "model": model_dir, "steps": 10, "eval_tasks": 4,
        "trainer": {"num_generations": 4, "batch_size": 8, "max_new_tokens": 4, "max_steps": 3,
                    "learning_rate": 3e-3, "save_every": 2, "rollout_workers": 1},
    }
    res = kill_resume.kill_resume(config, str(tmp_path / "out"), kills=5, seed=0, max_delay=0.3)
    assert len(res["kills"]) == 5 and all(e["exit"] == -9 for e in res["kills"])
    assert res["steps_redone"] > 0  # some kills landed between checkpoints: steps really were done again
    assert res["weights_equal"], res["max_abs_weight_diff"]
    assert res["metrics_equal"] and res["no_step_twice"]
    assert res["tensorboard_steps"] == list(range(1, 11))
    assert res["pass@1_before_kept"]
