"""One error style for every `prmgym` command: one line on stderr, exit 2 for usage errors,
1 for failures while running, the traceback only with --debug."""

from __future__ import annotations

import os
import subprocess
import sys
import types

import pytest

from prmgym import cli
from prmgym.cli import main


def _run(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "prmgym.cli", *argv], capture_output=True, text=True,
                          env=dict(os.environ, OMP_NUM_THREADS="1"), timeout=300)


def _error_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if "error:" in line or "Traceback" in line]


@pytest.fixture(scope="module")
def bare_lm(tmp_path_factory):
    from prmgym.models import tiny

    return tiny.random_tiny_policy(seed=0).save(str(tmp_path_factory.mktemp("lm") / "policy"))


def test_unknown_env_id_is_a_one_line_usage_error_and_debug_shows_the_traceback():
    proc = _run("demo", "--env", "prmgym/Nope-v0")
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()]  # one line
    assert proc.stderr.startswith("prmgym demo: error: Environment `Nope` doesn't exist") and "Traceback" not in proc.stderr
    proc = _run("--debug", "demo", "--env", "prmgym/Nope-v0")
    assert proc.returncode == 2 and "Traceback (most recent call last)" in proc.stderr
    assert proc.stderr.rstrip().splitlines()[-1].startswith("prmgym demo: error:")


@pytest.mark.parametrize("argv, needle", [
    (["demo", "--env-arg", "nosuch=1"], "--env-arg: prmgym/ChainArithmetic-v0 cannot be made"),
    (["demo", "--env-arg", "difficulty"], "bad --env-arg 'difficulty': write key=value"),
    (["demo", "--seed", "x"], "argument --seed: invalid int value: 'x' (see prmgym demo --help)"),
    (["train-prm", "--kind", "airl", "--policy", "/no/such/dir", "--env", "prmgym/ChainArithmetic-v0", "--out", "OUT"],
     "/no/such/dir"),
    (["train", "--config", "/no/such.yaml"], "config file '/no/such.yaml' does not exist"),
    (["train", "--resume", "/no/such/run"], "no config.yaml there"),
    (["train", "--config", "CFG", "--set", "steps"], "bad --set 'steps': write key=value"),
    (["train", "--config", "CFG", "--set", "trainer.num_generation=4"], "did you mean 'num_generations'"),
    (["search", "--policy", "/no/such/dir", "--planner", "sample"], "no policy directory at '/no/such/dir'"),
    (["nosuchcommand"], "unknown command 'nosuchcommand'"),
])
def test_usage_errors_exit_2_with_one_line(tmp_path, capsys, argv, needle):
    cfg = os.path.join(os.path.dirname(__file__), "..", "examples", "configs", "grpo_chain.yaml")
    argv = [a.replace("OUT", str(tmp_path / "out")).replace("CFG", cfg) for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert needle in err and len(_error_lines(err)) == 1 and "Traceback" not in err, err
    assert not os.path.exists(tmp_path / "out")


def test_search_usage_errors(tmp_path, capsys, bare_lm):
    base = ["search", "--policy", bare_lm, "--n-tasks", "1", "--out", str(tmp_path / "s")]
    assert main(base + ["--planner", "beam", "--prm", bare_lm]) == 2
    err = capsys.readouterr().err
    assert "--prm: " in err and "looks like a bare causal LM" in err and len(_error_lines(err)) == 1
    assert main(base + ["--planner", "beam", "--prm", bare_lm, "--aggregation", "median"]) == 2
    err = capsys.readouterr().err
    assert "argument --aggregation: invalid choice: 'median'" in err and "'last'" in err
    assert not os.path.exists(tmp_path / "s")


def test_runtime_failures_exit_1_and_interrupts_130(monkeypatch, capsys):
    def fail(args):
        raise RuntimeError("the sandbox\nwent away")

    def interrupt(args):
        raise KeyboardInterrupt

    for name, fn in (("boom", fail), ("stop", interrupt)):
        monkeypatch.setitem(sys.modules, f"fake_{name}", types.SimpleNamespace(add_arguments=lambda p: None, run=fn))
        monkeypatch.setitem(cli.COMMANDS, name, (f"fake_{name}", "test"))
    assert main(["boom"]) == 1
    err = capsys.readouterr().err
    assert err.strip() == "prmgym boom: error: RuntimeError: the sandbox went away (run with prmgym --debug ... for the traceback)"
    assert main(["--debug", "boom"]) == 1
    assert "Traceback" in capsys.readouterr().err
    assert main(["stop"]) == 130
    assert "interrupted" in capsys.readouterr().err
