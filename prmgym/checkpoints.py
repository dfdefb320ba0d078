"""The one checkpoint format, shared by the policy trainers (agents) and the PRM trainers (rewards).

A checkpoint is a directory. It is written atomically: everything goes into ``PATH.tmp``,
which is then renamed to ``PATH``, so a process killed at any instant leaves either the old
checkpoint or the new one, never half of one (a stale ``.tmp`` is ignored and replaced).
The trainer's own state (optimizer, RNG states, counters, config) is ``trainer_state.pt`` in
it; the weights sit beside it in whatever layout the trainer writes (``save_pretrained``).

A run keeps numbered checkpoints under ``RUN_DIR/checkpoints/checkpoint-0000012`` (the
number is the trainer step); `latest_checkpoint` finds the newest complete one and
`prune_checkpoints` keeps the newest few.

>>> import tempfile
>>> run = tempfile.mkdtemp()
>>> for step in (2, 4, 6):
...     _ = write_checkpoint(checkpoint_path(run, step), lambda d: save_trainer_state(d, {"step": step}))
>>> prune_checkpoints(run, keep=2)
>>> [checkpoint_step(p) for p in checkpoint_dirs(run)], load_trainer_state(latest_checkpoint(run))["step"]
([4, 6], 6)

Torch is imported only by the two trainer-state functions.
"""

from __future__ import annotations

import os
import shutil
from typing import Any, Callable

TRAINER_STATE = "trainer_state.pt"
CKPT_PREFIX = "checkpoint-"
CHECKPOINTS_DIR = "checkpoints"


def write_checkpoint(path: str | os.PathLike, write: Callable[[str], Any]) -> str:
    """Run ``write(tmp_dir)`` into ``path.tmp``, then rename it to ``path`` (replacing an older one)."""
    path = os.fspath(path)
    tmp = path + ".tmp"
    if os.path.exists(tmp):
        shutil.rmtree(tmp)
    os.makedirs(tmp)
    write(tmp)
    if os.path.exists(path):
        old = path + ".old"
        if os.path.exists(old):
            shutil.rmtree(old)
        os.replace(path, old)  # a kill from here to the next rename leaves .old and .tmp, both whole
        os.replace(tmp, path)
        shutil.rmtree(old)
    else:
        os.replace(tmp, path)
    return path


def save_trainer_state(path: str | os.PathLike, state: dict) -> str:
    """``torch.save(state)`` as ``path/trainer_state.pt``."""
    import torch

    out = os.path.join(os.fspath(path), TRAINER_STATE)
    torch.save(state, out)
    return out


def load_trainer_state(path: str | os.PathLike, who: str = "a trainer's save") -> dict:
    """The ``trainer_state.pt`` of checkpoint ``path``; a clear error when there is none."""
    import torch

    file = os.path.join(os.fspath(path), TRAINER_STATE)
    if not os.path.exists(file):
        raise FileNotFoundError(f"no {TRAINER_STATE} in {os.fspath(path)!r}; pass a directory written by {who}")
    return torch.load(file, map_location="cpu", weights_only=False)


def checkpoint_path(run_dir: str | os.PathLike, step: int) -> str:
    """``run_dir/checkpoints/checkpoint-{step:07d}``."""
    return os.path.join(os.fspath(run_dir), CHECKPOINTS_DIR, f"{CKPT_PREFIX}{int(step):07d}")


def checkpoint_step(path: str | os.PathLike) -> int | None:
    """The step in a numbered checkpoint's name (None for any other name, e.g. a ``.tmp``)."""
    tail = os.path.basename(os.fspath(path).rstrip(os.sep))[len(CKPT_PREFIX):]
    if not os.path.basename(os.fspath(path).rstrip(os.sep)).startswith(CKPT_PREFIX) or not tail.isdigit():
        return None
    return int(tail)


def checkpoint_dirs(run_dir: str | os.PathLike) -> list[str]:
    """The complete numbered checkpoints of ``run_dir``, oldest first (a ``.tmp`` left by a
    killed write does not count; a ``.old`` whose replacement never landed does)."""
    root = os.path.join(os.fspath(run_dir), CHECKPOINTS_DIR)
    if not os.path.isdir(root):
        return []
    found: dict[int, str] = {}
    for name in os.listdir(root):
        path = os.path.join(root, name)
        base = name[: -len(".old")] if name.endswith(".old") else name
        step = checkpoint_step(base)
        if step is None or not os.path.exists(os.path.join(path, TRAINER_STATE)):
            continue
        if name.endswith(".old") and os.path.exists(os.path.join(root, base, TRAINER_STATE)):
            continue
        found[step] = path
    return [found[s] for s in sorted(found)]


def latest_checkpoint(run_dir: str | os.PathLike) -> str | None:
    """The newest complete checkpoint of ``run_dir``, or None."""
    dirs = checkpoint_dirs(run_dir)
    return dirs[-1] if dirs else None


def prune_checkpoints(run_dir: str | os.PathLike, keep: int) -> None:
    """Delete all but the newest ``keep`` checkpoints (``keep <= 0`` keeps all)."""
    if keep <= 0:
        return
    for old in checkpoint_dirs(run_dir)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
