"""Small exact fakes for the planner tests: a chain-arithmetic env, a table policy, a checking PRM.

The env follows the pinned prmgym env API (reset/step/get_state/set_state/format_answer,
``unwrapped.task``/``steps``/``delimiter``); the policy follows `Policy`; the PRM follows
`ProcessRewardModel` and exposes ``tokens_scored`` like the real scalar-head PRMs.
"""

from __future__ import annotations

import re

import gymnasium as gym

from prmgym.envs.task import Task
from prmgym.envs.trace import render_trace
from prmgym.models.policy import Policy, Proposal
from prmgym.rewards.base import ProcessRewardModel

_STEP = re.compile(r"^\s*(-?\d+)\s*([+\-*])\s*(-?\d+)\s*=\s*(-?\d+)\s*$")
_OPS = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b}


def chain_task(i: int, start: int, ops) -> Task:
    v, steps = start, []
    for op, b in ops:
        nv = _OPS[op](v, b)
        steps.append(f"{v} {op} {b} = {nv}")
        v = nv
    steps.append(f"Answer: {v}")
    expr = str(start) + "".join(f" {op} {b}" for op, b in ops)
    return Task(id=f"fake/{i}", prompt=f"Compute {expr} left to right.", answer=str(v),
                expert_steps=tuple(steps), metadata={"start": start, "ops": tuple(ops)})


TASKS = [chain_task(0, 3, [("+", 4), ("*", 2), ("-", 5)]),
         chain_task(1, 6, [("*", 3), ("+", 7)]),
         chain_task(2, 2, [("+", 9), ("*", 4), ("+", 1)])]


class _Verdict:
    def __init__(self, reward, correct):
        self.reward, self.correct, self.details = reward, correct, {}


class FakeChainEnv(gym.Env):
    """Episode ends on an ``Answer: x`` step (reward 1 if x is right) or at ``max_steps``."""

    metadata = {"render_modes": []}

    def __init__(self, task: Task = TASKS[0], max_steps: int = 8):
        self.task, self.max_steps, self.delimiter = task, max_steps, "\n"
        self.steps: list[str] = []
        self.done = False
        self.verifications = 0

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        if options and "task" in options:
            self.task = options["task"]
        self.steps, self.done = [], False
        return render_trace(self.task.prompt, self.steps), {"task": self.task, "steps": []}

    def get_state(self):
        return (self.task, tuple(self.steps), self.done)

    def set_state(self, state):
        self.task, steps, self.done = state
        self.steps = list(steps)

    def format_answer(self, answer) -> str:
        return f"Answer: {answer}"

    def step(self, action: str):
        if self.done:
            raise RuntimeError("step after the episode ended")
        self.steps.append(action)
        info = {"task": self.task, "steps": list(self.steps), "answer": None, "verdict": None}
        obs = render_trace(self.task.prompt, self.steps)
        if action.startswith("Answer:"):
            self.done = True
            ans = action.split(":", 1)[1].strip()
            self.verifications += 1
            ok = ans == self.task.answer
            info.update(answer=ans, verdict=_Verdict(float(ok), ok))
            return obs, float(ok), True, False, info
        if len(self.steps) >= self.max_steps:
            self.done = True
            return obs, 0.0, False, True, info
        return obs, 0.0, False, False, info


def parse_obs(obs: str, tasks=TASKS):
    """(task, steps) of a rendered observation."""
    for t in tasks:
        head = t.prompt + "\n"
        if obs.startswith(head):
            rest = obs[len(head):]
            steps = rest.split("\n")[:-1] if rest else []
            return t, steps
    raise KeyError(obs)


def continue_from(task: Task, steps, wrong_at: int | None):
    """The remaining steps of ``task`` after ``steps``; arithmetic slips (+1) at index
    ``wrong_at`` (relative to the remaining steps) and is carried on consistently."""
    v = task.metadata["start"]
    for s in steps:
        m = _STEP.match(s)
        if m:
            v = int(m.group(4))
    ops = task.metadata["ops"]
    done_ops = sum(1 for s in steps if _STEP.match(s))
    out = []
    for j, (op, b) in enumerate(ops[done_ops:]):
        nv = _OPS[op](v, b) + (1 if wrong_at == j else 0)
        out.append(f"{v} {op} {b} = {nv}")
        v = nv
    out.append(f"Answer: {v}")
    return out


class TablePolicy(Policy):
    """Sample j of every call is wrong (slips at its first step) iff j < ``n_wrong``.

    Tokens: one per character plus one for the stop/eos token; ``tokens_encoded`` is the
    observation's length, charged to the first sample of each observation.
    """

    def __init__(self, n_wrong: int = 1, tasks=TASKS, logprob_right: float = -0.5, logprob_wrong: float = -0.5):
        self.n_wrong, self.tasks = n_wrong, tasks
        self.lp_right, self.lp_wrong = logprob_right, logprob_wrong
        self.generated = 0
        self.encoded = 0
        self.calls = []

    def count_tokens(self, text: str) -> int:
        return len(text)

    def propose(self, observations, n=1, stop="\n", max_new_tokens=64, temperature=1.0, top_p=1.0, seed=None):
        self.calls.append((len(observations), n, stop, max_new_tokens))
        out = []
        for obs in observations:
            task, steps = parse_obs(obs, self.tasks)
            group = []
            for j in range(n):
                wrong = j < self.n_wrong
                rest = continue_from(task, steps, 0 if wrong else None)
                text = rest[0] if stop else "\n".join(rest)
                toks = len(text) + 1
                reason = "stop" if stop else "eos"
                if toks > max_new_tokens:
                    toks, text, reason = max_new_tokens, text[:max_new_tokens], "length"
                lp = self.lp_wrong if wrong else self.lp_right
                p = Proposal(text=text, token_ids=list(range(toks)), logprobs=[lp] * toks, finish_reason=reason,
                             tokens_generated=toks, tokens_encoded=len(obs) if j == 0 else 0)
                self.generated += p.tokens_generated
                self.encoded += p.tokens_encoded
                group.append(p)
            out.append(group)
        return out

    def logprobs(self, observations, continuations, requires_grad=False):
        raise NotImplementedError("not used by planners")


def step_ok(prev_value, step: str):
    m = _STEP.match(step)
    if m:
        a, op, b, c = int(m.group(1)), m.group(2), int(m.group(3)), int(m.group(4))
        return _OPS[op](a, b) == c and (prev_value is None or a == prev_value), c
    if step.startswith("Answer:"):
        try:
            x = int(step.split(":", 1)[1])
        except ValueError:
            return False, prev_value
        return x == prev_value, prev_value
    return False, prev_value


class CheckingPRM(ProcessRewardModel):
    """Step score 1.0 if every step so far is right arithmetic, else 0.0 (``cumulative``), or
    1.0 if this step's arithmetic alone is right (``cumulative=False``). ``invert`` flips
    scores (an adversarial PRM). Counts one token per character scored."""

    def __init__(self, cumulative: bool = True, invert: bool = False, tasks=TASKS):
        self.cumulative, self.invert, self.tasks = cumulative, invert, tasks
        self.tokens_scored = 0
        self.calls = 0

    def token_count(self, prompts, step_lists):
        return sum(len(render_trace(p, s)) for p, s in zip(prompts, step_lists))

    def score_steps(self, prompts, step_lists):
        self.calls += 1
        out = []
        for p, steps in zip(prompts, step_lists):
            task = next(t for t in self.tasks if t.prompt == p)
            prev = task.metadata["start"]
            all_ok, row = True, []
            for s in steps:
                ok, prev_new = step_ok(prev, s)
                all_ok = all_ok and ok
                v = float(all_ok if self.cumulative else ok)
                row.append(1.0 - v if self.invert else v)
                prev = prev_new if prev_new is not None else prev
            out.append(row)
        self.tokens_scored += self.token_count(prompts, step_lists)
        return out
