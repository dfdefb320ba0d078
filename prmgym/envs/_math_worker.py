"""math-verify in a main thread. Imported by `prmgym.envs.verifiers`, and run as a script
(``python _math_worker.py``) as the helper process that serves callers outside the main
thread: one JSON request per line on stdin, one JSON reply per line on stdout.
No prmgym imports, so the helper starts quickly and never re-runs the caller's code."""

from __future__ import annotations

import json
import sys
from typing import Any


def check(gold: str, pred: str, float_rounding: int = 6, timeout: int = 5) -> tuple[bool, list[str], str]:
    """(equal?, parsed prediction, note) with math-verify's own signal timeouts (main thread only).
    ``note`` is ``"gold_unparsed"`` when the reference is not mathematical, ``"error: ..."`` on failure."""
    from math_verify import parse, verify

    def _parse(s: str) -> Any:
        if "\\" in s and "$" not in s:  # bare LaTeX like 2\sqrt{2}: math-verify reads it whole only inside $...$
            out = parse(f"${s}$", parsing_timeout=timeout)
            if out:
                return out
        return parse(s, parsing_timeout=timeout)

    g = _parse(gold)
    if not g:
        return False, [], "gold_unparsed"
    p = _parse(pred)
    try:
        ok = bool(verify(g, p, float_rounding=float_rounding, timeout_seconds=timeout))
    except Exception as e:  # math-verify / sympy internals on pathological input
        return False, [str(x) for x in p], f"error: {e!r}"[:200]
    return ok, [str(x) for x in p], ""


def main() -> None:
    import logging

    logging.disable(logging.WARNING)  # math-verify logs timeouts; replies carry them instead
    for line in sys.stdin:
        try:
            gold, pred, rounding = json.loads(line)
            reply = check(gold, pred, rounding)
        except Exception as e:  # noqa: BLE001  (reported to the caller)
            reply = (False, [], f"error: {e!r}"[:200])
        sys.stdout.write(json.dumps(reply) + "\n")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
