"""Search feeds training: collection MCTS writes value targets, a value model learns them,
and VM-MCTS decodes with it (ReST-RL). The tree's high-value partial states are printed as
the extra prompts a ReST-GRPO trainer would take (prmgym.agents.Prompt(task, prefix))."""
import sys

import gymnasium as gym

import prmgym  # noqa: F401  (registers the envs)
from prmgym.agents import Prompt
from prmgym.budget import Budget
from prmgym.models import TransformersPolicy
from prmgym.recipes import tiny as tiny_recipe
from prmgym.rewards import load_value_targets
from prmgym.rewards.train import OfflinePRMTrainer, PRMTrainConfig, build_prm
from prmgym.search import MCTS, collect_value_targets

ENV = "prmgym/ChainArithmetic-v0"
policy_dir = sys.argv[1] if len(sys.argv) > 1 else tiny_recipe.pretrain(ENV)  # a policy dir, or the tiny one
policy = TransformersPolicy.from_pretrained(policy_dir)
train_env, test_env = gym.make(ENV, split="train"), gym.make(ENV, split="test")
collector = collect_value_targets(train_env, policy, train_env.unwrapped.source.tasks("train", 8), "runs/vm/targets.jsonl",
                                  planner=MCTS.collection(iterations=8, expansions=4, rollout_max_new_tokens=64))
vm = build_prm("value", policy_dir)
OfflinePRMTrainer(vm, None, None, PRMTrainConfig(kind="value", steps=30), targets=load_value_targets("runs/vm/targets.jsonl")).train()
prompts = [Prompt(task, tuple(prefix)) for task, prefix in collector.high_value_prefixes()]
print(f"{len(collector.records)} value targets; {len(prompts)} partial-state prompts for ReST-GRPO")
solved, tasks = 0, test_env.unwrapped.source.tasks("test", 10)
for task in tasks:
    test_env.reset(options={"task": task})
    solved += MCTS.vm_mcts(rollout_max_new_tokens=64).solve(test_env, policy, vm, Budget(generated=800)).reward == 1.0
print(f"VM-MCTS: {solved}/{len(tasks)} solved at 800 generated tokens per task")
