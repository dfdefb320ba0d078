"""The generation-backend switch (prmgym.models.backend) without vLLM: config checks, hf path,
the ``policy:`` section of training configs and the CLI flags. The vLLM side is tests/test_vllm.py."""

import argparse

import pytest

from prmgym.config import ConfigError
from prmgym.models import TransformersPolicy, tiny
from prmgym.models.backend import (
    PolicyConfig,
    add_backend_arg,
    as_policy_config,
    load_policy,
    policy_config_from_args,
    tiny_layout,
)


def test_policy_config_refuses_bad_values_by_name():
    with pytest.raises(ValueError, match="unknown backend 'sglang'; valid: hf, vllm"):
        PolicyConfig(backend="sglang")
    with pytest.raises(ValueError, match="gpu_memory_utilization"):
        PolicyConfig(backend="vllm", gpu_memory_utilization=1.5)
    with pytest.raises(ValueError, match="tensor_parallel_size"):
        PolicyConfig(tensor_parallel_size=0)
    with pytest.raises(ConfigError, match="policy"):
        as_policy_config({"backend": "vllm", "gpu_mem": 0.5})  # unknown key names the section


def test_hf_backend_is_the_transformers_policy(tmp_path):
    tiny.random_tiny_policy(seed=0, n_layer=1, n_embd=32, n_head=1, n_positions=64).save(tmp_path)
    pol = load_policy(tmp_path, "hf")
    assert type(pol) is TransformersPolicy
    assert type(load_policy(tmp_path)) is TransformersPolicy  # hf is the default
    assert tiny_layout("hf") == {} and tiny_layout({"backend": "vllm"}) == {"n_head": 3}


def test_cli_flags_build_the_config():
    p = argparse.ArgumentParser()
    add_backend_arg(p)
    cfg = policy_config_from_args(p.parse_args(["--backend", "vllm", "--dtype", "bfloat16",
                                                "--gpu-memory-utilization", "0.4", "--max-model-len", "2048"]))
    assert (cfg.backend, cfg.dtype, cfg.gpu_memory_utilization, cfg.max_model_len) == ("vllm", "bfloat16", 0.4, 2048)
    assert cfg.engine_options()["tensor_parallel_size"] == 1
    with pytest.raises(ConfigError, match="--backend options: gpu_memory_utilization"):
        policy_config_from_args(p.parse_args(["--gpu-memory-utilization", "2"]))
    assert policy_config_from_args(p.parse_args([])).backend == "hf"


def test_run_config_policy_section_is_checked():
    from prmgym.recipes.train import load_run_config

    cfg = load_run_config({"policy": {"backend": "vllm", "dtype": "bfloat16", "max_model_len": 1024}})
    assert cfg.policy_config().backend == "vllm" and cfg.policy_config().max_model_len == 1024
    assert load_run_config({}).policy_config().backend == "hf"
    with pytest.raises(ConfigError, match="policy"):
        load_run_config({"policy": {"backend": "tgi"}})


def test_lora_with_vllm_is_refused_before_loading():
    from prmgym.recipes.train import load_policy, load_run_config

    cfg = load_run_config({"policy": {"backend": "vllm"}, "lora": {}, "model": "/nonexistent"})
    with pytest.raises(ConfigError, match="lora with policy.backend vllm"):
        load_policy(cfg)


def test_ray_rollouts_with_vllm_are_refused_before_loading():
    from prmgym.recipes.train import load_policy, load_run_config

    cfg = load_run_config({"policy": {"backend": "vllm"}, "model": "/nonexistent",
                           "distributed": {"backend": "ray", "rollout_workers": 2}})
    with pytest.raises(ConfigError, match="rollout_workers"):
        load_policy(cfg)
