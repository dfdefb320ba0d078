"""Beam search and MCTS expand tool steps; one `Budget` counts their sandbox runs."""

from __future__ import annotations

import re

import pytest

from prmgym.budget import Budget
from prmgym.envs import make
from prmgym.envs.tools import ToolMath, split_tool_step
from prmgym.models.policy import Policy, Proposal
from prmgym.rewards.base import ProcessRewardModel
from prmgym.sandbox import LocalSandbox
from prmgym.search import MCTS, BeamSearch


class ToolPolicy(Policy):
    """Before any tool output: sample j writes a cell computing the prompt's expression, off by
    ``j`` for j < ``n_wrong`` (``print(EXPR+j)``); after one: submits what the last output shows."""

    def __init__(self, n_wrong: int = 1):
        self.n_wrong = n_wrong

    def propose(self, observations, n=1, stop="\n", max_new_tokens=64, temperature=1.0, top_p=1.0, seed=None):
        out = []
        for obs in observations:
            outputs = re.findall(r"```output\n(.*?)\n```", obs, re.S)
            expr = re.match(r"Compute (.*)\.", obs).group(1)
            group = []
            for j in range(n):
                if outputs:
                    text = f"Answer: {outputs[-1]}"
                else:
                    text = f"```python print({expr}+{j + 1})```" if j < self.n_wrong else f"```python print({expr})```"
                toks = len(text) + 1
                group.append(Proposal(text, list(range(toks)), [-0.5] * toks, "stop", toks, len(obs) if j == 0 else 0))
            out.append(group)
        return out

    def logprobs(self, observations, continuations, requires_grad=False):
        raise NotImplementedError


class OutputCheckingPRM(ProcessRewardModel):
    """Scores a tool step by the output it shows (1 if it is the true value of the prompt's
    expression): it can only do that because the trace it scores holds the tool segment."""

    def __init__(self):
        self.seen_outputs = 0

    def score_steps(self, prompts, step_lists):
        out = []
        for prompt, steps in zip(prompts, step_lists):
            truth = str(eval(re.match(r"Compute (.*)\.", prompt).group(1)))  # noqa: S307  (test-made digits and + - *)
            row = []
            for s in steps:
                cell, output = split_tool_step(s)
                if output is not None:
                    self.seen_outputs += 1
                    row.append(float(output == truth))
                else:
                    row.append(float(s.strip() == f"Answer: {truth}"))
            out.append(row)
        return out


@pytest.fixture(scope="module")
def sandbox():
    sb = LocalSandbox(workers=1)
    yield sb
    sb.close()


@pytest.mark.parametrize("planner", [BeamSearch(beam_width=2, expansions=3, max_depth=4),
                                     MCTS(iterations=6, expansions=3, max_depth=4, evaluation="prm")],
                         ids=["beam", "mcts"])
def test_planners_expand_tool_steps_within_one_budget(sandbox, planner):
    tasks = ToolMath().tasks("test", 3)
    budget = Budget()  # one budget over all searches
    prm = OutputCheckingPRM()
    runs = 0
    for task in tasks:
        env = make("prmgym/ToolMath-v0", split="test", sandbox=sandbox)
        env.reset(options={"task": task})
        result = planner.solve(env, ToolPolicy(n_wrong=2), prm, budget)
        assert result.answer == task.answer and result.reward == 1.0
        assert "```output\n" + task.answer + "\n```" in result.steps[0]  # the chosen trace holds the tool output
        runs += env.unwrapped.tool_runs
    assert prm.seen_outputs > 0
    assert budget.used["sandbox"] == runs >= 3 * 3  # every distinct cell ran once and was charged once
    assert budget.used["generated"] > 0


def test_a_spent_sandbox_budget_stops_the_search(sandbox):
    # the first expansion runs 3 distinct cells (over the limit of 2: a round is not cut short);
    # then no run is left and the planner proposes no further step
    budget = Budget(sandbox=2)
    task = ToolMath().tasks("test", 1)[0]
    env = make("prmgym/ToolMath-v0", split="test", sandbox=sandbox)
    env.reset(options={"task": task})
    result = BeamSearch(beam_width=2, expansions=3, max_depth=4).solve(env, ToolPolicy(n_wrong=2), OutputCheckingPRM(), budget)
    assert budget.used["sandbox"] == 3 and result.answer is None and result.tree["budget_stops"] >= 1
