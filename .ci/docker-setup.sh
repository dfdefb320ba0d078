#!/usr/bin/env bash
# Docker for CI: install the engine and debootstrap if missing, start dockerd if it is not
# running, wait for it, and build the prmgym sandbox image offline if it is missing.
# Idempotent: a second run finds everything in place and returns in seconds.
#
# Environment:
#   PRMGYM_PYTHON   interpreter that has prmgym + the docker SDK (default: .venv/bin/python via
#                   `make setup`, else python3)
#   DOCKERD_ARGS    extra arguments for dockerd when this script starts it
#   DOCKERD_LOG     where dockerd's output goes (default /tmp/dockerd.log)
set -euo pipefail
cd "$(dirname "$0")/.."

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
DOCKERD_LOG="${DOCKERD_LOG:-/tmp/dockerd.log}"

# 1. packages
missing=()
command -v dockerd >/dev/null 2>&1 || missing+=(docker.io)
command -v debootstrap >/dev/null 2>&1 || missing+=(debootstrap)
if [ "${#missing[@]}" -gt 0 ]; then
    echo "docker-setup: installing ${missing[*]}"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}"
fi

# 2. engine
if ! docker info >/dev/null 2>&1; then
    if command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
        echo "docker-setup: systemctl start docker"
        $SUDO systemctl start docker
    else
        echo "docker-setup: starting dockerd in the background (log: $DOCKERD_LOG)"
        # shellcheck disable=SC2086
        $SUDO sh -c "nohup dockerd ${DOCKERD_ARGS:-} >'$DOCKERD_LOG' 2>&1 &"
    fi
    for _ in $(seq 1 60); do
        if docker info >/dev/null 2>&1; then break; fi
        sleep 1
    done
    if ! docker info >/dev/null 2>&1; then
        echo "docker-setup: the Docker engine did not come up within 60 s" >&2
        tail -n 30 "$DOCKERD_LOG" >&2 2>/dev/null || true
        exit 1
    fi
fi
echo "docker-setup: engine $(docker version --format '{{.Server.Version}}' 2>/dev/null || echo '?') is up"

# 3. image (content-addressed: rebuilt only when the runner files change)
PY="${PRMGYM_PYTHON:-}"
if [ -z "$PY" ]; then
    if command -v make >/dev/null 2>&1 && [ -f Makefile ]; then
        make setup >/dev/null
        PY=.venv/bin/python
    else
        PY=python3
    fi
fi
start=$(date +%s)
$SUDO env PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" "$PY" -m prmgym.cli sandbox build-image --offline
echo "docker-setup: image step took $(( $(date +%s) - start )) s"
