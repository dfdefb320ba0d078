"""Held-out metrics of each PRM learner's own objective, measured while it trains offline.

A kind names its validator in the class attribute ``validation``; `VALIDATORS` maps that name
to a pair ``(build, measure)``: ``build(data, n_tasks)`` draws the held-out set once (from a
`prmgym.rewards.train.PRMData`: training-split tasks whose seeds are disjoint from the
training draws, or a slice of the value targets that training then leaves out), and
``measure(prm, heldout)`` returns metrics whose ``"score"`` entry is the one to maximise (the
trainer keeps the best PRM and stops when it stops rising; `PRMTrainConfig.eval_every`).

| validation     | kinds         | held-out set                                           | ``score``                   |
| ---            | ---           | ---                                                    | ---                         |
| ``outcome``    | orm           | policy rollouts of held-out tasks                      | AUC correct > wrong, last step |
| ``outcome_min``| (any, by ``PRMTrainConfig.validation``) | the same                 | AUC of the ``min`` over steps |
| ``outcome_sum``| implicit      | the same                                               | AUC of Σ β·log-ratio (its training logit) |
| ``step_labels``| mc            | the same, every step labelled by Monte-Carlo completions | step AUC, label ≥ ½ > label < ½ |
| ``proposals``  | airl, repirl  | k policy proposals at every prefix of held-out expert solutions; right = equal to the expert's step | within-prefix AUC (right vs wrong siblings) |
| ``value_mse``  | value         | every 10th value target (left out of training)         | −MSE                        |
| ``corrupted``  | (also: airl, mc, repirl) | held-out expert solutions, each also with one step's last number changed | AUC clean > corrupted, ``min`` aggregation |

A kind's class attribute ``also_validate`` names validators measured next to its own and logged
beside it (not used to pick the best PRM): AIRL, MC-PRM and rePIRL add ``corrupted``.
``PRMTrainConfig.validation`` (``--set validation=NAME``) replaces the kind's own validator as
the one that picks the kept PRM. A new validator is one more entry in `VALIDATORS` (or a kind's
own ``validation`` name).
"""

from __future__ import annotations

import random
import re
from typing import Any, Callable, Sequence

import torch

from prmgym.rewards.data import expert_traces, mc_step_labels, prefix_proposals, rollout

#: seed offset of held-out draws: far from the training draws (seed * 1_000_003 + step)
HELDOUT_SEED = 987_654_321
#: one value target in this many is held out (value_mse)
VALUE_HOLDOUT_EVERY = 10
#: policy proposals per expert prefix (proposals)
PROPOSALS_PER_PREFIX = 8


def auc(good: Sequence[float], bad: Sequence[float]) -> float:
    """Mann-Whitney AUC: P(good > bad) + ½ P(tie); NaN when either side is empty.

    >>> auc([0.9, 0.8], [0.1, 0.8])
    0.875
    """
    if not good or not bad:
        return float("nan")
    pooled = sorted([(float(x), 1) for x in good] + [(float(x), 0) for x in bad])
    rank_sum, i = 0.0, 0
    while i < len(pooled):  # average ranks over ties
        j = i
        while j < len(pooled) and pooled[j][0] == pooled[i][0]:
            j += 1
        mid = (i + j + 1) / 2.0
        rank_sum += mid * sum(1 for k in range(i, j) if pooled[k][1] == 1)
        i = j
    n_g, n_b = len(good), len(bad)
    return (rank_sum - n_g * (n_g + 1) / 2.0) / (n_g * n_b)


def score_unique(score: Callable[[list, list], list], prompts: Sequence[str], step_lists: Sequence[Sequence[str]]) -> list:
    """``score(prompts, step_lists)`` computed once per distinct trace (policy samples of one task
    often repeat: the held-out sets are scored every evaluation, so repeats would cost forward
    passes for nothing); rows come back in the input order.

    >>> score_unique(lambda p, s: [[len(x)] for x in p], ["a", "bb", "a"], [["1"], ["2"], ["1"]])
    [[1], [2], [1]]
    """
    index: dict = {}
    for p, st in zip(prompts, step_lists):
        index.setdefault((p, tuple(st)), len(index))
    keys = list(index)
    rows = score([k[0] for k in keys], [list(k[1]) for k in keys]) if keys else []
    return [rows[index[(p, tuple(st))]] for p, st in zip(prompts, step_lists)]


def _heldout_tasks(data: Any, n: int) -> list:
    u = data.pool.get(1)[0].unwrapped
    return list(u.source.tasks("train", n, seed=HELDOUT_SEED + data.config.seed))


def _heldout_rollouts(data: Any, n: int) -> list:
    cfg = data.config
    tasks = _heldout_tasks(data, n)
    rolls = rollout(data.pool, data.policy, tasks, n=cfg.rollouts_per_task, seed=HELDOUT_SEED + cfg.seed,
                    temperature=cfg.temperature, max_new_tokens=cfg.max_new_tokens, max_steps=cfg.max_steps)
    return [r for r in rolls if r.steps]


def _outcome_auc(scores: Sequence[float], rolls: Sequence[Any]) -> dict:
    good = [s for s, r in zip(scores, rolls) if r.correct]
    bad = [s for s, r in zip(scores, rolls) if not r.correct]
    return {"score": auc(good, bad), "outcome_auc": auc(good, bad), "n_correct": len(good), "n_wrong": len(bad)}


def measure_outcome(prm: Any, rolls: list) -> dict:
    """AUC of the score at the last step (what the ORM is trained on), correct > wrong rollouts."""
    rows = score_unique(prm.score_steps, [r.prompt for r in rolls], [r.steps for r in rolls])
    return _outcome_auc([row[-1] for row in rows], rolls)


def measure_outcome_min(prm: Any, rolls: list) -> dict:
    """AUC of the ``min``-aggregated step scores (a trace is as good as its worst step: how search
    and best-of-N read a PRM), correct > wrong rollouts. Any kind can be picked by it
    (``PRMTrainConfig.validation: outcome_min``)."""
    rows = score_unique(prm.score_steps, [r.prompt for r in rolls], [r.steps for r in rolls])
    out = _outcome_auc([min(row) for row in rows], rolls)
    out["outcome_auc_min"] = out.pop("outcome_auc")
    return out


def measure_outcome_sum(prm: Any, rolls: list) -> dict:
    """AUC of the summed step rewards (the implicit PRM's training logit), correct > wrong."""
    rows = score_unique(prm.step_rewards, [r.prompt for r in rolls], [r.steps for r in rolls])
    return _outcome_auc([sum(row) for row in rows], rolls)


def build_step_labels(data: Any, n: int) -> tuple[list, list]:
    cfg = data.config
    rolls = _heldout_rollouts(data, n)
    labels = mc_step_labels(data.pool, data.policy, rolls, n_rollouts=cfg.mc_rollouts, mode=cfg.mc_labels,
                            seed=HELDOUT_SEED + cfg.seed, temperature=cfg.temperature,
                            max_new_tokens=cfg.max_new_tokens, max_steps=cfg.max_steps)
    return rolls, labels


def measure_step_labels(prm: Any, heldout: tuple[list, list]) -> dict:
    """Step AUC: steps whose Monte-Carlo label is ≥ ½ should outscore those below."""
    rolls, labels = heldout
    scores = score_unique(prm.score_steps, [r.prompt for r in rolls], [r.steps for r in rolls])
    good = [s for row, lab in zip(scores, labels) for s, y in zip(row, lab) if y >= 0.5]
    bad = [s for row, lab in zip(scores, labels) for s, y in zip(row, lab) if y < 0.5]
    a = auc(good, bad)
    return {"score": a, "step_auc": a, "n_good_steps": len(good), "n_bad_steps": len(bad)}


def build_proposals(data: Any, n: int) -> list[tuple[int, Any, bool]]:
    """``(prefix id, proposal trace, right)`` for ``PROPOSALS_PER_PREFIX`` policy proposals at every
    prefix of ``n`` held-out expert solutions; right = the proposal equals the expert's step."""
    cfg = data.config
    experts = expert_traces(_heldout_tasks(data, n))
    props = prefix_proposals(data.policy, experts, k=PROPOSALS_PER_PREFIX, delimiter=data.delimiter,
                             seed=HELDOUT_SEED + cfg.seed, temperature=cfg.temperature, max_new_tokens=cfg.max_new_tokens)
    expert_of = {(t.prompt, i): t.steps[i] for t in experts for i in range(len(t.steps))}
    ids = {key: k for k, key in enumerate(expert_of)}
    out = []
    for p in props:
        key = (p.prompt, p.prefix_len)
        out.append((ids[key], p, p.steps[-1].strip() == expert_of[key].strip()))
    return out


def measure_proposals(prm: Any, items: list) -> dict:
    """Within-prefix AUC (right vs wrong siblings of one prefix, pairs pooled over prefixes: the
    ranking beam search and MCTS ask of a PRM) and the pooled AUC over all proposals."""
    rows = score_unique(prm.score_steps, [it[1].prompt for it in items], [it[1].steps for it in items])
    scores = [row[-1] for row in rows]
    groups: dict = {}
    for s, (pid, _, right) in zip(scores, items):
        groups.setdefault(pid, ([], []))[0 if right else 1].append(s)
    wins = pairs = 0.0
    for right, wrong in groups.values():
        if right and wrong:
            wins += auc(right, wrong) * len(right) * len(wrong)
            pairs += len(right) * len(wrong)
    within = wins / pairs if pairs else float("nan")
    pooled = auc([s for s, it in zip(scores, items) if it[2]], [s for s, it in zip(scores, items) if not it[2]])
    return {"score": within, "within_prefix_auc": within, "proposal_auc": pooled, "sibling_pairs": int(pairs)}


_NUMBER = re.compile(r"\d+")


def corrupt_step(step: str, rng: random.Random) -> str | None:
    """``step`` with its last number changed by 1 to 3 (never below 0); None if it has no number.

    >>> corrupt_step("9+4=13", random.Random(0)) != "9+4=13", corrupt_step("Answer:", random.Random(0))
    (True, None)
    """
    found = list(_NUMBER.finditer(step))
    if not found:
        return None
    m = found[-1]
    old = int(m.group())
    delta = rng.choice([-3, -2, -1, 1, 2, 3])
    new = old + delta if old + delta >= 0 else old + abs(delta)
    return step[: m.start()] + str(new) + step[m.end():]


def corrupted_pairs(traces: Sequence[Any], seed: int) -> list[tuple[str, list[str], list[str], int]]:
    """``(prompt, clean steps, corrupted steps, corrupted index)`` per correct trace: one step chosen
    at random among those with a number (`corrupt_step`), the other steps left as they were.
    Traces without a number in any step are skipped.

    >>> corrupted_pairs([type("T", (), {"prompt": "Q", "steps": ["1+2=3", "Answer: 3"]})()], seed=0)[0][3] in (0, 1)
    True
    """
    rng = random.Random(seed)
    out = []
    for t in traces:
        steps = list(t.steps)
        idx = [i for i, st in enumerate(steps) if _NUMBER.search(st)]
        if not idx:
            continue
        i = rng.choice(idx)
        bad = list(steps)
        bad[i] = corrupt_step(steps[i], rng)
        out.append((t.prompt, steps, bad, i))
    return out


def build_corrupted(data: Any, n: int) -> list:
    """One-step-corrupted copies of ``n`` held-out tasks' expert solutions (`corrupted_pairs`)."""
    return corrupted_pairs(expert_traces(_heldout_tasks(data, n)), seed=HELDOUT_SEED + data.config.seed)


def measure_corrupted(prm: Any, pairs: list) -> dict:
    """AUC of the ``min``-aggregated score, clean traces > their one-step-corrupted copies (pooled),
    and the AUC of the corrupted step's own score against the clean step at the same place."""
    if not pairs:
        return {"score": float("nan"), "corrupted_auc": float("nan"), "corrupted_pairs": 0}
    prompts = [p for p, _, _, _ in pairs]
    clean = prm.score_steps(prompts, [c for _, c, _, _ in pairs])
    bad = prm.score_steps(prompts, [b for _, _, b, _ in pairs])
    a = auc([min(r) for r in clean], [min(r) for r in bad])
    at = auc([r[i] for r, (_, _, _, i) in zip(clean, pairs)], [r[i] for r, (_, _, _, i) in zip(bad, pairs)])
    return {"score": a, "corrupted_auc": a, "corrupted_step_auc": at, "corrupted_pairs": len(pairs)}


def build_value(data: Any, n: int) -> list:
    """Every `VALUE_HOLDOUT_EVERY`-th target, removed from ``data.targets`` (training never sees it)."""
    if len(data.targets) < VALUE_HOLDOUT_EVERY:
        raise ValueError(f"{len(data.targets)} value targets are too few to hold out 1 in {VALUE_HOLDOUT_EVERY} and "
                         f"still train; write at least {VALUE_HOLDOUT_EVERY} or set eval_every=0")
    held = data.targets[::VALUE_HOLDOUT_EVERY]
    data.targets = [t for i, t in enumerate(data.targets) if i % VALUE_HOLDOUT_EVERY]
    return held


def measure_value(prm: Any, targets: list) -> dict:
    """Mean squared error of V (clipped to [0, 1]) against the held-out targets; ``score`` = −MSE."""
    v = prm.values([t.prompt for t in targets], [list(t.steps) for t in targets])
    mse = float(sum((a - t.value) ** 2 for a, t in zip(v, targets)) / len(targets))
    return {"score": -mse, "heldout_mse": mse, "n_targets": len(targets)}


#: validation name -> (build(data, n_tasks) -> held-out set, measure(prm, set) -> metrics with "score")
VALIDATORS: dict[str, tuple[Callable[[Any, int], Any], Callable[[Any, Any], dict]]] = {
    "outcome": (_heldout_rollouts, measure_outcome),
    "outcome_min": (_heldout_rollouts, measure_outcome_min),
    "outcome_sum": (_heldout_rollouts, measure_outcome_sum),
    "step_labels": (build_step_labels, measure_step_labels),
    "proposals": (build_proposals, measure_proposals),
    "value_mse": (build_value, measure_value),
    "corrupted": (build_corrupted, measure_corrupted),
}


class HeldOut:
    """The held-out set of one training run and its measurement (no gradient, eval mode)."""

    def __init__(self, prm: Any, data: Any, n_tasks: int, validation: str | None = None) -> None:
        name = validation or getattr(type(prm), "validation", None)
        if validation and validation not in VALIDATORS:
            raise ValueError(f"unknown validation {validation!r}; valid: {', '.join(VALIDATORS)} (or leave it empty: "
                             f"the kind's own)")
        if name not in VALIDATORS:
            raise ValueError(f"PRM kind {prm.kind!r} names no held-out validation (its class attribute validation is "
                             f"{name!r}; valid: {', '.join(VALIDATORS)}); set eval_every=0 to train without one")
        own = getattr(type(prm), "validation", None)
        also = ((own,) if own in VALIDATORS and own != name else ()) + tuple(getattr(type(prm), "also_validate", ()))
        unknown = [a for a in also if a not in VALIDATORS]
        if unknown:
            raise ValueError(f"PRM kind {prm.kind!r}: also_validate names unknown validator(s) {unknown}; "
                             f"valid: {', '.join(VALIDATORS)}")
        build, self._measure = VALIDATORS[name]
        self.name = name
        built: dict = {}  # validators that share a builder (the rollout ones) share its held-out set

        def items_of(builder):
            if builder not in built:
                built[builder] = builder(data, n_tasks)
            return built[builder]

        self.items = items_of(build)
        self.also = [(VALIDATORS[a][1], items_of(VALIDATORS[a][0])) for a in dict.fromkeys(also) if a != name]

    def measure(self, prm: Any) -> dict:
        was, tokens = prm.net.training, prm.tokens_scored
        prm.net.eval()
        try:
            with torch.no_grad():
                prm.clear_cache()
                metrics = self._measure(prm, self.items)
                for measure, items in self.also:  # reported beside the score, never instead of it
                    metrics.update({k: v for k, v in measure(prm, items).items() if k != "score"})
                return metrics
        finally:
            prm.net.train(was)
            prm.clear_cache()
            prm.tokens_scored = tokens  # validation is not search: it charges no PRM budget
