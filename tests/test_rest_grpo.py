"""ReST-GRPO: the sigma0 filter, alpha^i prefix sampling, partial-state rollouts, learning."""

from collections import Counter

import numpy as np
import pytest
import torch

from prmgym.agents.rest_grpo import ReSTGRPOConfig, ReSTGRPOTrainer
from prmgym.agents.rollout import Prompt, Trajectory
from prmgym.envs.task import Task
from prmgym.models import tiny
from test_rollout_toyenv import ToyEnv

torch.set_num_threads(1)

TASK = Task(id="t/0", prompt="Q")


def traj(reward, steps=("a",), masked=False, group=0):
    return Trajectory(prompt=Prompt(TASK), group=group, observation="Q\n", steps=list(steps), reward=reward, masked=masked)


def make(env_kw=None, **cfg):
    base = dict(num_generations=4, batch_size=8, max_new_tokens=1, max_steps=4, learning_rate=3e-3)
    env_kw = env_kw or dict(one_step=False, episode_len=3, max_steps=5)
    return ReSTGRPOTrainer(tiny.random_tiny_policy(seed=0), lambda: ToyEnv(**env_kw), ReSTGRPOConfig(**{**base, **cfg}))


@pytest.mark.parametrize("kw, match", [
    (dict(sigma0=-1), "sigma0"), (dict(prefix_alpha=0), "prefix_alpha"),
    (dict(prefix_fraction=1.5), "prefix_fraction"), (dict(num_generations=1), "num_generations must be >= 2"),
])
def test_config_validation(kw, match):
    with pytest.raises(ValueError, match=match):
        ReSTGRPOConfig(**kw)


def test_filter_drops_low_spread_groups_and_ignores_masked():
    tr = make()
    G = tr.config.num_generations
    g0 = [traj(1.0), traj(0.0), traj(0.0), traj(0.0)]         # std .433 -> kept
    g1 = [traj(0.5), traj(0.5), traj(0.55), traj(0.5)]        # std .0217 < .05 -> dropped
    g2 = [traj(1.0), traj(1.0), traj(1.0), traj(0.0, masked=True)]  # masked one ignored -> std 0 -> dropped
    kept, stds = tr.filter_groups(g0 + g1 + g2)
    assert kept == [g0] and stds[0] == pytest.approx(np.sqrt(3) / 4) and stds[2] == 0.0
    assert len(stds) == 3 and G == 4


def test_prefixes_follow_alpha_weights():
    tr = make(prefix_alpha=0.5, prefix_fraction=1.0, max_partial_prompts=10**6)
    steps = ("s1", "s2", "s3", "s4")  # n = 4: draw 4 prefixes of lengths 1..3, weights .5, .25, .125
    best = traj(1.0, steps)
    group = [best, traj(0.0, steps), traj(0.0), traj(0.0)]
    counts = Counter()
    for _ in range(1500):
        ps = tr.partial_prompts([group])
        assert len(ps) == 4 and all(p.task == TASK for p in ps)
        counts.update(len(p.prefix) for p in ps)
    total = sum(counts.values())
    assert counts[1] / total == pytest.approx(4 / 7, abs=0.02)
    assert counts[2] / total == pytest.approx(2 / 7, abs=0.02)
    assert counts[3] / total == pytest.approx(1 / 7, abs=0.02)
    assert set(counts) == {1, 2, 3}
    p = tr.partial_prompts([group])[0]
    assert p.prefix == steps[: len(p.prefix)]


def test_prefix_count_threshold_and_cap():
    tr = make()  # prefix_fraction .5, threshold .9, cap = prompts_per_step = 2
    five = tuple(f"s{i}" for i in range(5))
    assert len(tr.partial_prompts([[traj(1.0, five), traj(0.0)] * 2])) == 2  # ceil(2.5) = 3, capped to 2
    tr.config.max_partial_prompts = 100
    assert len(tr.partial_prompts([[traj(1.0, five), traj(0.0)] * 2])) == 3
    assert tr.partial_prompts([[traj(0.8, five), traj(0.0)] * 2]) == []  # best below threshold
    assert tr.partial_prompts([[traj(1.0, ("only",)), traj(0.0)] * 2]) == []  # one step: no prefix


def test_rest_step_rolls_out_partial_states_and_logs():
    tr = make(max_partial_prompts=4)
    seen, partial = [], []
    for _ in range(6):
        m = tr.step()
        seen.append(m)
        partial += [t for t in tr._last_trajectories if t.prompt.prefix]
        for key in ("rest/filtered_frac", "rest/reward_spread", "rest/partial_prompts", "rest/train_groups"):
            assert key in m
    assert any(m["rest/partial_prompts"] > 0 for m in seen)
    # partial-state episodes: the prefix is in the observation, only new steps are trained
    assert partial
    for t in partial:
        assert t.observation.endswith("\n".join(t.prompt.prefix) + "\n")
        assert len(t.prompt.prefix) + len(t.steps) == 3 and t.num_tokens == len(t.steps)


def test_rest_grpo_learns():
    tr = make(env_kw=dict(one_step=False, episode_len=2, max_steps=3), num_generations=8, batch_size=32)
    hist = tr.train(15)
    first = np.mean([m["reward_mean"] for m in hist[:3]])
    last = np.mean([m["reward_mean"] for m in hist[-3:]])
    assert last > first + 0.3, (first, last)
