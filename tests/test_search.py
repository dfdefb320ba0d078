"""Planner behaviour with exact fakes (tests/search_fakes.py): who picks what, and why."""

from __future__ import annotations

import json
import math

import pytest

from prmgym.budget import Budget
from prmgym.search import DVTS, MCTS, BeamSearch, BestOfN, SearchResult, collect_value_targets
from prmgym.search.engine import Node, SearchEngine, vote
from search_fakes import TASKS, CheckingPRM, FakeChainEnv, TablePolicy


def run(planner, task=TASKS[0], n_wrong=1, prm=None, budget=None, **pol):
    env = FakeChainEnv(task)
    env.reset(options={"task": task})
    policy = TablePolicy(n_wrong=n_wrong, **pol)
    res = planner.solve(env, policy, prm, budget or Budget())
    assert isinstance(res, SearchResult)
    return res, policy, env


# -- best-of-N -----------------------------------------------------------------------------
def test_bon_first_sample_is_the_wrong_one_and_prm_fixes_it():
    res, _, _ = run(BestOfN(n=4, select="first"), n_wrong=1)
    assert res.reward == 0.0 and res.answer != TASKS[0].answer
    res, _, _ = run(BestOfN(n=4, select="prm", aggregation="min"), n_wrong=1, prm=CheckingPRM())
    assert res.reward == 1.0 and res.answer == TASKS[0].answer and res.score == 1.0
    assert res.steps == list(TASKS[0].expert_steps)


def test_bon_prm_aggregation_matters_with_a_per_step_prm():
    # A per-step PRM says 1.0 for the last step of a consistent-but-wrong trace: "last"
    # cannot tell, "min" can (first max wins ties, and the first sample is the wrong one).
    prm = CheckingPRM(cumulative=False)
    assert run(BestOfN(n=4, select="prm", aggregation="last"), prm=prm)[0].reward == 0.0
    assert run(BestOfN(n=4, select="prm", aggregation="min"), prm=CheckingPRM(cumulative=False))[0].reward == 1.0
    assert run(BestOfN(n=4, select="prm", aggregation="prod"), prm=CheckingPRM(cumulative=False))[0].reward == 1.0


def test_bon_orm_reads_only_the_final_score():
    assert run(BestOfN(n=4, select="orm"), prm=CheckingPRM(cumulative=True))[0].reward == 1.0
    assert run(BestOfN(n=4, select="orm"), prm=CheckingPRM(cumulative=False))[0].reward == 0.0


def test_majority_and_weighted_vote():
    res, _, _ = run(BestOfN(n=4, select="majority"), n_wrong=1)
    assert res.reward == 1.0 and res.score == pytest.approx(0.75)
    res, _, _ = run(BestOfN(n=4, select="majority"), n_wrong=3)  # 3 identical wrong answers
    assert res.reward == 0.0 and res.score == pytest.approx(0.75)
    res, _, _ = run(BestOfN(n=4, select="weighted_vote"), n_wrong=3, prm=CheckingPRM())
    assert res.reward == 1.0 and res.score == pytest.approx(1.0)


def test_bon_stepwise_matches_whole_trace_sampling():
    res, pol, _ = run(BestOfN(n=4, select="prm", aggregation="min", stepwise=True), n_wrong=0, prm=CheckingPRM())
    assert res.reward == 1.0 and res.steps == list(TASKS[0].expert_steps)
    # root: one call with 4 samples; then one call per level with the 4 traces, 1 sample each
    assert [c[:3] for c in pol.calls] == [(1, 4, "\n")] + [(4, 1, "\n")] * 3


def test_planners_never_peek_at_the_verifier():
    # An inverted PRM prefers wrong traces: a planner that looked at the reward would not.
    inv = lambda: CheckingPRM(invert=True)  # noqa: E731
    assert run(BestOfN(n=4, select="prm", aggregation="min"), prm=inv())[0].reward == 0.0
    assert run(BeamSearch(beam_width=2, expansions=4), n_wrong=3, prm=inv())[0].reward == 0.0
    assert run(MCTS.airl_s(iterations=12, expansions=4), n_wrong=3, prm=inv())[0].reward == 0.0


# -- beam / DVTS ---------------------------------------------------------------------------
@pytest.mark.parametrize("task", TASKS)
def test_beam_search_prunes_wrong_steps(task):
    # 3 of 4 expansions slip at every level; the PRM keeps the right one.
    res, pol, _ = run(BeamSearch(beam_width=2, expansions=4), task=task, n_wrong=3, prm=CheckingPRM())
    assert res.reward == 1.0 and res.steps == list(task.expert_steps)
    assert res.tree["finished"] >= 1 and res.tree["depth"] == len(task.expert_steps)
    # Root expanded once with N*M samples, later levels M per beam.
    assert pol.calls[0][:2] == (1, 8)


def test_beam_without_a_good_prm_is_sampling():
    res, _, _ = run(BestOfN(n=1, select="first"), n_wrong=3)
    assert res.reward == 0.0


def test_dvts_subtrees_are_independent():
    res, pol, _ = run(DVTS(n=4, subtree_width=2), n_wrong=1, prm=CheckingPRM())
    assert res.reward == 1.0
    assert pol.calls[0][:2] == (1, 4)  # root: 2 subtrees x 2 samples in one call
    assert all(c[1] == 2 for c in pol.calls[1:])  # then 2 samples per subtree beam
    with pytest.raises(ValueError, match="multiple of subtree_width"):
        DVTS(n=5, subtree_width=2)


def test_beam_weighted_vote_selection():
    res, _, _ = run(BeamSearch(beam_width=3, expansions=2, select="weighted_vote"), n_wrong=1, prm=CheckingPRM())
    assert res.reward == 1.0 and 0 < res.score <= 1


# -- MCTS ------------------------------------------------------------------------------------
@pytest.mark.parametrize("select", ["uct", "puct"])
@pytest.mark.parametrize("answer", ["best_value", "visits", "best_completion"])
def test_mcts_prm_finds_the_right_trace(select, answer):
    planner = MCTS(iterations=12, expansions=4, select=select, c=1.0, evaluation="prm", answer=answer)
    res, _, _ = run(planner, n_wrong=3, prm=CheckingPRM())
    assert res.reward == 1.0 and res.answer == TASKS[0].answer
    assert res.tree["root_visits"] > 0 and res.tree["nodes"] > 4


def test_mcts_rollout_evaluation_scores_finished_rollouts_with_the_scorer():
    prm = CheckingPRM()
    res, pol, _ = run(MCTS(iterations=6, expansions=3, evaluation="rollout", aggregation="min"), n_wrong=1, prm=prm)
    assert res.reward == 1.0
    assert any(stop is None for _, _, stop, _ in pol.calls)  # rollouts sample to the end
    assert res.tree["completions"] >= 1


def test_vm_mcts_preset_picks_the_highest_value_completion():
    planner = MCTS.vm_mcts(iterations=4)
    assert (planner.select, planner.c, planner.expansions, planner.evaluation, planner.expansion) == (
        "uct", 0.1, 5, "value", "continuation")
    res, pol, _ = run(planner, n_wrong=3, prm=CheckingPRM())
    assert res.reward == 1.0 and res.score == 1.0
    assert pol.calls[0] == (1, 5, None, 256)  # 5 full continuations per expansion


def test_puct_prior_is_normalised_exp_mean_logprob():
    env = FakeChainEnv(TASKS[0])
    env.reset()
    policy = TablePolicy(n_wrong=1, logprob_right=-0.2, logprob_wrong=-2.0)
    planner = MCTS(iterations=1, expansions=2, select="puct")
    planner.solve(env, policy, CheckingPRM(), Budget())
    kids = planner.last_root.children
    assert len(kids) == 2
    expect = [math.exp(-2.0), math.exp(-0.2)]
    assert [k.prior for k in kids] == pytest.approx([e / sum(expect) for e in expect])
    # UCT/PUCT formulas
    parent = Node(steps=(), state=None, visits=9)
    ch = Node(steps=("a",), state=None, visits=2, value_sum=1.0, prior=0.25)
    uct = MCTS(select="uct", c=0.2, eps=0.1)
    assert uct._selection_score(parent, ch) == pytest.approx(0.5 + 0.2 * math.sqrt((1 + math.log(9)) / 2.1))
    puct = MCTS(select="puct", c=None)
    c = math.log((1 + 9 + 19652) / 19652) + 1.25
    assert puct._selection_score(parent, ch) == pytest.approx(0.5 + c * 0.25 * 3 / 3)


def test_mcts_backup_is_mean_of_values():
    env = FakeChainEnv(TASKS[0])
    env.reset()
    planner = MCTS(iterations=5, expansions=2, evaluation="prm")
    planner.solve(env, TablePolicy(n_wrong=1), CheckingPRM(), Budget())
    for n in planner.last_root.iter_subtree():
        if n.children and n.parent is not None:
            # visits/value of an expanded node = its own evaluation + its children's
            assert n.visits == 1 + sum(c.visits for c in n.children) or n.terminal
            assert n.value_sum == pytest.approx(n.score + sum(c.value_sum for c in n.children))


# -- collection ------------------------------------------------------------------------------
def test_collection_writes_value_targets_and_high_value_prefixes(tmp_path):
    env = FakeChainEnv(TASKS[0])
    planner = MCTS.collection(iterations=6, expansions=4)
    path = tmp_path / "targets.jsonl"
    collect_value_targets(env, TablePolicy(n_wrong=1), TASKS[:2], path, planner=planner)
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert rows and all(set(r) == {"prompt", "steps", "value", "visits"} for r in rows)
    assert all(0.0 <= r["value"] <= 1.0 and r["visits"] >= 1 for r in rows)
    assert {r["prompt"] for r in rows} == {TASKS[0].prompt, TASKS[1].prompt}
    # Each expansion: 4 verified continuations, 1 wrong -> root value 3/4 after the first.
    # The root has no rollouts of its own: its counts are its children's.
    root = planner.last_root
    assert root.visits == sum(c.visits for c in root.children) > 0
    assert root.value_sum == pytest.approx(sum(c.value_sum for c in root.children))
    # Everything beneath a slipped step is wrong (value 0); expert prefixes hold the
    # right completions (value > 0, and 1 for the finished expert trace).
    for r in rows:
        expert = list(next(t for t in TASKS if t.prompt == r["prompt"]).expert_steps)
        if r["steps"] == expert:
            assert r["value"] == 1.0
        elif r["steps"] and expert[: len(r["steps"])] == r["steps"]:
            assert 0.0 < r["value"] <= 1.0
        elif r["steps"]:
            assert r["value"] == 0.0
    prefixes = planner.high_value_prefixes(min_value=0.9, min_visits=1)
    assert prefixes
    for task, steps in prefixes:
        assert steps == list(task.expert_steps[: len(steps)]) and len(steps) >= 1
    from prmgym.rewards.value import load_value_targets

    assert len(load_value_targets(path)) == len(rows)


# -- engine / errors -------------------------------------------------------------------------
def test_vote_ties_go_to_the_first_answer():
    a, b = Node((), None, answer="1"), Node((), None, answer="2")
    assert vote([a, b])[0] == "1"
    assert vote([a, b], [1.0, 2.0])[0] == "2"
    assert vote([Node((), None)]) == (None, 0.0, [])


def test_bad_settings_raise_clear_errors():
    with pytest.raises(ValueError, match="unknown selection"):
        BestOfN(select="best")
    with pytest.raises(ValueError, match="aggregation"):
        BeamSearch(aggregation="median")
    with pytest.raises(ValueError, match="only for collection"):
        MCTS(evaluation="verifier")
    with pytest.raises(ValueError, match="needs a scorer"):
        run(BestOfN(select="prm"))
    with pytest.raises(ValueError, match="PRM"):
        run(BeamSearch())
    with pytest.raises(TypeError, match="prmgym reasoning env"):
        SearchEngine(object.__new__(type("E", (), {"unwrapped": property(lambda s: s)})), TablePolicy(), None, None)


def test_bon_keeps_sampling_when_the_budget_shrinks_a_wave():
    # max_trace_tokens=256 reserves 256 tokens per sample, so a 600-token budget lets each
    # call take only 2 samples; best-of-N must keep calling until n or the budget is reached.
    res, pol, _ = run(BestOfN(n=16, select="majority", wave=8), budget=Budget(generated=600))
    assert res.tree["sampled"] > 8 and all(c[1] <= 2 for c in pol.calls)
    assert res.budget["generated"] <= 600
    res, _, _ = run(BestOfN(n=16, select="majority", wave=8), budget=Budget(generated=100_000))
    assert res.tree["sampled"] == 16 and res.tree["finished"] == 16
