"""Step-level beam search and diverse verifier tree search (DVTS), ranked by a PRM.

Both run the same loop over *groups* of beams: every active beam is expanded by ``M``
sampled next steps, the PRM scores the new partial traces (one pass per trace, cached),
and each group keeps its best candidates. A candidate that finishes (answer submitted or
the env's step cap) leaves the active set and fills one of its group's slots.

* `BeamSearch(beam_width=N, expansions=M)`: one group of N beams; the root is expanded
  by N×M samples (N identical beams), later levels by M per beam; the top N survive.
* `DVTS(n=N, subtree_width=M)`: N/M independent groups of one beam each; a group's beam
  is expanded by M samples and only its best child survives, so subtrees never compete
  (search-and-learn's diverse verifier tree search).

The answer is the finished trace with the best PRM aggregate (``select="score"``) or the
answer with the largest summed aggregate (``select="weighted_vote"``).

>>> BeamSearch(beam_width=4, expansions=2).beam_width
4
"""

from __future__ import annotations

from prmgym.budget import Budget
from prmgym.rewards.base import AGGREGATIONS
from prmgym.search.base import Planner, PlannerOptions, SearchResult
from prmgym.search.engine import Node, SearchEngine, vote


def _knobs(o: PlannerOptions) -> dict:
    """The shared knobs beam search and DVTS read the same way."""
    return dict(max_depth=o.max_depth, aggregation=o.aggregation, max_new_tokens=o.max_new_tokens,
                temperature=o.temperature, seed=o.seed)


class _GroupedBeam(Planner):
    select_options = ("score", "weighted_vote")

    def __init__(self, *, groups: int, keep: int, expansions: int, max_depth: int, aggregation: str,
                 select: str, max_new_tokens: int, temperature: float, top_p: float, seed: int | None) -> None:
        if aggregation not in AGGREGATIONS:
            raise ValueError(f"unknown aggregation {aggregation!r}; valid: {', '.join(AGGREGATIONS)}")
        if select not in self.select_options:
            raise ValueError(f"unknown selection {select!r}; valid: {', '.join(self.select_options)}")
        if max_depth < 1:
            raise ValueError(f"max_depth must be >= 1, got {max_depth}")
        self.groups, self.keep, self.expansions = groups, keep, expansions
        self.max_depth, self.aggregation, self.select = max_depth, aggregation, select
        self.max_new_tokens, self.temperature, self.top_p, self.seed = max_new_tokens, temperature, top_p, seed

    def solve(self, env, policy, scorer, budget: Budget | None = None) -> SearchResult:
        if scorer is None:
            raise ValueError(f"{type(self).__name__} ranks partial traces with a PRM/value model; got scorer=None")
        eng = SearchEngine(env, policy, scorer, budget, temperature=self.temperature, top_p=self.top_p, seed=self.seed)
        root = eng.root()
        active: list[list[Node]] = [[root] for _ in range(self.groups)]
        done: list[list[Node]] = [[] for _ in range(self.groups)]
        best_partial: Node = root
        for depth in range(1, self.max_depth + 1):
            if not any(active):
                break
            # -- expand ------------------------------------------------------------
            if depth == 1:
                # All groups sit at the root: one call, samples dealt out group by group.
                per_group = [self.keep * self.expansions if self.groups == 1 else self.expansions] * self.groups
                (props,) = eng.propose([root], sum(per_group), stop=eng.delimiter, max_new_tokens=self.max_new_tokens)
                cands: list[list[tuple[Node, object]]] = []
                pos = 0
                for k in per_group:
                    cands.append([(root, p) for p in props[pos:pos + k]])
                    pos += k
            else:
                flat = [(g, nd) for g in range(self.groups) for nd in active[g]]
                lists = eng.propose([nd for _, nd in flat], self.expansions, stop=eng.delimiter,
                                    max_new_tokens=self.max_new_tokens)
                cands = [[] for _ in range(self.groups)]
                for (g, nd), ps in zip(flat, lists):
                    cands[g].extend((nd, p) for p in ps)
            if not any(cands):
                break  # budget spent
            # -- step the env (deduplicating identical partial traces per group) ------
            children: list[list[Node]] = []
            for g in range(self.groups):
                seen: set[tuple[str, ...]] = set()
                kids = []
                for parent, p in cands[g]:
                    if not p.text.strip():
                        continue
                    key = parent.steps + (p.text,)
                    if key in seen:
                        continue
                    seen.add(key)
                    c = eng.child(parent, p.text)
                    c.mean_logprob = (sum(p.logprobs) / len(p.logprobs)) if p.logprobs else 0.0
                    parent.children.append(c)
                    kids.append(c)
                children.append(kids)
            # -- rank with the PRM ------------------------------------------------------
            flat_kids = [c for kids in children for c in kids]
            eng.score_nodes(flat_kids, self.aggregation)
            stop = False
            for g in range(self.groups):
                ranked = sorted((c for c in children[g] if c.score is not None), key=lambda c: -c.score)
                if len(ranked) < len(children[g]):
                    stop = True  # the PRM budget ran out: rank only what was scored, then stop
                slots = max(self.keep - len(done[g]), 0)
                nxt = []
                for c in ranked[:slots]:
                    if c.terminal or c.depth - root.depth >= self.max_depth:
                        done[g].append(c)
                    else:
                        nxt.append(c)
                active[g] = nxt
                if ranked and (best_partial.score is None or ranked[0].score > best_partial.score):
                    best_partial = ranked[0]
            if stop:
                break
        finished = [c for g in done for c in g]
        nodes = list(root.iter_subtree())
        tree = {"depth": max(n.depth for n in nodes), "finished": len(finished), "nodes": len(nodes), **eng.stats}
        return self._choose(eng, root, finished, best_partial, tree)

    def _choose(self, eng, root, finished, best_partial, tree) -> SearchResult:
        answered = [c for c in finished if c.answer is not None and c.score is not None]
        chosen, score = None, 0.0
        if self.select == "weighted_vote" and answered:
            _, share, members = vote(answered, [max(c.score, 0.0) for c in answered])
            chosen, score = max(members, key=lambda c: c.score), share
        elif answered:
            chosen = max(answered, key=lambda c: c.score)
            score = chosen.score
        if chosen is None:
            # No answer: report the best partial trace (reward 0 unless the env ended it).
            pool = [c for c in finished if c.score is not None] or [best_partial]
            chosen = max(pool, key=lambda c: c.score if c.score is not None else float("-inf"))
            score = chosen.score or 0.0
        return SearchResult(answer=chosen.answer, steps=list(chosen.steps), score=float(score),
                            reward=float(chosen.reward), tree=tree, budget=eng.usage())


class BeamSearch(_GroupedBeam):
    """Step-level beam search: keep the top ``beam_width`` partial traces by PRM.

    Args:
        beam_width: N, beams kept per level.
        expansions: M, sampled next steps per beam.
        max_depth: steps before the search stops (unfinished beams are not answers).
        aggregation: how a partial trace's step scores rank it (``last`` as in
            search-and-learn; ``min``/``mean``/``prod`` also work).
        select: ``"score"`` or ``"weighted_vote"`` over the finished beams.
    """

    def __init__(self, beam_width: int = 4, expansions: int = 4, max_depth: int = 16, *, aggregation: str = "last",
                 select: str = "score", max_new_tokens: int = 48, temperature: float = 1.0, top_p: float = 1.0,
                 seed: int | None = 0) -> None:
        if beam_width < 1 or expansions < 1:
            raise ValueError(f"beam_width and expansions must be >= 1, got {beam_width}, {expansions}")
        self.beam_width = beam_width
        super().__init__(groups=1, keep=beam_width, expansions=expansions, max_depth=max_depth,
                         aggregation=aggregation, select=select, max_new_tokens=max_new_tokens,
                         temperature=temperature, top_p=top_p, seed=seed)

    names = {"beam": "step-level beam search: beam_width beams x expansions samples per level, ranked by the PRM"}

    @classmethod
    def from_options(cls, name: str, options: PlannerOptions, **extra) -> "BeamSearch":
        return cls(beam_width=options.beam_width, expansions=options.expansions, **_knobs(options), **extra)

    def __repr__(self) -> str:
        return f"BeamSearch(beam_width={self.beam_width}, expansions={self.expansions}, max_depth={self.max_depth})"


class DVTS(_GroupedBeam):
    """Diverse verifier tree search: ``n // subtree_width`` independent greedy subtrees.

    Args:
        n: total samples per level (N); must be a multiple of ``subtree_width``.
        subtree_width: M, samples per subtree per level; each subtree keeps its best one.
    """

    def __init__(self, n: int = 8, subtree_width: int = 4, max_depth: int = 16, *, aggregation: str = "last",
                 select: str = "score", max_new_tokens: int = 48, temperature: float = 1.0, top_p: float = 1.0,
                 seed: int | None = 0) -> None:
        if subtree_width < 1 or n < subtree_width or n % subtree_width:
            raise ValueError(f"DVTS needs n a positive multiple of subtree_width (got n={n}, subtree_width={subtree_width})")
        self.n, self.subtree_width = n, subtree_width
        super().__init__(groups=n // subtree_width, keep=1, expansions=subtree_width, max_depth=max_depth,
                         aggregation=aggregation, select=select, max_new_tokens=max_new_tokens,
                         temperature=temperature, top_p=top_p, seed=seed)

    names = {"dvts": "diverse verifier tree search: n / expansions independent subtrees, each keeps its best child"}

    @classmethod
    def from_options(cls, name: str, options: PlannerOptions, **extra) -> "DVTS":
        return cls(n=options.n, subtree_width=options.expansions, **_knobs(options), **extra)

    def __repr__(self) -> str:
        return f"DVTS(n={self.n}, subtree_width={self.subtree_width}, max_depth={self.max_depth})"
