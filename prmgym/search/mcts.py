"""Monte-Carlo tree search over reasoning steps, for decoding and for collecting value targets.

One iteration: **select** a leaf from the root by UCT or PUCT; **expand** it by sampling
``expansions`` (k) next steps (``expansion="step"``) or k full continuations whose first
steps become the children (``expansion="continuation"``, ReST-RL); **evaluate** the new
children; **back up** mean values to the root. A node's value is the mean of what was
backed up through it.

Evaluation (decoding never reads the verifier's reward):

* ``"prm"`` / ``"value"``: the scorer's aggregate of the child's partial trace, counted as
  one visit of the child (``"value"`` always reads the last step: a value model).
* ``"rollout"``: one continuation is sampled from each new child to the end of the episode
  and the finished trace's scorer aggregate is the value (with ``expansion="continuation"``
  the sampled continuations themselves are the rollouts).

Finished traces (env episode ended) are scored by the scorer, never by the verifier.

Selection (N = visits, Q = mean value, P = prior):

* UCT (ReST-RL form): ``Q + c·sqrt((1 + ln N_parent) / (eps + N))``
* PUCT: ``Q + c·P·sqrt(N_parent) / (1 + N)`` with ``c`` given, or AlphaZero's
  ``log((1 + N_parent + pb_c_base) / pb_c_base) + pb_c_init`` when ``c=None``. P is the
  normalised exp(mean token log-prob) of the sampled steps among siblings (OpenR).

Answer: ``"best_value"`` (descend by highest Q through subtrees that contain an answer),
``"visits"`` (descend by most visits), ``"best_completion"`` (the highest-scored finished
trace anywhere in the tree, rollouts included).

Presets: `MCTS.vm_mcts` (ReST-RL decoding with a value model), `MCTS.airl_s` (a PRM as
heuristic, AIRL-S), `MCTS.collection` (training-time collection: every completion is
verified and the tree becomes value targets; see `write_value_targets`).

>>> MCTS.vm_mcts().iterations, MCTS.vm_mcts().c, MCTS.vm_mcts().answer
(15, 0.1, 'best_completion')
"""

from __future__ import annotations

import json
import math
import os
from typing import Iterable

from prmgym.budget import Budget
from prmgym.rewards.base import AGGREGATIONS
from prmgym.search.base import Planner, PlannerOptions, SearchResult
from prmgym.search.engine import Node, SearchEngine

SELECTS = ("uct", "puct")
EVALUATIONS = ("prm", "value", "rollout", "verifier")
ANSWERS = ("best_value", "visits", "best_completion")
EXPANSIONS = ("step", "continuation")


class MCTS(Planner):
    """MCTS planner; see the module docstring for the algorithm.

    Args:
        iterations: select/expand/evaluate/backup rounds (the budget may stop earlier).
        expansions: k, samples per expansion.
        select: ``"uct"`` or ``"puct"``.
        c: exploration constant (``None`` with PUCT = AlphaZero's schedule).
        eps: UCT's visit-count smoothing.
        evaluation: ``"prm"``, ``"value"``, ``"rollout"``; ``"verifier"`` is only for
            collection (training time: reads ground truth).
        answer: ``"best_value"``, ``"visits"`` or ``"best_completion"``.
        expansion: ``"step"`` or ``"continuation"``.
        aggregation: how the scorer's step scores make a node value (``prm``/``rollout``).
        max_depth: nodes this deep count as finished (truncated, no answer).
        max_new_tokens: per step; ``rollout_max_new_tokens`` per continuation.
        collect: keep value-target records of every searched tree (`records`).
    """

    def __init__(self, iterations: int = 20, expansions: int = 4, *, select: str = "puct", c: float | None = 1.0,
                 eps: float = 0.1, evaluation: str = "prm", answer: str = "best_value", expansion: str = "step",
                 aggregation: str = "last", max_depth: int = 16, max_new_tokens: int = 48,
                 rollout_max_new_tokens: int = 256, pb_c_base: float = 19652.0, pb_c_init: float = 1.25,
                 collect: bool = False, temperature: float = 1.0, top_p: float = 1.0, seed: int | None = 0) -> None:
        for name, val, valid in (("select", select, SELECTS), ("evaluation", evaluation, EVALUATIONS),
                                 ("answer", answer, ANSWERS), ("expansion", expansion, EXPANSIONS),
                                 ("aggregation", aggregation, AGGREGATIONS)):
            if val not in valid:
                raise ValueError(f"MCTS {name}={val!r} is not one of {', '.join(valid)}")
        if iterations < 1 or expansions < 1:
            raise ValueError(f"MCTS needs iterations >= 1 and expansions >= 1 (got {iterations}, {expansions})")
        if evaluation == "verifier" and not collect:
            raise ValueError("evaluation='verifier' reads the ground truth: only for collection "
                             "(MCTS.collection(...)); decoding uses 'prm', 'value' or 'rollout'")
        if select == "uct" and c is None:
            raise ValueError("UCT needs a number for c (e.g. c=0.2); c=None means AlphaZero's PUCT schedule")
        self.iterations, self.expansions, self.select, self.c, self.eps = iterations, expansions, select, c, eps
        self.evaluation, self.answer, self.expansion, self.aggregation = evaluation, answer, expansion, aggregation
        self.max_depth, self.max_new_tokens, self.rollout_max_new_tokens = max_depth, max_new_tokens, rollout_max_new_tokens
        self.pb_c_base, self.pb_c_init = pb_c_base, pb_c_init
        self.collect = collect
        self.temperature, self.top_p, self.seed = temperature, top_p, seed
        self.records: list[dict] = []  # value targets (collection)
        self.partial_states: list[tuple] = []  # (task, prefix_steps, value, visits) from collected trees
        self.last_root: Node | None = None

    def __repr__(self) -> str:
        return (f"MCTS(iterations={self.iterations}, expansions={self.expansions}, select={self.select!r}, "
                f"c={self.c}, evaluation={self.evaluation!r}, answer={self.answer!r}, expansion={self.expansion!r})")

    names = {
        "mcts": "AIRL-S MCTS: PUCT over step samples, PRM values of new nodes (same as airl_s)",
        "vm_mcts": "ReST-RL MCTS: full continuations, value model at new nodes, best completion",
        "airl_s": "AIRL-S MCTS: PUCT over step samples, PRM values of new nodes",
    }

    @classmethod
    def from_options(cls, name: str, options: PlannerOptions, **extra) -> "MCTS":
        o = options
        common = dict(iterations=o.iterations, expansions=o.expansions, max_depth=o.max_depth,
                      max_new_tokens=o.max_new_tokens, rollout_max_new_tokens=o.max_trace_tokens,
                      temperature=o.temperature, seed=o.seed)
        if name == "vm_mcts":
            return cls.vm_mcts(**common, **extra)
        return cls.airl_s(aggregation=o.aggregation, **common, **extra)

    @property
    def needs_scorer(self) -> bool:
        return self.evaluation != "verifier"

    # -- presets ------------------------------------------------------------------------
    @classmethod
    def vm_mcts(cls, iterations: int = 15, expansions: int = 5, c: float = 0.1, **kw) -> "MCTS":
        """ReST-RL decoding: k full continuations per expansion, value model at new nodes
        (one visit each), UCT c = 0.1, answer = the highest-value completion in the tree."""
        kw.setdefault("eps", 0.1)
        return cls(iterations=iterations, expansions=expansions, select="uct", c=c, evaluation="value",
                   answer="best_completion", expansion="continuation", **kw)

    @classmethod
    def airl_s(cls, iterations: int = 20, expansions: int = 4, **kw) -> "MCTS":
        """AIRL-S: the learned PRM as the heuristic; PUCT over step samples, PRM value of
        new nodes, answer by best value (aggregation ``kw['aggregation']``, default last)."""
        kw.setdefault("c", 1.0)
        return cls(iterations=iterations, expansions=expansions, select="puct", evaluation="prm",
                   answer="best_value", expansion="step", **kw)

    @classmethod
    def collection(cls, iterations: int = 100, expansions: int = 5, c: float = 0.2, eps: float = 0.1, **kw) -> "MCTS":
        """ReST-RL collection (training time): k full continuations per expansion, every
        completion verified, visits += k and value += Σ rewards, UCT c = 0.2, eps = 0.1.
        Records value targets of every node in `records`."""
        kw.setdefault("temperature", 0.7)
        return cls(iterations=iterations, expansions=expansions, select="uct", c=c, eps=eps, evaluation="verifier",
                   answer="best_value", expansion="continuation", collect=True, **kw)

    # -- search -------------------------------------------------------------------------
    def solve(self, env, policy, scorer=None, budget: Budget | None = None) -> SearchResult:
        if scorer is None and self.evaluation != "verifier":
            raise ValueError(f"MCTS(evaluation={self.evaluation!r}) needs a scorer (PRM or value model); got None")
        eng = SearchEngine(env, policy, scorer, budget, temperature=self.temperature, top_p=self.top_p, seed=self.seed)
        root = eng.root()
        self.last_root = root
        its = 0
        for its in range(1, self.iterations + 1):
            leaf = self._select(root)
            if leaf.terminal or leaf.depth >= self.max_depth:
                v = self._value_of_finished(eng, leaf)
                if v is None:
                    break
                self._backup(leaf, v, 1)
                continue
            if leaf.expanded:  # expanded before but produced no usable child: dead end
                self._backup(leaf, leaf.q, 1)
                continue
            ok = self._expand_and_evaluate(eng, leaf)
            if not ok:
                break  # budget spent
        nodes = list(root.iter_subtree())
        tree = {"iterations": its, "nodes": len(nodes), "max_depth": max(n.depth for n in nodes),
                "root_visits": root.visits, "completions": sum(len(n.completions) for n in nodes), **eng.stats}
        if self.collect:
            self._collect(eng, root)
        return self._choose(eng, root, tree)

    def _select(self, node: Node) -> Node:
        while node.children and not node.terminal:
            node = max(node.children, key=lambda ch: self._selection_score(node, ch))
        return node

    def _selection_score(self, parent: Node, ch: Node) -> float:
        if self.select == "uct":
            return ch.q + self.c * math.sqrt((1 + math.log(max(parent.visits, 1))) / (self.eps + ch.visits))
        c = self.c
        if c is None:
            c = math.log((1 + parent.visits + self.pb_c_base) / self.pb_c_base) + self.pb_c_init
        return ch.q + c * ch.prior * math.sqrt(parent.visits) / (1 + ch.visits)

    def _backup(self, node: Node | None, value_sum: float, visits: int) -> None:
        while node is not None:
            node.visits += visits
            node.value_sum += value_sum
            node = node.parent

    # -- evaluation ---------------------------------------------------------------------
    def _value_of_finished(self, eng: SearchEngine, node: Node) -> float | None:
        if self.evaluation == "verifier":
            return node.reward
        if node.score is None:
            (v,) = eng.score_nodes([node], self._agg())
            return v
        return node.score

    def _agg(self) -> str:
        return "last" if self.evaluation == "value" else self.aggregation

    def _expand_and_evaluate(self, eng: SearchEngine, leaf: Node) -> bool:
        stop = eng.delimiter if self.expansion == "step" else None
        m = self.max_new_tokens if self.expansion == "step" else self.rollout_max_new_tokens
        (props,) = eng.propose([leaf], self.expansions, stop=stop, max_new_tokens=m)
        if not props:
            return False
        leaf.expanded = True
        by_step: dict[str, Node] = {}
        mass: dict[str, float] = {}
        child_completions: dict[str, list[Node]] = {}
        for p in props:
            mean_lp = (sum(p.logprobs) / len(p.logprobs)) if p.logprobs else 0.0
            if self.expansion == "step":
                steps = [p.text] if p.text.strip() else []
            else:
                steps = eng.split_steps(p.text)
            if not steps:
                continue
            first = steps[0]
            if first not in by_step:
                ch = eng.child(leaf, first)
                ch.mean_logprob = mean_lp
                by_step[first] = ch
                mass[first] = 0.0
                child_completions[first] = []
            mass[first] += math.exp(mean_lp)
            if self.expansion == "continuation":
                ch = by_step[first]
                end = ch if ch.terminal else eng.replay(ch, steps[1:1 + max(0, self.max_depth - ch.depth)])
                leaf.completions.append(end)
                child_completions[first].append(end)
        if not by_step:
            return True  # nothing usable sampled; leaf stays a dead end
        total = sum(mass.values()) or 1.0
        kids = list(by_step.values())
        for step, ch in by_step.items():
            ch.prior = mass[step] / total
            leaf.children.append(ch)
        if self.collect or self.evaluation == "verifier":
            # ReST-RL collection: every completion verified; child gets its own completions.
            total_r = 0.0
            k = 0
            for step, ch in by_step.items():
                rs = [c.reward for c in child_completions[step]]
                ch.visits += len(rs)
                ch.value_sum += sum(rs)
                total_r += sum(rs)
                k += len(rs)
            self._backup(leaf, total_r, k)
            return True
        if self.evaluation in ("prm", "value"):
            vals = eng.score_nodes(kids, self._agg())
            if self.expansion == "continuation" and self.answer == "best_completion":
                eng.score_nodes(leaf.completions, self._agg())
            pairs = [(ch, v) for ch, v in zip(kids, vals) if v is not None]
        else:  # rollout
            ends = []
            for step, ch in by_step.items():
                if ch.terminal:
                    ends.append([ch])
                elif self.expansion == "continuation":
                    ends.append(child_completions[step])
                else:
                    (rp,) = eng.propose([ch], 1, stop=None, max_new_tokens=self.rollout_max_new_tokens)
                    if not rp:
                        ends.append([])
                        continue
                    end = eng.replay(ch, eng.split_steps(rp[0].text)[: max(0, self.max_depth - ch.depth)])
                    ch.completions.append(end)
                    ends.append([end])
            flat = [e for es in ends for e in es]
            vals = eng.score_nodes(flat, self.aggregation) if flat else []
            it = iter(vals)
            pairs = []
            for ch, es in zip(kids, ends):
                vs = [next(it) for _ in es]
                vs = [v for v in vs if v is not None]
                if vs:
                    pairs.append((ch, sum(vs) / len(vs)))
        for ch, v in pairs:
            ch.visits += 1
            ch.value_sum += v
        if pairs:
            self._backup(leaf, sum(v for _, v in pairs), len(pairs))
        # Children the budget could not evaluate are removed: they would be chosen blindly.
        evaluated = {id(ch) for ch, _ in pairs}
        leaf.children = [ch for ch in leaf.children if id(ch) in evaluated]
        return len(pairs) == len(kids)

    # -- answer -------------------------------------------------------------------------
    def _finished(self, root: Node) -> list[Node]:
        out = []
        for n in root.iter_subtree():
            if n.terminal:
                out.append(n)
            out.extend(n.completions)
        return out

    def _choose(self, eng: SearchEngine, root: Node, tree: dict) -> SearchResult:
        chosen: Node | None = None
        score = 0.0
        if self.answer == "best_completion":
            pool = [n for n in self._finished(root) if n.answer is not None]
            if not self.collect:
                pool = [n for n in pool if n.score is not None]
                if pool:
                    chosen = max(pool, key=lambda n: n.score)
                    score = chosen.score
            elif pool:
                chosen = max(pool, key=lambda n: n.reward)
                score = chosen.reward
        else:
            key = (lambda n: n.q) if self.answer == "best_value" else (lambda n: n.visits)
            chosen = self._descend(root, key)
            if chosen is not None:
                score = chosen.score if chosen.score is not None else chosen.q
        if chosen is None:
            return SearchResult(answer=None, steps=list(root.steps), score=0.0, reward=0.0, tree=tree, budget=eng.usage())
        return SearchResult(answer=chosen.answer, steps=list(chosen.steps), score=float(score),
                            reward=float(chosen.reward), tree=tree, budget=eng.usage())

    def _descend(self, root: Node, key) -> Node | None:
        """Follow the best child (by ``key``) among those whose subtree holds an answer."""
        has = {}

        def has_answer(n: Node) -> bool:
            if id(n) not in has:
                has[id(n)] = (n.terminal and n.answer is not None) or any(
                    c.answer is not None and (self.collect or c.score is not None) for c in n.completions
                ) or any(has_answer(c) for c in n.children)
            return has[id(n)]

        node = root
        if not has_answer(root):
            return None
        while True:
            if node.terminal:
                return node
            kids = [c for c in node.children if has_answer(c)]
            if kids:
                node = max(kids, key=key)
                continue
            comps = [c for c in node.completions if c.answer is not None and (self.collect or c.score is not None)]
            if self.collect:
                return max(comps, key=lambda c: c.reward)
            return max(comps, key=lambda c: c.score)

    # -- collection (training time) -----------------------------------------------------
    def _collect(self, eng: SearchEngine, root: Node) -> None:
        for n in root.iter_subtree():
            if n.visits > 0:
                self.records.append({"prompt": eng.prompt, "steps": list(n.steps), "value": n.q, "visits": n.visits})
                if not n.terminal:
                    self.partial_states.append((eng.task, list(n.steps), n.q, n.visits))

    def value_targets(self) -> list[dict]:
        """Value-target records of every collected node: prompt, steps, value, visits."""
        return list(self.records)

    def write_value_targets(self, path: str | os.PathLike, append: bool = False) -> int:
        """Write `records` as JSONL (the format `prmgym.rewards.value` trains on); returns lines."""
        return write_value_targets(self.records, path, append=append)

    def high_value_prefixes(self, min_value: float = 0.5, min_visits: int = 2, max_per_task: int | None = None,
                            include_root: bool = False) -> list[tuple]:
        """(task, prefix_steps) pairs of collected partial states worth restarting from.

        A ReST-GRPO trainer can take these as extra prompts: the prefix is replayed in the
        env (``env.reset(options={"task": task})`` then ``env.step`` each step) and the
        policy continues from there. Highest values first within each task.
        """
        return high_value_prefixes(self.partial_states, min_value, min_visits, max_per_task, include_root)


def write_value_targets(records: Iterable[dict], path: str | os.PathLike, append: bool = False) -> int:
    """One JSON object per line: ``{"prompt": str, "steps": [str], "value": float, "visits": int}``."""
    n = 0
    os.makedirs(os.path.dirname(os.fspath(path)) or ".", exist_ok=True)
    with open(path, "a" if append else "w") as f:
        for r in records:
            f.write(json.dumps({"prompt": r["prompt"], "steps": list(r["steps"]), "value": float(r["value"]),
                                "visits": int(r["visits"])}) + "\n")
            n += 1
    return n


def high_value_prefixes(partial_states, min_value: float = 0.5, min_visits: int = 2,
                        max_per_task: int | None = None, include_root: bool = False) -> list[tuple]:
    """Filter (task, steps, value, visits) tuples into (task, steps) restart points."""
    by_task: dict[str, list] = {}
    for task, steps, value, visits in partial_states:
        if visits < min_visits or value < min_value or (not steps and not include_root):
            continue
        by_task.setdefault(task.id, []).append((value, visits, task, steps))
    out = []
    for items in by_task.values():
        items.sort(key=lambda t: (-t[0], -t[1], len(t[3])))
        for value, visits, task, steps in items[:max_per_task]:
            out.append((task, list(steps)))
    return out


def collect_value_targets(env, policy, tasks, path: str | os.PathLike | None = None, *, budget_per_task=None,
                          planner: MCTS | None = None, append: bool = False) -> MCTS:
    """Run collection MCTS on each task (training split!) and write the value targets.

    Returns the planner, whose `records` / `high_value_prefixes()` feed the value model and
    ReST-GRPO.
    """
    planner = planner or MCTS.collection()
    if not planner.collect:
        raise ValueError("collect_value_targets needs a collection planner: MCTS.collection(...)")
    for task in tasks:
        env.reset(options={"task": task})
        planner.solve(env, policy, None, Budget.parse(budget_per_task) if budget_per_task is not None else Budget())
    if path is not None:
        planner.write_value_targets(path, append=append)
    return planner
