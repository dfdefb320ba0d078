"""Reading the result files that benchmark scripts write, for their ``--merge`` options."""

from __future__ import annotations

import json
import os


def read_result_files(dirs: list[str], name: str, script: str) -> list[tuple[str, dict]]:
    """``(dir, parsed JSON)`` of ``dir/name`` for every dir, in order; a missing file stops with a
    message naming the script whose ``--out`` directory was expected."""
    out = []
    for d in dirs:
        path = os.path.join(d, name)
        if not os.path.exists(path):
            raise SystemExit(f"--merge: {path} does not exist (is {d!r} a {script} --out directory?)")
        with open(path) as f:
            out.append((d, json.load(f)))
    return out
