"""Roll a `Policy` through reasoning environments: one proposed step per action.

A `RolloutCollector` takes prompts (a `Task`, optionally with a prefix of steps that puts
the episode in a *partial state*), plays ``group_size`` episodes per prompt and returns
`Trajectory` objects that hold everything a trainer needs: the sampled token ids and
their log-probs per step (the "old" log-probs), the step boundaries, the steps' text and
the verifier's outcome reward.

Batching: at every environment step, the observations of *all* live episodes go to the
policy in one ``propose`` call (at the first step, one observation per group with
``n = group_size``, so the shared prompt is encoded once). In code environments every
program finished at that step is scored in one ``verifier.score_batch`` call (the sandbox
runs the jobs in parallel); verifiers without ``score_batch`` run the terminal steps in a
thread pool instead.

Sandbox infrastructure failures (``verdict.details["sandbox_error"]``) do not score the
sample 0: the trajectory is marked ``masked`` and trainers leave it out of the group
statistics and the loss.
"""

from __future__ import annotations

import concurrent.futures
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np

from prmgym.envs.task import Task
from prmgym.envs.trace import render_trace


@dataclass(frozen=True)
class Prompt:
    """What to roll out: a task, optionally started from a partial state.

    ``prefix`` steps are replayed through the environment before the policy acts; they
    are part of the observation, not of the trained tokens (ReST-GRPO's partial states).
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
        steps: the generated steps' text (without the delimiter).
        step_observations: the observation each step was sampled from.
        step_token_ids / step_logprobs: per step, the sampled token ids and their
            log-probs under the sampling policy (the "old" log-probs of GRPO).
        finish_reasons: per step, ``"stop"``, ``"eos"`` or ``"length"``.
        reward, correct, verdict: the verifier's outcome (reward 0 if the episode was cut
            off by the step limit without an answer).
        masked: sandbox infrastructure error: leave this sample out of statistics and loss.
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


@dataclass
class RolloutStats:
    """Compute spent by one `collect` call (the `Budget` units)."""

    generated: int = 0
    encoded: int = 0
    sandbox: int = 0
    propose_calls: int = 0
    env_steps: int = 0


def _sandbox_error(verdict: Any) -> bool:
    details = getattr(verdict, "details", None) or {}
    return bool(details.get("sandbox_error"))


class RolloutCollector:
    """Plays groups of episodes with a policy.

    Args:
        env_fn: builds one environment (e.g. ``lambda: gym.make("prmgym/Countdown-v0")``).
            The collector keeps a pool of them and reuses it across calls.
        policy: any `prmgym.models.Policy`.
        max_new_tokens: token cap per step (one proposal).
        temperature, top_p: sampling settings passed to ``propose``.
        max_steps: safety cap on generated steps per episode (the env's own step limit
            usually ends episodes first).
        max_workers: threads for the terminal steps of code environments.
    """

    def __init__(
        self,
        env_fn: Callable[[], Any],
        policy: Any,
        max_new_tokens: int = 32,
        temperature: float = 1.0,
        top_p: float = 1.0,
        max_steps: int = 32,
        max_workers: int = 8,
    ) -> None:
        self.env_fn = env_fn
        self.policy = policy
        self.max_new_tokens = int(max_new_tokens)
        self.temperature = float(temperature)
        self.top_p = float(top_p)
        self.max_steps = int(max_steps)
        self.max_workers = int(max_workers)
        self._pool: list[Any] = []

    # -- environments ------------------------------------------------------------------
    def _envs(self, n: int) -> list[Any]:
        while len(self._pool) < n:
            self._pool.append(self.env_fn())
        return self._pool[:n]

    @property
    def delimiter(self) -> str:
        return getattr(self._envs(1)[0].unwrapped, "delimiter", "\n")

    def sample_tasks(self, n: int, seed: int) -> list[Task]:
        """``n`` tasks drawn by resetting an environment with seeds ``seed, seed+1, ...``."""
        env = self._envs(1)[0]
        tasks = []
        for i in range(n):
            _, info = env.reset(seed=int(seed) + i)
            tasks.append(info.get("task") if isinstance(info, dict) and info.get("task") is not None else env.unwrapped.task)
        return tasks

    def close(self) -> None:
        for env in self._pool:
            env.close()
        self._pool = []

    # -- rollouts ----------------------------------------------------------------------
    def collect(
        self, prompts: Sequence[Prompt | Task], group_size: int, seed: int, greedy: bool = False
    ) -> tuple[list[Trajectory], RolloutStats]:
        """Play ``group_size`` episodes for every prompt; trajectories come grouped in order.

        ``seed`` fixes the environment resets and every ``propose`` call, so a collect is
        reproducible. ``greedy=True`` samples at temperature 0 (evaluation).
        """
        prompts = [p if isinstance(p, Prompt) else Prompt(p) for p in prompts]
        if group_size < 1:
            raise ValueError(f"group_size must be >= 1, got {group_size}")
        rng = np.random.default_rng(seed)
        n = len(prompts) * group_size
        envs = self._envs(n)
        stats = RolloutStats()
        trajs: list[Trajectory] = []
        obs_of: list[str] = []
        for gi, prompt in enumerate(prompts):
            for k in range(group_size):
                env = envs[gi * group_size + k]
                obs, info = env.reset(seed=int(rng.integers(2**31 - 1)), options={"task": prompt.task})
                for step in prompt.prefix:
                    obs, _, term, trunc, info = env.step(step)
                    if term or trunc:
                        raise ValueError(
                            f"prefix of task {prompt.task.id!r} ends the episode at step {step!r}; "
                            "a partial-state prefix must leave at least one step to take"
                        )
                trajs.append(Trajectory(prompt=prompt, group=gi, observation=obs))
                obs_of.append(obs)
        temperature = 0.0 if greedy else self.temperature
        delim = self.delimiter
        first = True
        for _ in range(self.max_steps):
            live = [i for i, t in enumerate(trajs) if not t.done]
            if not live:
                break
            call_seed = int(rng.integers(2**31 - 1))
            if first and group_size > 1:
                # one observation per group, n = group_size: the prompt is encoded once.
                heads = list(range(0, n, group_size))
                props = self.policy.propose(
                    [obs_of[i] for i in heads], n=group_size, stop=delim, max_new_tokens=self.max_new_tokens,
                    temperature=temperature, top_p=self.top_p, seed=call_seed,
                )
                chosen = {h + k: props[j][k] for j, h in enumerate(heads) for k in range(group_size)}
            else:
                props = self.policy.propose(
                    [obs_of[i] for i in live], n=1, stop=delim, max_new_tokens=self.max_new_tokens,
                    temperature=temperature, top_p=self.top_p, seed=call_seed,
                )
                chosen = {i: props[j][0] for j, i in enumerate(live)}
            first = False
            stats.propose_calls += 1
            for i in live:
                p = chosen[i]
                t = trajs[i]
                t.steps.append(p.text)
                t.step_observations.append(obs_of[i])
                t.step_token_ids.append(list(p.token_ids))
                t.step_logprobs.append([float(x) for x in p.logprobs])
                t.finish_reasons.append(p.finish_reason)
                stats.generated += int(p.tokens_generated or len(p.token_ids))
                stats.encoded += int(p.tokens_encoded)
            results = self._step_envs([envs[i] for i in live], [chosen[i].text for i in live])
            stats.env_steps += len(live)
            for i, (obs, reward, term, trunc, info) in zip(live, results):
                t = trajs[i]
                obs_of[i] = obs
                t.terminated, t.truncated = bool(term), bool(trunc)
                if t.done:
                    verdict = info.get("verdict") if isinstance(info, dict) else None
                    t.verdict = verdict
                    t.answer = info.get("answer") if isinstance(info, dict) else None
                    t.reward = float(reward)
                    t.correct = bool(getattr(verdict, "correct", False)) if verdict is not None else False
                    t.masked = _sandbox_error(verdict)
                    if t.task.is_code and verdict is not None:
                        stats.sandbox += 1
        for t in trajs:  # hit our own step cap: cut off, reward 0
            if not t.done:
                t.truncated = True
        return trajs, stats

    def _step_envs(self, envs: list[Any], actions: list[str]) -> list[tuple]:
        code = [getattr(getattr(e.unwrapped, "task", None), "is_code", False) for e in envs]
        if not any(code):
            return [e.step(a) for e, a in zip(envs, actions)]
        verifier = getattr(envs[0].unwrapped, "verifier", None)
        if hasattr(verifier, "score_batch") and all(hasattr(e.unwrapped, "program") for e in envs):
            return self._step_code_batched(envs, actions, verifier)
        if self.max_workers <= 1 or len(envs) == 1:
            return [e.step(a) for e, a in zip(envs, actions)]
        # No score_batch: run the terminal steps concurrently (the sandbox runs
        # subprocesses/containers, so threads overlap the waiting).
        with concurrent.futures.ThreadPoolExecutor(max_workers=min(self.max_workers, len(envs))) as ex:
            return list(ex.map(lambda ea: ea[0].step(ea[1]), zip(envs, actions)))

    def _step_code_batched(self, envs: list[Any], actions: list[str], verifier: Any) -> list[tuple]:
        """Score every program that this step finishes in one ``verifier.score_batch`` call
        (the sandbox runs them in parallel), then step the envs with those verdicts.

        The programs are predicted with the env's own ``program()``; each env's verifier is
        wrapped for the duration of its step so that ``score`` returns the precomputed
        verdict (a program we did not predict is scored normally). All envs of the pool come
        from one factory, so the first env's verifier stands for all of them.
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
