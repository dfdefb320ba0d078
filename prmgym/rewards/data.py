"""Data for PRM learners: expert and policy traces, policy log-probs, Monte-Carlo step labels.

Episodes are played by the one episode runner, `prmgym.envs.episodes` (`EnvPool` is its
environment pool); `rollout` turns its trajectories into `Trace` objects.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

from prmgym.envs.episodes import EnvPool, Prompt, Trajectory, run_episodes
from prmgym.envs.task import Task
from prmgym.envs.trace import render_trace
from prmgym.rewards.scalar import PRMBatch


@dataclass
class Trace:
    """A prompt, its steps, the per-step policy log-probs and the outcome."""

    prompt: str
    steps: list[str]
    step_logprobs: list[float] | None = None  # Σ token log-probs of step + delimiter
    step_ntokens: list[int] | None = None
    reward: float = 0.0
    correct: bool = False
    task: Task | None = None
    prefix_len: int = 0  # leading steps that were replayed, not generated
    metadata: dict = field(default_factory=dict)


def expert_traces(tasks: Sequence[Task]) -> list[Trace]:
    """The tasks' expert solutions as correct traces (tasks without one are skipped)."""
    return [Trace(t.prompt, list(t.expert_steps), reward=1.0, correct=True, task=t) for t in tasks if t.expert_steps]


def rollout(
    pool: EnvPool,
    policy: Any,
    tasks: Sequence[Task],
    n: int = 1,
    prefixes: Sequence[Sequence[str]] | None = None,
    seed: int = 0,
    temperature: float = 1.0,
    max_new_tokens: int = 32,
    max_steps: int = 16,
) -> list[Trace]:
    """Play ``n`` episodes per task (optionally after replaying ``prefixes[i]``) with the
    episode runner (`prmgym.envs.episodes.run_episodes`), as `Trace` objects.

    Returns traces in order (task 0's n episodes first). A prefix that already ends the
    episode gives a trace with no generated steps and that prefix's outcome.
    """
    if prefixes is not None and len(prefixes) != len(tasks):
        raise ValueError(f"{len(prefixes)} prefixes for {len(tasks)} tasks")
    prompts = [Prompt(t, tuple(prefixes[i]) if prefixes is not None else ()) for i, t in enumerate(tasks)]
    trajs, _ = run_episodes(pool.get(len(tasks) * n), policy, prompts, n, seed=seed, temperature=temperature,
                            max_new_tokens=max_new_tokens, max_steps=max_steps, finished_prefix="keep")
    return [_trace(t) for t in trajs]


def _trace(t: Trajectory) -> Trace:
    """A runner `Trajectory` as a PRM `Trace`: prefix steps first (log-prob 0, 0 tokens),
    then each generated step's summed log-prob and token count."""
    k = len(t.prompt.prefix)
    return Trace(t.task.prompt, t.all_steps, [0.0] * k + [float(sum(lp)) for lp in t.step_logprobs],
                 [0] * k + [len(ids) for ids in t.step_token_ids], reward=t.reward, correct=t.correct,
                 task=t.task, prefix_len=k)


def template_of(source: Any) -> Any:
    """The env's `PromptTemplate` behind ``source``: an env (or pool of envs), or trajectories
    (their first observation); None without one. Log-probs of steps are computed in the context
    the policy sampled them in, template included."""
    if hasattr(source, "get") and hasattr(source, "envs"):  # an EnvPool
        source = source.get(1)[0]
    u = getattr(source, "unwrapped", None)
    if u is not None:
        return getattr(u, "prompt_template", None)
    for t in source or ():
        for o in getattr(t, "step_observations", None) or ():
            return getattr(o, "template", None)
    return None


def prefix_proposals(policy: Any, traces: Sequence[Trace], k: int = 4, delimiter: str = "\n", seed: int = 0,
                     temperature: float = 1.0, max_new_tokens: int = 32, template: Any = None) -> list[Trace]:
    """At every prefix of every trace (before step 0, ..., before its last step), ``k`` next
    steps sampled from ``policy``: one `Trace` per sample, ``steps = prefix + [sample]``,
    ``prefix_len = len(prefix)`` (the prefix is context: its log-probs are left at 0), the
    sample's summed log-prob and token count filled in. Samples are kept as drawn, duplicates
    and copies of the trace's own step included: they are draws from π(·|s), the policy class
    of an AIRL discriminator. No environment is stepped and no outcome is known (``correct`` is
    False, ``reward`` 0). The log-probs are ``propose``'s, as in `rollout`: they equal
    `fill_logprobs`' log π(sample + delimiter) when the sample ended at the delimiter and the
    tokenizer encodes its text to the generated ids (on the tiny character-level ChainArithmetic
    policy: 148 of 148 samples equal to 1e-5); a sample cut at ``max_new_tokens`` has no delimiter."""
    if k < 1:
        raise ValueError(f"prefix_proposals needs k >= 1 samples per prefix, got {k}")
    where = [(tr, i) for tr in traces for i in range(len(tr.steps))]
    if not where:
        return []
    obs = [render_trace(tr.prompt, list(tr.steps[:i]), delimiter, template) for tr, i in where]
    props = policy.propose(obs, n=k, stop=delimiter, max_new_tokens=max_new_tokens, temperature=temperature, seed=seed)
    out = []
    for (tr, i), group in zip(where, props):
        for p in group:
            out.append(Trace(tr.prompt, list(tr.steps[:i]) + [p.text], [0.0] * i + [float(sum(p.logprobs))],
                             [0] * i + [len(p.token_ids)], task=tr.task, prefix_len=i))
    return out


def fill_logprobs(policy: Any, prompts: Sequence[str], step_lists: Sequence[Sequence[str]],
                  delimiter: str = "\n", batch_size: int = 64, template: Any = None) -> tuple[list[list[float]], list[list[int]]]:
    """log π(step + delimiter | observation) (summed) and token counts for every step (the
    observation rendered with the env's ``template``, as the policy saw it). Of a tool step
    (`prmgym.envs.tools`) only the cell counts: its output was not generated."""
    from prmgym.envs.tools import split_tool_step

    obs, cont, where = [], [], []
    for i, (p, steps) in enumerate(zip(prompts, step_lists)):
        for j, s in enumerate(steps):
            obs.append(render_trace(p, steps[:j], delimiter, template))
            cont.append(split_tool_step(s)[0] + delimiter)
            where.append((i, j))
    lps = [[0.0] * len(s) for s in step_lists]
    nts = [[0] * len(s) for s in step_lists]
    for b in range(0, len(obs), batch_size):
        out = policy.logprobs(obs[b : b + batch_size], cont[b : b + batch_size])
        for (i, j), t in zip(where[b : b + batch_size], out):
            lps[i][j] = float(t.sum())
            nts[i][j] = int(t.numel())
    return lps, nts


def traces_to_batch(positives: Sequence[Trace], negatives: Sequence[Trace], policy: Any = None,
                    delimiter: str = "\n", context_prefixes: bool = False, template: Any = None) -> PRMBatch:
    """Label-1 / label-0 batch; missing log-probs are computed with ``policy``.

    A trace's replayed prefix (``prefix_len`` steps) is normally part of the trace and its
    log-probs are recomputed; with ``context_prefixes`` it is the state only
    (``PRMBatch.context_steps``), left out of the loss and not recomputed."""
    traces = list(positives) + list(negatives)
    labels = [1.0] * len(positives) + [0.0] * len(negatives)
    lps: list = [t.step_logprobs for t in traces]
    nts: list = [t.step_ntokens for t in traces]
    need = [i for i, t in enumerate(traces)
            if t.step_logprobs is None or (t.prefix_len and policy is not None and not context_prefixes)]
    if need and policy is not None:
        lp, nt = fill_logprobs(policy, [traces[i].prompt for i in need], [traces[i].steps for i in need], delimiter,
                               template=template)
        for i, a, b in zip(need, lp, nt):
            lps[i], nts[i] = a, b
    have = all(x is not None for x in lps)
    return PRMBatch(
        prompts=[t.prompt for t in traces],
        step_lists=[list(t.steps) for t in traces],
        labels=labels,
        step_logprobs=lps if have else None,
        step_ntokens=nts if have else None,
        context_steps=[t.prefix_len for t in traces] if context_prefixes else None,
    )


def mc_step_labels(pool: EnvPool, policy: Any, traces: Sequence[Trace], n_rollouts: int = 4, mode: str = "soft",
                   seed: int = 0, temperature: float = 1.0, max_new_tokens: int = 32, max_steps: int = 16) -> list[list[float]]:
    """Math-Shepherd labels: for every step prefix, ``n_rollouts`` completions by the policy.

    ``mode="hard"``: 1 if any completion is correct; ``"soft"``: the fraction correct. A
    prefix that already submits an answer is labelled by its own verdict.
    """
    if mode not in ("hard", "soft"):
        raise ValueError(f"unknown MC label mode {mode!r}; valid: hard, soft")
    jobs_tasks, jobs_prefixes, where = [], [], []
    for i, tr in enumerate(traces):
        if tr.task is None:
            raise ValueError("mc_step_labels needs traces with .task (to replay them in the env)")
        for j in range(len(tr.steps)):
            jobs_tasks.append(tr.task)
            jobs_prefixes.append(tr.steps[: j + 1])
            where.append((i, j))
    labels = [[0.0] * len(t.steps) for t in traces]
    if not jobs_tasks:
        return labels
    outs = rollout(pool, policy, jobs_tasks, n=n_rollouts, prefixes=jobs_prefixes, seed=seed,
                   temperature=temperature, max_new_tokens=max_new_tokens, max_steps=max_steps)
    for k, (i, j) in enumerate(where):
        group = outs[k * n_rollouts : (k + 1) * n_rollouts]
        frac = sum(1.0 for g in group if g.correct) / n_rollouts
        labels[i][j] = frac if mode == "soft" else float(frac > 0)
    return labels
