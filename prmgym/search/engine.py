"""What every planner shares: budgeted policy/scorer calls, env branching, tree nodes.

`SearchEngine` wraps one search on one task. It is the only place planners touch the
policy, the scorer and the budget, so the accounting rules live in one file:

* Before a policy call it reserves the worst case (``samples × max_new_tokens`` generated,
  the observation's tokens encoded) and shrinks the call to fit: fewer samples first, then
  fewer new tokens. After the call it charges what the proposals report
  (``Proposal.tokens_generated`` / ``tokens_encoded``), so the budget holds exactly the
  tokens the policy produced and never more than its limit.
* Before a scorer call it estimates the tokens to score (the scorer's own ``token_count``
  if it has one, else the rendered traces counted with the policy tokenizer) and scores
  only the traces that fit; after the call it charges the scorer's ``tokens_scored``
  counter delta when the scorer exposes one, else the estimate. Scores are cached per
  trace, so a trace is never paid for twice.
* Env branching goes through ``env.unwrapped`` (``get_state``/``set_state``/``step``):
  wrappers keep per-episode counters that ``set_state`` cannot rewind. Sandbox runs are
  charged as ``sandbox`` (see `SearchEngine._charge_verdict`), and so is every code-cell step
  that ran the sandbox (``info["tool"].ran``, `prmgym.envs.tools.ToolEnv`); a node of a tool
  step holds the step with its output, so its children see it and the scorer scores it.

Planners never read the verifier reward to choose; it is carried on nodes only so the
chosen trace's `SearchResult.reward` can be reported.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from typing import Any, Sequence

from prmgym.budget import Budget
from prmgym.envs.trace import render_trace
from prmgym.rewards.base import aggregate


@dataclass(eq=False)
class Node:
    """A partial (or finished) trace in a search tree."""

    steps: tuple[str, ...]
    state: Any
    parent: "Node | None" = None
    depth: int = 0
    terminal: bool = False  # the env ended the episode (answer submitted or step cap)
    answer: str | None = None
    reward: float = 0.0  # verifier reward; evaluation only, never used to choose
    verdict: Any = None
    prior: float = 1.0
    mean_logprob: float = 0.0
    visits: int = 0
    value_sum: float = 0.0
    score: float | None = None  # the scorer's aggregate for this trace
    children: list["Node"] = field(default_factory=list)
    expanded: bool = False
    completions: list["Node"] = field(default_factory=list)  # finished rollouts sampled here

    @property
    def q(self) -> float:
        return self.value_sum / self.visits if self.visits else 0.0

    def iter_subtree(self):
        stack = [self]
        while stack:
            n = stack.pop()
            yield n
            stack.extend(n.children)


def count_tokens_fn(policy):
    """A text -> token count function for ``policy`` (its tokenizer, else characters)."""
    if hasattr(policy, "count_tokens"):
        return policy.count_tokens
    if callable(getattr(policy, "encode", None)):  # TransformersPolicy: exactly what propose feeds
        return lambda text: len(policy.encode(text))
    tok = getattr(policy, "tokenizer", None)
    if tok is not None:

        def _count(text: str) -> int:
            enc = tok(text, add_special_tokens=True) if _accepts_special(tok) else tok(text)
            ids = enc["input_ids"] if isinstance(enc, dict) or hasattr(enc, "keys") else enc
            return len(ids)

        return _count
    return len


def _accepts_special(tok) -> bool:
    try:
        tok("a", add_special_tokens=True)
        return True
    except TypeError:
        return False


class SearchEngine:
    """Budgeted access to the policy, the scorer and the env for one search.

    Args:
        env: a prmgym reasoning env, reset to the state to search from.
        policy: any `Policy`.
        scorer: a `ProcessRewardModel` (PRM, ORM or value model) or ``None``.
        budget: the `Budget` to charge (limits are respected).
        temperature, top_p: sampling settings for every policy call.
        seed: seeds the per-call sampling seeds (deterministic searches).
    """

    def __init__(self, env, policy, scorer, budget: Budget | None, *, temperature: float = 1.0,
                 top_p: float = 1.0, seed: int | None = 0) -> None:
        self.env = env
        self.u = env.unwrapped
        for attr in ("get_state", "set_state", "step", "task"):
            if not hasattr(self.u, attr):
                raise TypeError(
                    f"planners need a prmgym reasoning env (env.unwrapped.{attr} is missing); "
                    "make one with gym.make('prmgym/ChainArithmetic-v0')"
                )
        self.policy = policy
        self.scorer = scorer
        self.budget = budget if budget is not None else Budget()
        self.temperature = temperature
        self.top_p = top_p
        self.rng = random.Random(seed)
        self.seed_given = seed is not None
        self.delimiter = getattr(self.u, "delimiter", "\n")
        self.task = self.u.task
        self.prompt = self.task.prompt
        self.template = getattr(self.u, "prompt_template", None)  # the env's PromptTemplate, if any
        self.count_tokens = count_tokens_fn(policy)
        self._score_cache: dict[tuple[str, ...], list[float]] = {}
        self._verdicts_seen: dict[int, object] = {}
        self.stats = {"policy_calls": 0, "proposals": 0, "scorer_calls": 0, "traces_scored": 0,
                      "cache_hits": 0, "env_steps": 0, "budget_stops": 0}
        self._start_used = dict(self.budget.used)
        self._start_seconds = self.budget.elapsed()

    # -- the root -------------------------------------------------------------------
    def root(self) -> Node:
        steps = tuple(getattr(self.u, "steps", ()) or ())
        return Node(steps=steps, state=self.u.get_state(), depth=0)

    # -- policy ---------------------------------------------------------------------
    def _next_seed(self) -> int | None:
        return self.rng.randrange(2**31) if self.seed_given else None

    def propose(self, nodes: Sequence[Node], n: int | Sequence[int], *, stop: str | None,
                max_new_tokens: int) -> list[list]:
        """Sample up to ``n`` continuations of each node, within the budget.

        Returns one list of `Proposal` per node (possibly shorter than asked, possibly empty
        when the budget is spent). Every returned proposal has been charged.
        """
        obs = [render_trace(self.prompt, nd.steps, self.delimiter, self.template) for nd in nodes]
        return self.propose_observations(obs, n, stop=stop, max_new_tokens=max_new_tokens)

    def propose_observations(self, obs: Sequence[str], n: int | Sequence[int], *, stop: str | None,
                             max_new_tokens: int) -> list[list]:
        """`propose` for rendered observations (partial traces of this search's task)."""
        counts = [n] * len(obs) if isinstance(n, int) else list(n)
        if len(counts) != len(obs):
            raise ValueError("propose: one sample count per observation")
        out: list[list] = [[] for _ in obs]
        # Worst case: every sample runs to max_new_tokens; every prefix is encoded once.
        enc_cost = [self.count_tokens(o) for o in obs]
        remaining_gen = self.budget.remaining("generated")
        remaining_enc = self.budget.remaining("encoded")
        if self.budget.remaining("seconds") <= 0 or (hasattr(self.u, "tool_runs") and self.budget.remaining("sandbox") <= 0):
            self.stats["budget_stops"] += 1  # (a tool env's steps may run the sandbox: no runs left, no new steps)
            return out
        plan: list[int] = []
        gen_left, enc_left = remaining_gen, remaining_enc
        for c, e in zip(counts, enc_cost):
            if c <= 0 or e > enc_left:
                plan.append(0)
                continue
            k = int(min(c, gen_left // max_new_tokens)) if gen_left != math.inf else c
            plan.append(k)
            if k:
                gen_left -= k * max_new_tokens
                enc_left -= e
        m = max_new_tokens
        if sum(plan) == 0:
            # Not even one full-length sample fits: spend the rest on one shorter sample.
            if remaining_gen >= 1 and any(c > 0 for c in counts):
                i = next(i for i, c in enumerate(counts) if c > 0)
                if enc_cost[i] <= remaining_enc:
                    plan[i] = 1
                    m = int(min(max_new_tokens, remaining_gen))
        if sum(plan) == 0:
            self.stats["budget_stops"] += 1
            return out
        if sum(plan) < sum(counts):
            self.stats["budget_stops"] += 1
        idx = [i for i, k in enumerate(plan) if k > 0]
        # One call per distinct sample count keeps the Policy API (one n per call).
        by_k: dict[int, list[int]] = {}
        for i in idx:
            by_k.setdefault(plan[i], []).append(i)
        for k, group in by_k.items():
            props = self.policy.propose([obs[i] for i in group], n=k, stop=stop, max_new_tokens=m,
                                        temperature=self.temperature, top_p=self.top_p, seed=self._next_seed())
            self.stats["policy_calls"] += 1
            if len(props) != len(group):
                raise RuntimeError(f"policy returned {len(props)} proposal lists for {len(group)} observations")
            for i, plist in zip(group, props):
                plist = list(plist)[:k]
                gen = sum(int(p.tokens_generated) for p in plist)
                enc = sum(int(p.tokens_encoded) for p in plist)
                self.budget.charge(generated=gen, encoded=enc)
                self.stats["proposals"] += len(plist)
                out[i] = plist
        return out

    # -- env ------------------------------------------------------------------------
    def child(self, parent: Node, step: str) -> Node:
        """Apply one step to ``parent``'s state; returns the new node (not attached)."""
        self.u.set_state(parent.state)
        _, reward, terminated, truncated, info = self.u.step(step)
        self.stats["env_steps"] += 1
        tool = info.get("tool")  # a code cell (prmgym.envs.tools): the step as stored, with its output
        if tool is not None and tool.ran:
            self.budget.charge(sandbox=1)
        node = Node(steps=parent.steps + (info["steps"][-1] if tool is not None else step,), state=self.u.get_state(),
                    parent=parent, depth=parent.depth + 1)
        if terminated or truncated:
            node.terminal = True
            node.answer = info.get("answer")
            node.reward = float(reward)
            node.verdict = info.get("verdict")
            self._charge_verdict(node.verdict)
        return node

    def replay(self, parent: Node, steps: Sequence[str]) -> Node:
        """Apply several steps (a sampled continuation); stops when the episode ends."""
        node = parent
        for s in steps:
            node = self.child(node, s)
            if node.terminal:
                break
        return node

    def play(self, root: Node, k: int, *, max_new_tokens: int, max_steps: int) -> tuple[int, list[Node]]:
        """``k`` step-by-step episodes from ``root`` played by the episode runner
        (`prmgym.envs.episodes.play_rounds`): the first round samples ``k`` steps of the root
        in one call, later rounds one step per live episode, all within the budget.

        Returns (episodes that got a first step, the finished leaves in the order they
        finished)."""
        from prmgym.envs.episodes import Prompt, Trajectory, play_rounds

        branches = [_Branch(self, root) for _ in range(k)]
        obs = render_trace(self.prompt, root.steps, self.delimiter, self.template)
        trajs = [Trajectory(Prompt(self.task), 0, obs) for _ in range(k)]
        play_rounds(trajs, branches, _BudgetedPolicy(self), stop=self.delimiter, group_size=k,
                    max_new_tokens=max_new_tokens, max_steps=max_steps)
        started = sum(1 for t in trajs if t.steps)
        done = sorted((b.node for b in branches if b.node.terminal), key=lambda nd: nd.depth)  # stable: by round
        return started, done

    def split_steps(self, text: str) -> list[str]:
        return [s for s in text.split(self.delimiter) if s.strip()]

    def _charge_verdict(self, verdict) -> None:
        """Sandbox runs: ``details["sandbox_runs"]`` if the verdict reports it; otherwise a
        code verdict (one with ``tests_total``) counts as one run the first time this search
        sees that verdict object (the env caches verdicts per (task, answer): a repeated
        answer does not run the sandbox again)."""
        details = getattr(verdict, "details", None)
        if not isinstance(details, dict):
            return
        if id(verdict) in self._verdicts_seen:
            return
        self._verdicts_seen[id(verdict)] = verdict  # keep a reference: ids stay unique
        runs = details.get("sandbox_runs")
        if runs is None and "tests_total" in details:
            runs = 1
        if runs:
            self.budget.charge(sandbox=int(runs))

    # -- scorer ---------------------------------------------------------------------
    def _estimate_prm_tokens(self, step_lists: Sequence[Sequence[str]]) -> list[int]:
        fn = getattr(self.scorer, "token_count", None)  # ScalarHeadPRM: tokens one trace runs
        if callable(fn):
            return [int(fn([self.prompt], [list(s)])) for s in step_lists]
        return [self.count_tokens(render_trace(self.prompt, s, self.delimiter, self.template)) + 1 for s in step_lists]

    def step_scores(self, step_lists: Sequence[Sequence[str]]) -> list[list[float] | None]:
        """Per-step scores of each trace (cached); ``None`` where the budget forbids."""
        if self.scorer is None:
            raise ValueError("this planner setting needs a scorer (a PRM, ORM or value model); got None")
        keys = [tuple(s) for s in step_lists]
        out: list[list[float] | None] = [None] * len(keys)
        todo: list[int] = []
        seen: dict[tuple, int] = {}
        for i, k in enumerate(keys):
            if k in self._score_cache:
                out[i] = self._score_cache[k]
                self.stats["cache_hits"] += 1
            elif k not in seen:
                seen[k] = i
                todo.append(i)
        if todo:
            est = self._estimate_prm_tokens([keys[i] for i in todo])
            left = self.budget.remaining("prm")
            fit: list[int] = []
            fit_cost = 0
            for i, e in zip(todo, est):
                if fit_cost + e <= left:
                    fit.append(i)
                    fit_cost += e
            if len(fit) < len(todo):
                self.stats["budget_stops"] += 1
            if fit and self.budget.remaining("seconds") > 0:
                before = getattr(self.scorer, "tokens_scored", None)
                scores = self.scorer.score_steps([self.prompt] * len(fit), [list(keys[i]) for i in fit])
                after = getattr(self.scorer, "tokens_scored", None)
                used = (after - before) if isinstance(before, (int, float)) and isinstance(after, (int, float)) else fit_cost
                self.budget.charge(prm=int(used))
                self.stats["scorer_calls"] += 1
                self.stats["traces_scored"] += len(fit)
                for i, s in zip(fit, scores):
                    s = [float(x) for x in s]
                    self._score_cache[keys[i]] = s
        for i, k in enumerate(keys):
            if out[i] is None and k in self._score_cache:
                out[i] = self._score_cache[k]
        return out

    def score_nodes(self, nodes: Sequence[Node], aggregation: str) -> list[float | None]:
        """Aggregate scores of each node's trace; sets ``node.score``; ``None`` if unaffordable."""
        per_step = self.step_scores([n.steps for n in nodes])
        out = []
        for n, s in zip(nodes, per_step):
            v = None if s is None else aggregate(s, aggregation)
            if v is not None:
                n.score = v
            out.append(v)
        return out

    # -- accounting -----------------------------------------------------------------
    def usage(self) -> dict:
        """Budget used by this search (differences from when the engine was made)."""
        used = {k: self.budget.used[k] - self._start_used.get(k, 0) for k in self.budget.used}
        used["seconds"] = round(self.budget.elapsed() - self._start_seconds, 4)
        return used


class _BudgetedPolicy:
    """The policy as the episode runner sees it during a search: every call goes through
    `SearchEngine.propose_observations` (the budget's limits and charges, the search's own
    sampling settings and seeds), so it may return fewer proposals than asked."""

    def __init__(self, engine: SearchEngine) -> None:
        self.engine = engine

    def propose(self, observations, n=1, stop="\n", max_new_tokens=64, temperature=None, top_p=None, seed=None):
        return self.engine.propose_observations(observations, n, stop=stop, max_new_tokens=max_new_tokens)


class _Branch:
    """A tree branch as an env for the episode runner: ``step`` is `SearchEngine.child`."""

    def __init__(self, engine: SearchEngine, node: Node) -> None:
        self.engine, self.node = engine, node

    def step(self, action: str):
        self.node = nd = self.engine.child(self.node, action)
        obs = render_trace(self.engine.prompt, nd.steps, self.engine.delimiter, self.engine.template)
        return obs, nd.reward, nd.terminal, False, {"answer": nd.answer, "verdict": nd.verdict}


def vote(nodes: Sequence[Node], weights: Sequence[float] | None = None) -> tuple[str | None, float, list[Node]]:
    """Most supported answer among finished nodes (ties: first seen).

    Returns (answer, its share of the total weight, the nodes that gave it).
    """
    tally: dict[str, float] = {}
    members: dict[str, list[Node]] = {}
    for i, n in enumerate(nodes):
        if n.answer is None:
            continue
        key = str(n.answer).strip()
        w = 1.0 if weights is None else float(weights[i])
        tally[key] = tally.get(key, 0.0) + w
        members.setdefault(key, []).append(n)
    if not tally:
        return None, 0.0, []
    best = max(tally, key=lambda k: tally[k])  # dicts keep insertion order: ties -> first seen
    total = sum(tally.values())
    return best, (tally[best] / total if total > 0 else 0.0), members[best]
