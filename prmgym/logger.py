"""The one logger: record during an iteration, dump once, to stdout, JSONL and TensorBoard.

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

FORMATS = ("stdout", "jsonl", "tensorboard")


def _to_float(value: Any) -> float:
    if hasattr(value, "item"):
        value = value.item()
    return float(value)


class Logger:
    """Stores scalars and texts with `record`/`record_text`, writes them with `dump`.

    Args:
        run_dir: directory for ``metrics.jsonl`` and TensorBoard event files (``tb/``).
        formats: any of ``"stdout"``, ``"jsonl"``, ``"tensorboard"``.
        hparams: written once at the start (a markdown table in TensorBoard's text tab,
            ``hparams.json`` in the run directory).
        stream: where ``stdout`` output goes.
        resume_step: continuing a run from its checkpoint at this step: rows of
            ``metrics.jsonl`` logged after it are dropped and TensorBoard hides the events after it
            (``purge_step``), so no step appears twice (a killed run logs past its last checkpoint).
    """

    def __init__(
        self,
        run_dir: str | os.PathLike,
        formats: Iterable[str] = FORMATS,
        hparams: Mapping[str, Any] | None = None,
        stream=None,
        resume_step: int | None = None,
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


def progress_bar(total: int, desc: str, unit: str = "it", enabled: bool = True, initial: int = 0):
    """A tqdm bar (total, rate, ETA) on stderr when ``enabled`` and stderr is a terminal, else
    None (logs and pipes get no bar lines). Callers ``update(1)`` it and ``close()`` it."""
    if not enabled or not getattr(sys.stderr, "isatty", lambda: False)():
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc=desc, unit=unit, dynamic_ncols=True)
