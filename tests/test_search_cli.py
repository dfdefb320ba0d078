"""`prmgym search` and the evaluation loop behind it."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from prmgym.search.evaluate import evaluate_planner, make_planner, planner_names
from search_fakes import TASKS, CheckingPRM, FakeChainEnv, TablePolicy


def test_every_planner_name_builds():
    for name in planner_names():
        assert hasattr(make_planner(name), "solve")
    with pytest.raises(ValueError, match="unknown planner"):
        make_planner("astar")


def test_a_new_planner_registers_by_name_and_builds_from_the_shared_knobs():
    from prmgym.search.base import Planner, SearchResult, needs_scorer, planner_help

    class FirstStep(Planner):
        names = {"test_first_step": "the first sampled step's trace, no scorer"}
        needs_scorer = False

        def __init__(self, n, seed, label="x"):
            self.n, self.seed, self.label = n, seed, label

        @classmethod
        def from_options(cls, name, options, **extra):
            return cls(options.n, options.seed, **extra)

        def solve(self, env, policy, scorer=None, budget=None):
            return SearchResult(answer=None, steps=[], score=0.0, budget={"generated": self.n})

    p = make_planner("test_first_step", n=3, seed=9, label="y")
    assert isinstance(p, FirstStep) and (p.n, p.seed, p.label) == (3, 9, "y")
    assert "test_first_step" in planner_names() and not needs_scorer("test_first_step")
    assert planner_help("test_first_step").startswith("the first sampled step")
    assert evaluate_planner(p, FakeChainEnv(), TablePolicy(), None, TASKS[:2])["budget"]["generated"] == 3
    with pytest.raises(ValueError, match="taken by BeamSearch"):
        class Clash(FirstStep):
            names = {"beam": "another beam"}
    with pytest.raises(TypeError, match="no from_options"):
        class NoBuilder(Planner):
            names = {"test_no_builder": "cannot be built"}

            def solve(self, env, policy, scorer=None, budget=None):
                raise AssertionError
    assert "test_no_builder" not in planner_names()
    assert [n for n in planner_names() if not needs_scorer(n)][:2] == ["sample", "majority"]


def test_evaluate_counts_accuracy_and_writes_rows(tmp_path):
    env = FakeChainEnv()
    path = tmp_path / "r.jsonl"
    res = evaluate_planner(make_planner("beam", beam_width=2, expansions=4), env, TablePolicy(n_wrong=3), CheckingPRM(),
                   TASKS, "generated=2000", results_path=path)
    assert res["accuracy"] == 1.0 and res["n"] == 3
    rows = [json.loads(x) for x in path.read_text().splitlines()]
    assert [r["task_id"] for r in rows] == [t.id for t in TASKS]
    assert all(r["correct"] and r["budget"]["generated"] <= 2000 for r in rows)
    # Sampling the first (wrong) sample gets everything wrong: accuracy really is measured.
    res = evaluate_planner(make_planner("sample"), env, TablePolicy(n_wrong=1), None, TASKS, {"generated": 2000})
    assert res["accuracy"] == 0.0 and res["budget"]["generated"] > 0


def test_search_cli_checks_its_inputs(tmp_path, capsys):
    from prmgym.cli import main

    base = ["search", "--policy", str(tmp_path / "nope")]
    for extra, msg in ((["--planner", "beam"], "needs --prm"), (["--planner", "majority"], "no policy directory"),
                       (["--planner", "majority", "--budget", "tokens=5"], "unknown budget unit")):
        assert main(base + extra) == 2
        assert msg in capsys.readouterr().err


@pytest.mark.slow
def test_search_cli_end_to_end_with_a_tiny_policy_and_prm(tmp_path):
    import torch

    from prmgym.models import tiny
    from prmgym.rewards import AIRLPRM

    torch.set_num_threads(1)
    policy = tiny.random_tiny_policy(seed=0)
    pol_dir = policy.save(tmp_path / "policy")
    AIRLPRM.from_backbone(policy).save(tmp_path / "prm")
    out = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-m", "prmgym.cli", "search", "--planner", "beam", "--policy", pol_dir,
                           "--prm", str(tmp_path / "prm"), "--n-tasks", "2", "--budget", "generated=60",
                           "--beam-width", "2", "--expansions", "2", "--max-depth", "3", "--out", str(out)],
                          capture_output=True, text=True, env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "accuracy" in proc.stdout
    rows = [json.loads(x) for x in (out / "results.jsonl").read_text().splitlines()]
    assert len(rows) == 2 and all(r["budget"]["generated"] <= 60 for r in rows)
    assert list(out.rglob("events.out.tfevents.*"))


def test_evaluate_starts_every_search_with_a_cold_prm_cache():
    class CachingPRM(CheckingPRM):
        def __init__(self):
            super().__init__()
            self.cache, self.clears = {}, 0

        def clear_cache(self):
            self.clears += 1
            self.cache.clear()

    prm = CachingPRM()
    evaluate_planner(make_planner("beam", beam_width=2, expansions=2), FakeChainEnv(), TablePolicy(n_wrong=1), prm, TASKS,
             "generated=500")
    assert prm.clears == len(TASKS)


def _rows(out):
    """The result rows without their wall-clock seconds (the one field a rerun may change)."""
    rows = [json.loads(x) for x in (out / "results.jsonl").read_text().splitlines()]
    for r in rows:
        r["budget"].pop("seconds")
    return rows


def test_search_out_is_refused_overwritten_or_resumed(tmp_path, capsys):
    import torch

    from prmgym.cli import main
    from prmgym.models import tiny

    torch.set_num_threads(1)
    pol_dir = tiny.random_tiny_policy(seed=0).save(tmp_path / "policy")
    out = tmp_path / "run"
    cmd = ["search", "--planner", "sample", "--policy", pol_dir, "--n-tasks", "3", "--budget", "generated=40",
           "--max-depth", "3", "--out", str(out), "--quiet"]
    assert main(cmd) == 0
    first = _rows(out)
    assert len(first) == 3
    summary = json.loads((out / "summary.json").read_text())
    # the same --out again: refused, nothing appended
    capsys.readouterr()
    assert main(cmd) == 2
    err = capsys.readouterr().err
    assert "already holds a search (3 rows in results.jsonl)" in err and "--resume" in err and "--overwrite" in err
    assert len(_rows(out)) == 3
    assert main(cmd + ["--overwrite"]) == 0
    assert _rows(out) == first
    # an interrupted search (one row and a torn line written, no summary) resumes where it stopped
    lines = (out / "results.jsonl").read_text().splitlines()
    (out / "results.jsonl").write_text(lines[0] + "\n" + lines[1][:20])
    (out / "summary.json").unlink()
    assert main(cmd + ["--resume"]) == 0
    assert "1 done before, 2 to go" in capsys.readouterr().out
    assert _rows(out) == first
    resumed = json.loads((out / "summary.json").read_text())
    assert resumed["n"] == 3 and resumed["accuracy"] == summary["accuracy"]
    # other settings cannot resume it; a complete search has nothing to do
    assert main(cmd + ["--resume", "--seed", "1"]) == 2
    assert "other settings (seed: 0 then, 1 now)" in capsys.readouterr().err
    assert main(cmd + ["--resume"]) == 0
    assert "complete (3 of 3 tasks); nothing to do" in capsys.readouterr().out
    assert main(cmd + ["--resume", "--overwrite"]) == 2
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(out / "tb"))
    acc.Reload()
    assert [e.step for e in acc.Scalars("search/sample/reward")] == [0, 1, 2]
    steps = [json.loads(x)["step"] for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps == [0, 1, 2, 3]  # one row per task, then the accuracy at step n
