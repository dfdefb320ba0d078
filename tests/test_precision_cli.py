"""``--dtype`` / ``--device`` on every command and ``dtype`` / ``device`` in the YAML configs reach
what they configure: `prmgym train`, `train-prm`, `search`, `pretrain` and `quickstart`."""

import json

import gymnasium as gym
import pytest
import torch
import yaml

from prmgym.cli import main
from prmgym.models import tiny

torch.set_num_threads(1)

ENV_ID = "prmgym_test/Toy-v0"
if ENV_ID not in gym.registry:
    gym.register(id=ENV_ID, entry_point="test_rollout_toyenv:ToyEnv")


class Reached(Exception):
    """Raised by a stand-in once it has recorded what reached it (main exits 1)."""


@pytest.fixture
def model_dir(tmp_path):
    return tiny.random_tiny_policy(seed=0).save(str(tmp_path / "model"))


def run_config(tmp_path, model_dir, **over):
    cfg = {"algorithm": "grpo", "env": ENV_ID, "model": model_dir, "steps": 2, "run_dir": str(tmp_path / "run"),
           "eval_tasks": 0, "trainer": {"num_generations": 4, "batch_size": 8, "max_new_tokens": 1, "max_steps": 1,
                                        "learning_rate": 3e-3}}
    cfg.update(over)
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return str(path)


def test_train_flags_and_yaml_reach_the_trainer_config(tmp_path, model_dir, monkeypatch):
    import prmgym.recipes.train_cli as train_cli

    seen = []
    monkeypatch.setattr(train_cli, "train_from_config", lambda cfg, **kw: seen.append(cfg) or 0)
    assert main(["train", "--config", run_config(tmp_path, model_dir), "--dtype", "bf16", "--device", "cpu"]) == 0
    tc = seen[-1].trainer_config()
    assert (seen[-1].dtype, seen[-1].device, tc.dtype, tc.device) == ("bf16", "cpu", "bf16", "cpu")
    path = run_config(tmp_path, model_dir, dtype="bf16", trainer={"lr_schedule": "cosine", "num_iterations": 3,
                                                                   "num_generations": 4, "batch_size": 8})
    assert main(["train", "--config", path]) == 0
    tc = seen[-1].trainer_config()
    assert tc.dtype == "bf16" and tc.device == "auto"
    assert tc.schedule_steps == 2 * 3 * 1  # steps x num_iterations x num_mini_batches, filled in


def test_train_refuses_a_trainer_level_dtype_and_fp16_on_cpu(tmp_path, model_dir, capsys):
    path = run_config(tmp_path, model_dir, trainer={"dtype": "fp16", "num_generations": 4, "batch_size": 8})
    assert main(["train", "--config", path]) == 2
    assert "set dtype at the top level" in capsys.readouterr().err
    assert main(["train", "--config", run_config(tmp_path, model_dir), "--dtype", "fp16", "--device", "cpu"]) == 1
    assert "fp16 needs a CUDA device" in capsys.readouterr().err


def test_train_runs_in_bf16_end_to_end(tmp_path, model_dir):
    path = run_config(tmp_path, model_dir, steps=1)
    assert main(["train", "--config", path, "--dtype", "bf16", "--device", "cpu", "--no-progress"]) == 0
    saved = yaml.safe_load(open(tmp_path / "run" / "config.yaml"))
    assert saved["dtype"] == "bf16" and saved["device"] == "cpu"
    rows = [json.loads(line) for line in open(tmp_path / "run" / "metrics.jsonl")]
    assert len(rows) == 1 and rows[0]["train/lr"] == 3e-3 and rows[0]["train/loss"] == rows[0]["train/loss"]


def test_train_prm_flags_reach_the_prm(tmp_path, model_dir, monkeypatch):
    import prmgym.rewards.train as rtrain

    seen = {}

    def fake_build(kind, backbone, **options):
        seen.update(options)
        raise Reached

    monkeypatch.setattr(rtrain, "build_prm", fake_build)
    argv = ["train-prm", "--kind", "orm", "--policy", model_dir, "--env", ENV_ID, "--out", str(tmp_path / "p")]
    assert main(argv + ["--dtype", "bf16", "--device", "cpu"]) == 1
    assert seen["dtype"] == "bf16" and seen["device"] == "cpu"
    assert main(argv + ["--set", "prm.dtype=fp32", "--dtype", "bf16"]) == 1  # the PRM's own section wins
    assert seen["dtype"] == "fp32"


def test_search_flags_reach_the_policy_prm_and_autocast(tmp_path, model_dir, monkeypatch):
    import prmgym.search.cli as scli
    from prmgym.rewards import load_prm
    from prmgym.rewards.baselines import ORMPRM

    ORMPRM.from_backbone(model_dir).save(tmp_path / "prm")
    seen = {}

    def fake_eval(planner, env, policy, scorer, *a, **k):
        seen.update(autocast=torch.is_autocast_enabled("cpu"), dtype=torch.get_autocast_dtype("cpu"),
                    prm_dtype=scorer.options.dtype, policy_device=policy.device)
        weights = {p.dtype for p in policy.model.parameters()} | {p.dtype for p in scorer.net.parameters()}
        seen["weights"] = weights
        seen["scores"] = scorer.score_steps(["Compute 1+2."], [["1 + 2 = 3", "Answer: 3"]])
        raise Reached

    monkeypatch.setattr(scli, "evaluate_planner", fake_eval)
    argv = ["search", "--planner", "beam", "--policy", model_dir, "--prm", str(tmp_path / "prm"), "--env", ENV_ID,
            "--n-tasks", "1", "--out", str(tmp_path / "s")]
    assert main(argv + ["--dtype", "bf16", "--device", "cpu"]) == 1
    scores = seen.pop("scores")
    assert seen == {"autocast": True, "dtype": torch.bfloat16, "prm_dtype": "bf16", "policy_device": torch.device("cpu"),
                    "weights": {torch.bfloat16}}  # inference loads the weights in the dtype too
    assert len(scores[0]) == 2 and all(0 <= x <= 1 for x in scores[0])
    assert json.load(open(tmp_path / "s" / "search.json"))["dtype"] == "bf16"
    assert load_prm(tmp_path / "prm").options.dtype == "fp32"  # the saved PRM is not changed


def test_search_refuses_fp16_on_cpu_and_an_absent_gpu(tmp_path, model_dir, capsys):
    base = ["search", "--planner", "sample", "--policy", model_dir, "--env", ENV_ID, "--out", str(tmp_path / "s")]
    assert main(base + ["--dtype", "fp16", "--device", "cpu"]) == 2
    assert "fp16 needs a CUDA device" in capsys.readouterr().err
    if not torch.cuda.is_available():
        assert main(base + ["--device", "cuda"]) == 2
        assert "no CUDA GPU" in capsys.readouterr().err


def test_pretrain_flags_reach_the_recipe(monkeypatch):
    import prmgym.recipes.tiny as tiny_recipe
    from prmgym.recipes.tiny import PretrainConfig

    seen = {}

    def fake_pretrain(env, out, config, device, **kw):
        seen.update(config=config, device=device)
        raise Reached

    monkeypatch.setattr(tiny_recipe, "pretrain", fake_pretrain)
    assert main(["pretrain", "--out", "/nonexistent/x", "--dtype", "bf16", "--device", "cpu"]) == 1
    assert seen["config"].dtype == "bf16" and seen["device"] == torch.device("cpu")
    # fp32 keeps the cache keys of models trained before dtype existed; another dtype is another model
    assert PretrainConfig().cache_key() != PretrainConfig(dtype="bf16").cache_key()
    assert "dtype" not in json.dumps(PretrainConfig().cache_key())


def test_quickstart_flags_reach_its_config(monkeypatch):
    import prmgym.recipes.quickstart as qs

    seen = []
    monkeypatch.setattr(qs, "quickstart", lambda cfg, out: seen.append(cfg))
    assert main(["quickstart", "--fast", "--dtype", "bf16", "--device", "cpu"]) == 0
    assert (seen[-1].dtype, seen[-1].device) == ("bf16", "cpu")
    assert main(["quickstart", "--fast"]) == 0
    assert (seen[-1].dtype, seen[-1].device) == ("fp32", "auto")
