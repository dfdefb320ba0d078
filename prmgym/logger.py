"""The one logger: record during an iteration, dump once, to stdout, JSONL, TensorBoard, CSV
and Weights & Biases (opt-in, through the ``wandb`` library, imported only when asked for).

>>> import tempfile
>>> log = Logger(tempfile.mkdtemp(), formats=("jsonl",))
>>> log.record("train/loss", 0.5); _ = log.dump(step=1)
>>> log.close()
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from collections import defaultdict
from typing import Any, Iterable, Mapping

FORMATS = ("stdout", "jsonl", "tensorboard", "csv", "wandb")
#: the writers a `prmgym train` config may list under ``logging:`` (JSONL is always written)
RUN_FORMATS = ("tensorboard", "csv", "wandb", "stdout")


def _to_float(value: Any) -> float:
    if hasattr(value, "item"):
        value = value.item()
    return float(value)


class Logger:
    """Stores scalars and texts with `record`/`record_text`, writes them with `dump`.

    Args:
        run_dir: directory for ``metrics.jsonl``, ``metrics.csv``, TensorBoard event files
            (``tb/``) and the W&B run (``wandb/``).
        formats: any of ``"stdout"``, ``"jsonl"``, ``"tensorboard"``, ``"csv"`` (one column per key;
            the file is rewritten with a wider header when a new key appears) and ``"wandb"``
            (scalars and hyperparameters; ``WANDB_MODE=offline`` keeps the run on disk).
        wandb: keyword arguments of ``wandb.init`` (``project``, ``entity``, ``name``, ``mode``,
            ``tags``, ...); default project ``prmgym``, name the run directory's, dir ``run_dir``.
        hparams: written once at the start (a markdown table in TensorBoard's text tab,
            ``hparams.json`` in the run directory).
        stream: where ``stdout`` output goes.
        resume_step: continuing a run from its checkpoint at this step: rows of
            ``metrics.jsonl`` logged after it are dropped and TensorBoard hides the events after it
            (``purge_step``), so no step appears twice (a killed run logs past its last checkpoint).
            W&B cannot rewind a run: a resumed run is a new W&B run in the first one's ``group``.
    """

    def __init__(
        self,
        run_dir: str | os.PathLike,
        formats: Iterable[str] = FORMATS,
        hparams: Mapping[str, Any] | None = None,
        stream=None,
        resume_step: int | None = None,
        wandb: Mapping[str, Any] | None = None,
    ) -> None:
        formats = tuple(formats)
        bad = [f for f in formats if f not in FORMATS]
        if bad:
            raise ValueError(f"unknown logger format(s) {bad}; valid: {', '.join(FORMATS)}")
        self.run_dir = os.fspath(run_dir)
        os.makedirs(self.run_dir, exist_ok=True)
        self.formats = formats
        self.stream = stream or sys.stdout
        self._scalars: dict[str, list[float]] = defaultdict(list)
        self._texts: dict[str, str] = {}
        if resume_step is not None:
            _truncate_jsonl(os.path.join(self.run_dir, "metrics.jsonl"), resume_step)
        self._jsonl = open(os.path.join(self.run_dir, "metrics.jsonl"), "a") if "jsonl" in formats else None
        self._tb = None
        if "tensorboard" in formats:
            self._tb = _make_tb_writer(os.path.join(self.run_dir, "tb"), None if resume_step is None else resume_step + 1)
        self._csv = _CSVWriter(os.path.join(self.run_dir, "metrics.csv"), resume_step) if "csv" in formats else None
        self._wandb = None
        if "wandb" in formats:
            self._wandb = _make_wandb_run(self.run_dir, dict(wandb or {}), _flatten(hparams or {}), resume_step)
        if hparams:
            self.log_hparams(hparams)

    # -- storing ---------------------------------------------------------------------
    def record(self, key: str, value: Any) -> None:
        """Store a scalar; several values for one key in one iteration are averaged."""
        self._scalars[key].append(_to_float(value))

    def record_dict(self, metrics: Mapping[str, Any], prefix: str = "") -> None:
        for k, v in metrics.items():
            if isinstance(v, (int, float)) or hasattr(v, "item"):
                self.record(prefix + k, v)

    def record_text(self, key: str, text: str) -> None:
        """Store a text (e.g. a sample trace); the last one per key is written."""
        self._texts[key] = str(text)

    # -- writing ---------------------------------------------------------------------
    def dump(self, step: int) -> dict[str, float]:
        """Write everything recorded since the last dump at ``step``; returns the scalars."""
        values = {k: sum(v) / len(v) for k, v in self._scalars.items() if v}
        if "stdout" in self.formats and values:
            self._write_stdout(step, values)
        if self._jsonl is not None and (values or self._texts):
            row = {"step": step, "time": time.time(), **{k: (v if math.isfinite(v) else str(v)) for k, v in values.items()}}
            if self._texts:
                row["texts"] = dict(self._texts)
            self._jsonl.write(json.dumps(row) + "\n")
            self._jsonl.flush()
        if self._tb is not None:
            for k, v in values.items():
                self._tb.add_scalar(k, v, step)
            for k, t in self._texts.items():
                # TensorBoard renders text as markdown: keep the trace's line breaks.
                self._tb.add_text(k, "    " + t.replace("\n", "\n    "), step)
            self._tb.flush()
        if self._csv is not None and values:
            self._csv.write(step, values)
        if self._wandb is not None and values:
            self._wandb.log(values, step=step)
        self._scalars.clear()
        self._texts.clear()
        return values

    def log_hparams(self, hparams: Mapping[str, Any]) -> None:
        flat = _flatten(hparams)
        with open(os.path.join(self.run_dir, "hparams.json"), "w") as f:
            json.dump(flat, f, indent=2, default=str)
        if self._tb is not None:
            table = "|param|value|\n|-|-|\n" + "\n".join(f"|{k}|{v}|" for k, v in flat.items())
            self._tb.add_text("hyperparameters", table, 0)
            self._tb.flush()
        if self._wandb is not None:
            self._wandb.config.update(flat, allow_val_change=True)

    def _write_stdout(self, step: int, values: Mapping[str, float]) -> None:
        width = max(len(k) for k in values)
        lines = [f"-- step {step} " + "-" * max(0, width + 10 - len(str(step)))]
        for k in sorted(values):
            lines.append(f"| {k:<{width}} | {values[k]:>10.4g} |")
        print("\n".join(lines), file=self.stream, flush=True)

    def close(self) -> None:
        if self._jsonl is not None:
            self._jsonl.close()
            self._jsonl = None
        if self._tb is not None:
            self._tb.close()
            self._tb = None
        if self._wandb is not None:
            self._wandb.finish()
            self._wandb = None

    def __enter__(self) -> "Logger":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, Mapping):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _truncate_jsonl(path: str, step: int) -> None:
    """Keep the rows of ``path`` logged at or before ``step`` (and drop a line cut short by a kill)."""
    if not os.path.exists(path):
        return
    keep = []
    with open(path) as f:
        for line in f:
            try:
                if int(json.loads(line).get("step", 0)) <= step:
                    keep.append(line if line.endswith("\n") else line + "\n")
            except (ValueError, TypeError, AttributeError):  # torn or foreign line
                continue
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.writelines(keep)
    os.replace(tmp, path)


def _after_older_event_files(logdir: str) -> None:
    """TensorBoard reads a directory's event files in name order, and the name starts with the
    second it was made: wait until this second sorts after every file already there, so the
    purge of a resumed run applies to the events it should hide."""
    if not os.path.isdir(logdir):
        return
    stamps = []
    for name in os.listdir(logdir):
        parts = name.split(".")
        if name.startswith("events.out.tfevents.") and len(parts) > 3 and parts[3].isdigit():
            stamps.append(int(parts[3]))
    while stamps and int(time.time()) <= max(stamps):
        time.sleep(0.05)


def _make_tb_writer(logdir: str, purge_step: int | None = None):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as e:  # tensorboard or torch missing
        raise ImportError(
            "TensorBoard logging needs the 'tensorboard' package: pip install tensorboard "
            "(or drop 'tensorboard' from the logger formats)"
        ) from e
    if purge_step is not None:
        _after_older_event_files(logdir)
    return SummaryWriter(log_dir=logdir, purge_step=purge_step)


class _CSVWriter:
    """``metrics.csv``: a ``step`` column and one column per key seen so far (empty cells where a
    step did not log the key). A new key rewrites the file with the wider header."""

    def __init__(self, path: str, resume_step: int | None = None) -> None:
        import csv

        self.path = path
        self.keys: list[str] = []
        rows: list[dict] = []
        if os.path.exists(path):
            with open(path, newline="") as f:
                reader = csv.DictReader(f)
                self.keys = [k for k in (reader.fieldnames or []) if k != "step"]
                rows = [r for r in reader if resume_step is None or _int_or(r.get("step"), 1 << 62) <= resume_step]
            self._rewrite(rows)

    def _rewrite(self, rows: list[dict]) -> None:
        import csv

        tmp = self.path + ".tmp"
        with open(tmp, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=["step", *self.keys])
            w.writeheader()
            w.writerows(rows)
        os.replace(tmp, self.path)

    def write(self, step: int, values: Mapping[str, float]) -> None:
        import csv

        new = [k for k in values if k not in self.keys]
        row = {"step": step, **values}
        if new or not os.path.exists(self.path):
            rows = []
            if os.path.exists(self.path):
                with open(self.path, newline="") as f:
                    rows = list(csv.DictReader(f))
            self.keys += sorted(new)
            self._rewrite(rows + [row])
            return
        with open(self.path, "a", newline="") as f:
            csv.DictWriter(f, fieldnames=["step", *self.keys]).writerow(row)


def _int_or(value: Any, default: int) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return default


WANDB_GROUP_FILE = "wandb_group.txt"


def _make_wandb_run(run_dir: str, kwargs: dict, config: dict, resume_step: int | None):
    try:
        import wandb
    except ImportError as e:
        raise ImportError(
            "W&B logging needs the 'wandb' package: pip install -e '.[wandb]' (or pip install wandb), "
            "or drop 'wandb' from the logging list"
        ) from e
    id_path = os.path.join(run_dir, WANDB_GROUP_FILE)
    kwargs.setdefault("project", "prmgym")
    kwargs.setdefault("name", os.path.basename(os.path.abspath(run_dir)))
    kwargs.setdefault("dir", run_dir)
    if resume_step is not None and os.path.exists(id_path):  # a resumed run: a new W&B run in the first one's group
        with open(id_path) as f:
            kwargs.setdefault("group", f.read().strip())
        kwargs["name"] = f"{kwargs['name']}-resumed-{resume_step}"
    kwargs.setdefault("group", kwargs["name"])
    os.makedirs(kwargs["dir"], exist_ok=True)
    run = wandb.init(config=config or None, reinit="create_new", **kwargs)
    if not os.path.exists(id_path):
        with open(id_path, "w") as f:
            f.write(kwargs["group"])
    return run


def progress_bar(total: int, desc: str, unit: str = "it", enabled: bool = True, initial: int = 0):
    """A tqdm bar (total, rate, ETA) on stderr when ``enabled`` and stderr is a terminal, else
    None (logs and pipes get no bar lines). Callers ``update(1)`` it and ``close()`` it."""
    if not enabled or not getattr(sys.stderr, "isatty", lambda: False)():
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc=desc, unit=unit, dynamic_ncols=True)
