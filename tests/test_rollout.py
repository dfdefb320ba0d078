"""Rollouts: batching of propose calls, step boundaries, partial states, sandbox masking."""

import pytest
import torch

from prmgym.agents.common import pack_trajectories, packed_logprobs
from prmgym.agents.rollout import Prompt, RolloutCollector
from prmgym.models.policy import Policy, Proposal
from test_rollout_toyenv import ToyEnv

torch.set_num_threads(1)


class ScriptedPolicy(Policy):
    """Step k of every episode is ``script[k]``; records every propose call."""

    def __init__(self, script):
        self.script = script
        self.calls = []

    def propose(self, observations, n=1, stop="\n", max_new_tokens=64, temperature=1.0, top_p=1.0, seed=None):
        self.calls.append((list(observations), n, seed))
        out = []
        for obs in observations:
            k = obs.count("\n") - 1  # steps taken so far
            text = self.script[k]
            ids = [ord(c) for c in text + "\n"]
            out.append([Proposal(text, ids, [-0.5] * len(ids), "stop", len(ids), len(obs)) for _ in range(n)])
        return out

    def logprobs(self, observations, continuations, requires_grad=False):
        raise NotImplementedError("not needed by the collector")


def test_collect_groups_batches_and_boundaries():
    pol = ScriptedPolicy(["ab", "c", "Answer: 7"])
    col = RolloutCollector(lambda: ToyEnv(one_step=False, max_steps=5), pol)
    tasks = ToyEnv().source.tasks("train", 2)
    trajs, stats = col.collect(tasks, group_size=3, seed=1)
    assert len(trajs) == 6 and [t.group for t in trajs] == [0, 0, 0, 1, 1, 1]
    assert all(t.task == tasks[t.group] for t in trajs)
    # one propose call per env step across the batch; first with one observation per group, n=G
    assert [len(c[0]) for c in pol.calls] == [2, 6, 6] and [c[1] for c in pol.calls] == [3, 1, 1]
    t = trajs[0]
    assert t.steps == ["ab", "c", "Answer: 7"] and t.terminated and t.reward == 1.0 and t.correct
    assert t.step_bounds == [(0, 3), (3, 5), (5, 15)]
    assert t.token_ids == [ord(c) for c in "ab\nc\nAnswer: 7\n"]
    assert t.old_logprobs == [-0.5] * 15
    assert t.step_observations[1] == tasks[0].prompt + "\nab\n"
    assert stats.generated == 6 * 15 and stats.propose_calls == 3 and stats.env_steps == 18
    assert t.text() == tasks[0].prompt + "\nab\nc\nAnswer: 7\n"


def test_collect_is_reproducible_and_seeds_calls():
    pol = ScriptedPolicy(["x"])
    col = RolloutCollector(lambda: ToyEnv(), pol)
    col.collect(ToyEnv().source.tasks("train", 1), 2, seed=5)
    col.collect(ToyEnv().source.tasks("train", 1), 2, seed=5)
    assert pol.calls[0][2] == pol.calls[1][2] is not None


def test_partial_state_prompts_prefix_is_observation_not_trained():
    pol = ScriptedPolicy(["s0", "s1", "Answer: 3"])
    col = RolloutCollector(lambda: ToyEnv(one_step=False, max_steps=5), pol)
    task = ToyEnv().source.tasks("train", 1)[0]
    trajs, _ = col.collect([Prompt(task, ("given step",))], group_size=2, seed=0)
    t = trajs[0]
    assert t.observation == task.prompt + "\ngiven step\n"
    # the policy continues from the prefix (step index 1 of the script)
    assert t.steps == ["s1", "Answer: 3"] and t.all_steps == ["given step", "s1", "Answer: 3"]
    assert t.token_ids == [ord(c) for c in "s1\nAnswer: 3\n"] and t.reward == 1.0
    with pytest.raises(ValueError, match="ends the episode"):
        col.collect([Prompt(task, ("Answer: 1",))], group_size=2, seed=0)


def test_step_cap_truncates_with_zero_reward():
    pol = ScriptedPolicy(["a"] * 10)
    col = RolloutCollector(lambda: ToyEnv(one_step=False, max_steps=100), pol, max_steps=3)
    trajs, _ = col.collect(ToyEnv().source.tasks("train", 1), 2, seed=0)
    assert all(t.truncated and t.reward == 0.0 and len(t.steps) == 3 for t in trajs)


def test_sandbox_error_masks_sample():
    tasks = ToyEnv().source.tasks("train", 2)
    pol = ScriptedPolicy(["7"])
    col = RolloutCollector(lambda: ToyEnv(sandbox_error_ids={tasks[1].id}), pol)
    trajs, _ = col.collect(tasks, 2, seed=0)
    assert [t.masked for t in trajs] == [False, False, True, True]
    assert [t.reward for t in trajs] == [1.0, 1.0, 0.0, 0.0]


def test_real_policy_old_logprobs_match_packed_forward():
    from prmgym.models import tiny

    policy = tiny.random_tiny_policy(seed=0)
    col = RolloutCollector(lambda: ToyEnv(one_step=False, max_steps=3), policy, max_new_tokens=4)
    trajs, stats = col.collect(ToyEnv().source.tasks("train", 2), 2, seed=0)
    again, _ = col.collect(ToyEnv().source.tasks("train", 2), 2, seed=0)
    assert [t.token_ids for t in trajs] == [t.token_ids for t in again]
    assert stats.generated == sum(t.num_tokens for t in trajs) > 0
    packed = pack_trajectories(trajs, policy.encode, policy.tokenizer.pad_token_id)
    with torch.no_grad():
        lp, ent = packed_logprobs(policy.model, packed, with_entropy=True)
    for b, t in enumerate(trajs):
        assert lp[b, : t.num_tokens].tolist() == pytest.approx(t.old_logprobs, abs=1e-4)
        assert (ent[b, : t.num_tokens] > 0).all()
    # steps cut by the token limit force one row per step; the scores still match
    assert any(r != "stop" for t in trajs for r in t.finish_reasons[:-1]) == (packed.rows_per_step > 0)


class ExpertPolicy(Policy):
    """Replays each task's expert steps (looked up by prompt)."""

    def __init__(self, tasks, wrong=False):
        self.by_prompt = {t.prompt: t.expert_steps for t in tasks}
        self.wrong = wrong

    def propose(self, observations, n=1, stop="\n", max_new_tokens=64, temperature=1.0, top_p=1.0, seed=None):
        out = []
        for obs in observations:
            prompt = next(p for p in self.by_prompt if obs.startswith(p + "\n"))
            k = obs[len(prompt) + 1:].count("\n")
            text = self.by_prompt[prompt][k]
            if self.wrong and text.strip().startswith("return"):
                text = "    return -12345"
            ids = [ord(c) for c in text + "\n"]
            out.append([Proposal(text, ids, [-0.1] * len(ids), "stop", len(ids), 0) for _ in range(n)])
        return out

    def logprobs(self, observations, continuations, requires_grad=False):
        raise NotImplementedError


def _program_env(sandbox="local"):
    import gymnasium as gym

    import prmgym  # noqa: F401

    return gym.make("prmgym/ProgramSynthesis-v0", sandbox=sandbox)


def test_code_env_scores_finished_programs_in_one_batch(monkeypatch):
    from prmgym.envs.verifiers import CodeVerifier

    calls = []
    real = CodeVerifier.score_batch

    def spy(self, tasks, texts):
        calls.append(len(tasks))
        return real(self, tasks, texts)

    monkeypatch.setattr(CodeVerifier, "score_batch", spy)
    monkeypatch.setattr(CodeVerifier, "score", lambda *a: pytest.fail("score() called: not batched"))
    env = _program_env()
    tasks = env.unwrapped.source.tasks("train", 2)
    col = RolloutCollector(_program_env, ExpertPolicy(tasks), max_steps=8)
    trajs, stats = col.collect(tasks, group_size=2, seed=0)
    assert all(t.terminated and t.correct and t.reward == 1.0 and not t.masked for t in trajs)
    # one score_batch call per env step that finishes programs, holding all of them
    lengths = sorted({len(t.expert_steps) for t in tasks})
    assert len(calls) == len(lengths) and sum(calls) == 4
    assert stats.sandbox == 4
    bad, _ = RolloutCollector(_program_env, ExpertPolicy(tasks, wrong=True), max_steps=8).collect(tasks, 2, seed=0)
    assert all(t.terminated and not t.correct and t.reward < 1.0 for t in bad)


def test_code_env_sandbox_infrastructure_error_masks():
    from prmgym.sandbox.base import ExecResult, Sandbox

    class BrokenSandbox(Sandbox):
        def run(self, job):
            return ExecResult(status="sandbox_error", details={"error": "container vanished"})

    box = BrokenSandbox()
    env = _program_env(box)
    tasks = env.unwrapped.source.tasks("train", 1)
    col = RolloutCollector(lambda: _program_env(box), ExpertPolicy(tasks), max_steps=8)
    trajs, _ = col.collect(tasks, group_size=2, seed=0)
    assert all(t.terminated and t.masked and t.reward == 0.0 for t in trajs)
