"""Held-out metrics while a PRM trains offline: the metrics themselves, keeping the best PRM,
early stopping on patience, and a held-out score that rises with training."""

import json
import os
import random

import gymnasium as gym
import pytest
import torch

import prmgym  # noqa: F401  (registers the environments)
from prmgym.rewards import ORMPRM, PRM_CLASSES, ValueModel, ValueTarget, load_prm
from prmgym.rewards.data import Trace
from prmgym.rewards.heldout import VALIDATORS, HeldOut, auc, build_value, measure_outcome, measure_proposals, measure_value
from prmgym.rewards.train import OfflinePRMTrainer, PRMTrainConfig, build_prm
from prmgym.models import tiny

torch.set_num_threads(1)
ENV = "prmgym/ChainArithmetic-v0"


@pytest.fixture(scope="module")
def policy():
    return tiny.random_tiny_policy(seed=0, n_layer=1, n_embd=32, n_head=2, n_positions=256)


def test_auc_matches_pair_counting_with_ties():
    rng = random.Random(0)
    for _ in range(20):
        good = [rng.choice([0.1, 0.2, 0.5, 0.7]) for _ in range(rng.randint(1, 7))]
        bad = [rng.choice([0.1, 0.2, 0.5, 0.7]) for _ in range(rng.randint(1, 7))]
        pairs = [1.0 if g > b else 0.5 if g == b else 0.0 for g in good for b in bad]
        assert auc(good, bad) == pytest.approx(sum(pairs) / len(pairs))
    assert auc([], [1.0]) != auc([], [1.0])  # NaN: nothing to compare


class _FixedScores:
    """A stand-in PRM whose step scores are given per (prompt, steps)."""

    def __init__(self, table):
        self.table = table

    def score_steps(self, prompts, step_lists):
        return [self.table[(p, tuple(s))] for p, s in zip(prompts, step_lists)]

    def score(self, prompts, step_lists, aggregation="last"):
        return [row[-1] for row in self.score_steps(prompts, step_lists)]


def test_measures_rank_what_they_say():
    # proposals: within-prefix pairs only; prefix 0 ranks right over wrong, prefix 1 the reverse once
    items = [(0, Trace("p", ["a"]), True), (0, Trace("p", ["b"]), False),
             (1, Trace("p", ["x", "c"]), True), (1, Trace("p", ["x", "d"]), False), (1, Trace("p", ["x", "e"]), False)]
    prm = _FixedScores({("p", ("a",)): [0.9], ("p", ("b",)): [0.1],
                        ("p", ("x", "c")): [0.5, 0.4], ("p", ("x", "d")): [0.5, 0.6], ("p", ("x", "e")): [0.5, 0.2]})
    m = measure_proposals(prm, items)
    assert m["sibling_pairs"] == 3 and m["within_prefix_auc"] == pytest.approx(2 / 3) and m["score"] == m["within_prefix_auc"]
    # outcome: the last step's score of correct rollouts against wrong ones
    rolls = [Trace("q", ["1"], correct=True), Trace("q", ["2"], correct=False), Trace("q", ["3"], correct=False)]
    prm = _FixedScores({("q", ("1",)): [0.8], ("q", ("2",)): [0.9], ("q", ("3",)): [0.1]})
    assert measure_outcome(prm, rolls)["outcome_auc"] == pytest.approx(0.5)


def test_value_holdout_is_left_out_of_training_and_scored_by_mse(policy):
    targets = [ValueTarget(f"Compute {i} + 1.", (), (i % 3) / 2, 1) for i in range(25)]

    class Data:
        pass

    data = Data()
    data.targets = list(targets)
    held = build_value(data, 0)
    assert held == targets[::10] and len(data.targets) == 22 and not set(map(id, held)) & set(map(id, data.targets))
    vm = ValueModel.from_backbone(policy)
    m = measure_value(vm, held)
    v = vm.values([t.prompt for t in held], [[] for _ in held])
    assert m["heldout_mse"] == pytest.approx(sum((a - t.value) ** 2 for a, t in zip(v, held)) / 3) and m["score"] == -m["heldout_mse"]
    data.targets = targets[:5]
    with pytest.raises(ValueError, match="too few to hold out"):
        build_value(data, 0)


@pytest.fixture
def scripted_kind():
    """An ORM whose held-out score follows a script; records the weights at every evaluation."""
    seen = []
    scores = iter([0.5, 0.6, 0.9, 0.7, 0.8, 0.85, 0.95, 0.96])

    def measure(prm, items):
        seen.append((prm.updates, [p.detach().clone() for p in prm.parameters()]))
        s = next(scores)
        return {"score": s, "toy": s}

    class ScriptedORM(ORMPRM):
        kind = "toy_scripted"
        validation = "toy_scripted"

    VALIDATORS["toy_scripted"] = (lambda data, n: None, measure)
    yield seen
    del VALIDATORS["toy_scripted"], PRM_CLASSES["toy_scripted"]


def _train(policy, run_dir, **cfg):
    torch.manual_seed(0)
    prm = build_prm("toy_scripted", policy, learning_rate=1e-2)
    cfg = PRMTrainConfig(kind="toy_scripted", tasks_per_step=2, rollouts_per_task=1, max_new_tokens=6, max_steps=2, **cfg)
    tr = OfflinePRMTrainer(prm, policy, lambda: gym.make(ENV, split="train"), cfg, run_dir=run_dir)
    try:
        hist = tr.train()
    finally:
        tr.close()
    return prm, tr, hist


def test_early_stopping_keeps_the_best_prm(policy, scripted_kind, tmp_path):
    run = str(tmp_path / "run")
    prm, tr, hist = _train(policy, run, steps=10, eval_every=1, patience=2)
    # scores 0.5 (before training), 0.6, 0.9 (update 2), 0.7, 0.8: two evaluations without a new best -> stop at 4
    assert len(hist) == 4 and tr.summary["stopped_early"] and tr.summary["best_update"] == 2
    assert tr.summary["best_score"] == 0.9 and [u for u, _ in scripted_kind] == [0, 1, 2, 3, 4]
    best_weights = scripted_kind[2][1]
    assert any(not torch.equal(a, b) for a, b in zip(best_weights, scripted_kind[4][1]))  # training moved on
    assert all(torch.equal(a, b) for a, b in zip(best_weights, prm.parameters()))  # ... and the best came back
    saved = load_prm(run)
    assert all(torch.equal(a, b) for a, b in zip(best_weights, saved.parameters()))
    assert load_prm(os.path.join(run, "checkpoint")).updates == 4  # resume continues from the last state
    assert json.load(open(os.path.join(run, "summary.json")))["best_update"] == 2
    logged = [json.loads(line) for line in open(os.path.join(run, "metrics.jsonl"))] if os.path.exists(
        os.path.join(run, "metrics.jsonl")) else []
    assert logged == []  # no logger given: nothing written besides the PRM, checkpoint and summary
    assert [h["heldout/toy"] for h in hist] == [0.6, 0.9, 0.7, 0.8] and hist[-1]["heldout/best_score"] == 0.9


def test_without_patience_all_updates_run_and_the_best_is_kept(policy, scripted_kind):
    prm, tr, hist = _train(policy, None, steps=6, eval_every=2)
    # evaluations at updates 0, 2, 4, 6 read scores 0.5, 0.6, 0.9, 0.7
    assert len(hist) == 6 and not tr.summary["stopped_early"] and tr.summary["best_update"] == 4
    assert all(torch.equal(a, b) for a, b in zip(scripted_kind[2][1], prm.parameters()))


def test_eval_settings_are_checked():
    with pytest.raises(ValueError, match="patience=3 stops on the held-out score"):
        PRMTrainConfig(kind="orm", patience=3)
    with pytest.raises(ValueError, match="must be >= 0"):
        PRMTrainConfig(kind="orm", eval_every=-1)


def test_heldout_mse_falls_as_the_value_model_learns(policy, tmp_path):
    """A learnable task: V = 1 for prompts about apples, 0 about pears; held-out prompts are new."""
    targets = [ValueTarget(f"{'apples' if i % 2 else 'pears'} {i}", (), float(i % 2), 1) for i in range(60)]
    torch.manual_seed(0)
    vm = build_prm("value", policy, learning_rate=3e-3)
    cfg = PRMTrainConfig(kind="value", steps=30, batch_size=16, eval_every=10)
    tr = OfflinePRMTrainer(vm, None, None, cfg, targets=targets, run_dir=str(tmp_path / "vm"))
    hist = tr.train()
    mse = [h["heldout/heldout_mse"] for h in hist if "heldout/heldout_mse" in h]
    before = tr.summary["initial_metrics"]["heldout_mse"]
    assert len(mse) == 3 and tr.summary["best_update"] > 0
    assert tr.summary["best_metrics"]["heldout_mse"] == min(mse) < 0.5 * before, (before, mse)
    assert json.load(open(tmp_path / "vm" / "summary.json"))["best_score"] == -min(mse)
    assert len(tr.data.targets) == 54 and isinstance(tr._heldout, HeldOut)  # 6 of 60 held out, drawn once


def test_train_prm_logs_the_heldout_score_and_prints_the_summary(policy, scripted_kind, tmp_path, capsys):
    from prmgym.cli import main

    pdir = str(tmp_path / "pol")
    policy.save(pdir)
    out = str(tmp_path / "run")
    assert main(["train-prm", "--kind", "toy_scripted", "--policy", pdir, "--env", ENV, "--out", out, "--steps", "10",
                 "--set", "tasks_per_step=2", "--set", "rollouts_per_task=1", "--set", "max_new_tokens=6",
                 "--set", "max_steps=2", "--set", "eval_every=1", "--set", "patience=2", "--set", "prm.learning_rate=1e-2",
                 "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "held-out toy_scripted: best score 0.9000 at update 2 (stopped early (patience))" in printed
    rows = [json.loads(line) for line in open(os.path.join(out, "metrics.jsonl"))]
    assert [r["step"] for r in rows] == [0, 1, 2, 3, 4] and rows[0]["prm/heldout/toy"] == 0.5
    assert rows[-1]["prm/heldout/best_score"] == 0.9 and load_prm(out).updates == 2  # the best PRM, saved at update 2


# ------------------------------------------------------------------------------- corrupted steps
def test_corrupted_pairs_change_one_number_of_one_step():
    from prmgym.rewards.heldout import corrupted_pairs

    env = gym.make(ENV, split="train")
    tasks = list(env.unwrapped.source.tasks("train", 30, seed=5))
    env.close()
    traces = [Trace(t.prompt, list(t.expert_steps)) for t in tasks] + [Trace("no numbers", ["a", "b"])]
    pairs = corrupted_pairs(traces, seed=0)
    assert len(pairs) == 30  # the trace without a number is skipped
    assert corrupted_pairs(traces, seed=0) == pairs  # deterministic in the seed
    where = set()
    for prompt, clean, bad, i in pairs:
        diff = [k for k, (a, b) in enumerate(zip(clean, bad)) if a != b]
        assert diff == [i] and len(clean) == len(bad)
        old, new = clean[i].rsplit("=", 1)[-1].split(":")[-1], bad[i].rsplit("=", 1)[-1].split(":")[-1]
        assert int(new) >= 0 and 1 <= abs(int(new) - int(old)) <= 3  # the last number, moved by 1 to 3
        where.add(i)
    assert len(where) > 1  # not always the same step


def test_corrupted_auc_and_reported_beside_the_own_score(policy):
    from prmgym.rewards.heldout import measure_corrupted

    pairs = [("q", ["1+1=2", "Answer: 2"], ["1+1=3", "Answer: 2"], 0), ("r", ["2+2=4"], ["2+2=5"], 0)]
    prm = _FixedScores({("q", ("1+1=2",)): [0.9], ("q", ("1+1=2", "Answer: 2")): [0.9, 0.8],
                        ("q", ("1+1=3", "Answer: 2")): [0.2, 0.85], ("r", ("2+2=4",)): [0.3], ("r", ("2+2=5",)): [0.35]})
    m = measure_corrupted(prm, pairs)
    # min scores: clean 0.8, 0.3; corrupted 0.2, 0.35 -> 3 of 4 pairs ranked right (the step scores too)
    assert m["corrupted_auc"] == pytest.approx(0.75) and m["corrupted_step_auc"] == pytest.approx(0.75)
    assert m["corrupted_pairs"] == 2
    for kind in ("airl", "mc", "repirl"):
        assert "corrupted" in PRM_CLASSES[kind].also_validate
    # measured by HeldOut next to the kind's own score, which stays the one that picks the best PRM
    from prmgym.rewards.train import PRMData

    cfg = PRMTrainConfig(kind="mc", eval_tasks=3, rollouts_per_task=1, mc_rollouts=1, max_new_tokens=6, max_steps=2)
    from prmgym.rewards.data import EnvPool

    pool = EnvPool(lambda: gym.make(ENV, split="train"))
    prm = build_prm("mc", policy)
    try:
        held = HeldOut(prm, PRMData(cfg, policy, pool, None, prm), 3)
        ev = held.measure(prm)
    finally:
        pool.close()
    assert held.name == "step_labels" and ev["corrupted_pairs"] == 3 and 0.0 <= ev["corrupted_auc"] <= 1.0
    assert ev["score"] == ev["step_auc"] or ev["score"] != ev["score"]


def test_train_prm_stops_early_by_default():
    from prmgym.rewards.train import TrainPRMRun

    run = TrainPRMRun(kind="orm")
    assert (run.eval_every, run.patience, run.eval_tasks) == (10, 5, 64) and run.train_config().eval_every == 10
    assert run.train_config().eval_tasks == 64 and PRMTrainConfig(kind="orm").eval_tasks == 16
    assert (PRMTrainConfig(kind="orm").eval_every, PRMTrainConfig(kind="orm").patience) == (0, 0)  # the Python API: off
    assert TrainPRMRun(kind="orm", eval_every=0).patience == 0  # eval_every=0 turns early stopping off with it


def test_heldout_scores_each_distinct_trace_once_and_outcome_min():
    from prmgym.rewards.heldout import measure_outcome_min

    class Counting(_FixedScores):
        def score_steps(self, prompts, step_lists):
            self.n = getattr(self, "n", 0) + len(prompts)
            return super().score_steps(prompts, step_lists)

    rolls = [Trace("q", ["1", "2"], correct=True), Trace("q", ["1", "3"], correct=False),
             Trace("q", ["1", "2"], correct=True), Trace("q", ["4"], correct=False)]
    prm = Counting({("q", ("1", "2")): [0.9, 0.5], ("q", ("1", "3")): [0.2, 0.8], ("q", ("4",)): [0.6]})
    m = measure_outcome_min(prm, rolls)
    # min: correct 0.5, 0.5; wrong 0.2, 0.6 -> 2 of 4 pairs; by the last step: 0.5 vs 0.8, 0.6 -> 0 of 4
    assert m["outcome_auc_min"] == pytest.approx(0.5) and m["score"] == m["outcome_auc_min"] and prm.n == 3
    assert measure_outcome(prm, rolls)["outcome_auc"] == 0.0 and prm.n == 6  # the repeated trace is scored once


def test_validation_setting_replaces_the_kinds_own_and_keeps_it_beside(policy):
    from prmgym.rewards.data import EnvPool
    from prmgym.rewards.train import PRMData

    with pytest.raises(ValueError, match="unknown validation 'nope'"):
        PRMTrainConfig(kind="orm", validation="nope")
    cfg = PRMTrainConfig(kind="orm", eval_tasks=3, rollouts_per_task=2, max_new_tokens=6, max_steps=2, validation="outcome_min")
    pool = EnvPool(lambda: gym.make(ENV, split="train"))
    prm = build_prm("orm", policy)
    try:
        held = HeldOut(prm, PRMData(cfg, policy, pool, None, prm), 3, cfg.validation)
        ev = held.measure(prm)
    finally:
        pool.close()
    assert held.name == "outcome_min" and held.also[0][1] is held.items  # one rollout set for both metrics
    assert "outcome_auc" in ev and (ev["score"] == ev["outcome_auc_min"] or ev["score"] != ev["score"])
