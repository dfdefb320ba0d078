"""`prmgym quickstart --fast` writes every output and a report with numbers in [0, 1]."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

EXPECTED = {"sampling", "majority_vote", "bon_orm", "bon_mc_prm", "bon_airl_prm", "beam_airl_prm",
            "mcts_airl_prm", "vm_mcts"}


def test_quickstart_cli_rejects_bad_budgets():
    out = subprocess.run([sys.executable, "-m", "prmgym.cli", "quickstart", "--budgets", "10,x"],
                         capture_output=True, text=True)
    assert out.returncode != 0 and "--budgets" in out.stderr


@pytest.mark.slow
def test_quickstart_fast_writes_all_outputs(tmp_path):
    env = dict(os.environ, PRMGYM_CACHE=str(tmp_path / "cache"), OMP_NUM_THREADS="1")
    out = tmp_path / "qs"
    proc = subprocess.run([sys.executable, "-m", "prmgym.cli", "quickstart", "--fast", "--out", str(out)],
                          capture_output=True, text=True, env=env, timeout=2400)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    for i in range(1, 7):
        assert f"stage {i}/6" in proc.stdout
    for name in ("report.md", "report.json", "accuracy_vs_budget.png"):
        assert (out / name).stat().st_size > 0, name
    assert list(out.rglob("events.out.tfevents.*")), "no TensorBoard event files"
    report = json.loads((out / "report.json").read_text())
    methods = {r["method"] for r in report["rows"]}
    # Every expected row is present, or named under "absent" with a reason (never faked).
    assert EXPECTED <= methods | set(report["absent"]), (methods, report["absent"])
    assert methods, "no rows at all"
    for r in report["rows"]:
        assert 0.0 <= r["accuracy"] <= 1.0 and r["n"] > 0
        assert r["mean_generated"] <= r["budget"]
    # the tool-env rows: ToolMath with a tiny policy pretrained on tool traces, cells run in the sandbox
    tool = [r for r in report["rows"] if r.get("env") == "prmgym/ToolMath-v0"]
    assert {r["method"] for r in tool} == {"toolmath_sampling", "toolmath_majority_vote"}
    assert all(r["mean_sandbox"] > 0 for r in tool), tool
    sampling = [r for r in report["rows"] if r["method"] == "sampling"]
    assert sampling and all(r["repeats"] == 8 for r in sampling)  # pass@1 from 8 samples per task
    md = (out / "report.md").read_text()
    assert "first run alone scored" in md
    assert "| method |" in md and "accuracy_vs_budget.png" in md and "toolmath_majority_vote" in md


def test_compare_repeats_average_runs_with_their_own_seeds(monkeypatch):
    """``Method.repeats``: the row is the mean of that many runs seeded ``seed + k * stride``,
    per task too, with the standard error over tasks of the per-task mean."""
    import math

    from prmgym.recipes import pipeline as P
    from prmgym.search import evaluate

    outcomes = {5: [1, 0, 0], 5 + P.REPEAT_SEED_STRIDE: [1, 1, 0], 5 + 2 * P.REPEAT_SEED_STRIDE: [0, 1, 0]}
    seen = []

    def fake(planner, env, policy, scorer, tasks, budget, results_path=None, runner=None):
        seen.append(planner.seed)
        c = outcomes[planner.seed]
        return {"accuracy": sum(c) / 3, "n": 3, "rows": [{"correct": bool(x)} for x in c],
                "budget": {"generated": 10.0 * len(seen), "prm": 0.0}}

    monkeypatch.setattr(evaluate, "evaluate_planner", fake)
    opts = {"max_new_tokens": 6, "max_trace_tokens": 24, "max_depth": 4}
    [row], _ = P.compare([P.Method("s", "sample", None, opts, repeats=3)], {}, None, "prmgym/ChainArithmetic-v0",
                         budgets=[40], n_tasks=3, seed=5, per_task=True)
    assert seen == [5, 5 + P.REPEAT_SEED_STRIDE, 5 + 2 * P.REPEAT_SEED_STRIDE]
    per = [2 / 3, 2 / 3, 0.0]
    assert row["repeats"] == 3 and row["correct"] == pytest.approx(per)
    assert row["accuracy"] == pytest.approx(4 / 9) and row["accuracy_first"] == pytest.approx(1 / 3)
    assert row["stderr"] == pytest.approx(math.sqrt(sum((p - 4 / 9) ** 2 for p in per) / 2 / 3))
    assert row["mean_generated"] == pytest.approx(20.0)
    [one], _ = P.compare([P.Method("s", "sample", None, opts)], {}, None, "prmgym/ChainArithmetic-v0",
                         budgets=[40], n_tasks=3, seed=5, per_task=True)
    assert one["correct"] == [1, 0, 0] and "repeats" not in one
    assert one["stderr"] == pytest.approx(math.sqrt((1 / 3) * (2 / 3) / 3))  # binomial with one run
    with pytest.raises(ValueError, match="repeats must be >= 1"):
        P.Method("s", "sample", repeats=0)
