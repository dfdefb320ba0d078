"""The harness's payload: its modules joined into one self-contained module.

A LocalSandbox server runs it as a script (``python -I <payload> serve``) and hands its compiled
code to the spawner (a memfd); the Docker image ships it as ``/opt/prmgym/harness.py``, which the
container agent imports. The modules are joined in the order they depend on each other, each
without its docstring, its ``from __future__`` line and its imports of sibling modules (in one
module those names are simply global). Standard library only, like the modules themselves.
"""

from __future__ import annotations

import os
import re
import tempfile

# in dependency order: each module uses only names defined by the ones before it
MODULES = ("wire", "isolation", "program", "judge", "verdict", "spawner", "server", "main")
_HERE = os.path.dirname(os.path.abspath(__file__))
_SIBLING_IMPORT = re.compile(r"^from \.\w+ import (\([^)]*\)|[^\n]*)\n", re.M)
_FUTURE = "from __future__ import annotations\n"


def _module_body(name: str) -> str:
    with open(os.path.join(_HERE, f"{name}.py"), encoding="utf-8") as f:
        text = f.read()
    if not text.startswith('"""'):
        raise ValueError(f"harness/{name}.py must open with its docstring")
    end = text.index('"""', 3) + 3
    doc, body = text[3:end - 3], text[end:]
    if _FUTURE not in body:
        raise ValueError(f"harness/{name}.py must import annotations from __future__")
    body = _SIBLING_IMPORT.sub("", body.replace(_FUTURE, "", 1))
    banner = "# " + "-" * 93 + "\n" + "".join(f"# {line}\n" for line in doc.splitlines()) + "# " + "-" * 93 + "\n"
    return f"\n\n{banner}{body.strip()}\n"


def source() -> str:
    """The payload's text: the package's docstring, then every module of `MODULES`."""
    from prmgym.sandbox import harness

    head = f'"""{harness.__doc__}"""\n\n{_FUTURE}'
    return head + "".join(_module_body(name) for name in MODULES)


_PATH: str | None = None


def path() -> str:
    """A file holding `source`, written once per process into a private directory of its own
    (mode 0700; removed at exit). The LocalSandbox servers run it."""
    global _PATH
    if _PATH is None or not os.path.isfile(_PATH):
        import atexit
        import shutil

        d = tempfile.mkdtemp(prefix="prmgym-harness-")
        p = os.path.join(d, "harness.py")
        with open(p, "w", encoding="utf-8") as f:
            f.write(source())
        atexit.register(shutil.rmtree, d, True)
        _PATH = p
    return _PATH
