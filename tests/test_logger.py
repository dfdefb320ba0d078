"""The one logger: stdout, JSONL and TensorBoard writers, hyperparameters, texts, errors."""

import builtins
import io
import json
import math

import pytest

from prmgym.logger import Logger


def _rows(path):
    return [json.loads(line) for line in open(path)]


def test_record_averages_and_dump_writes_jsonl_and_stdout(tmp_path):
    out = io.StringIO()
    log = Logger(tmp_path, formats=("stdout", "jsonl"), stream=out)
    log.record("train/loss", 1.0)
    log.record("train/loss", 3.0)
    log.record("train/kl", 0.5)
    values = log.dump(step=7)
    assert values == {"train/loss": 2.0, "train/kl": 0.5}
    log.record("train/loss", 5.0)
    log.dump(step=8)
    log.dump(step=9)  # nothing recorded: nothing written
    log.close()
    rows = _rows(tmp_path / "metrics.jsonl")
    assert [(r["step"], r["train/loss"]) for r in rows] == [(7, 2.0), (8, 5.0)]
    text = out.getvalue()
    assert "step 7" in text and "train/loss" in text and "train/kl" in text


def test_texts_tensors_nonfinite_and_record_dict(tmp_path):
    import torch

    with Logger(tmp_path, formats=("jsonl",)) as log:
        log.record("a", torch.tensor(2.0))
        log.record("b", math.inf)
        log.record_dict({"c": 1, "skip": "not a number"}, prefix="x/")
        log.record_text("sample", "Q\nstep 1\n")
        log.dump(1)
    (row,) = _rows(tmp_path / "metrics.jsonl")
    assert row["a"] == 2.0 and row["b"] == "inf" and row["x/c"] == 1.0 and "x/skip" not in row
    assert row["texts"] == {"sample": "Q\nstep 1\n"}


def test_tensorboard_events_hold_scalars_text_and_hparams(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    with Logger(tmp_path, formats=("tensorboard",), hparams={"lr": 0.1, "model": {"n_layer": 2}}) as log:
        for step in (1, 2):
            log.record("train/loss", 1.0 / step)
            log.record_text("sample", "line one\nline two")
            log.dump(step)
    hp = json.load(open(tmp_path / "hparams.json"))
    assert hp == {"lr": 0.1, "model.n_layer": 2}
    acc = EventAccumulator(str(tmp_path / "tb"), size_guidance={"tensors": 0, "scalars": 0})
    acc.Reload()
    assert [(e.step, e.value) for e in acc.Scalars("train/loss")] == [(1, 1.0), (2, 0.5)]
    tags = acc.Tags()["tensors"]
    assert any("hyperparameters" in t for t in tags) and any("sample" in t for t in tags)


def test_bad_format_and_missing_tensorboard(tmp_path, monkeypatch):
    with pytest.raises(ValueError, match="unknown logger format"):
        Logger(tmp_path, formats=("csv",))
    real_import = builtins.__import__

    def no_tb(name, *args, **kwargs):
        if name.startswith("torch.utils.tensorboard") or name.startswith("tensorboard"):
            raise ImportError("No module named 'tensorboard'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_tb)
    with pytest.raises(ImportError, match="pip install tensorboard"):
        Logger(tmp_path / "x", formats=("tensorboard",))
    Logger(tmp_path / "y", formats=("jsonl",)).close()  # other formats never import it
