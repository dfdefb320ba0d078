"""AIRL-S / rePIRL reward providers: the surface the GRPO trainer calls."""

import pytest
import torch

from prmgym.agents.rollout import Prompt, Trajectory
from prmgym.config import ConfigError
from prmgym.envs.task import Task
from prmgym.models import tiny
from prmgym.rewards import REWARDS, AIRLPRM
from prmgym.rewards.rl import AIRLRewardProvider, RePIRLRewardProvider

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def policy():
    return tiny.random_tiny_policy(seed=0, n_layer=1, n_embd=32, n_head=2, n_positions=256)


def make_trajs(policy, n_tasks=3):
    trajs = []
    for i in range(n_tasks):
        a, b = i + 2, i + 3
        task = Task(id=f"t/{i}", prompt=f"Compute {a} + {b}.", answer=str(a + b),
                    expert_steps=(f"{a} + {b} = {a + b}", f"Answer: {a + b}"))
        for k, (steps, ok) in enumerate([([f"{a} + {b} = {a + b}", f"Answer: {a + b}"], True),
                                         (["zzq qx", "Answer: 0"], False)]):
            t = Trajectory(prompt=Prompt(task), group=i, observation=task.prompt + "\n")
            for s in steps:
                obs = t.text() if t.steps else task.prompt + "\n"
                [lp] = policy.logprobs([obs], [s + "\n"])
                t.steps.append(s)
                t.step_logprobs.append(lp.tolist())
                t.step_token_ids.append([0] * len(lp))
            t.correct, t.reward, t.terminated = ok, float(ok), True
            trajs.append(t)
    return trajs


def test_registry_builds_providers(policy):
    prov = REWARDS["airl"](policy, {"learning_rate": 1e-3, "gamma": 0.9, "updates_per_step": 2})
    assert isinstance(prov, AIRLRewardProvider) and prov.prm.gamma == 0.9 and prov.updates_per_step == 2
    assert prov.prm.net.model is not policy.model  # the discriminator has its own copy
    assert isinstance(REWARDS["repirl"](policy, {"reward_l2": 0.5}), RePIRLRewardProvider)
    assert prov.prm.learning_rate == 1e-3
    with pytest.raises(ConfigError, match="did you mean 'gamma'.*the reward provider also takes"):
        REWARDS["airl"](policy, {"gama": 0.9})
    with pytest.raises(ConfigError, match="'lr' is spelled 'learning_rate'"):
        REWARDS["repirl"](policy, {"lr": 1e-3})
    # one default per learner, whatever the entry point: the online provider's PRM uses AIRL's
    assert REWARDS["airl"](policy, {}).prm.learning_rate == AIRLPRM.Options().learning_rate == 1e-3
    assert REWARDS["airl"](policy, {}).expert_tasks == 0  # no env given: no demonstrations to draw


def test_airl_provider_rewards_and_update(policy, tmp_path):
    torch.manual_seed(0)
    prov = AIRLRewardProvider(AIRLPRM.from_backbone(policy, learning_rate=3e-3), policy)
    trajs = make_trajs(policy)
    prompts, steps = [t.task.prompt for t in trajs], [t.all_steps for t in trajs]
    r0 = prov.step_rewards(prompts, steps, trajs)
    assert [len(r) for r in r0] == [len(s) for s in steps]
    # the rewards from the trajectories' own log-probs equal the ones recomputed by the policy
    r_fill = prov.step_rewards(prompts, steps, None)
    assert r_fill == [pytest.approx(r, abs=1e-4) for r in r0]
    metrics = [prov.update(trajs) for _ in range(12)]
    assert metrics[0]["skipped"] == 0.0 and metrics[0]["n_expert_traces"] == 6  # 3 experts + 3 correct
    assert metrics[-1]["disc_acc"] > metrics[0]["disc_acc"] or metrics[-1]["disc_acc"] == 1.0
    assert metrics[-1]["loss"] < metrics[0]["loss"]
    assert "step_reward_mean" in metrics[-1]
    r1 = prov.step_rewards(prompts, steps, trajs)
    good = [x for r, t in zip(r1, trajs) if t.correct for x in r]
    bad = [x for r, t in zip(r1, trajs) if not t.correct for x in r]
    assert sum(good) / len(good) > sum(bad) / len(bad)
    # checkpoint round trip through the provider (what GRPOTrainer.save/load call)
    prov.save(tmp_path / "pr")
    other = AIRLRewardProvider(AIRLPRM.from_backbone(policy), policy)
    other.load(tmp_path / "pr")
    assert other.step_rewards(prompts, steps, trajs) == [pytest.approx(r, abs=1e-5) for r in r1]


def test_provider_skips_single_class_batches(policy):
    prov = AIRLRewardProvider(AIRLPRM.from_backbone(policy), policy, use_expert=False)
    trajs = [t for t in make_trajs(policy, 2) if t.correct]
    assert prov.update(trajs)["skipped"] == 1.0


def test_repirl_provider(policy):
    torch.manual_seed(0)
    prov = REWARDS["repirl"](policy, {"learning_rate": 3e-3})
    trajs = make_trajs(policy)
    first = prov.update(trajs)
    for _ in range(8):
        last = prov.update(trajs)
    assert last["R_demo"] - last["R_policy"] > first["R_demo"] - first["R_policy"]
    rows = prov.step_rewards([t.task.prompt for t in trajs], [t.all_steps for t in trajs], trajs)
    assert [len(r) for r in rows] == [len(t.all_steps) for t in trajs]


def test_provider_expert_tasks_add_demonstrations_from_the_env(policy):
    """``expert_tasks``: every update's positives also hold the expert solutions of that many more
    training tasks of the env (a seed stream advanced by the PRM's update count), marked as the
    demonstrations that AIRL's ``expert_nll`` fits; the step's correct rollouts are not."""
    prov = REWARDS["airl"](policy, {"learning_rate": 1e-3, "expert_tasks": 2, "expert_nll": 1.0},
                           env=("prmgym/ChainArithmetic-v0", {}))
    trajs = make_trajs(policy)
    first = prov._expert_only_tasks()
    assert len(first) == 2 and all(t.expert_steps for t in first)
    seen = {}
    real = prov.prm.update
    prov.prm.update = lambda batch: seen.setdefault("batch", batch) and real(batch)
    out = prov.update(trajs)
    batch = seen["batch"]
    assert out["n_expert_traces"] == 3 + 2 + 3  # the 3 tasks' experts, 2 more, 3 correct rollouts
    assert batch.demonstrations == [True] * 5 + [False] * (len(batch) - 5)
    assert batch.prompts[3:5] == [t.prompt for t in first]
    assert "expert_nll" in out
    assert [t.prompt for t in prov._expert_only_tasks()] != [t.prompt for t in first]  # the next update's draw
    with pytest.raises(ValueError, match="needs the environment"):
        AIRLRewardProvider(AIRLPRM.from_backbone(policy), policy, expert_tasks=2)
    with pytest.raises(ValueError, match="expert_tasks must be >= 0"):
        AIRLRewardProvider(AIRLPRM.from_backbone(policy), policy, expert_tasks=-1)
    off = REWARDS["airl"](policy, {"use_expert": False}, env=("prmgym/ChainArithmetic-v0", {}))
    assert off.expert_tasks == 248 and off._expert_only_tasks() == []  # no demonstrations without use_expert
