"""The distribution builds, carries every subpackage and data file, and its command runs."""

import subprocess
import sys
import zipfile

import pytest


@pytest.mark.slow
def test_wheel_builds_with_all_subpackages_and_entry_point(tmp_path):
    root = __file__.rsplit("/tests/", 1)[0]
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path), root],
        check=True,
    )
    (wheel,) = tmp_path.glob("prmgym-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    for sub in ("envs", "agents", "rewards", "search", "sandbox", "models", "recipes"):
        assert f"prmgym/{sub}/__init__.py" in names, f"{sub} missing from the wheel"
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    assert "prmgym = prmgym.cli:main" in zipfile.ZipFile(wheel).read(entry_points).decode()


def test_cli_lists_commands_and_rejects_unknown():
    out = subprocess.run([sys.executable, "-m", "prmgym.cli"], capture_output=True, text=True)
    assert out.returncode == 0 and "quickstart" in out.stdout and "envs" in out.stdout
    bad = subprocess.run([sys.executable, "-m", "prmgym.cli", "trian"], capture_output=True, text=True)
    assert bad.returncode == 2
    assert "unknown command 'trian'" in bad.stderr and "train" in bad.stderr


def test_every_cli_command_module_has_the_subcommand_api():
    import importlib

    from prmgym.cli import COMMANDS

    for name, (module_name, _) in COMMANDS.items():
        module = importlib.import_module(module_name)
        assert callable(getattr(module, "add_arguments", None)), f"{module_name} lacks add_arguments"
        assert callable(getattr(module, "run", None)), f"{module_name} lacks run"
