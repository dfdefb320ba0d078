"""`prmgym train-prm`: offline training, checkpoints, resume, logs, bad input."""

import json
import os

import pytest
import torch

from prmgym.cli import main
from prmgym.models import tiny
from prmgym.rewards import ValueModel, load_prm

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def policy_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("pol") / "policy"
    tiny.random_tiny_policy(seed=0, n_layer=1, n_embd=32, n_head=2, n_positions=256).save(d)
    return str(d)


def write_targets(path, n=8):
    with open(path, "w") as f:
        for i in range(n):
            f.write(json.dumps({"prompt": f"Compute {i} + 1.", "steps": [f"{i} + 1 = {i + 1}"] if i % 2 else [],
                                "value": (i % 4) / 3, "visits": 1 + i}) + "\n")


def test_train_value_model_and_resume(policy_dir, tmp_path):
    write_targets(tmp_path / "t.jsonl")
    out = str(tmp_path / "vm")
    args = ["train-prm", "--kind", "value", "--policy", policy_dir, "--targets", str(tmp_path / "t.jsonl"),
            "--out", out, "--set", "batch_size=4", "--set", "prm.learning_rate=1e-3", "--set", "eval_every=0", "--quiet"]
    assert main(args + ["--steps", "3"]) == 0
    prm = load_prm(out)
    assert isinstance(prm, ValueModel) and prm.updates == 3
    assert os.path.isdir(os.path.join(out, "checkpoint")) and os.path.isdir(os.path.join(out, "tb"))
    lines = [json.loads(l) for l in open(os.path.join(out, "metrics.jsonl"))]
    assert [l["step"] for l in lines] == [1, 2, 3] and "prm/mse" in lines[0]
    # resume continues the count from the checkpoint
    assert main(args + ["--steps", "5", "--resume"]) == 0
    assert load_prm(out).updates == 5
    lines = [json.loads(l) for l in open(os.path.join(out, "metrics.jsonl"))]
    assert [l["step"] for l in lines] == [1, 2, 3, 4, 5]


def test_train_prm_bad_input(policy_dir, tmp_path, capsys):
    assert main(["train-prm", "--kind", "value", "--policy", policy_dir, "--out", str(tmp_path / "o")]) == 2
    assert "--targets" in capsys.readouterr().err
    assert main(["train-prm", "--kind", "airl", "--policy", policy_dir, "--out", str(tmp_path / "o")]) == 2
    assert "--env is required" in capsys.readouterr().err
    assert main(["train-prm", "--kind", "orm", "--policy", policy_dir, "--env", "x", "--out", str(tmp_path / "n"), "--resume"]) == 2
    assert "no checkpoint" in capsys.readouterr().err
    assert main(["train-prm", "--kind", "orm", "--policy", policy_dir, "--env", "prmgym/Nope-v0", "--out", str(tmp_path / "n")]) == 2
    assert "cannot make environment" in capsys.readouterr().err
    (tmp_path / "bad.jsonl").write_text('{"prompt": "p", "steps": [], "value": 3, "visits": 1}\n')
    assert main(["train-prm", "--kind", "value", "--policy", policy_dir, "--targets", str(tmp_path / "bad.jsonl"),
                 "--out", str(tmp_path / "o2")]) == 2
    assert "bad.jsonl:1: 'value' must be a number in [0, 1]" in capsys.readouterr().err
