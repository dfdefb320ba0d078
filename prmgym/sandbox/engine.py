"""The connection to the Docker engine, shared by `DockerSandbox` (docker.py) and the image
builder (image.py): both import it from here, so neither imports the other's module for it."""

from __future__ import annotations

import os

_ENGINE_HELP = (
    "Start the Docker engine with `sudo systemctl start docker` (or `sudo dockerd &` where systemd is "
    "absent; CI runs `bash .ci/docker-setup.sh`), check that your user may use it "
    "(`docker info`; `sudo usermod -aG docker $USER`), or use the local backend instead: "
    "`from prmgym.sandbox import LocalSandbox`."
)


class DockerUnavailableError(RuntimeError):
    """The Docker engine, the docker SDK or the sandbox image is not available."""


def docker_client(timeout: int = 120):
    """A connected ``docker.DockerClient`` or a `DockerUnavailableError` that says what to do."""
    try:
        import docker
    except ImportError as exc:  # pragma: no cover - docker is a declared dependency
        raise DockerUnavailableError("the docker SDK is not installed: `pip install 'docker>=7'`") from exc
    where = os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")
    try:
        client = docker.from_env(timeout=timeout)
        client.ping()
    except Exception as exc:  # DockerException, requests errors, PermissionError, ...
        raise DockerUnavailableError(f"cannot reach the Docker engine at {where}: {exc}. {_ENGINE_HELP}") from exc
    return client
