"""The episode runner: many environments stepped in lockstep by one policy, one ``propose`` per round.

Every place in prmgym that plays episodes with a policy goes through this module: GRPO's
rollouts (`prmgym.agents.rollout.RolloutCollector`), the PRM learners' rollouts and
Monte-Carlo labels (`prmgym.rewards.data`), step-wise best-of-N sampling
(`prmgym.search.bon`) and held-out evaluation (`evaluate_policy`, the one pass@1). It needs
no torch: ``policy`` is any object with the `prmgym.models.Policy` ``propose`` method.

API
---
``Prompt(task, prefix=())``
    What to play: a `Task`, optionally from a partial state (``prefix`` steps are replayed
    through the env before the policy acts; they are observation, not generated steps).
``Trajectory``
    One played episode: the generated steps, per step the sampled token ids, their
    log-probs, the finish reason and the observation it was sampled from; the outcome
    (``reward``, ``correct``, ``verdict``, ``answer``, ``terminated``/``truncated``, ``masked``).
``RunStats``
    What one call spent: ``generated`` / ``encoded`` tokens, ``sandbox`` runs,
    ``propose_calls``, ``env_steps``.
``run_episodes(envs, policy, prompts, group_size=1, *, seed=0, max_new_tokens=32,
temperature=1.0, top_p=1.0, max_steps=32, greedy=False, fit_context=False,
finished_prefix="error", max_workers=8) -> (list[Trajectory], RunStats)``
    Plays ``group_size`` episodes per prompt on ``envs`` (at least ``len(prompts) *
    group_size`` of them; an `EnvPool` hands them out). Trajectories come grouped, in
    prompt order.
``play_rounds(trajectories, envs, policy, *, stop, rng=None, group_size=1, ...) -> RunStats``
    The rounds alone, for episodes whose envs already stand at their start state (the
    search engine's tree branches use it with a budgeted view of the policy).
``EnvPool(env_fn)``
    A growing pool of environments (``get(n)``, ``delimiter``, ``close()``).
``held_out_tasks(env, n, seed=0)``
    The env source's first ``n`` tasks of the env's split (or tasks from seeded resets).
``evaluate_policy(policy, env, *, tasks=None, n_tasks=100, split="test", seed=0,
temperature=0.0, max_new_tokens=64, max_steps=64, ...) -> dict``
    pass@1 and mean reward over held-out tasks: one episode per task, greedy by default.

Rules
-----
* **Seeding.** ``seed`` starts a ``numpy.random.default_rng`` (a ``Generator`` may be passed
  instead). Every episode's reset seed is drawn from it in episode order, then one seed per
  round for ``propose``. The same seed gives the same episodes.
* **Batching.** Each round sends the observations of all live episodes to ONE ``propose``
  call with ``n=1``. In the first round, when ``group_size > 1`` and every live episode's
  group is whole and live, it sends one observation per group with ``n=group_size``
  instead, so the shared prompt is encoded once (a sampler that draws per sample row, as
  `TransformersPolicy` does, returns the same steps either way). In code environments every
  program finished in a round is scored in one ``verifier.score_batch`` call (the sandbox
  runs the jobs in parallel); verifiers without ``score_batch`` run those steps in threads.
* **Outcome.** ``correct`` is the verdict's ``correct``, or ``reward >= 1`` when the env
  gives no verdict. A verdict with ``details["sandbox_error"]`` marks the episode
  ``masked`` (an infrastructure failure, not a wrong answer).
* **Episode ends.** The env terminates or truncates it; it is still running after
  ``max_steps`` rounds (truncated, reward 0); with ``fit_context`` its observation no longer
  fits the policy's context (``policy.context_length``; truncated, a failure rather than an
  error); the policy returned no proposal for it (a budgeted policy whose budget ran out;
  truncated).
"""

from __future__ import annotations

import concurrent.futures
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np

from prmgym.envs.task import Task
from prmgym.envs.trace import render_trace

FINISHED_PREFIX = ("error", "keep")


@dataclass(frozen=True)
class Prompt:
    """What to play: a task, optionally started from a partial state.

    ``prefix`` steps are replayed through the environment before the policy acts; they
    are part of the observation, not of the generated steps (ReST-GRPO's partial states,
    Monte-Carlo step labels).
    """

    task: Task
    prefix: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not isinstance(self.prefix, tuple):
            object.__setattr__(self, "prefix", tuple(self.prefix))


@dataclass
class Trajectory:
    """One episode: the steps the policy generated from a `Prompt`, and their outcome.

    Attributes:
        prompt: the `Prompt` this episode started from.
        group: index of its group (episodes of one prompt) in the batch.
        observation: the first observation the policy saw (prompt + prefix steps).
        steps: the generated steps' text (without the delimiter); a code-cell step of a
            `prmgym.envs.tools.ToolEnv` is stored as the env keeps it, with its tool output.
        step_observations: the observation each step was sampled from.
        step_token_ids / step_logprobs: per step, the sampled token ids and their
            log-probs under the sampling policy (the "old" log-probs of GRPO).
        finish_reasons: per step, ``"stop"``, ``"eos"`` or ``"length"``.
        reward, correct, verdict, answer: the verifier's outcome (reward 0 if the episode
            was cut off without an answer).
        masked: sandbox infrastructure error: leave this sample out of statistics and loss.
        last_observation: the observation after the last step (the whole trace as the env
            renders it).
    """

    prompt: Prompt
    group: int
    observation: str
    steps: list[str] = field(default_factory=list)
    step_observations: list[str] = field(default_factory=list)
    step_token_ids: list[list[int]] = field(default_factory=list)
    step_logprobs: list[list[float]] = field(default_factory=list)
    finish_reasons: list[str] = field(default_factory=list)
    reward: float = 0.0
    correct: bool = False
    terminated: bool = False
    truncated: bool = False
    masked: bool = False
    verdict: Any = None
    answer: Any = None
    last_observation: str = ""

    def __post_init__(self) -> None:
        if not self.last_observation:
            self.last_observation = self.observation

    @property
    def task(self) -> Task:
        return self.prompt.task

    @property
    def done(self) -> bool:
        return self.terminated or self.truncated

    @property
    def all_steps(self) -> list[str]:
        """Prefix steps followed by the generated steps (the whole trace)."""
        return list(self.prompt.prefix) + list(self.steps)

    @property
    def num_tokens(self) -> int:
        return sum(len(t) for t in self.step_token_ids)

    @property
    def token_ids(self) -> list[int]:
        """All generated token ids, steps concatenated."""
        return [t for ids in self.step_token_ids for t in ids]

    @property
    def old_logprobs(self) -> list[float]:
        return [x for lp in self.step_logprobs for x in lp]

    @property
    def step_bounds(self) -> list[tuple[int, int]]:
        """``[start, end)`` index range of each generated step in `token_ids`."""
        out, pos = [], 0
        for ids in self.step_token_ids:
            out.append((pos, pos + len(ids)))
            pos += len(ids)
        return out

    def text(self, delimiter: str = "\n") -> str:
        """The whole trace as the environment renders it."""
        return render_trace(self.task.prompt, self.all_steps, delimiter)

    def finish(self, reward: float, info: Any) -> None:
        """Record the outcome of the step that ended the episode."""
        verdict = info.get("verdict") if isinstance(info, dict) else None
        self.verdict = verdict
        self.answer = info.get("answer") if isinstance(info, dict) else None
        self.reward = float(reward)
        self.correct = bool(getattr(verdict, "correct", self.reward >= 1.0)) if verdict is not None else self.reward >= 1.0
        details = getattr(verdict, "details", None) or {}
        self.masked = bool(details.get("sandbox_error")) if isinstance(details, dict) else False


@dataclass
class RunStats:
    """Compute spent by one call (the `prmgym.budget.Budget` units it touches)."""

    generated: int = 0
    encoded: int = 0
    sandbox: int = 0
    propose_calls: int = 0
    env_steps: int = 0


class EnvPool:
    """A growing pool of environments made by ``env_fn`` (one per concurrent episode)."""

    def __init__(self, env_fn: Callable[[], Any]) -> None:
        self.env_fn = env_fn
        self.envs: list[Any] = []

    def get(self, n: int) -> list[Any]:
        while len(self.envs) < n:
            self.envs.append(self.env_fn())
        return self.envs[:n]

    @property
    def delimiter(self) -> str:
        return delimiter_of(self.get(1)[0])

    def close(self) -> None:
        for e in self.envs:
            e.close()
        self.envs = []


def delimiter_of(env: Any) -> str:
    """The step delimiter of ``env`` (``"\\n"`` if it does not say)."""
    return getattr(getattr(env, "unwrapped", env), "delimiter", "\n")


# =========================================================================== playing
def run_episodes(
    envs: Sequence[Any],
    policy: Any,
    prompts: Sequence[Prompt | Task],
    group_size: int = 1,
    *,
    seed: int | np.random.Generator = 0,
    max_new_tokens: int = 32,
    temperature: float = 1.0,
    top_p: float = 1.0,
    max_steps: int = 32,
    greedy: bool = False,
    fit_context: bool = False,
    finished_prefix: str = "error",
    max_workers: int = 8,
) -> tuple[list[Trajectory], RunStats]:
    """Play ``group_size`` episodes for every prompt; trajectories come grouped in order.

    Args:
        envs: at least ``len(prompts) * group_size`` environments (reset here).
        policy: anything with ``propose`` (`prmgym.models.Policy`).
        prompts: `Prompt` or `Task` objects.
        seed: seeds the resets and every ``propose`` call (or a numpy ``Generator`` to draw from).
        greedy: temperature 0 (evaluation).
        fit_context: end an episode (truncated) when its observation no longer fits the
            policy's context instead of letting ``propose`` raise.
        finished_prefix: what a prefix that already ends the episode means: ``"error"`` (a
            partial state must leave a step to take) or ``"keep"`` (the episode is over,
            with the prefix's outcome and no generated step).
        max_workers: threads for the terminal steps of code envs whose verifier has no
            ``score_batch``.
    """
    prompts = [p if isinstance(p, Prompt) else Prompt(p) for p in prompts]
    if group_size < 1:
        raise ValueError(f"group_size must be >= 1, got {group_size}")
    if finished_prefix not in FINISHED_PREFIX:
        raise ValueError(f"finished_prefix must be one of {', '.join(FINISHED_PREFIX)}, got {finished_prefix!r}")
    n = len(prompts) * group_size
    if len(envs) < n:
        raise ValueError(f"{len(prompts)} prompts x group_size {group_size} need {n} envs, got {len(envs)}")
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    envs = list(envs)[:n]
    trajs: list[Trajectory] = []
    for gi, prompt in enumerate(prompts):
        for k in range(group_size):
            trajs.append(_start(envs[gi * group_size + k], prompt, gi, int(rng.integers(2**31 - 1)), finished_prefix))
    stats = play_rounds(trajs, envs, policy, stop=delimiter_of(envs[0]) if envs else "\n", rng=rng,
                        group_size=group_size, max_new_tokens=max_new_tokens,
                        temperature=0.0 if greedy else temperature, top_p=top_p, max_steps=max_steps,
                        fit_context=fit_context, max_workers=max_workers)
    return trajs, stats


def _start(env: Any, prompt: Prompt, group: int, reset_seed: int, finished_prefix: str) -> Trajectory:
    """Reset ``env`` on the prompt's task and replay its prefix."""
    obs, info = env.reset(seed=reset_seed, options={"task": prompt.task})
    ended = None
    for step in prompt.prefix:
        obs, reward, term, trunc, info = env.step(step)
        if term or trunc:
            if finished_prefix == "error":
                raise ValueError(
                    f"prefix of task {prompt.task.id!r} ends the episode at step {step!r}; "
                    "a partial-state prefix must leave at least one step to take"
                )
            ended = (bool(term), bool(trunc), reward, info)
            break
    t = Trajectory(prompt=prompt, group=group, observation=obs)
    if ended is not None:
        t.terminated, t.truncated = ended[0], ended[1]
        t.finish(ended[2], ended[3])
    return t


def play_rounds(
    trajs: Sequence[Trajectory],
    envs: Sequence[Any],
    policy: Any,
    *,
    stop: str,
    rng: np.random.Generator | None = None,
    group_size: int = 1,
    max_new_tokens: int = 32,
    temperature: float = 1.0,
    top_p: float = 1.0,
    max_steps: int = 32,
    fit_context: bool = False,
    max_workers: int = 8,
) -> RunStats:
    """Play rounds until every episode has ended or ``max_steps`` rounds have passed.

    ``trajs[i]`` is played on ``envs[i]``, which stands at ``trajs[i].last_observation``.
    ``envs`` need only ``step(action) -> (obs, reward, terminated, truncated, info)``.
    ``rng`` draws the per-round ``propose`` seeds (None: unseeded). Trajectories are filled
    in place; episodes still running at the end are marked truncated.
    """
    stats = RunStats()
    obs_of = [t.last_observation for t in trajs]
    first = True
    for _ in range(max_steps):
        live = [i for i, t in enumerate(trajs) if not t.done]
        if fit_context:
            live = _drop_overlong(policy, trajs, live)
        if not live:
            break
        call_seed = int(rng.integers(2**31 - 1)) if rng is not None else None
        chosen = _propose_round(policy, obs_of, live, group_size if first else 1, stop=stop,
                                max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p, seed=call_seed)
        first = False
        stats.propose_calls += 1
        for i in live:
            p = chosen.get(i)
            if p is None:  # the policy gave this episode no step (its budget ran out)
                trajs[i].truncated = True
                continue
            t = trajs[i]
            t.steps.append(p.text)
            t.step_observations.append(obs_of[i])
            t.step_token_ids.append(list(p.token_ids))
            t.step_logprobs.append([float(x) for x in p.logprobs])
            t.finish_reasons.append(p.finish_reason)
            stats.generated += int(p.tokens_generated or len(p.token_ids))
            stats.encoded += int(p.tokens_encoded)
        stepped = [i for i in live if i in chosen]
        results = step_envs([envs[i] for i in stepped], [chosen[i].text for i in stepped], max_workers)
        stats.env_steps += len(stepped)
        for i, (obs, reward, term, trunc, info) in zip(stepped, results):
            t = trajs[i]
            obs_of[i] = t.last_observation = obs
            t.terminated, t.truncated = bool(term), bool(trunc)
            tool = info.get("tool") if isinstance(info, dict) else None
            if tool is not None:  # a code cell (prmgym.envs.tools): keep the step with its output
                t.steps[-1] = info["steps"][-1]
                stats.sandbox += int(tool.ran)
            if t.done:
                t.finish(reward, info)
                if t.task.is_code and t.verdict is not None:
                    stats.sandbox += 1
    for t in trajs:  # hit the round cap: cut off, reward 0
        if not t.done:
            t.truncated = True
    return stats


def _drop_overlong(policy: Any, trajs: Sequence[Trajectory], live: list[int]) -> list[int]:
    """End (truncated) the live episodes whose observation no longer fits the policy's context."""
    ctx = getattr(policy, "context_length", None)
    if ctx is None or not hasattr(policy, "encode"):
        return live
    fits = []
    for i in live:
        if len(policy.encode(trajs[i].last_observation)) < ctx:
            fits.append(i)
        else:
            trajs[i].truncated = True
    return fits


def _propose_round(policy: Any, obs_of: list[str], live: list[int], group_size: int, **kw: Any) -> dict[int, Any]:
    """One ``propose`` call for the live episodes: episode index -> its proposal (absent when
    the policy returned fewer proposals than asked)."""
    groups = _whole_groups(live, group_size)
    if groups:  # one observation per group, n = group_size: the prompt is encoded once
        props = policy.propose([obs_of[h] for h in groups], n=group_size, **kw)
        return {h + k: p for h, plist in zip(groups, props) for k, p in enumerate(list(plist)[:group_size])}
    props = policy.propose([obs_of[i] for i in live], n=1, **kw)
    return {i: plist[0] for i, plist in zip(live, props) if len(plist)}


def _whole_groups(live: list[int], group_size: int) -> list[int]:
    """Heads of the groups when every live episode belongs to a whole live group, else []."""
    if group_size <= 1:
        return []
    alive = set(live)
    heads = sorted({i - i % group_size for i in live})
    if all(h + k in alive for h in heads for k in range(group_size)):
        return heads
    return []


# =========================================================================== stepping
def step_envs(envs: Sequence[Any], actions: Sequence[str], max_workers: int = 8) -> list[tuple]:
    """``[e.step(a) for e, a in zip(envs, actions)]``; in code envs, every program this step
    finishes is scored first in one ``verifier.score_batch`` call (the sandbox runs them in
    parallel), or the steps run in threads when the verifier has no ``score_batch``."""
    units = [getattr(e, "unwrapped", e) for e in envs]
    if not any(getattr(getattr(u, "task", None), "is_code", False) for u in units):
        return [e.step(a) for e, a in zip(envs, actions)]
    verifier = getattr(units[0], "verifier", None)
    if hasattr(verifier, "score_batch") and all(hasattr(u, "program") for u in units):
        return _step_code_batched(envs, actions, verifier)
    if max_workers <= 1 or len(envs) == 1:
        return [e.step(a) for e, a in zip(envs, actions)]
    # No score_batch: run the steps concurrently (the sandbox runs subprocesses/containers,
    # so threads overlap the waiting).
    with concurrent.futures.ThreadPoolExecutor(max_workers=min(max_workers, len(envs))) as ex:
        return list(ex.map(lambda ea: ea[0].step(ea[1]), zip(envs, actions)))


def _step_code_batched(envs: Sequence[Any], actions: Sequence[str], verifier: Any) -> list[tuple]:
    """Score every program that this step finishes in one ``verifier.score_batch`` call,
    then step the envs with those verdicts.

    The programs are predicted with the env's own ``program()``; each env's verifier is
    wrapped for the duration of its step so that ``score`` returns the precomputed verdict
    (a program we did not predict is scored normally). All envs of a pool come from one
    factory, so the first env's verifier stands for all of them.
    """
    from prmgym.envs.core import is_code_end

    keys, tasks, programs = [], [], []
    for e, a in zip(envs, actions):
        u = e.unwrapped
        task = u.task
        step = a[: -len(u.delimiter)] if a.endswith(u.delimiter) else a
        if task is not None and task.is_code and is_code_end(step, u.code_end):
            prog = u.program(tuple(u.steps) + (step,), task)
            keys.append((task.id, prog))
            tasks.append(task)
            programs.append(prog)
    verdicts = dict(zip(keys, verifier.score_batch(tasks, programs))) if tasks else {}
    out = []
    for e, a in zip(envs, actions):
        u = e.unwrapped
        original = u.verifier
        u.verifier = _Precomputed(original, verdicts)
        try:
            out.append(e.step(a))
        finally:
            u.verifier = original
    return out


class _Precomputed:
    """Verifier stand-in: returns a precomputed verdict for (task id, text), else scores."""

    def __init__(self, inner: Any, verdicts: dict) -> None:
        self._inner = inner
        self._verdicts = verdicts

    def score(self, task: Task, text: str) -> Any:
        v = self._verdicts.get((task.id, text))
        return v if v is not None else self._inner.score(task, text)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


# =========================================================================== evaluation
def held_out_tasks(env: Any, n: int, seed: int = 0) -> list[Task]:
    """The env source's first ``n`` tasks of the env's split (``source.tasks(split, n, seed=)``),
    else ``n`` tasks drawn by resetting the env with seeds ``seed, seed+1, ...``."""
    u = getattr(env, "unwrapped", env)
    source = getattr(u, "source", None)
    if source is not None and hasattr(source, "tasks"):
        try:
            return list(source.tasks(getattr(u, "split", "test"), n, seed=seed))
        except TypeError:
            pass
    tasks = []
    for i in range(n):
        _, info = env.reset(seed=int(seed) + i)
        task = info.get("task") if isinstance(info, dict) else None
        tasks.append(task if task is not None else u.task)
    return tasks


def evaluate_policy(
    policy: Any,
    env: str | Callable[[], Any],
    *,
    tasks: Sequence[Task] | None = None,
    n_tasks: int = 100,
    split: str = "test",
    env_kwargs: dict | None = None,
    seed: int = 0,
    temperature: float = 0.0,
    top_p: float = 1.0,
    max_new_tokens: int = 64,
    max_steps: int = 64,
    batch_size: int = 128,
    max_workers: int = 8,
) -> dict:
    """pass@1 and mean reward of ``policy`` over held-out tasks: one episode per task.

    Args:
        env: an env id (made with ``prmgym.envs.make(env, split=split, **env_kwargs)``) or a
            zero-argument factory (its own split is used).
        tasks: the tasks to play; default `held_out_tasks` (``n_tasks`` of them, ``seed``).
        temperature: 0 (default) decodes greedily; otherwise ``seed`` seeds the sampling.
        max_new_tokens / max_steps: per step / per episode.
        batch_size: episodes played at once (memory).

    Episodes whose trace outgrows the policy's context end as failures (``truncated``).
    Returns ``{"pass@1", "mean_reward", "solved", "n_tasks", "mean_steps", "truncated",
    "tokens_generated", "tokens_encoded", "temperature", "split", "sample"}`` (``sample`` is
    the first episode's whole trace).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    pool = EnvPool(_env_fn(env, split, env_kwargs))
    try:
        if tasks is None:
            if n_tasks < 1:
                raise ValueError(f"n_tasks must be >= 1, got {n_tasks}")
            tasks = held_out_tasks(pool.get(1)[0], n_tasks, seed)
        tasks = list(tasks)
        if not tasks:
            raise ValueError("evaluate_policy needs at least one task")
        env_split = getattr(pool.get(1)[0].unwrapped, "split", split)
        rng = np.random.default_rng(seed)
        trajs: list[Trajectory] = []
        stats = RunStats()
        for start in range(0, len(tasks), batch_size):
            chunk = tasks[start:start + batch_size]
            got, st = run_episodes(pool.get(len(chunk)), policy, chunk, seed=rng, max_new_tokens=max_new_tokens,
                                   temperature=temperature, top_p=top_p, max_steps=max_steps, fit_context=True,
                                   max_workers=max_workers)
            trajs += got
            stats.generated += st.generated
            stats.encoded += st.encoded
    finally:
        pool.close()
    return {
        "pass@1": float(np.mean([t.correct for t in trajs])),
        "mean_reward": float(np.mean([t.reward for t in trajs])),
        "solved": int(sum(t.correct for t in trajs)),
        "n_tasks": len(trajs),
        "mean_steps": float(np.mean([len(t.steps) for t in trajs])),
        "truncated": int(sum(t.truncated and not t.terminated for t in trajs)),
        "tokens_generated": stats.generated,
        "tokens_encoded": stats.encoded,
        "temperature": temperature,
        "split": env_split,
        "sample": trajs[0].last_observation,
    }


def _env_fn(env: str | Callable[[], Any], split: str, env_kwargs: dict | None) -> Callable[[], Any]:
    if callable(env):
        if env_kwargs:
            raise ValueError("env_kwargs apply to an env id; pass them to your factory instead")
        return env
    if not isinstance(env, str):
        raise TypeError(f"env must be an env id or a zero-argument factory, got {type(env).__name__}")
    from prmgym.envs.registration import make

    return lambda: make(env, split=split, **(env_kwargs or {}))
