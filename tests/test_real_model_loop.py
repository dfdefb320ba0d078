"""The whole loop on a tiny random Qwen2-style instruct model (chat template, LoRA, bf16), as a
user with a real local model would run it: `prmgym train` (GRPO), `train-prm --kind airl`,
`search --planner beam` and `quickstart --fast --model DIR`, all through the command line."""

import json

import pytest
import torch
import yaml
from safetensors.torch import load_file

from prmgym.cli import main
from prmgym.models import tiny


@pytest.mark.slow
def test_qwen2_chat_model_runs_train_prm_search_quickstart_with_lora_and_bf16(tmp_path):
    base = tiny.random_tiny_policy(seed=0, n_layer=1, n_embd=32, arch="qwen2", chat_template="qwen2").save(
        str(tmp_path / "base"))
    config = {"algorithm": "grpo", "env": "prmgym/ChainArithmetic-v0", "model": base, "steps": 2, "eval_tasks": 2,
              "run_dir": str(tmp_path / "grpo"), "dtype": "bf16", "device": "cpu", "prompt_format": "chat",
              "lora": {"r": 4},
              "trainer": {"num_generations": 2, "batch_size": 4, "max_new_tokens": 6, "max_steps": 2,
                          "learning_rate": 1e-2}}
    (tmp_path / "grpo.yaml").write_text(yaml.safe_dump(config))
    assert main(["train", "--config", str(tmp_path / "grpo.yaml"), "--no-progress"]) == 0
    summary = json.loads((tmp_path / "grpo" / "summary.json").read_text())
    policy = summary["policy_dir"]
    # a LoRA run saves the adapter (PEFT format) and the chat template, not a copy of the base
    adapter = load_file(f"{policy}/adapter_model.safetensors")
    assert adapter and all("lora_" in k for k in adapter)
    # (that the adapter learns, and only it, is tests/test_lora.py's: a random model earns no reward here)
    assert json.loads(open(f"{policy}/adapter_config.json").read())["r"] == 4
    hparams = json.loads((tmp_path / "grpo" / "hparams.json").read_text())
    assert "bf16" in json.dumps(hparams) and "chat" in json.dumps(hparams)

    prm = str(tmp_path / "airl")
    assert main(["train-prm", "--kind", "airl", "--policy", policy, "--env", "prmgym/ChainArithmetic-v0", "--out", prm,
                 "--steps", "2", "--dtype", "bf16", "--prompt-format", "chat", "--set", "tasks_per_step=2",
                 "--set", "proposals_per_prefix=2", "--set", "max_new_tokens=6", "--set", "eval_every=0",
                 "--set", 'prm.lora={"r": 4}', "--set", "prm.share_backbone=true", "--quiet"]) == 0
    saved = json.loads((tmp_path / "airl" / "prm_config.json").read_text())
    assert json.dumps(saved).count("chat") >= 1 and (tmp_path / "airl" / "adapter").is_dir()

    search = tmp_path / "search"
    assert main(["search", "--planner", "beam", "--policy", policy, "--prm", prm, "--prompt-format", "chat",
                 "--dtype", "bf16", "--n-tasks", "2", "--beam-width", "2", "--expansions", "2", "--max-depth", "2",
                 "--out", str(search), "--quiet"]) == 0
    result = json.loads((search / "summary.json").read_text())
    assert result["n"] == 2 and result["budget"]["prm"] > 0 and 0.0 <= result["accuracy"] <= 1.0

    qs = tmp_path / "qs"
    torch_threads = torch.get_num_threads()
    assert main(["quickstart", "--fast", "--model", policy, "--dtype", "bf16", "--prompt-format", "chat",
                 "--out", str(qs)]) == 0
    torch.set_num_threads(torch_threads)
    report = json.loads((qs / "report.json").read_text())
    assert (qs / "report.md").exists() and report
    assert policy in json.dumps(report)  # the given model, not the tiny SFT policy
    assert report["config"]["prompt_format"] == "chat" and "prompt format `chat`" in (qs / "report.md").read_text()
    airl = json.loads((qs / "grpo_airl" / "prm_airl" / "prm_config.json").read_text())
    assert "chat" in json.dumps(airl)  # the PRM the GRPO stage learned reads the chat format too


def test_quickstart_chat_format_needs_a_model_with_a_template(tmp_path, capsys):
    assert main(["quickstart", "--fast", "--prompt-format", "chat", "--out", str(tmp_path / "qs")]) != 0
    assert "--model DIR" in capsys.readouterr().err
    assert not (tmp_path / "qs" / "report.md").exists()
