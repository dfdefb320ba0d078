"""The import rules of docs/architecture.md hold: arrows point one way, envs/sandbox stay torch-free."""

import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1] / "prmgym"
SUBPACKAGES = ("sandbox", "envs", "models", "rewards", "agents", "search", "integrations", "recipes")
ALLOWED = {
    "sandbox": set(),
    "envs": {"sandbox"},
    "models": {"envs", "sandbox"},
    "rewards": {"envs", "models", "sandbox"},
    "agents": {"envs", "models", "rewards", "sandbox"},
    "search": {"envs", "models", "rewards", "sandbox"},
    "integrations": {"envs", "models", "rewards", "sandbox"},
    "recipes": set(SUBPACKAGES),
}
# Top-level modules shared by every subpackage: they import no subpackage (the command-line
# dispatcher names its subcommands' modules as strings and imports only the chosen one).
TOP_LEVEL = ("budget", "config", "logger", "checkpoints", "cli", "cluster")
TORCH_FREE = ("envs", "sandbox", "budget", "config", "cli", "cluster")  # logger: torch only for its TensorBoard writer


def _imports(path: pathlib.Path):
    """Absolute names of the modules ``path`` imports; relative imports are resolved."""
    package = path.relative_to(ROOT.parent).with_suffix("").parts[:-1]  # ('prmgym', 'envs')
    if path.name == "__init__.py":
        package = path.relative_to(ROOT.parent).parts[:-1]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            yield from (a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level == 0:
                yield node.module
                continue
            base = list(package[: len(package) - (node.level - 1)])
            if node.module:
                yield ".".join(base + node.module.split("."))
            else:  # from . import x, y
                yield from (".".join(base + [a.name]) for a in node.names)


def _owner(path: pathlib.Path) -> str:
    rel = path.relative_to(ROOT).parts
    return rel[0] if len(rel) > 1 else path.stem


def _broken_rules(path: pathlib.Path) -> list[str]:
    owner = _owner(path)
    allowed = ALLOWED.get(owner, set())
    out = []
    for module in _imports(path):
        parts = module.split(".")
        if parts[0] == "prmgym" and len(parts) > 1 and parts[1] in SUBPACKAGES:
            if parts[1] != owner and parts[1] not in allowed:
                out.append(f"{path.relative_to(ROOT.parent)} imports {module}")
        if owner in TORCH_FREE and parts[0] == "torch":
            out.append(f"{path.relative_to(ROOT.parent)} imports torch")
    return out


@pytest.mark.parametrize("package", SUBPACKAGES)
def test_subpackage_imports_only_what_architecture_allows(package):
    offending = [line for path in sorted((ROOT / package).rglob("*.py")) for line in _broken_rules(path)]
    assert not offending, "import rule broken (docs/architecture.md):\n" + "\n".join(offending)


@pytest.mark.parametrize("module", TOP_LEVEL)
def test_top_level_modules_import_no_subpackage(module):
    path = ROOT / f"{module}.py"
    assert path.exists(), f"{path} is named in TOP_LEVEL but does not exist"
    offending = _broken_rules(path)
    assert not offending, "import rule broken (docs/architecture.md):\n" + "\n".join(offending)


def test_every_top_level_module_is_covered():
    found = {p.stem for p in ROOT.glob("*.py")} - {"__init__"}
    assert found <= set(TOP_LEVEL), f"add {sorted(found - set(TOP_LEVEL))} to TOP_LEVEL with its rule"


def test_relative_imports_are_resolved(tmp_path):
    """The checker sees through ``from ..agents import x``: a relative import is no way around a rule."""
    pkg = tmp_path / "prmgym" / "search"
    pkg.mkdir(parents=True)
    bad = pkg / "bad.py"
    bad.write_text("from ..agents import grpo\nfrom . import beam\n")
    global ROOT
    saved, ROOT = ROOT, tmp_path / "prmgym"
    try:
        assert list(_imports(bad)) == ["prmgym.agents", "prmgym.search.beam"]
        assert _broken_rules(bad) == ["prmgym/search/bad.py imports prmgym.agents"]
    finally:
        ROOT = saved


def test_sandbox_imports_nothing_else_of_prmgym():
    for path in (ROOT / "sandbox").rglob("*.py"):
        for module in _imports(path):
            if module.startswith("prmgym.") and not module.startswith("prmgym.sandbox"):
                pytest.fail(f"{path.name} imports {module}")


def test_episode_runner_runs_without_torch():
    """The one episode runner (prmgym.envs.episodes) sits below agents, rewards and search and
    is torch-free at run time, not only in its import lines."""
    import os
    import subprocess
    import sys

    code = ("import sys, prmgym.envs.episodes as e; "
            "assert 'torch' not in sys.modules, sorted(m for m in sys.modules if m.startswith('torch'))[:3]; "
            "assert callable(e.run_episodes) and callable(e.evaluate_policy)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(ROOT.parent)})
    assert done.returncode == 0, done.stderr
