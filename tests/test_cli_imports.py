"""`--import MODULE` / `imports:` (a user's env in a file of their own), Gymnasium's module:id form,
`--help` defaults and `prmgym train --list-keys`."""

import json
import sys
import textwrap

import gymnasium as gym
import pytest
import torch
import yaml

from prmgym.cli import main
from prmgym.models import tiny

torch.set_num_threads(1)

USER_ENV = textwrap.dedent('''
    from prmgym.envs import Task, TaskList, register_reasoning_env

    def score(task, text):  # a plain score function as the verifier
        return 1.0 if text.strip() == task.answer else 0.0

    TASKS = TaskList(train=[Task(id=f"t{i}", prompt=f"{i}+1?", answer=str(i + 1)) for i in range(6)],
                     test=[Task(id="u0", prompt="7+1?", answer="8")])
    register_reasoning_env("{env_id}", TASKS, score, "a user's env", replace=True, max_steps=2)
''')


@pytest.fixture
def user_dir(tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "path", list(sys.path))
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _write_env(d, module, env_id):
    (d / f"{module}.py").write_text(USER_ENV.replace("{env_id}", env_id))


def _forget(module, env_id):
    sys.modules.pop(module, None)
    gym.registry.pop(env_id, None)


def _config(d, model, env, run, **over):
    cfg = {"algorithm": "grpo", "env": env, "model": model, "steps": 2, "run_dir": str(run), "eval_tasks": 0,
           "trainer": {"num_generations": 2, "batch_size": 4, "max_new_tokens": 3, "max_steps": 2,
                       "learning_rate": 1e-3, "save_every": 1}}
    cfg.update(over)
    path = d / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return str(path)


def test_train_a_user_env_from_a_file_with_import(user_dir, capsys):
    _write_env(user_dir, "labenv_fmt", "lab/AddOne-v0")
    _forget("labenv_fmt", "lab/AddOne-v0")
    model = tiny.random_tiny_policy(seed=0, n_layer=1, n_embd=32, arch="qwen2", chat_template="qwen2").save(
        str(user_dir / "model"))
    run = user_dir / "run"
    cfg = _config(user_dir, model, "lab/AddOne-v0", run, prompt_format="chat")
    assert "lab/AddOne-v0" not in gym.registry
    assert main(["train", "--import", "labenv_fmt", "--config", cfg, "--no-progress"]) == 0
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2] and all(r["train/episodes"] == 4.0 for r in rows)
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["imports"] == ["labenv_fmt"] and saved["prompt_format"] == "chat"
    # --resume re-imports the module named in config.yaml (no --import needed)
    _forget("labenv_fmt", "lab/AddOne-v0")
    assert main(["train", "--resume", str(run), "--set", "steps=3", "--no-progress"]) == 0
    assert "lab/AddOne-v0" in gym.registry


def test_import_errors_are_clear(user_dir, capsys):
    assert main(["train", "--import", "no_such_module_fmt", "--config", "x.yaml"]) == 2
    err = capsys.readouterr().err
    assert "--import no_such_module_fmt: the module failed to import" in err and "PYTHONPATH" in err
    (user_dir / "broken_fmt.py").write_text("raise RuntimeError('boom')\n")
    assert main(["search", "--import", "broken_fmt.py", "--policy", "nowhere"]) == 2
    assert "RuntimeError: boom" in capsys.readouterr().err


def test_gymnasium_module_colon_id_form(user_dir):
    from prmgym.recipes.train import check_names, load_run_config

    _write_env(user_dir, "labenv2_fmt", "lab/AddTwo-v0")
    _forget("labenv2_fmt", "lab/AddTwo-v0")
    check_names(load_run_config({"env": "labenv2_fmt:lab/AddTwo-v0", "eval_tasks": 0}))
    assert "lab/AddTwo-v0" in gym.registry
    env = gym.make("labenv2_fmt:lab/AddTwo-v0")
    assert env.reset(seed=0)[0].endswith("+1?\n")


def test_help_shows_defaults_and_list_keys(capsys):
    assert main(["search", "--help"]) == 0
    out = capsys.readouterr().out
    assert "(default: 20)" in out and "--import MODULE" in out and "--prompt-format" in out
    assert main(["train", "--list-keys"]) == 0
    out = capsys.readouterr().out
    assert "prompt_format = 'plain'" in out and "trainer.learning_rate = " in out and "imports = []" in out
    assert "policy.backend = 'hf'" in out and "lora.r = " in out


@pytest.mark.slow  # two fresh processes import torch
def test_weight_loading_bars_are_quiet_by_default(tmp_path):
    import os
    import subprocess

    model = tiny.random_tiny_policy(seed=0, n_layer=1, n_embd=32).save(str(tmp_path / "model"))
    cmd = [sys.executable, "-m", "prmgym.cli", "search", "--planner", "sample", "--policy", model, "--n", "1",
           "--n-tasks", "1", "--out", str(tmp_path / "s"), "--quiet"]
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_DISABLE_PROGRESS_BARS", "PRMGYM_LOADING_BARS")}
    quiet = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert quiet.returncode == 0, quiet.stderr
    loud = subprocess.run(cmd[:-3] + ["--out", str(tmp_path / "s2"), "--quiet"], env={**env, "PRMGYM_LOADING_BARS": "1"},
                          capture_output=True, text=True, timeout=300)
    assert loud.returncode == 0, loud.stderr
    assert "Loading weights" in loud.stderr and "Loading weights" not in quiet.stderr


def test_train_prm_and_search_with_the_chat_format(tmp_path):
    """train-prm --kind airl and search --planner beam on a tiny Qwen2-style model with a chat template."""
    from prmgym.rewards import load_prm

    model = tiny.random_tiny_policy(seed=0, n_layer=1, n_embd=32, arch="qwen2", chat_template="qwen2").save(
        str(tmp_path / "model"))
    out = str(tmp_path / "airl")
    assert main(["train-prm", "--kind", "airl", "--policy", model, "--env", "prmgym/ChainArithmetic-v0", "--out", out,
                 "--steps", "1", "--prompt-format", "chat", "--set", "tasks_per_step=2", "--set", "airl_negatives=prefixes",
                 "--set", "proposals_per_prefix=2", "--set", "max_new_tokens=6", "--set", "eval_every=0", "--quiet"]) == 0
    prm = load_prm(out)
    assert prm.options.prompt_format == "chat" and prm.updates == 1
    s = tmp_path / "search"
    assert main(["search", "--planner", "beam", "--policy", model, "--prm", out, "--prompt-format", "chat",
                 "--n-tasks", "1", "--beam-width", "2", "--expansions", "2", "--max-depth", "2", "--out", str(s),
                 "--quiet"]) == 0
    assert json.loads((s / "search.json").read_text())["prompt_format"] == "chat"
    assert json.loads((s / "summary.json").read_text())["budget"]["prm"] > 0


class _Terminal:
    """A stderr that says it is a terminal (tqdm draws its bar) and keeps what was written."""

    def __init__(self):
        self.parts = []

    def isatty(self):
        return True

    def write(self, s):
        self.parts.append(s)
        return len(s)

    def flush(self):
        pass

    @property
    def text(self):
        return "".join(self.parts)


def test_search_shows_a_progress_bar_on_a_terminal_only(tmp_path, monkeypatch, capsys):
    from prmgym.logger import progress_bar

    assert progress_bar(3, "x") is None  # pytest's stderr is not a terminal
    model = tiny.random_tiny_policy(seed=0, n_layer=1, n_embd=32).save(str(tmp_path / "model"))
    args = ["search", "--planner", "sample", "--policy", model, "--n", "1", "--n-tasks", "2"]
    term = _Terminal()
    monkeypatch.setattr(sys, "stderr", term)
    assert main(args + ["--out", str(tmp_path / "a")]) == 0
    assert "2/2" in term.text and "accuracy=" in term.text  # total and a running accuracy
    quiet = _Terminal()
    monkeypatch.setattr(sys, "stderr", quiet)
    assert main(args + ["--out", str(tmp_path / "b"), "--quiet"]) == 0
    assert "2/2" not in quiet.text


def test_ray_search_worker_builds_its_policy_with_the_prompt_format(tmp_path):
    from prmgym.search.distributed import _SearchWorker, pack_dir

    model = tiny.random_tiny_policy(seed=0, n_layer=1, n_embd=32, arch="qwen2", chat_template="qwen2").save(
        str(tmp_path / "model"))
    worker = _SearchWorker(pack_dir(model), None, "prmgym/ChainArithmetic-v0", {}, 1, prompt_format="chat")
    try:
        assert worker.policy.formatter.mode == "chat"
    finally:
        worker.close()
