"""Test-time search: planners that share one `Budget` and any PRM / value model.

Every planner has ``solve(env, policy, scorer, budget) -> SearchResult`` and searches from
the env's current state (reset it on a task first)::

    env.reset(options={"task": task})
    result = BeamSearch(beam_width=4, expansions=4).solve(env, policy, prm, Budget(generated=2000))
"""

from prmgym.search.base import SearchResult
from prmgym.search.beam import DVTS, BeamSearch
from prmgym.search.bon import BestOfN
from prmgym.search.mcts import MCTS, collect_value_targets, high_value_prefixes, write_value_targets

__all__ = ["SearchResult", "BestOfN", "BeamSearch", "DVTS", "MCTS", "collect_value_targets",
           "high_value_prefixes", "write_value_targets"]
