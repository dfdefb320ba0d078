"""The benchmark scripts' own logic: the oracle step checker, the own-proposal AUCs, --merge."""

from __future__ import annotations

import json
import os
import sys

import gymnasium as gym
import pytest

import prmgym  # noqa: F401  (registers the envs)

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks"))

import learning_curves  # noqa: E402
import prm_quality  # noqa: E402
import search_vs_vote  # noqa: E402


@pytest.mark.parametrize("source_kwargs", [{}, {"min_ops": 4, "max_ops": 6, "ops": "+-"}])
def test_chain_oracle_accepts_exactly_the_solver_steps(source_kwargs):
    env = gym.make("prmgym/ChainArithmetic-v0", split="test", source_kwargs=source_kwargs)
    tasks = env.unwrapped.source.tasks("test", 20, seed=0)
    oracle = search_vs_vote.ChainStepOracle()
    rows = oracle.score_steps([t.prompt for t in tasks], [list(t.expert_steps) for t in tasks])
    assert all(r == [1.0] * len(t.expert_steps) for r, t in zip(rows, tasks))
    p = "Compute left to right: 9-3*6"
    assert oracle.score_steps([p] * 4, [["9-3=6", "6*6=35", "Answer: 35"],   # wrong result
                                         ["9+3=12", "12*6=72"],               # right sum, wrong operation
                                         ["9-3=6", "Answer: 6"],              # answer before the end
                                         ["9 - 3 = 6"]]) == [[1.0, 0.0, 0.0], [0.0, 0.0], [1.0, 0.0], [1.0]]
    assert oracle.score([p], [["9-3=6", "6*6=35"]]) == [0.0]  # min aggregation


def test_own_metrics_pooled_and_within_prefix():
    # two prefixes; in prefix 0 the right step outscores its wrong sibling, in prefix 1 it does not
    items = [(0, "p", ["a"], 1.0, 0), (0, "p", ["b"], 0.0, 0), (1, "q", ["c"], 1.0, 0), (1, "q", ["d"], 0.0, 0)]
    m = prm_quality.own_metrics([0.9, 0.1, 0.2, 0.5], items)
    assert m["own_within"] == pytest.approx(0.5) and m["own_pairs"] == 2
    assert m["own_auc"] == pytest.approx(0.75)  # 0.9 beats 0.1 and 0.5; 0.2 beats only 0.1
    assert prm_quality.own_metrics([0.9, 0.1, 0.9, 0.1], items)["own_within"] == 1.0


def _lc_file(tmp_path, name, seed, complete=True, steps=10):
    d = tmp_path / name
    d.mkdir()
    run = {"curve": [[0, 0.1], [steps, 0.2 + seed / 100]], "train_seconds": 60.0, "train_rewards": [],
           "seed": seed, "steps": steps, "eval_tasks": 10, "trainer": {"learning_rate": 1e-4}}
    (d / "results.json").write_text(json.dumps({"results": {"chain": {"grpo": [run]}}, "complete": complete}))
    return str(d)


def test_learning_curves_merge(tmp_path):
    a, b = _lc_file(tmp_path, "a", 0), _lc_file(tmp_path, "b", 1)
    merged = learning_curves.merge_results([a, b])
    assert [r["seed"] for r in merged["chain"]["grpo"]] == [0, 1]
    assert learning_curves.write_report(merged, str(tmp_path / "out")) == 0
    assert "| chain | grpo | 0,1 | 10 |" in (tmp_path / "out" / "results.md").read_text()
    with pytest.raises(SystemExit, match="seed 0 is in both"):
        learning_curves.merge_results([a, a])
    with pytest.raises(SystemExit, match="has not finished"):
        learning_curves.merge_results([a, _lc_file(tmp_path, "c", 2, complete=False)])
    with pytest.raises(SystemExit, match="cannot share a mean"):
        learning_curves.merge_results([a, _lc_file(tmp_path, "d", 3, steps=20)])
    with pytest.raises(SystemExit, match="learning_curves.py --out directory"):
        learning_curves.merge_results([str(tmp_path / "missing")])


def test_search_vs_vote_merge_refuses_unfinished_or_mixed_runs(tmp_path):
    row = {"method": "majority", "budget": 150, "accuracy": 0.5, "n": 2, "stderr": 0.35, "mean_generated": 150.0,
           "mean_encoded": 0.0, "mean_prm": 0.0, "mean_sandbox": 0.0, "mean_seconds": 0.1}

    def write(name, seeds, done, **args):
        d = tmp_path / name
        d.mkdir()
        a = {"env": "prmgym/ChainArithmetic-v0", "env_kwargs": "{}", "eval_tasks": 2, "budgets": "150",
             "prm_steps": 1, "oracle": False, "seeds": seeds, **args}
        rows = {s: [dict(row)] for s in done}
        (d / "rows.json").write_text(json.dumps({"args": a, "policy": "P", "rows": rows,
                                                 "complete": set(done) == set(seeds.split(","))}))
        return str(d)

    assert search_vs_vote.merge([write("a", "0,1", ["0", "1"]), write("b", "2", ["2"])], str(tmp_path / "m")) == 0
    assert set(json.loads((tmp_path / "m" / "rows.json").read_text())["rows"]) == {"0", "1", "2"}
    with pytest.raises(SystemExit, match="has not"):
        search_vs_vote.merge([write("c", "3,4", ["3"])], str(tmp_path / "m2"))
    with pytest.raises(SystemExit, match="different settings"):
        search_vs_vote.merge([write("d", "5", ["5"]), write("e", "6", ["6"], eval_tasks=9)], str(tmp_path / "m3"))
    # a file written before --prm-lr / --airl-negatives existed trained at 1e-4 on rollouts: not like a new default run
    with pytest.raises(SystemExit, match="prm_lr, airl_negatives"):
        search_vs_vote.merge([write("f", "7", ["7"]), write("g", "8", ["8"], prm_lr=1e-5, airl_negatives="prefixes")],
                             str(tmp_path / "m4"))
    # the same PRMs listed in another order are the same setting
    assert search_vs_vote.merge([write("h", "9", ["9"], prms="airl,airl_prior"), write("i", "10", ["10"])],
                                str(tmp_path / "m5")) == 0


def test_search_vs_vote_gaps_are_paired_per_seed():
    def rows(maj, bon, beam):
        return [{"method": "majority", "budget": 100, "accuracy": maj}, {"method": "bon_airl", "budget": 100, "accuracy": bon},
                {"method": "beam2x4_airl", "budget": 100, "accuracy": beam}]

    md = search_vs_vote.gaps({"0": rows(0.2, 0.4, 0.5), "1": rows(0.3, 0.6, 0.5)})
    lines = md.splitlines()
    assert len(lines) == 4  # header, rule, beam vs bon, beam vs majority (majority and bon are not search methods)
    assert lines[2] == "| beam2x4_airl | bon_airl | +0.000 ± 0.141 (1/2) |"
    assert lines[3] == "| beam2x4_airl | majority | +0.250 ± 0.071 (2/2) |"
