"""Compose a policy, an outcome reward model and best-of-N: train an ORM on the tiny
policy's own rollouts, then pick the ORM's favourite of N samples at a fixed budget."""
import sys

import gymnasium as gym

import prmgym  # noqa: F401  (registers the envs)
from prmgym.budget import Budget
from prmgym.models import TransformersPolicy
from prmgym.recipes import tiny as tiny_recipe
from prmgym.rewards.train import OfflinePRMTrainer, PRMTrainConfig, build_prm
from prmgym.search import BestOfN

ENV = "prmgym/ChainArithmetic-v0"
policy_dir = sys.argv[1] if len(sys.argv) > 1 else tiny_recipe.pretrain(ENV)  # a policy dir, or the tiny one
policy = TransformersPolicy.from_pretrained(policy_dir)
orm = build_prm("orm", policy_dir)
OfflinePRMTrainer(orm, policy, lambda: gym.make(ENV, split="train"), PRMTrainConfig(kind="orm", steps=10)).train()
env = gym.make(ENV, split="test")
for select in ("first", "majority", "orm"):
    planner, solved = BestOfN(n=16, select=select, max_trace_tokens=64), 0
    for task in env.unwrapped.source.tasks("test", 20):
        env.reset(options={"task": task})
        solved += planner.solve(env, policy, orm, Budget(generated=600)).reward == 1.0
    print(f"best-of-N select={select}: {solved}/20 at 600 generated tokens per task")
