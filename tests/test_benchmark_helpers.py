"""The benchmark scripts' own logic: the oracle step checker, the own-proposal AUCs, --merge,
seed_claims.py's claim (s) (paired differences, its merge, and its whole path on a tiny model)."""

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
import seed_claims  # noqa: E402


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


def _s_rows(correct: dict[str, list[int]], budget: int = 100) -> list[dict]:
    return [{"method": m, "budget": budget, "accuracy": sum(c) / len(c), "correct": c, "mean_generated": 1.0,
             "mean_prm": 0.0} for m, c in correct.items()]


def test_claim_s_paired_differences_by_hand():
    per_seed = {"0": _s_rows({"bon_airl_s": [1, 1, 0, 1], "bon_airl_prior": [0, 1, 0, 0]}),
                "1": _s_rows({"bon_airl_s": [0, 1, 1, 1], "bon_airl_prior": [0, 0, 1, 1]})}
    d = seed_claims.paired(per_seed, "bon_airl_s", "bon_airl_prior", 100)
    # seed 0: differences 1,0,0,1 (mean 0.5, sd √(1/3), se √(1/3)/2); seed 1: 0,1,0,0 (mean 0.25, sd 0.5, se 0.25)
    assert d["per_seed"] == [0.5, 0.25] and d["mean"] == pytest.approx(0.375) and d["n"] == 8
    assert d["se_tasks"] == pytest.approx((1 / 12 + 1 / 16) ** 0.5 / 2)
    assert d["se_seeds"] == pytest.approx(0.25 / 2 ** 0.5 / 2 ** 0.5)  # sd of (0.5, 0.25) / √2
    assert d["se"] == d["se_tasks"] and d["seeds_ahead"] == 2
    assert seed_claims.paired(per_seed, "bon_airl_s", "bon_airl_prior", 200) is None  # no row at that budget
    md, summary = seed_claims.claim_s_report(per_seed)
    assert "| bon | airl_s − airl_prior | +0.375 | 0.191 | 0.125 | +0.500 / +0.250 | no |" in md
    assert "| airl_s | 0.750 ± 0.000 | - | - |" in md  # 0.75 on both seeds
    assert "| airl_prior | 0.375 ± 0.125 | - | - |" in md  # mean of 0.25 and 0.5, sd 0.177 / √2
    assert summary["paired"]["bon_airl_s-airl_prior@100"]["mean"] == pytest.approx(0.375)
    bad = {"0": _s_rows({"bon_airl_s": [1, 0], "bon_airl_prior": [1]})}
    with pytest.raises(ValueError, match="same tasks"):
        seed_claims.paired(bad, "bon_airl_s", "bon_airl_prior", 100)


def test_claim_s_merge_refuses_unfinished_duplicate_or_mixed_runs(tmp_path):
    settings = {"env": "e", "env_kwargs": None, "eval_tasks": 4, "budgets": [100], "grpo_steps": 2, "policy": "p",
                "offline_airl_steps": None, "prm_sets": [], "n_max": 32, "iterations": 30}

    def write(name, seed, complete=True, **changes):
        rows = {seed: _s_rows({"bon_airl_s": [1, 1, 0, seed % 2], "bon_airl_prior": [0, 1, 0, 0]})}
        seed_claims.write_claim_s(str(tmp_path / name), {**settings, **changes, "seeds": [seed]}, rows, {seed: {}}, complete)
        return str(tmp_path / name)

    assert seed_claims.merge_s([write("a", 0), write("b", 1)], str(tmp_path / "m")) == 0
    merged = json.loads((tmp_path / "m" / "claim_s.json").read_text())
    assert sorted(merged["per_seed"]) == ["0", "1"] and merged["settings"]["seeds"] == [0, 1]
    assert merged["summary"]["paired"]["bon_airl_s-airl_prior@100"]["per_seed"] == [0.25, 0.5]
    assert "airl_s − airl_prior" in (tmp_path / "m" / "claim_s.md").read_text()
    with pytest.raises(SystemExit, match="not finished"):
        seed_claims.merge_s([write("c", 2, complete=False)], str(tmp_path / "m2"))
    with pytest.raises(SystemExit, match="more than one"):
        seed_claims.merge_s([write("d", 3), write("e", 3)], str(tmp_path / "m3"))
    with pytest.raises(SystemExit, match="differ in grpo_steps"):
        seed_claims.merge_s([write("f", 4), write("g", 5, grpo_steps=9)], str(tmp_path / "m4"))


def test_claim_s_whole_path_on_a_tiny_model(tmp_path):
    """GRPO with the online AIRL reward, the offline AIRL / ORM / MC-PRM by train-prm, the prior, the
    oracle, every planner with every scorer on the GRPO policy: tiny sizes, a random tiny model."""
    import torch

    from prmgym.models import TransformersPolicy, tiny
    from prmgym.rewards import load_prm
    from prmgym.rewards.data import fill_logprobs

    torch.manual_seed(0)
    base = tiny.random_tiny_policy(seed=0, n_layer=1, n_embd=32, n_head=2, n_positions=256).save(str(tmp_path / "base"))
    sets = ["eval_tasks=2", "tasks_per_step=2", "rollouts_per_task=2", "max_new_tokens=6", "max_steps=3"]
    res = seed_claims.claim_s_seed(base, "prmgym/ChainArithmetic-v0", str(tmp_path / "s"), seed=0, budgets=[30],
                                   eval_tasks=3, grpo_steps=2, offline_airl_steps=2, prm_sets=sets, n_max=4, iterations=2,
                                   grpo_overrides={"batch_size": 4, "num_generations": 2, "max_new_tokens": 6,
                                                   "max_steps": 3})
    info, dirs, rows = res["info"], res["dirs"], res["rows"]
    # GRPO sampled 2 steps x 4 episodes = 8 rollouts: the ORM and MC-PRM get 2 updates of 2 tasks x 2 rollouts
    assert info["grpo_episodes"] == 8 and seed_claims.updates_for(8, sets) == 2
    assert info["summaries"]["orm"]["updates"] == 2 and info["summaries"]["mc"]["updates"] == 2
    assert info["summaries"]["airl_offline"]["updates"] == 2
    # airl_s is the discriminator GRPO saved (trained online: one update per GRPO step), not a fresh one
    assert dirs["airl_s"] == str(tmp_path / "s" / "grpo_airl" / "prm_airl")
    airl_s, prior = load_prm(dirs["airl_s"]), load_prm(dirs["airl_prior"])
    assert airl_s.updates == 2 and prior.updates == 0 and info["prm_updates"]["airl_s"] == 2
    # the prior is σ(mean token log-prob of the step) under the policy GRPO produced
    pol = TransformersPolicy.from_pretrained(str(tmp_path / "s" / "grpo_airl" / "policy"))
    p, steps = "Compute left to right: 3+4*2", ["3+4=7", "7*2=14", "Answer: 14"]
    lp, nt = fill_logprobs(pol, [p], [steps])
    want = torch.sigmoid(torch.tensor([a / n for a, n in zip(lp[0], nt[0])])).tolist()
    assert prior.score_steps([p], [steps])[0] == pytest.approx(want, abs=1e-4)
    assert airl_s.net.head.weight.abs().max() > 0 and prior.net.head.weight.abs().max() == 0  # trained vs zero heads
    # every planner with every scorer, plus majority vote and sampling, on the same 3 tasks
    names = {r["method"] for r in rows}
    assert names == {"sampling", "majority_vote"} | {f"{pl}_{s}" for pl in seed_claims.S_PLANNERS
                                                     for s in seed_claims.S_SCORERS}
    for r in rows:
        assert len(r["correct"]) == 3 and r["accuracy"] == pytest.approx(sum(r["correct"]) / 3)
        assert r["mean_generated"] <= 30
    md, _ = seed_claims.claim_s_report({0: rows})
    assert "| mcts | oracle − airl_s |" in md
