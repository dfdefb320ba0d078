"""The one episode runner (`prmgym.envs.episodes`): lockstep rounds, seeding, episode ends, pass@1.

A fake policy object (no torch, not a `Policy` subclass: the runner needs only ``propose``)
and the tiny `ToyEnv` keep these tests exact and fast.
"""

from __future__ import annotations

import random
from types import SimpleNamespace

import pytest

from prmgym.envs.episodes import (
    EnvPool,
    Prompt,
    Trajectory,
    evaluate_policy,
    held_out_tasks,
    play_rounds,
    run_episodes,
)
from prmgym.envs.task import Task
from test_rollout_toyenv import ToyEnv


def _prop(text, n_tokens=None):
    n = len(text) + 1 if n_tokens is None else n_tokens
    return SimpleNamespace(text=text, token_ids=list(range(n)), logprobs=[-0.25] * n, finish_reason="stop",
                           tokens_generated=n, tokens_encoded=3)


class SeededPolicy:
    """Steps ``think`` until the trace has ``think_steps`` steps, then answers a digit drawn
    from ``random.Random(seed + row)``: episodes depend on the seed of each call."""

    def __init__(self, think_steps=1, digits="0123456789", max_props=None):
        self.think_steps, self.digits, self.max_props = think_steps, digits, max_props
        self.calls = []

    def propose(self, observations, n=1, stop="\n", max_new_tokens=64, temperature=1.0, top_p=1.0, seed=None):
        self.calls.append(SimpleNamespace(obs=list(observations), n=n, seed=seed, temperature=temperature))
        rng = random.Random(seed)
        out = []
        for obs in observations:
            steps = obs.count("\n") - 1
            group = []
            for _ in range(n):
                d = rng.choice(self.digits)
                group.append(_prop("think" if steps < self.think_steps else f"Answer: {d}"))
            out.append(group[: self.max_props] if self.max_props is not None else group)
        return out


def _envs(k, **kw):
    return [ToyEnv(one_step=False, **kw) for _ in range(k)]


TASKS = ToyEnv().source.tasks("train", 3)


def test_lockstep_rounds_one_propose_each_first_grouped():
    pol = SeededPolicy(think_steps=2)
    trajs, stats = run_episodes(_envs(6), pol, TASKS[:2], group_size=3, seed=4)
    assert [t.group for t in trajs] == [0, 0, 0, 1, 1, 1] and [t.task for t in trajs[::3]] == TASKS[:2]
    # round 1: one observation per group with n = group size; later rounds: every live episode, n = 1
    assert [(len(c.obs), c.n) for c in pol.calls] == [(2, 3), (6, 1), (6, 1)]
    assert stats.propose_calls == 3 and stats.env_steps == 18 and stats.generated == sum(t.num_tokens for t in trajs)
    t = trajs[0]
    assert t.steps[:2] == ["think", "think"] and t.steps[2].startswith("Answer: ") and t.terminated
    assert t.step_observations[1] == TASKS[0].prompt + "\nthink\n"
    assert t.last_observation == t.text() and t.reward == 1.0 and t.correct and t.answer == t.steps[-1]
    assert t.step_bounds == [(0, 6), (6, 12), (12, 22)] and t.old_logprobs == [-0.25] * 22


def test_same_seed_same_episodes_other_seed_other_samples():
    def answers(seed):
        pol = SeededPolicy(digits="0123456789")
        trajs, _ = run_episodes(_envs(4), pol, TASKS[:2], group_size=2, seed=seed)
        return [t.steps[-1] for t in trajs], [c.seed for c in pol.calls]

    assert answers(3) == answers(3)
    assert answers(3)[1] != answers(4)[1] and answers(3)[0] != answers(4)[0]


def test_correct_is_the_verdict_else_reward():
    pol = SeededPolicy(think_steps=0, digits="7")
    trajs, _ = run_episodes(_envs(2, targets="7"), pol, TASKS[:2], seed=0)
    assert all(t.correct and t.reward == 1.0 for t in trajs)
    wrong, _ = run_episodes(_envs(2, targets="3"), pol, TASKS[:2], seed=0)
    assert not any(t.correct for t in wrong) and all(t.verdict is not None for t in wrong)

    class NoVerdictEnv(ToyEnv):  # an env that reports reward but no verdict
        def step(self, action):
            obs, r, term, trunc, info = super().step(action)
            info.pop("verdict")
            return obs, r, term, trunc, info

    nov, _ = run_episodes([NoVerdictEnv(one_step=False, targets="7")], pol, TASKS[:1], seed=0)
    assert nov[0].correct and nov[0].verdict is None


def test_prefix_is_observation_and_finished_prefix_rule():
    pol = SeededPolicy(think_steps=2)
    trajs, _ = run_episodes(_envs(2), pol, [Prompt(TASKS[0], ["given"])], group_size=2, seed=0)
    assert trajs[0].observation == TASKS[0].prompt + "\ngiven\n"
    assert trajs[0].steps[0] == "think" and trajs[0].all_steps[:2] == ["given", "think"]
    done = [Prompt(TASKS[0], ["Answer: 7"]), Prompt(TASKS[1])]
    with pytest.raises(ValueError, match="ends the episode"):
        run_episodes(_envs(4), pol, done, group_size=2, seed=0)
    pol.calls.clear()
    kept, _ = run_episodes(_envs(4), pol, done, group_size=2, seed=0, finished_prefix="keep")
    assert [t.steps for t in kept[:2]] == [[], []] and all(t.terminated and t.correct for t in kept[:2])
    assert all(t.terminated and len(t.steps) == 3 for t in kept[2:])
    assert all(TASKS[0].prompt not in o for c in pol.calls for o in c.obs)  # the finished group is never proposed for
    with pytest.raises(ValueError, match="finished_prefix"):
        run_episodes(_envs(1), pol, TASKS[:1], finished_prefix="maybe")


def test_episodes_end_at_the_round_cap_context_and_missing_proposals():
    pol = SeededPolicy(think_steps=99)
    trajs, _ = run_episodes(_envs(2, max_steps=100), pol, TASKS[:2], seed=0, max_steps=3)
    assert all(t.truncated and not t.terminated and t.reward == 0.0 and len(t.steps) == 3 for t in trajs)

    class ShortContext(SeededPolicy):
        context_length = 40

        def encode(self, text):
            return list(text)

    short = ShortContext(think_steps=99)
    trajs, _ = run_episodes(_envs(2, max_steps=100), short, TASKS[:2], seed=0, max_steps=20, fit_context=True)
    assert all(t.truncated and len(t.last_observation) >= 40 > len(t.step_observations[-1]) for t in trajs)
    assert all(len(o) < 40 for c in short.calls for o in c.obs)

    stingy = SeededPolicy(think_steps=1, max_props=1)  # returns one proposal where two were asked
    trajs, stats = run_episodes(_envs(2), stingy, TASKS[:1], group_size=2, seed=0)
    assert trajs[0].terminated and len(trajs[0].steps) == 2
    assert trajs[1].truncated and trajs[1].steps == [] and stats.env_steps == 2


def test_play_rounds_continues_started_episodes_on_any_stepper():
    env = ToyEnv(one_step=False)
    obs, _ = env.reset(options={"task": TASKS[0]})
    env.step("think")
    t = Trajectory(Prompt(TASKS[0]), 0, obs, last_observation=TASKS[0].prompt + "\nthink\n")
    stats = play_rounds([t], [env], SeededPolicy(think_steps=1, digits="5"), stop="\n")
    assert t.steps == ["Answer: 5"] and t.step_observations == [TASKS[0].prompt + "\nthink\n"]
    assert t.correct and stats.propose_calls == 1


def test_run_episodes_checks_its_arguments():
    with pytest.raises(ValueError, match="need 4 envs"):
        run_episodes(_envs(3), SeededPolicy(), TASKS[:2], group_size=2)
    with pytest.raises(ValueError, match="group_size"):
        run_episodes(_envs(3), SeededPolicy(), TASKS[:2], group_size=0)


def test_env_pool_reuses_its_envs():
    made = []
    pool = EnvPool(lambda: made.append(ToyEnv()) or made[-1])
    assert pool.get(2) == made and pool.get(1) == made[:1] and len(made) == 2
    assert pool.delimiter == "\n"
    pool.close()
    assert pool.envs == []


def test_evaluate_policy_pass_at_1_and_counts():
    res = evaluate_policy(SeededPolicy(think_steps=1, digits="7"), lambda: ToyEnv(split="test", one_step=False, targets="7"),
                          n_tasks=5, seed=0)
    assert res["pass@1"] == 1.0 and res["mean_reward"] == 1.0 and res["solved"] == 5 and res["n_tasks"] == 5
    assert res["mean_steps"] == 2 and res["truncated"] == 0 and res["temperature"] == 0.0 and res["split"] == "test"
    assert res["sample"] == ToyEnv().source.tasks("test", 1)[0].prompt + "\nthink\nAnswer: 7\n"
    assert res["tokens_generated"] == 5 * (6 + 10)
    half = evaluate_policy(SeededPolicy(think_steps=0, digits="7"), lambda: ToyEnv(split="test", targets="7"),
                           tasks=ToyEnv().source.tasks("test", 2) + ToyEnv().source.tasks("train", 2), batch_size=3)
    assert half["pass@1"] == 1.0 and half["n_tasks"] == 4
    never = evaluate_policy(SeededPolicy(think_steps=99), lambda: ToyEnv(split="test", one_step=False, max_steps=4),
                            n_tasks=3)
    assert never["pass@1"] == 0.0 and never["truncated"] == 3 and never["mean_steps"] == 4


def test_evaluate_policy_is_greedy_by_default_and_seeded_when_sampling():
    pol = SeededPolicy(think_steps=0)
    make = lambda: ToyEnv(split="test", targets="02468")  # noqa: E731
    evaluate_policy(pol, make, n_tasks=3)
    assert {c.temperature for c in pol.calls} == {0.0}
    a = evaluate_policy(pol, make, n_tasks=20, seed=1, temperature=1.0)
    b = evaluate_policy(pol, make, n_tasks=20, seed=1, temperature=1.0)
    c = evaluate_policy(pol, make, n_tasks=20, seed=2, temperature=1.0)
    assert a == b and 0.0 < a["pass@1"] < 1.0 and (a["pass@1"], a["sample"]) != (c["pass@1"], c["sample"])
    assert evaluate_policy(pol, make, n_tasks=20, seed=1, temperature=1.0, batch_size=7) == \
        evaluate_policy(pol, make, n_tasks=20, seed=1, temperature=1.0, batch_size=7)
    greedy = SeededPolicy(think_steps=1, digits="2")  # seed-independent: chunking changes nothing
    assert evaluate_policy(greedy, make, n_tasks=10, batch_size=3) == evaluate_policy(greedy, make, n_tasks=10)


def test_evaluate_policy_rejects_bad_input():
    make = lambda: ToyEnv(split="test")  # noqa: E731
    with pytest.raises(ValueError, match="n_tasks"):
        evaluate_policy(SeededPolicy(), make, n_tasks=0)
    with pytest.raises(ValueError, match="at least one task"):
        evaluate_policy(SeededPolicy(), make, tasks=[])
    with pytest.raises(ValueError, match="env_kwargs"):
        evaluate_policy(SeededPolicy(), make, env_kwargs={"difficulty": 2})
    with pytest.raises(TypeError, match="env id or a zero-argument factory"):
        evaluate_policy(SeededPolicy(), 3)


def test_held_out_tasks_from_source_or_seeded_resets():
    assert held_out_tasks(ToyEnv(split="test"), 3, seed=2) == ToyEnv().source.tasks("test", 3, seed=2)

    class ResetOnly:  # no task source: tasks come from seeded resets
        def reset(self, seed=None, options=None):
            return "", {"task": Task(id=f"t{seed}", prompt=f"p{seed}")}

    assert [t.id for t in held_out_tasks(ResetOnly(), 2, seed=5)] == ["t5", "t6"]
