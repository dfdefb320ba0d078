"""LoRA through PEFT: only adapters train, the adapters-off reference is the base, PEFT-format
save/load round-trips, and a PRM sharing the policy's frozen backbone stays independent of it."""

import json
import os

import pytest
import torch

pytest.importorskip("peft")

from prmgym.agents.common import pack_trajectories, packed_logprobs  # noqa: E402
from prmgym.agents.grpo import GRPOConfig, GRPOTrainer  # noqa: E402
from prmgym.config import ConfigError  # noqa: E402
from prmgym.models import TransformersPolicy, tiny  # noqa: E402
from prmgym.models import lora as L  # noqa: E402
from test_rollout_toyenv import ToyEnv  # noqa: E402

torch.set_num_threads(1)

FAST = dict(num_generations=4, batch_size=8, max_new_tokens=1, max_steps=1, learning_rate=3e-2)
OBS = ["12+3=", "7*8="]
CONT = ["15\n", "56\n"]


def saved_base(tmp_path, arch="gpt2"):
    """A tiny random model saved to disk and loaded back (so its adapters name a base directory)."""
    d = os.fspath(tmp_path / f"base_{arch}")
    tiny.random_tiny_policy(seed=0, arch=arch).save(d)
    return TransformersPolicy.from_pretrained(d), d


def lora_policy(tmp_path, arch="gpt2", **kw):
    policy, d = saved_base(tmp_path, arch)
    policy.model = L.apply_lora(policy.model, L.LoRAConfig(r=4, **kw))
    return policy, d


def lps(policy):
    return torch.cat(policy.logprobs(OBS, CONT))


def grpo(policy, **cfg):
    return GRPOTrainer(policy, lambda: ToyEnv(), GRPOConfig(**{**FAST, **cfg}), eval_env=lambda: ToyEnv(split="test"))


@pytest.mark.parametrize("arch, targets", [("gpt2", {"c_attn", "c_proj"}), ("llama", {"q_proj", "k_proj", "v_proj", "o_proj"}),
                                           ("qwen2", {"q_proj", "k_proj", "v_proj", "o_proj"})])
def test_default_targets_per_architecture_and_starts_equal_to_base(tmp_path, arch, targets):
    policy, _ = saved_base(tmp_path, arch)
    before = lps(policy)
    policy.model = L.apply_lora(policy.model, L.LoRAConfig(r=4))
    adapted = {n.split(".lora_A")[0].rsplit(".", 1)[-1] for n, _ in policy.model.named_parameters() if ".lora_A." in n}
    assert adapted == targets
    assert torch.allclose(lps(policy), before, atol=1e-6)  # B starts at zero
    names = [n for n, _ in L.trainable_parameters(policy.model)]
    assert names and all(".lora_" in n for n in names)
    s = L.parameter_summary(policy.model)
    assert 0 < s["trainable_frac"] < 0.1


def test_unknown_architecture_and_bad_config_are_clear_errors():
    class Cfg:
        model_type = "mystery"

    class M(torch.nn.Module):
        config = Cfg()

        def __init__(self):
            super().__init__()
            self.proj_in = torch.nn.Linear(2, 2)

    with pytest.raises(ValueError, match="no default LoRA target modules.*mystery.*proj_in"):
        L.apply_lora(M(), L.LoRAConfig())
    with pytest.raises(ConfigError, match="lora.rank"):
        L.lora_config({"rank": 4})
    with pytest.raises(ConfigError, match="lora.r must be >= 1"):
        L.lora_config({"r": 0})
    from prmgym.recipes.train import load_run_config

    with pytest.raises(ConfigError, match="sb3_ppo"):
        load_run_config({"algorithm": "sb3_ppo", "lora": {}})
    with pytest.raises(ConfigError, match="lora.dropout"):
        load_run_config({"lora": {"dropout": 2}})


def test_grpo_with_lora_trains_only_the_adapter(tmp_path):
    policy, _ = lora_policy(tmp_path)
    tr = grpo(policy, beta=0.1, entropy_coef=0.1)
    assert isinstance(tr.ref_model, L.AdaptersOff) and tr.ref_model.state_dict() == {}
    frozen = {n: p.detach().clone() for n, p in tr.model.named_parameters() if ".lora_" not in n}
    adapter = {n: p.detach().clone() for n, p in tr.model.named_parameters() if ".lora_" in n}
    opt_params = sum(p.numel() for g in tr.optimizer.param_groups for p in g["params"])
    assert opt_params == sum(v.numel() for v in adapter.values())
    tr.train(2)
    now = dict(tr.model.named_parameters())
    assert all(torch.equal(now[n], v) for n, v in frozen.items())
    assert any(not torch.equal(now[n], v) for n, v in adapter.items() if ".lora_B." in n)


def test_reference_with_adapters_off_equals_the_base_model(tmp_path):
    policy, d = lora_policy(tmp_path)
    base = TransformersPolicy.from_pretrained(d)
    tr = grpo(policy, beta=0.1, entropy_coef=0.1)
    tr.train(2)
    trajs = tr._last_trajectories
    packed = pack_trajectories(trajs, policy.encode, policy.tokenizer.pad_token_id)
    with torch.no_grad():
        ref, _ = packed_logprobs(tr.ref_model, packed)
        want, _ = packed_logprobs(base.model, packed)
        now, _ = packed_logprobs(tr.model, packed)
        with policy.model.disable_adapter():  # PEFT's own switch agrees
            peft_off, _ = packed_logprobs(policy.model, packed)
    assert torch.allclose(ref, want, atol=1e-6) and torch.allclose(peft_off, want, atol=1e-6)
    assert not torch.allclose(now, want, atol=1e-4)  # the adapter did change the policy
    assert all(p.requires_grad for p in L.adapter_parameters(policy.model))  # our switch leaves them trainable


def test_save_load_round_trip_in_peft_format(tmp_path):
    from peft import PeftModel

    policy, d = lora_policy(tmp_path)
    tr = grpo(policy, entropy_coef=0.1)
    tr.train(2)
    want = lps(policy)
    ck = tr.save(os.fspath(tmp_path / "ck"))
    pdir = os.path.join(ck, "policy")
    assert {"adapter_config.json", "adapter_model.safetensors"} <= set(os.listdir(pdir))
    assert "model.safetensors" not in os.listdir(pdir)  # the adapter only, not the whole LM
    assert json.load(open(os.path.join(pdir, "adapter_config.json")))["base_model_name_or_path"] == d
    # 1. our loader (base from adapter_config.json)
    assert torch.allclose(lps(TransformersPolicy.from_pretrained(pdir)), want, atol=1e-6)
    # 2. PEFT's own loader on the base
    base = TransformersPolicy.from_pretrained(d)
    base.model = PeftModel.from_pretrained(base.model, pdir)
    assert torch.allclose(lps(base), want, atol=1e-6)
    # 3. a trainer resuming from the checkpoint
    fresh, _ = lora_policy(tmp_path / "again")
    tr2 = grpo(fresh, entropy_coef=0.1).load(ck)
    assert torch.allclose(lps(fresh), want, atol=1e-6) and tr2.num_steps == 2
    with pytest.raises(ValueError, match="LoRA adapter but the model has no LoRA"):
        grpo(TransformersPolicy.from_pretrained(d)).load(ck)


def test_prmgym_train_with_lora_csv_and_wandb_offline_then_resume(tmp_path, monkeypatch):
    import csv
    import glob

    import gymnasium as gym
    import yaml

    from prmgym.cli import main

    if "prmgym_test/Toy-v0" not in gym.registry:
        gym.register(id="prmgym_test/Toy-v0", entry_point="test_rollout_toyenv:ToyEnv")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    _, base_dir = saved_base(tmp_path)
    run = tmp_path / "run"
    cfg = {"algorithm": "grpo", "env": "prmgym_test/Toy-v0", "model": base_dir, "steps": 2, "run_dir": str(run),
           "eval_tasks": 4, "lora": {"r": 4}, "logging": ["tensorboard", "csv", "wandb"],
           "trainer": {**FAST, "beta": 0.05, "save_every": 1}}
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(cfg))
    assert main(["train", "--config", str(tmp_path / "cfg.yaml"), "--no-progress"]) == 0
    assert main(["train", "--resume", str(run), "--set", "steps=3", "--no-progress"]) == 0
    import wandb

    wandb.teardown()  # flushes the offline run files
    summary = json.load(open(run / "summary.json"))
    assert {"adapter_config.json", "adapter_model.safetensors"} <= set(os.listdir(summary["policy_dir"]))
    policy = TransformersPolicy.from_pretrained(summary["policy_dir"])
    assert L.is_peft_model(policy.model)
    rows = list(csv.DictReader(open(run / "metrics.csv")))
    assert [r["step"] for r in rows if r["train/loss"]] == ["1", "2", "3"]
    assert [r["step"] for r in rows if r["eval/pass@1"]] == ["0", "2", "3"]  # before, end of run 1, end of run 2
    runs = glob.glob(str(run / "wandb" / "offline-run-*" / "run-*.wandb"))
    assert len(runs) == 2  # the resumed run is a second W&B run in the first one's group
    assert all(b"train/loss" in open(r, "rb").read() for r in runs)
    with pytest.raises(ConfigError, match="unknown logging writer"):
        from prmgym.recipes.train import load_run_config

        load_run_config({**cfg, "logging": ["mlflow"]})


# ------------------------------------------------------------------ PRMs
def _prm(policy, **kw):
    from prmgym.rewards import AIRLPRM

    torch.manual_seed(0)
    return AIRLPRM.from_backbone(policy, learning_rate=3e-2, **kw)


def _prm_batch():
    from prmgym.rewards.scalar import PRMBatch

    return PRMBatch(["1+1=", "2+2="], [["2"], ["5"]], labels=[1.0, 0.0], step_logprobs=[[-1.0], [-2.0]],
                    step_ntokens=[[1], [1]])


PROMPTS, STEPS = ["1+1=", "2+2="], [["2"], ["5"]]


def test_prm_sharing_the_policy_backbone_and_policy_do_not_touch_each_other(tmp_path):
    policy, _ = lora_policy(tmp_path)
    prm = _prm(policy, lora={"r": 4}, share_backbone=True)
    assert prm.net.model is policy.model and prm.net.adapter == "prm"  # one frozen base, two adapters
    names = {id(p) for p in prm.parameters()}
    assert names == {id(p) for p in prm.net.head.parameters()} | {id(p) for p in L.adapter_parameters(policy.model, "prm")}
    pol0, prm0 = lps(policy), torch.tensor(prm.score_steps(PROMPTS, STEPS))
    for _ in range(3):  # PRM updates: the policy's outputs stay exactly the same
        prm.update(_prm_batch())
    prm1 = torch.tensor(prm.score_steps(PROMPTS, STEPS))
    assert torch.equal(lps(policy), pol0) and not torch.allclose(prm1, prm0)
    tr = grpo(policy, beta=0.1, entropy_coef=0.1)  # policy updates: the PRM's scores stay exactly the same
    assert all(id(p) not in names for g in tr.optimizer.param_groups for p in g["params"])
    tr.train(2)
    prm.clear_cache()
    assert torch.equal(torch.tensor(prm.score_steps(PROMPTS, STEPS)), prm1) and not torch.allclose(lps(policy), pol0)
    # its checkpoint: the frozen base, its adapter in PEFT format and its head; loads on its own and in place
    d = prm.save(tmp_path / "prm")
    assert {"adapter_config.json", "adapter_model.safetensors"} <= set(os.listdir(os.path.join(d, "adapter")))
    from prmgym.rewards import load_prm

    alone = load_prm(d)
    assert alone.net.model is not policy.model and torch.allclose(torch.tensor(alone.score_steps(PROMPTS, STEPS)), prm1, atol=1e-6)
    prm.update(_prm_batch())
    pol1 = lps(policy)
    prm.load(d)  # in place (what a resuming trainer does): only the PRM's adapter and head change
    assert torch.allclose(torch.tensor(prm.score_steps(PROMPTS, STEPS)), prm1, atol=1e-6)
    assert torch.equal(lps(policy), pol1) and prm.net.model is policy.model


def test_prm_lora_on_its_own_copy_trains_only_head_and_adapter(tmp_path):
    policy, _ = lora_policy(tmp_path)
    prm = _prm(policy, lora={"r": 4})  # a private copy: the policy's adapter merged in, then the PRM's own
    assert prm.net.model is not policy.model and prm.net.adapter == "prm"
    frozen = {n: p.detach().clone() for n, p in prm.net.model.named_parameters() if ".lora_" not in n}
    prm.update(_prm_batch())
    now = dict(prm.net.model.named_parameters())
    assert all(torch.equal(now[n], v) for n, v in frozen.items())
    pdir = policy.save(tmp_path / "lora_policy")  # a LoRA policy directory (adapter only) as a PRM backbone
    from_dir = _prm(pdir, lora={"r": 2})
    assert not L.is_peft_model(L.base_model(from_dir.net.model)) and from_dir.net.adapter == "prm"
    with pytest.raises(ValueError, match="share_backbone needs a LoRA policy"):
        _prm(tiny.random_tiny_policy(seed=0), lora={}, share_backbone=True)
    with pytest.raises(ValueError, match="share_backbone needs a lora section"):
        _prm(policy, share_backbone=True)


def test_sft_with_lora_trains_only_the_adapter_and_learns(tmp_path):
    from prmgym.agents.sft import SFTConfig, SFTTrainer

    policy, _ = lora_policy(tmp_path)
    frozen = {n: p.detach().clone() for n, p in policy.model.named_parameters() if ".lora_" not in n}
    before = lps(policy).sum()
    tr = SFTTrainer(policy, list(zip(OBS, CONT)), SFTConfig(learning_rate=3e-2, warmup_steps=0, batch_size=2, add_eos=False))
    tr.train(20, progress=False)
    now = dict(policy.model.named_parameters())
    assert all(torch.equal(now[n], v) for n, v in frozen.items())
    assert lps(policy).sum() > before + 1.0  # the adapter alone raised the completions' log-likelihood
