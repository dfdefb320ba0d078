#!/usr/bin/env bash
# The sandbox tests from a fresh clone of this repository under a scratch directory, with its
# virtual environment inside the clone, as a user who clones into /var/tmp has it. The local
# sandbox hides /tmp and /var/tmp from its jobs behind tmpfs mounts; an interpreter that lives
# there must still start (and restart) the sandbox's spawner.
#
# Environment:
#   SCRATCH      where the clone goes (default /var/tmp)
#   TORCH_PIN    the CPU torch pin, as in the Makefile (default torch==2.13.0)
#   SANDBOX_TESTS  the test files (default: the local and attack tests)
# Packages come from pip's cache when the README's `make test` has just installed them.
set -euo pipefail
cd "$(dirname "$0")/.."

SCRATCH="${SCRATCH:-/var/tmp}"
TORCH_PIN="${TORCH_PIN:-torch==2.13.0}"
SANDBOX_TESTS="${SANDBOX_TESTS:-tests/test_sandbox_local.py tests/test_sandbox_attacks.py}"
PYTHON="${PYTHON:-python3}"

clone="$(mktemp -d "$SCRATCH/prmgym-ci-XXXXXX")"
trap 'rm -rf "$clone"' EXIT
git clone -q "$PWD" "$clone/prmgym"
cd "$clone/prmgym"
"$PYTHON" -m venv .venv
.venv/bin/pip install -q "$TORCH_PIN"
.venv/bin/pip install -q -e '.[dev]'
# shellcheck disable=SC2086
.venv/bin/python -m pytest -q $SANDBOX_TESTS
