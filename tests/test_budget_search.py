"""Budgets: a planner stopped at B never reports more than B, and the counts are exact."""

from __future__ import annotations

import pytest

from prmgym.budget import Budget
from prmgym.search import DVTS, MCTS, BeamSearch, BestOfN
from prmgym.search.engine import SearchEngine
from search_fakes import TASKS, CheckingPRM, FakeChainEnv, TablePolicy

PLANNERS = {
    "bon": lambda: BestOfN(n=16, select="prm", aggregation="min"),
    "bon_stepwise": lambda: BestOfN(n=16, select="weighted_vote", stepwise=True),
    "majority": lambda: BestOfN(n=16, select="majority"),
    "beam": lambda: BeamSearch(beam_width=3, expansions=3),
    "dvts": lambda: DVTS(n=6, subtree_width=3),
    "mcts": lambda: MCTS(iterations=30, expansions=3),
    "mcts_rollout": lambda: MCTS(iterations=30, expansions=3, evaluation="rollout"),
    "vm_mcts": lambda: MCTS.vm_mcts(iterations=30),
}


def solve(make, budget, n_wrong=1):
    env = FakeChainEnv(TASKS[2])
    env.reset()
    policy, prm = TablePolicy(n_wrong=n_wrong), CheckingPRM()
    res = make().solve(env, policy, prm, budget)
    return res, policy, prm


@pytest.mark.parametrize("name", sorted(PLANNERS))
@pytest.mark.parametrize("limit", [7, 40, 150, 600])
def test_generated_budget_is_never_exceeded_and_counts_are_exact(name, limit):
    budget = Budget(generated=limit)
    res, policy, prm = solve(PLANNERS[name], budget)
    assert res.budget["generated"] <= limit
    assert res.budget["generated"] == policy.generated == budget.used["generated"]
    assert res.budget["encoded"] == policy.encoded
    assert res.budget["prm"] == prm.tokens_scored
    # Small budgets really bind: the planner used most of what it was given.
    if limit <= 150:
        assert res.budget["generated"] > limit // 3


@pytest.mark.parametrize("name", sorted(PLANNERS))
def test_prm_and_encoded_budgets_are_never_exceeded(name):
    res, _, prm = solve(PLANNERS[name], Budget(prm=300))
    assert res.budget["prm"] <= 300 and res.budget["prm"] == prm.tokens_scored
    res, policy, _ = solve(PLANNERS[name], Budget(encoded=400))
    assert res.budget["encoded"] <= 400 and res.budget["encoded"] == policy.encoded


@pytest.mark.parametrize("name", sorted(PLANNERS))
def test_unlimited_budget_still_reports_usage(name):
    res, policy, prm = solve(PLANNERS[name], Budget())
    assert res.budget["generated"] == policy.generated > 0
    assert set(res.budget) == {"generated", "encoded", "prm", "sandbox", "seconds"}


def test_more_budget_never_hurts_beam_search():
    # With the same planner, a larger budget reaches at least the same answer quality.
    rewards = [solve(PLANNERS["beam"], Budget(generated=b), n_wrong=2)[0].reward for b in (30, 120, 2000)]
    assert rewards[-1] == 1.0 and rewards == sorted(rewards)


def test_propose_shrinks_calls_to_fit():
    env = FakeChainEnv(TASKS[0])
    env.reset()
    pol = TablePolicy(n_wrong=0)
    eng = SearchEngine(env, pol, None, Budget(generated=23))
    root = eng.root()
    (ps,) = eng.propose([root], 4, stop="\n", max_new_tokens=8)  # 23 // 8 -> 2 full-length samples
    assert len(ps) == 2 and pol.calls[-1][1:] == (2, "\n", 8) and eng.budget.used["generated"] == 16
    (ps,) = eng.propose([root], 4, stop="\n", max_new_tokens=8)  # 7 left: one shorter sample
    assert len(ps) == 1 and pol.calls[-1][1:] == (1, "\n", 7) and eng.budget.used["generated"] == 23
    (ps,) = eng.propose([root], 4, stop="\n", max_new_tokens=8)  # nothing left: no call
    assert ps == [] and len(pol.calls) == 2 and eng.stats["budget_stops"] == 3


def test_budget_carries_across_searches_and_search_reports_its_own_share():
    budget = Budget(generated=10_000)
    r1, p1, _ = solve(PLANNERS["beam"], budget)
    r2, p2, _ = solve(PLANNERS["beam"], budget)
    assert budget.used["generated"] == p1.generated + p2.generated
    assert r2.budget["generated"] == p2.generated


def test_sandbox_runs_reported_by_the_verifier_are_charged():
    class SandboxVerdict:
        def __init__(self):
            self.reward, self.correct, self.details = 1.0, True, {"sandbox_runs": 3}

    env = FakeChainEnv(TASKS[0])
    env.reset()
    orig = env.step

    def step(a):
        obs, r, term, trunc, info = orig(a)
        if term:
            info["verdict"] = SandboxVerdict()
        return obs, r, term, trunc, info

    env.step = step
    res = BestOfN(n=2, select="majority").solve(env, TablePolicy(n_wrong=0), None, Budget())
    assert res.budget["sandbox"] == 6


class Recording:
    """Wraps a real policy; sums the tokens it actually produced (len(token_ids))."""

    def __init__(self, policy):
        self.policy, self.generated, self.encoded = policy, 0, 0
        self.encode = policy.encode

    def propose(self, observations, **kw):
        out = self.policy.propose(observations, **kw)
        for group in out:
            for p in group:
                assert len(p.token_ids) <= kw["max_new_tokens"]
                self.generated += len(p.token_ids)
                self.encoded += p.tokens_encoded
        return out


@pytest.mark.parametrize("name", ["bon", "beam", "mcts", "vm_mcts"])
def test_real_tiny_policy_budget_matches_tokens_produced(name):
    import torch

    from prmgym.models import tiny

    torch.set_num_threads(1)
    policy = Recording(tiny.random_tiny_policy(seed=0))
    env = FakeChainEnv(TASKS[1], max_steps=3)
    env.reset()
    make = {"bon": lambda: BestOfN(n=4, select="prm", max_trace_tokens=24),
            "beam": lambda: BeamSearch(beam_width=2, expansions=2, max_depth=3, max_new_tokens=12),
            "mcts": lambda: MCTS(iterations=4, expansions=2, max_new_tokens=12),
            "vm_mcts": lambda: MCTS.vm_mcts(iterations=3, expansions=2, rollout_max_new_tokens=24)}[name]
    budget = Budget(generated=70)
    res = make().solve(env, policy, CheckingPRM(), budget)
    assert 0 < res.budget["generated"] <= 70
    assert res.budget["generated"] == policy.generated
    assert res.budget["encoded"] == policy.encoded


def test_code_verdicts_count_one_sandbox_run_each_not_per_cache_hit():
    class CodeVerdict:
        def __init__(self):
            self.reward, self.correct, self.details = 1.0, True, {"tests_total": 3, "tests_passed": 3}

    cache = {}
    env = FakeChainEnv(TASKS[0])
    env.reset()
    orig = env.step

    def step(a):  # like ReasoningEnv: one verdict object per (task, answer), reused
        obs, r, term, trunc, info = orig(a)
        if term:
            info["verdict"] = cache.setdefault(info["answer"], CodeVerdict())
        return obs, r, term, trunc, info

    env.step = step
    # 4 samples, 3 right + 1 wrong: two distinct answers -> two sandbox runs
    res = BestOfN(n=4, select="majority").solve(env, TablePolicy(n_wrong=1), None, Budget())
    assert res.budget["sandbox"] == 2
