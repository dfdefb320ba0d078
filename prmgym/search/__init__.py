"""Test-time search: planners that share one `Budget` and any PRM / value model.

Every planner is a `Planner`: ``solve(env, policy, scorer, budget) -> SearchResult``, searching
from the env's current state (reset it on a task first), and registered by name for
`make_planner` / ``prmgym search --planner NAME``::

    env.reset(options={"task": task})
    result = BeamSearch(beam_width=4, expansions=4).solve(env, policy, prm, Budget(generated=2000))
"""

from prmgym.search.base import Planner, PlannerOptions, SearchResult, make_planner, planner_names

# The built-in planners; importing a planner's module registers its names (this order is the
# order of `planner_names`). A new planner: its module here plus one import line below.
from prmgym.search.bon import BestOfN  # isort: skip
from prmgym.search.beam import DVTS, BeamSearch  # isort: skip
from prmgym.search.mcts import MCTS, collect_value_targets, high_value_prefixes, write_value_targets  # isort: skip

__all__ = ["Planner", "PlannerOptions", "SearchResult", "BestOfN", "BeamSearch", "DVTS", "MCTS", "make_planner",
           "planner_names", "collect_value_targets", "high_value_prefixes", "write_value_targets"]
