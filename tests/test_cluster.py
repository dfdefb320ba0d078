"""The ``distributed:`` section and `connect`: errors that name the fix, fast."""

from __future__ import annotations

import socket
import sys
import time

import pytest

from prmgym.cluster import DistributedConfig, connect, probe
from prmgym.config import ConfigError, from_dict


def _closed_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens here now
    return port


def test_config_section_checks_its_fields():
    cfg = from_dict(DistributedConfig, {"backend": "ray", "address": "10.0.0.5:6379", "sandbox_workers": 2})
    assert cfg.enabled and cfg.sandbox_workers == 2
    assert not DistributedConfig().enabled
    from prmgym.recipes.train import load_run_config

    for section, message in (({"backend": "dask"}, "distributed: backend must be 'none' or 'ray', got 'dask'"),
                             ({"backend": "ray", "sandbox_workers": -1}, "distributed: sandbox_workers must be >= 0"),
                             ({"sandbox_workers": 2}, "set distributed.backend: ray"),
                             ({"rollout_workers": 2}, "set distributed.backend: ray"),
                             ({"backend": "ray", "rollout_chunk_prompts": 0}, "rollout_chunk_prompts must be >= 1"),
                             ({"backend": "ray", "train_workers": 0}, "train_workers must be >= 1"),
                             ({"train_workers": 2}, "set distributed.backend: ray"),
                             ({"bakend": "ray"}, "did you mean 'backend'")):
        with pytest.raises(ValueError, match=message):
            load_run_config({"distributed": section})
    assert load_run_config({"distributed": {"backend": "ray", "sandbox_workers": 1}}).distributed["sandbox_workers"] == 1
    dp = {"backend": "ray", "train_workers": 2}
    assert load_run_config({"distributed": dp, "reward": "airl"}).reward == "airl"  # its PRM updates data-parallel too
    with pytest.raises(ConfigError, match="policy.backend hf"):
        load_run_config({"distributed": dp, "policy": {"backend": "vllm"}})
    assert load_run_config({"distributed": dp}).distributed["train_workers"] == 2


def test_unreachable_address_fails_fast_and_names_the_fix():
    address = f"127.0.0.1:{_closed_port()}"
    t0 = time.monotonic()
    with pytest.raises(ConnectionError, match=r"ray start --head") as e:
        probe(address)
    assert time.monotonic() - t0 < 5 and address in str(e.value) and "pip install -e '.[ray]'" in str(e.value)
    with pytest.raises(ValueError, match="HOST:PORT"):
        probe("somehost:port")


def test_search_cli_with_an_unreachable_address_exits_with_the_fix(tmp_path, capsys):
    pytest.importorskip("ray")
    import ray

    from prmgym.cli import main
    from prmgym.models import tiny

    if ray.is_initialized():
        ray.shutdown()
    pol = tiny.random_tiny_policy(seed=0).save(tmp_path / "policy")
    t0 = time.monotonic()
    assert main(["search", "--planner", "sample", "--policy", pol, "--n-tasks", "1", "--ray", "--address",
                 f"127.0.0.1:{_closed_port()}", "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "cannot reach a Ray head" in err and "ray start --head" in err and time.monotonic() - t0 < 30
    assert main(["search", "--planner", "sample", "--policy", pol, "--address", "127.0.0.1:6379"]) == 2
    assert "--address only applies with --ray" in capsys.readouterr().err


def test_missing_ray_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` now raises ImportError
    with pytest.raises(ImportError, match=r"pip install -e '\.\[ray\]'"):
        connect()
    from prmgym.sandbox.ray_pool import RaySandbox

    with pytest.raises(ImportError, match=r"pip install -e '\.\[ray\]'"):
        RaySandbox()


def test_sandbox_workers_need_a_code_env():
    from prmgym.recipes.distributed import with_ray_sandbox

    section = {"backend": "ray", "sandbox_workers": 1}
    with pytest.raises(ConfigError, match="runs no code"):
        with_ray_sandbox(section, "prmgym/ChainArithmetic-v0", {"split": "train"})
    with pytest.raises(ConfigError, match="both choose the sandbox"):
        with_ray_sandbox(section, "prmgym/HumanEval-v0", {"sandbox": "local"})
    kwargs = {"split": "train"}
    assert with_ray_sandbox({}, "prmgym/HumanEval-v0", kwargs) is kwargs


def test_quickstart_ray_flags_are_checked_before_any_stage(tmp_path, capsys):
    from prmgym.cli import main

    out = tmp_path / "qs"
    for argv, message in ((["--address", "127.0.0.1:1"], "--address only applies with --ray"),
                          (["--ray", "--workers", "0"], "--workers must be >= 1"),
                          (["--ray", "--dtype", "bf16"], "do not reach the Ray actors"),
                          (["--ray", "--backend", "vllm"], "runs the hf backend")):
        assert main(["quickstart", "--fast", "--out", str(out), *argv]) == 2
        assert message in capsys.readouterr().err
    assert not out.exists()  # nothing ran
