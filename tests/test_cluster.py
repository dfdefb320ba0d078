"""The ``distributed:`` section and `connect`: errors that name the fix, fast."""

from __future__ import annotations

import socket
import sys
import time

import pytest

from prmgym.cluster import DistributedConfig, connect, probe
from prmgym.config import from_dict


def _closed_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens here now
    return port


def test_config_section_checks_its_fields():
    cfg = from_dict(DistributedConfig, {"backend": "ray", "address": "10.0.0.5:6379", "sandbox_workers": 2})
    assert cfg.enabled and cfg.sandbox_workers == 2 and cfg.search_workers == 0
    assert not DistributedConfig().enabled
    with pytest.raises(ValueError, match="backend must be 'none' or 'ray'"):
        DistributedConfig(backend="dask")
    with pytest.raises(ValueError, match="sandbox_workers must be >= 0"):
        DistributedConfig(backend="ray", sandbox_workers=-1)
    with pytest.raises(ValueError, match="set distributed.backend: ray"):
        DistributedConfig(search_workers=2)


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
