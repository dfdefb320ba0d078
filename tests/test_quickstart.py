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
    md = (out / "report.md").read_text()
    assert "| method |" in md and "accuracy_vs_budget.png" in md and "toolmath_majority_vote" in md
