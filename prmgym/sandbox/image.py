"""Build the Docker image that `DockerSandbox` runs jobs in.

Two paths, one Dockerfile (``prmgym/sandbox/Dockerfile``, ``ARG BASE``):

* online  — ``BASE=python:3.11-slim`` pulled from a registry;
* offline — ``BASE`` is a Debian root file system assembled here with
  ``debootstrap --variant=minbase --include=python3`` from the host's apt mirror, written to a
  cached tarball and loaded with ``docker import``. No image registry is contacted.

Either way the image carries the in-container runner (``container_agent.py`` and the verdict
harness shared with `LocalSandbox`) under ``/opt/prmgym`` and is tagged
``prmgym-sandbox:<digest>``, where the digest covers the Dockerfile and the runner files: editing
the runner changes the tag, so a stale image is never used silently.

>>> from prmgym.sandbox.image import default_image
>>> default_image().startswith("prmgym-sandbox:")
True
"""

from __future__ import annotations

import glob
import hashlib
import io
import os
import platform
import re
import shutil
import subprocess
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Callable

IMAGE_REPO = "prmgym-sandbox"
BASE_REPO = "prmgym-sandbox-base"
ONLINE_BASE = "python:3.11-slim"
DEFAULT_SUITE = "bookworm"
DEFAULT_MIRROR = "http://deb.debian.org/debian"
_HERE = Path(__file__).resolve().parent
# Files copied into /opt/prmgym. harness.py is the harness payload (the package joined into one
# module, `harness.payload.source`), the same code `LocalSandbox` runs, so both
# backends decide verdicts with the same code.
RUNNER_FILES = ("container_agent.py", "harness.py")
# Trimmed from the root file system: documentation and package-manager caches.
_TRIM = ("usr/share/doc", "usr/share/man", "usr/share/info", "usr/share/locale", "var/cache/apt", "var/lib/apt/lists")

Log = Callable[[str], None]


def runner_files() -> dict[str, bytes]:
    """``{name: content}`` of the files installed under ``/opt/prmgym`` in the image."""
    from prmgym.sandbox.harness import payload

    out = {"harness.py": payload.source().encode()}  # the harness package as one module, built now
    for name in RUNNER_FILES:
        if name == "harness.py":
            continue
        path = _HERE / name
        if not path.is_file():
            raise FileNotFoundError(f"sandbox runner file {path} is missing; reinstall prmgym")
        out[name] = path.read_bytes()
    return out


def dockerfile() -> bytes:
    return (_HERE / "Dockerfile").read_bytes()


def _digest(docker_file: bytes, files: dict[str, bytes]) -> str:
    h = hashlib.sha256(docker_file)
    for name, data in sorted(files.items()):
        h.update(name.encode() + b"\0" + data + b"\0")
    return h.hexdigest()[:12]


def image_digest() -> str:
    """12 hex digits over the Dockerfile and the runner files (changes when either changes)."""
    return _digest(dockerfile(), runner_files())


def default_image() -> str:
    """The tag `DockerSandbox` uses by default: ``prmgym-sandbox:<digest>``."""
    return f"{IMAGE_REPO}:{image_digest()}"


def cache_dir() -> Path:
    """Where the offline root file system tarball is cached (``$PRMGYM_CACHE`` or ~/.cache/prmgym)."""
    root = os.environ.get("PRMGYM_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "prmgym")
    return Path(root) / "sandbox"


def detect_apt_mirror() -> str:
    """The Debian mirror apt is configured with (deb822 ``.sources`` or one-line ``.list``)."""
    files = ["/etc/apt/sources.list"] + sorted(glob.glob("/etc/apt/sources.list.d/*.list"))
    files += sorted(glob.glob("/etc/apt/sources.list.d/*.sources"))
    for path in files:
        try:
            text = Path(path).read_text()
        except OSError:
            continue
        for line in text.splitlines():
            line = line.strip()
            if line.startswith("#"):
                continue
            m = re.match(r"^deb\s+(?:\[[^\]]*\]\s+)?(\S+)\s+", line) or re.match(r"^URIs:\s*(\S+)", line)
            if m and "security" not in m.group(1) and "/debian" in m.group(1):
                return m.group(1).rstrip("/")
    return DEFAULT_MIRROR


def detect_suite() -> str:
    """The host's Debian codename if it is Debian, else ``bookworm``."""
    try:
        info = dict(
            line.split("=", 1) for line in Path("/etc/os-release").read_text().splitlines() if "=" in line
        )
    except OSError:
        return DEFAULT_SUITE
    if info.get("ID", "").strip('"') == "debian" and info.get("VERSION_CODENAME"):
        return info["VERSION_CODENAME"].strip('"')
    return DEFAULT_SUITE


def rootfs_tarball(suite: str, cache: Path | None = None) -> Path:
    arch = {"x86_64": "amd64", "aarch64": "arm64"}.get(platform.machine(), platform.machine())
    return (cache or cache_dir()) / f"rootfs-debian-{suite}-{arch}-minbase-python3.tar"


def build_rootfs(
    suite: str | None = None,
    mirror: str | None = None,
    cache: Path | None = None,
    rebuild: bool = False,
    log: Log = print,
) -> Path:
    """Assemble a minimal Debian + python3 root file system with debootstrap; returns the cached
    tarball (reused unless ``rebuild``). Needs root and the ``debootstrap`` program."""
    suite = suite or detect_suite()
    mirror = mirror or detect_apt_mirror()
    out = rootfs_tarball(suite, cache)
    if out.is_file() and not rebuild:
        log(f"root file system: cached {out} ({out.stat().st_size / 1e6:.0f} MB)")
        return out
    if shutil.which("debootstrap") is None:
        raise RuntimeError(
            "the offline image build needs debootstrap: install it with `sudo apt-get install -y debootstrap`"
        )
    if os.geteuid() != 0:
        raise PermissionError(
            "debootstrap must run as root: run `sudo prmgym sandbox build-image --offline` "
            "(only the root file system step needs root; the tarball is cached afterwards)"
        )
    out.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="rootfs-", dir=out.parent))
    try:
        target = work / "root"
        cmd = ["debootstrap", "--variant=minbase", "--include=python3", suite, str(target), mirror]
        log(f"root file system: {' '.join(cmd)}")
        t0 = time.monotonic()
        proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        if proc.returncode != 0:
            tail = "\n".join(proc.stdout.splitlines()[-15:])
            raise RuntimeError(f"debootstrap failed (exit {proc.returncode}) with mirror {mirror}:\n{tail}")
        for rel in _TRIM:
            shutil.rmtree(target / rel, ignore_errors=True)
        log(f"root file system: debootstrap took {time.monotonic() - t0:.0f}s; packing {out.name}")
        tmp = work / "rootfs.tar"
        subprocess.run(["tar", "--numeric-owner", "-C", str(target), "-cf", str(tmp), "."], check=True)
        os.replace(tmp, out)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    log(f"root file system: {out} ({out.stat().st_size / 1e6:.0f} MB)")
    return out


def _image_exists(client, ref: str) -> bool:
    import docker

    try:
        client.images.get(ref)
        return True
    except docker.errors.ImageNotFound:
        return False


def import_rootfs(client, tarball: Path, ref: str, log: Log = print) -> str:
    """``docker import`` the tarball as ``ref`` (PATH and a default CMD set with --change)."""
    log(f"docker import {tarball} -> {ref}")
    repo, tag = ref.rsplit(":", 1)
    client.api.import_image(
        src=str(tarball),
        repository=repo,
        tag=tag,
        changes=[
            "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            "ENV LANG=C.UTF-8",
            'CMD ["python3"]',
            "WORKDIR /",
        ],
    )
    if not _image_exists(client, ref):
        raise RuntimeError(f"docker import of {tarball} did not produce the image {ref}")
    return ref


def build_context() -> tuple[str, bytes]:
    """``(digest, tar)``: the build context (the Dockerfile plus ``opt/prmgym/<runner files>``)
    read once, so the digest always matches what is built even if the sources change meanwhile."""
    docker_file, files = dockerfile(), runner_files()
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        entries = {"Dockerfile": docker_file}
        entries.update({f"opt/prmgym/{n}": d for n, d in files.items()})
        for name, data in entries.items():
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), 0o644, 0
            tar.addfile(info, io.BytesIO(data))
    return _digest(docker_file, files), buf.getvalue()


def build_image(
    offline: bool = False,
    tag: str | None = None,
    rebuild: bool = False,
    mirror: str | None = None,
    suite: str | None = None,
    cache: Path | None = None,
    client=None,
    log: Log = print,
) -> str:
    """Build (or reuse) the sandbox image; returns its content-addressed ref
    ``prmgym-sandbox:<digest>`` (also tagged ``prmgym-sandbox:latest`` and ``tag`` if given)."""
    from prmgym.sandbox.engine import docker_client

    client = client or docker_client()
    digest, context = build_context()
    ref = f"{IMAGE_REPO}:{digest}"
    extra = [t for t in (f"{IMAGE_REPO}:latest", tag) if t]
    if _image_exists(client, ref) and not rebuild:
        log(f"image {ref} is up to date")
    else:
        if offline:
            suite = suite or detect_suite()
            base = f"{BASE_REPO}:{suite}-minbase"
            if rebuild or not _image_exists(client, base):
                tarball = build_rootfs(suite=suite, mirror=mirror, cache=cache, rebuild=rebuild, log=log)
                import_rootfs(client, tarball, base, log=log)
            else:
                log(f"base image {base} present (pass --rebuild to rebuild the root file system)")
        else:
            base = ONLINE_BASE
        log(f"docker build (BASE={base}) -> {ref}")
        import docker

        try:
            _, lines = client.images.build(
                fileobj=io.BytesIO(context),
                custom_context=True,
                tag=ref,
                buildargs={"BASE": base},
                pull=not offline,
                rm=True,
                forcerm=True,
                labels={"prmgym.sandbox.digest": digest, "prmgym.sandbox.base": base},
            )
        except docker.errors.BuildError as exc:
            output = "".join(str(c.get("stream", c.get("error", ""))) for c in exc.build_log)
            hint = "" if offline else " (no registry reachable? use `prmgym sandbox build-image --offline`)"
            raise RuntimeError(f"docker build failed{hint}: {exc.msg}\n{output[-2000:]}") from exc
        for chunk in lines:
            text = str(chunk.get("stream", "")).rstrip()
            if text:
                log("  " + text)
    image = client.images.get(ref)
    for t in extra:
        repo, name = t.rsplit(":", 1) if ":" in t.rsplit("/", 1)[-1] else (t, "latest")
        image.tag(repo, name)
    log(f"image ready: {ref}" + (f" (also {', '.join(extra)})" if extra else ""))
    return ref
