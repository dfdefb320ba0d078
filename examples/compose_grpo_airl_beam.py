"""Compose an agent, a reward and a planner: GRPO trained with the AIRL step reward, then
beam search guided by the same AIRL discriminator (AIRL-S). A few minutes on CPU."""
import sys

import gymnasium as gym

import prmgym  # noqa: F401  (registers the envs)
from prmgym.agents import GRPOConfig, GRPOTrainer
from prmgym.budget import Budget
from prmgym.models import TransformersPolicy
from prmgym.recipes import tiny as tiny_recipe
from prmgym.rewards.rl import AIRLRewardProvider
from prmgym.search import BeamSearch

ENV = "prmgym/ChainArithmetic-v0"
policy_dir = sys.argv[1] if len(sys.argv) > 1 else tiny_recipe.pretrain(ENV)  # a policy dir, or the tiny one
policy = TransformersPolicy.from_pretrained(policy_dir)                   # agent: tiny SFT policy
airl = AIRLRewardProvider.from_config(policy)                             # reward: AIRL discriminator
cfg = GRPOConfig(num_generations=4, batch_size=16, max_new_tokens=24, max_steps=10, process_reward_weight=0.5)
GRPOTrainer(policy, ENV, cfg, process_reward=airl).train(5)               # AIRL-S: GRPO + step reward
env = gym.make(ENV, split="test")
planner = BeamSearch(beam_width=2, expansions=4, aggregation="min", max_new_tokens=16)      # planner: PRM-guided beam
tasks = env.unwrapped.source.tasks("test", 10)
solved = 0
for task in tasks:
    env.reset(options={"task": task})
    res = planner.solve(env, policy, airl.prm, Budget(generated=400))
    solved += res.reward == 1.0
    print(f"{task.id}: {res.answer!r} (reference {task.answer!r}) tokens={res.budget['generated']} prm={res.budget['prm']}")
print(f"beam search + AIRL PRM: {solved}/{len(tasks)} solved at 400 generated tokens per task")
