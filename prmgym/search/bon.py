"""Best-of-N: sample whole traces, pick one by PRM, ORM, majority vote or PRM-weighted vote.

>>> BestOfN(n=8, select="weighted_vote", aggregation="min")
BestOfN(n=8, select='weighted_vote', aggregation='min')
"""

from __future__ import annotations

from prmgym.budget import Budget
from prmgym.rewards.base import AGGREGATIONS
from prmgym.search.base import Planner, PlannerOptions, SearchResult
from prmgym.search.engine import Node, SearchEngine, vote

SELECTIONS = ("prm", "orm", "majority", "weighted_vote", "first")

#: planner name -> BestOfN selection
_SELECT_OF = {"majority": "majority", "bon": "prm", "weighted_vote": "weighted_vote", "orm_bon": "orm"}


class BestOfN(Planner):
    """Sample up to ``n`` complete traces and choose one.

    Traces are sampled in waves of ``wave`` so that a budget that runs out mid-way leaves
    finished traces behind (an unfinished trace is dropped). ``stepwise=False`` (default)
    samples each trace in one policy call (``stop=None``) and replays it through the env;
    ``stepwise=True`` samples one step per call.

    Args:
        n: traces to sample (the budget may stop earlier).
        select: ``"prm"`` (highest PRM aggregate), ``"orm"`` (scorer read on the final
            trace only: aggregation ``last``), ``"majority"`` (most frequent answer, no
            scorer needed), ``"weighted_vote"`` (answer with the largest sum of PRM
            aggregates), ``"first"`` (the first finished trace: plain sampling).
        aggregation: how step scores collapse for ``prm``/``weighted_vote``.
        max_new_tokens: per step (stepwise) ; ``max_trace_tokens`` per whole trace.
    """

    def __init__(self, n: int = 8, select: str = "prm", aggregation: str = "last", *, wave: int | None = None,
                 stepwise: bool = False, max_new_tokens: int = 48, max_trace_tokens: int = 256,
                 max_depth: int = 16, temperature: float = 1.0, top_p: float = 1.0, seed: int | None = 0) -> None:
        if n < 1:
            raise ValueError(f"BestOfN.n must be >= 1, got {n}")
        if select not in SELECTIONS:
            raise ValueError(f"unknown selection {select!r}; valid: {', '.join(SELECTIONS)}")
        if aggregation not in AGGREGATIONS:
            raise ValueError(f"unknown aggregation {aggregation!r}; valid: {', '.join(AGGREGATIONS)}")
        self.n, self.select, self.aggregation = n, select, aggregation
        self.wave = wave or min(n, 8)
        self.stepwise = stepwise
        self.max_new_tokens, self.max_trace_tokens, self.max_depth = max_new_tokens, max_trace_tokens, max_depth
        self.temperature, self.top_p, self.seed = temperature, top_p, seed

    names = {
        "sample": "one sampled trace (BestOfN(n=1, select='first')); no scorer",
        "majority": "n sampled traces, the most frequent answer; no scorer",
        "bon": "n sampled traces, the one with the highest PRM aggregate",
        "weighted_vote": "n sampled traces, the answer with the largest summed PRM aggregate",
        "orm_bon": "n sampled traces, the one the scorer rates highest on the final trace (ORM)",
    }

    @classmethod
    def from_options(cls, name: str, options: PlannerOptions, **extra) -> "BestOfN":
        o = options
        common = dict(max_trace_tokens=o.max_trace_tokens, max_depth=o.max_depth, temperature=o.temperature, seed=o.seed)
        if name == "sample":
            return cls(n=1, select="first", **common, **extra)
        return cls(n=o.n, select=_SELECT_OF[name], aggregation=o.aggregation, max_new_tokens=o.max_new_tokens,
                   **common, **extra)

    def __repr__(self) -> str:
        return f"BestOfN(n={self.n}, select={self.select!r}, aggregation={self.aggregation!r})"

    @property
    def needs_scorer(self) -> bool:
        return self.select in ("prm", "orm", "weighted_vote")

    def solve(self, env, policy, scorer=None, budget: Budget | None = None) -> SearchResult:
        if self.needs_scorer and scorer is None:
            raise ValueError(f"BestOfN(select={self.select!r}) needs a scorer; pass a PRM/ORM or use select='majority'")
        eng = SearchEngine(env, policy, scorer, budget, temperature=self.temperature, top_p=self.top_p, seed=self.seed)
        root = eng.root()
        finished: list[Node] = []
        sampled = 0
        while sampled < self.n:
            k = min(self.wave, self.n - sampled)
            got = self._sample_wave(eng, root, k)
            if got is None:
                break
            n_got, done = got
            sampled += n_got
            finished.extend(done)
        return self._choose(eng, root, finished, sampled)

    # -- sampling -----------------------------------------------------------------
    def _sample_wave(self, eng: SearchEngine, root: Node, k: int) -> tuple[int, list[Node]] | None:
        """Up to k traces (the budget may allow fewer): (traces started, finished ones);
        None when the budget allowed no sample at all."""
        if not self.stepwise:
            (props,) = eng.propose([root], k, stop=None, max_new_tokens=self.max_trace_tokens)
            if not props:
                return None
            out = []
            for p in props:
                leaf = eng.replay(root, eng.split_steps(p.text)[: self.max_depth])
                if leaf.terminal:
                    out.append(leaf)
            return len(props), out
        started, done = eng.play(root, k, max_new_tokens=self.max_new_tokens, max_steps=self.max_depth)
        return (started, done) if started else None

    # -- choosing -----------------------------------------------------------------
    def _choose(self, eng: SearchEngine, root: Node, finished: list[Node], sampled: int) -> SearchResult:
        tree = {"sampled": sampled, "finished": len(finished), **eng.stats}
        answered = [n for n in finished if n.answer is not None]
        chosen: Node | None = None
        score = 0.0
        if self.select == "first":
            chosen = finished[0] if finished else None
        elif self.select == "majority":
            ans, share, members = vote(answered)
            chosen, score = (members[0], share) if members else (finished[0] if finished else None, 0.0)
        else:
            how = "last" if self.select == "orm" else self.aggregation
            pool = answered or finished
            scores = eng.score_nodes(pool, how) if pool else []
            scored = [(s, n) for s, n in zip(scores, pool) if s is not None]
            tree["scored"] = len(scored)
            if self.select == "weighted_vote":
                ans, share, members = vote([n for _, n in scored], [max(s, 0.0) for s, _ in scored])
                if members:
                    best = max(members, key=lambda n: n.score)
                    chosen, score = best, share
            elif scored:
                score, chosen = max(scored, key=lambda t: t[0])  # ties: first sampled
            if chosen is None and pool:
                chosen = pool[0]  # nothing scorable within budget: fall back to sampling
        if chosen is None:
            return SearchResult(answer=None, steps=list(root.steps), score=0.0, reward=0.0, tree=tree, budget=eng.usage())
        return SearchResult(answer=chosen.answer, steps=list(chosen.steps), score=float(score),
                            reward=float(chosen.reward), tree=tree, budget=eng.usage())
