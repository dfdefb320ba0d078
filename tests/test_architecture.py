"""The import rules of ARCHITECTURE.md hold: arrows point one way, envs/sandbox stay torch-free."""

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


def _imports(path: pathlib.Path):
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            yield from (a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.module


@pytest.mark.parametrize("package", SUBPACKAGES)
def test_subpackage_imports_only_what_architecture_allows(package):
    offending = []
    for path in sorted((ROOT / package).rglob("*.py")):
        for module in _imports(path):
            parts = module.split(".")
            if parts[0] == "prmgym" and len(parts) > 1 and parts[1] in SUBPACKAGES:
                if parts[1] != package and parts[1] not in ALLOWED[package]:
                    offending.append(f"{path.relative_to(ROOT.parent)} imports {module}")
            if package in ("envs", "sandbox") and parts[0] == "torch":
                offending.append(f"{path.relative_to(ROOT.parent)} imports torch")
    assert not offending, "import rule broken:\n" + "\n".join(offending)


def test_sandbox_imports_nothing_else_of_prmgym():
    for path in (ROOT / "sandbox").rglob("*.py"):
        for module in _imports(path):
            if module.startswith("prmgym.") and not module.startswith("prmgym.sandbox"):
                pytest.fail(f"{path.name} imports {module}")
