"""`prmgym train`: a run directory with TensorBoard + JSONL + checkpoints, exact --resume,
and config errors that name the bad value and list the valid ones."""

import json
import os

import gymnasium as gym
import pytest
import torch
import yaml

from prmgym.agents.common import checkpoint_dirs, load_model_weights
from prmgym.cli import main
from prmgym.models import tiny

torch.set_num_threads(1)

ENV_ID = "prmgym_test/Toy-v0"
if ENV_ID not in gym.registry:
    gym.register(id=ENV_ID, entry_point="test_rollout_toyenv:ToyEnv")


@pytest.fixture
def model_dir(tmp_path):
    return tiny.random_tiny_policy(seed=0).save(str(tmp_path / "model"))


def write_config(tmp_path, model_dir, name="cfg.yaml", **over):
    cfg = {
        "algorithm": "grpo", "env": ENV_ID, "env_kwargs": {}, "model": model_dir, "steps": 4,
        "run_dir": str(tmp_path / "run"), "eval_tasks": 4,
        "trainer": {"num_generations": 4, "batch_size": 8, "max_new_tokens": 1, "max_steps": 1,
                    "learning_rate": 3e-3, "save_every": 2},
    }
    cfg.update(over)
    path = tmp_path / name
    path.write_text(yaml.safe_dump(cfg))
    return str(path)


def weights(ckpt):
    model = tiny.random_tiny_policy(seed=1).model
    load_model_weights(model, os.path.join(ckpt, "policy"))
    return model.state_dict()


def test_train_writes_run_dir_and_resume_is_exact(tmp_path, model_dir, capsys):
    cfg = write_config(tmp_path, model_dir)
    a = str(tmp_path / "a")
    assert main(["train", "--config", cfg, "--set", f"run_dir={a}", "--set", "steps=2", "--quiet"]) == 0
    assert main(["train", "--resume", a, "--set", "steps=4", "--no-progress"]) == 0  # the older spelling
    b = str(tmp_path / "b")
    assert main(["train", "--config", cfg, "--set", f"run_dir={b}", "--quiet"]) == 0
    for run in (a, b):
        assert os.path.exists(os.path.join(run, "config.yaml"))
        assert any(f.startswith("events.out.tfevents") for f in os.listdir(os.path.join(run, "tb")))
        summary = json.load(open(os.path.join(run, "summary.json")))
        assert summary["steps"] == 4 and "pass@1_before" in summary and "pass@1_after" in summary
    rows = lambda run: [json.loads(l) for l in open(os.path.join(run, "metrics.jsonl"))  # noqa: E731
                        if any(k.startswith("train/") for k in json.loads(l))]
    assert [r["step"] for r in rows(a)] == [1, 2, 3, 4]
    # eval/pass@1 is logged at step 0 and at the end although eval_every is 0 (the default)
    evals = [json.loads(l) for l in open(os.path.join(b, "metrics.jsonl")) if "eval/pass@1" in json.loads(l)]
    summary = json.load(open(os.path.join(b, "summary.json")))
    assert [(r["step"], r["eval/pass@1"]) for r in evals] == [(0, summary["pass@1_before"]), (4, summary["pass@1_after"])]
    assert _tb_steps(b, "eval/pass@1") == [0, 4]
    for ra, rb in zip(rows(a), rows(b)):
        assert {k: v for k, v in ra.items() if k.startswith("train/")} == {k: v for k, v in rb.items() if k.startswith("train/")}
    wa, wb = weights(checkpoint_dirs(a)[-1]), weights(checkpoint_dirs(b)[-1])
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    # the exported policy loads as a normal HF directory
    from prmgym.models import TransformersPolicy

    TransformersPolicy.from_pretrained(json.load(open(os.path.join(b, "summary.json")))["policy_dir"])
    # refusing to overwrite a run
    assert main(["train", "--config", cfg, "--set", f"run_dir={b}", "--quiet"]) == 2
    assert "--resume" in capsys.readouterr().err


@pytest.mark.parametrize("over, needle", [
    ({"env": "prmgym/Nope-v0"}, "unknown env 'prmgym/Nope-v0'. Valid prmgym envs:"),
    ({"model": "/no/such/dir"}, "model '/no/such/dir' is neither 'tiny' nor an existing directory"),
    ({"reward": "magic"}, "unknown reward 'magic'; valid: none"),
    ({"algorithm": "ppo"}, "unknown algorithm 'ppo'; valid: grpo, rest_grpo"),
    ({"trainer": {"num_generations": 1}}, "num_generations must be >= 2"),
    ({"trainer": {"num_generations": 4, "batch_size": 6}}, "multiple of num_generations"),
    ({"trainer": {"epsilon_high": 0}}, "clip ranges must be positive"),
    ({"trainer": {"num_generation": 4}}, "did you mean 'num_generations'"),
])
def test_bad_configs_say_what_and_how(tmp_path, model_dir, capsys, over, needle):
    cfg = write_config(tmp_path, model_dir, **over)
    assert main(["train", "--config", cfg, "--quiet"]) == 2
    err = capsys.readouterr().err
    assert needle in err, err
    if "reward" in over:
        assert "airl" in err  # the rewards registry is listed


def test_missing_inputs(tmp_path, capsys):
    assert main(["train", "--quiet"]) == 2
    assert "--config FILE" in capsys.readouterr().err
    assert main(["train", "--resume", str(tmp_path), "--quiet"]) == 2
    assert "no config.yaml" in capsys.readouterr().err


def test_train_with_airl_reward_logs_discriminator_to_tensorboard(tmp_path, model_dir):
    # AIRL-S from the CLI on a real procedural env (expert solutions are the positives)
    cfg = write_config(tmp_path, model_dir, env="prmgym/ChainArithmetic-v0", reward="airl", steps=2, eval_tasks=2,
                       reward_config={"learning_rate": 1e-3, "updates_per_step": 2},
                       trainer={"num_generations": 2, "batch_size": 4, "max_new_tokens": 6, "max_steps": 3,
                                "learning_rate": 1e-3, "process_reward_weight": 0.5, "save_every": 2})
    assert main(["train", "--config", cfg, "--quiet"]) == 0
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(tmp_path / "run" / "tb"))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert {"prm/disc_acc", "prm/D_expert", "prm/D_policy"} <= tags, sorted(tags)
    assert "train/process_reward_mean" in tags
    vals = [e.value for e in acc.Scalars("prm/disc_acc")]
    assert len(vals) == 2 and all(0.0 <= v <= 1.0 for v in vals)
    # the discriminator is saved with the checkpoint and loads as a PRM for search
    from prmgym.rewards import load_prm

    ckpt = checkpoint_dirs(str(tmp_path / "run"))[-1]
    prm = load_prm(os.path.join(ckpt, "process_reward"))
    [scores] = prm.score_steps(["Compute left to right: 1+2\n"], [["1+2=3", "Answer: 3"]])
    assert len(scores) == 2


# --------------------------------------------------------------------------- stop, resume, restart
def _steps(run):
    """Steps of the training rows of metrics.jsonl (eval/pass@1 also has rows at step 0 and the end)."""
    rows = [json.loads(line) for line in open(os.path.join(run, "metrics.jsonl"))]
    return [r["step"] for r in rows if any(k.startswith("train/") for k in r)]


def _tb_steps(run, tag="train/reward_mean"):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(os.path.join(run, "tb"))
    acc.Reload()
    return [e.step for e in acc.Scalars(tag)]


def _interrupt_at(monkeypatch, call, signum=None):
    """Make the trainer's ``call``-th step raise KeyboardInterrupt (a hard Ctrl-C mid-step), or
    send ``signum`` to this process right after that step (a first Ctrl-C / SIGTERM)."""
    import signal

    from prmgym.agents.grpo import GRPOTrainer

    orig, calls = GRPOTrainer.step, []

    def step(self):
        calls.append(1)
        if signum is None and len(calls) == call:
            raise KeyboardInterrupt
        out = orig(self)
        if signum is not None and len(calls) == call:
            os.kill(os.getpid(), signum)
        return out

    monkeypatch.setattr(GRPOTrainer, "step", step)
    return lambda: monkeypatch.setattr(GRPOTrainer, "step", orig)


def test_stopped_before_the_first_checkpoint_resumes_from_step_0(tmp_path, model_dir, monkeypatch, capsys):
    cfg = write_config(tmp_path, model_dir)
    ref = str(tmp_path / "ref")
    assert main(["train", "--config", cfg, "--set", f"run_dir={ref}", "--quiet"]) == 0
    run = str(tmp_path / "run")
    undo = _interrupt_at(monkeypatch, call=2)  # step 1 done and logged, no checkpoint yet (save_every=2)
    assert main(["train", "--config", cfg, "--quiet"]) == 130
    undo()
    err = capsys.readouterr().err
    assert f"--resume {run}" in err and "none yet" in err and checkpoint_dirs(run) == []
    before = json.load(open(os.path.join(run, "summary.json")))["pass@1_before"]
    # starting again is refused with both ways out named; --resume works from step 0
    assert main(["train", "--config", cfg, "--quiet"]) == 2
    err = capsys.readouterr().err
    assert f"--resume {run}" in err and "--overwrite" in err
    assert main(["train", "--resume", run, "--quiet"]) == 0
    assert "no checkpoint yet: training from step 0" in capsys.readouterr().err
    assert _steps(run) == [1, 2, 3, 4] and _tb_steps(run) == [1, 2, 3, 4]
    summary = json.load(open(os.path.join(run, "summary.json")))
    assert summary["pass@1_before"] == before and summary["steps"] == 4
    wa, wb = weights(checkpoint_dirs(run)[-1]), weights(checkpoint_dirs(ref)[-1])
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    # --overwrite starts the run again
    assert main(["train", "--config", cfg, "--overwrite", "--quiet"]) == 0
    assert _steps(run) == [1, 2, 3, 4]


@pytest.mark.parametrize("signame", ["SIGINT", "SIGTERM"])
def test_a_signal_saves_a_checkpoint_and_resume_logs_no_step_twice(tmp_path, model_dir, monkeypatch, capsys, signame):
    import signal

    signum = getattr(signal, signame)
    cfg = write_config(tmp_path, model_dir, steps=5, trainer={
        "num_generations": 4, "batch_size": 8, "max_new_tokens": 1, "max_steps": 1, "learning_rate": 3e-3,
        "save_every": 4})
    ref = str(tmp_path / "ref")
    assert main(["train", "--config", cfg, "--set", f"run_dir={ref}", "--quiet"]) == 0
    run = str(tmp_path / "run")
    undo = _interrupt_at(monkeypatch, call=1, signum=signum)
    assert main(["train", "--config", cfg, "--quiet"]) == 128 + signum
    undo()
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # handlers restored
    assert [os.path.basename(c) for c in checkpoint_dirs(run)] == ["checkpoint-0000001"]
    assert f"--resume {run}" in capsys.readouterr().err
    before = json.load(open(os.path.join(run, "summary.json")))["pass@1_before"]
    # a hard stop in step 4, after step 3 was logged: checkpoint 1 is the newest, steps 2-3 run again
    undo = _interrupt_at(monkeypatch, call=3)
    assert main(["train", "--resume", run, "--quiet"]) == 130
    undo()
    assert _steps(run) == [1, 2, 3]
    assert main(["train", "--resume", run, "--quiet"]) == 0
    assert _steps(run) == [1, 2, 3, 4, 5] and _tb_steps(run) == [1, 2, 3, 4, 5]
    rows = lambda r: [{k: v for k, v in json.loads(x).items() if k.startswith("train/")}  # noqa: E731
                      for x in open(os.path.join(r, "metrics.jsonl"))]
    assert rows(run) == rows(ref)
    summary = json.load(open(os.path.join(run, "summary.json")))
    assert summary["pass@1_before"] == before == json.load(open(os.path.join(ref, "summary.json")))["pass@1_before"]


def _tree(path):
    out = {}
    for root, dirs, files in os.walk(path):
        for name in dirs + files:
            p = os.path.join(root, name)
            st = os.stat(p)
            out[p] = (st.st_size, st.st_mtime_ns)
    return out


def test_resume_of_a_finished_run_says_so_and_writes_nothing(tmp_path, model_dir, capsys):
    cfg = write_config(tmp_path, model_dir, steps=2)
    run = str(tmp_path / "run")
    assert main(["train", "--config", cfg, "--quiet"]) == 0
    before = _tree(run)
    capsys.readouterr()
    assert main(["train", "--resume", run, "--quiet"]) == 0
    err = capsys.readouterr().err
    assert "is finished (2 of 2 steps" in err and "--set steps=N" in err
    assert _tree(run) == before
    # extending it is still possible and keeps pass@1_before
    first = json.load(open(os.path.join(run, "summary.json")))
    assert main(["train", "--resume", run, "--set", "steps=3", "--quiet"]) == 0
    summary = json.load(open(os.path.join(run, "summary.json")))
    assert summary["steps"] == 3 and summary["pass@1_before"] == first["pass@1_before"]
    assert _steps(run) == [1, 2, 3]


@pytest.mark.parametrize("over, needle", [
    ({"reward": "airl", "reward_config": {"nosuch": 1}}, "reward_config: unknown key 'reward_config.nosuch'"),
    ({"env": "prmgym/ChainArithmetic-v0", "env_kwargs": {"nosuch": 1}}, "env_kwargs: prmgym/ChainArithmetic-v0 cannot be made"),
    ({"env": "prmgym/HumanEval-v0", "eval_env_kwargs": {}}, "env_kwargs: prmgym/HumanEval-v0 cannot be made"),
])
def test_config_errors_are_caught_before_the_run_dir_is_created(tmp_path, model_dir, capsys, over, needle):
    cfg = write_config(tmp_path, model_dir, **over)
    assert main(["train", "--config", cfg, "--quiet"]) == 2
    err = capsys.readouterr().err
    assert needle in err and len(err.strip().splitlines()) == 1, err
    assert not os.path.exists(tmp_path / "run")
