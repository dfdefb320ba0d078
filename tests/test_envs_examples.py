"""The envs examples run as written."""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("script", ["register_own_env.py", "step_by_hand.py"])
def test_example_runs(script):
    out = subprocess.run([sys.executable, str(ROOT / "examples" / script)], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    if script == "register_own_env.py":
        assert "mean reward 1.00" in out.stdout and "reward=1.0" in out.stdout
    else:
        assert "branch A (expert): reward=1.0" in out.stdout and "status=passed tests 4/4" in out.stdout
