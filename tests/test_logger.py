"""The one logger: stdout, JSONL, TensorBoard, CSV and W&B writers, hyperparameters, texts, errors."""

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
        Logger(tmp_path, formats=("xml",))
    real_import = builtins.__import__

    def no_tb(name, *args, **kwargs):
        if name.startswith("torch.utils.tensorboard") or name.startswith("tensorboard"):
            raise ImportError("No module named 'tensorboard'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_tb)
    with pytest.raises(ImportError, match="pip install tensorboard"):
        Logger(tmp_path / "x", formats=("tensorboard",))
    Logger(tmp_path / "y", formats=("jsonl",)).close()  # other formats never import it


def test_csv_widens_its_header_and_resume_drops_later_rows(tmp_path):
    import csv

    with Logger(tmp_path, formats=("csv",)) as log:
        log.record("train/loss", 1.0)
        log.dump(1)
        log.record("train/loss", 0.5)
        log.record("eval/pass@1", 0.25)  # a key first seen at step 2
        log.dump(2)
        log.record("train/loss", 0.25)
        log.dump(3)
    rows = list(csv.DictReader(open(tmp_path / "metrics.csv")))
    assert [(r["step"], r["train/loss"], r["eval/pass@1"]) for r in rows] == [
        ("1", "1.0", ""), ("2", "0.5", "0.25"), ("3", "0.25", "")]
    with Logger(tmp_path, formats=("csv",), resume_step=2) as log:  # continuing from a step-2 checkpoint
        log.record("train/loss", 0.3)
        log.dump(3)
    rows = list(csv.DictReader(open(tmp_path / "metrics.csv")))
    assert [(r["step"], r["train/loss"]) for r in rows] == [("1", "1.0"), ("2", "0.5"), ("3", "0.3")]


def test_wandb_offline_run_holds_the_logged_keys(tmp_path, monkeypatch):
    wandb = pytest.importorskip("wandb")
    import glob

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    with Logger(tmp_path, formats=("wandb", "jsonl"), hparams={"trainer": {"learning_rate": 0.125}}) as log:
        log.record("train/loss_marker_key", 0.75)
        log.record("eval/pass@1", 0.375)
        log.dump(1)
        log.record("train/loss_marker_key", 0.625)
        log.dump(2)
    wandb.teardown()  # finish() returns before W&B's service has flushed the run file; teardown waits for it
    (run,) = glob.glob(str(tmp_path / "wandb" / "offline-run-*" / "run-*.wandb"))
    data = open(run, "rb").read()
    for needle in (b"train/loss_marker_key", b"eval/pass@1", b"0.375", b"0.625", b"trainer.learning_rate", b"0.125"):
        assert needle in data, needle
    assert open(tmp_path / "wandb_group.txt").read() == tmp_path.name


def test_missing_wandb_names_the_extra(tmp_path, monkeypatch):
    real_import = builtins.__import__

    def no_wandb(name, *args, **kwargs):
        if name == "wandb" or name.startswith("wandb."):
            raise ImportError("No module named 'wandb'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_wandb)
    with pytest.raises(ImportError, match=r"pip install -e '\.\[wandb\]'"):
        Logger(tmp_path, formats=("wandb",))
