"""Pieces every prmgym trainer shares: RNG state, callbacks, checkpoint files, and the
packing of rolled-out trajectories into a padded batch for one forward pass.

Packing (`pack_trajectories`): a trajectory's trained tokens are the tokens the policy
sampled, step after step. When the observation of every step is exactly the previous
observation's tokens followed by the previous step's sampled tokens (true for the
character tokenizer whenever steps end at the stop string), the whole trajectory is one
row ``encode(first observation) + step tokens``; otherwise (a step ended by length or eos,
or a tokenizer that merges across the delimiter) each step is its own row
``encode(observation_k) + step_k tokens``. Either way every trained token is scored in
exactly the context it was sampled in.

Tool segments (`prmgym.envs.tools`): after a code-cell step the env appends the cell's
output to the observation. The policy did not generate it, so it is context only: in the
one-row layout the row holds it between the step spans and no target falls on it (its
tokens get no loss and no gradient); in the row-per-step layout it is part of the next
step's observation.
"""

from __future__ import annotations

import json
import os
import random
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np
import torch

from prmgym.checkpoints import (  # noqa: F401  (the one checkpoint writer/reader, re-exported for the trainers)
    CKPT_PREFIX,
    TRAINER_STATE,
    checkpoint_dirs,
    checkpoint_path,
    latest_checkpoint,
    load_trainer_state,
    prune_checkpoints,
    save_trainer_state,
    write_checkpoint,
)

POLICY_DIR = "policy"


class NonFiniteLossError(FloatingPointError):
    """The loss (or gradient norm) became NaN/inf; the update was not applied."""


# --------------------------------------------------------------------------- RNG state
def rng_state(rng: np.random.Generator) -> dict:
    """Python, numpy (global and the trainer's own generator) and torch RNG states."""
    return {
        "python": random.getstate(),
        "numpy_global": np.random.get_state(),
        "numpy": rng.bit_generator.state,
        "torch": torch.get_rng_state(),
    }


def set_rng_state(state: dict, rng: np.random.Generator) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy_global"])
    rng.bit_generator.state = state["numpy"]
    torch.set_rng_state(state["torch"])


# --------------------------------------------------------------------------- callbacks
class Callback:
    """Stable-Baselines3-style callback. Subclass and override `_on_step` (return False to
    stop training); `trainer` and the latest `metrics` are available as attributes.

    >>> class StopAt(Callback):
    ...     def _on_step(self):
    ...         return self.metrics.get("train/step", 0) < 3
    """

    def __init__(self) -> None:
        self.trainer: Any = None
        self.n_calls = 0
        self.metrics: dict = {}

    def init_callback(self, trainer: Any) -> None:
        self.trainer = trainer

    def on_training_start(self) -> None:
        self._on_training_start()

    def _on_training_start(self) -> None:
        pass

    def on_step(self, metrics: dict) -> bool:
        """Called after every trainer step; returning False stops `train`."""
        self.n_calls += 1
        self.metrics = metrics
        return bool(self._on_step())

    def _on_step(self) -> bool:
        return True

    def on_training_end(self) -> None:
        self._on_training_end()

    def _on_training_end(self) -> None:
        pass


class FunctionCallback(Callback):
    """Wrap ``fn(trainer, metrics) -> bool | None`` (None means continue)."""

    def __init__(self, fn: Callable[[Any, dict], bool | None]) -> None:
        super().__init__()
        self.fn = fn

    def _on_step(self) -> bool:
        out = self.fn(self.trainer, self.metrics)
        return True if out is None else bool(out)


# --------------------------------------------------------------------------- checkpoints
def load_model_weights(model: torch.nn.Module, policy_dir: str) -> None:
    """Load ``save_pretrained`` weights into an existing model (tied weights stay tied); a
    LoRA policy's directory holds its adapter (PEFT format), loaded into the model's adapter."""
    from prmgym.models import lora

    if lora.is_adapter_dir(policy_dir):
        if not lora.is_peft_model(model):
            raise ValueError(f"checkpoint {policy_dir!r} holds a LoRA adapter but the model has no LoRA: "
                             "resume with the run's own lora settings")
        lora.load_adapter(model, policy_dir)
        return
    st = os.path.join(policy_dir, "model.safetensors")
    if os.path.exists(st):
        from safetensors.torch import load_file

        sd = load_file(st)
    else:
        bin_path = os.path.join(policy_dir, "pytorch_model.bin")
        if not os.path.exists(bin_path):
            raise FileNotFoundError(f"no model weights (model.safetensors / pytorch_model.bin) in {policy_dir!r}")
        sd = torch.load(bin_path, map_location="cpu", weights_only=True)
    missing, unexpected = model.load_state_dict(sd, strict=False)
    tied = _tied_names(model)
    really_missing = [k for k in missing if k not in tied]
    if really_missing or unexpected:
        raise ValueError(
            f"checkpoint {policy_dir!r} does not match the model: missing {really_missing[:5]}, "
            f"unexpected {list(unexpected)[:5]}; resume with the same model the run started from"
        )


def _tied_names(model: torch.nn.Module) -> set[str]:
    """Names of parameters that share storage with an earlier parameter (tied weights)."""
    seen: dict[int, str] = {}
    tied = set()
    for name, p in model.named_parameters(remove_duplicate=False):
        key = p.data_ptr()
        if key in seen:
            tied.add(name)
        else:
            seen[key] = name
    return tied


def write_json(path: str, obj: Any) -> None:
    with open(path, "w") as f:
        json.dump(obj, f, indent=2, default=str)


# --------------------------------------------------------------------------- packing
@dataclass
class PackedBatch:
    """Trajectories laid out for one forward pass.

    ``input_ids``/``attention_mask``: (R, L) right-padded rows. Token n of the flat index
    lists is predicted by row ``src_row[n]`` at column ``src_col[n]`` (the position before
    it), has id ``tgt_ids[n]``, and belongs to trajectory ``dst_traj[n]`` at position
    ``dst_tok[n]`` of its generated tokens. ``B`` trajectories, ``T`` = the longest one.
    """

    input_ids: torch.Tensor  # (R, L)
    attention_mask: torch.Tensor  # (R, L)
    src_row: torch.Tensor  # (N,)
    src_col: torch.Tensor  # (N,)
    tgt_ids: torch.Tensor  # (N,)
    dst_traj: torch.Tensor  # (N,)
    dst_tok: torch.Tensor  # (N,)
    B: int
    T: int
    rows_per_step: int  # how many trajectories needed one row per step (tokenization mismatch)


def _trajectory_rows(traj, encode: Callable[[str], list[int]]) -> list[tuple[list[int], list[tuple[int, int, int]]]]:
    """Rows ``(ids, spans)`` covering the trajectory's tokens; a span ``(first_target_col,
    n_tokens, first_token_index)`` marks trained tokens in the row. Tokens of the row outside
    the spans are context: the prompt, and tool segments the env appended after a step."""
    obs_ids = [encode(o) for o in traj.step_observations]
    steps = [list(ids) for ids in traj.step_token_ids]
    # One row when each observation extends the previous one plus its sampled step; what the
    # env added after the step (a tool segment) lies between the spans, untrained.
    single = all(
        traj.finish_reasons[k] == "stop"
        and obs_ids[k + 1][: len(obs_ids[k]) + len(steps[k])] == obs_ids[k] + steps[k]
        for k in range(len(steps) - 1)
    )
    if single and steps:
        spans, pos = [], 0
        for k, ids in enumerate(steps):
            spans.append((len(obs_ids[k]), len(ids), pos))
            pos += len(ids)
        return [(obs_ids[-1] + steps[-1], spans)]
    rows, pos = [], 0
    for k, ids in enumerate(steps):
        if ids:
            rows.append((obs_ids[k] + ids, [(len(obs_ids[k]), len(ids), pos)]))
        pos += len(ids)
    return rows


def pack_trajectories(trajs: Sequence[Any], encode: Callable[[str], list[int]], pad_id: int) -> PackedBatch:
    rows: list[list[int]] = []
    src_row, src_col, tgt, dst_traj, dst_tok = [], [], [], [], []
    multi = 0
    for b, t in enumerate(trajs):
        tr = _trajectory_rows(t, encode)
        multi += int(len(tr) > 1)
        for ids, spans in tr:
            r = len(rows)
            rows.append(ids)
            for start, n, first_tok in spans:
                src_row += [r] * n
                src_col += list(range(start - 1, start + n - 1))
                tgt += ids[start:start + n]
                dst_traj += [b] * n
                dst_tok += list(range(first_tok, first_tok + n))
    R = max(len(rows), 1)
    L = max((len(r) for r in rows), default=1)
    input_ids = torch.full((R, L), pad_id, dtype=torch.long)
    mask = torch.zeros((R, L), dtype=torch.long)
    for i, r in enumerate(rows):
        input_ids[i, : len(r)] = torch.tensor(r, dtype=torch.long)
        mask[i, : len(r)] = 1
    T = max((t.num_tokens for t in trajs), default=0)
    lt = lambda x: torch.tensor(x, dtype=torch.long)  # noqa: E731
    return PackedBatch(input_ids, mask, lt(src_row), lt(src_col), lt(tgt), lt(dst_traj), lt(dst_tok), len(trajs), max(T, 1), int(multi))


def packed_logprobs(
    model: torch.nn.Module, batch: PackedBatch, with_entropy: bool = False, entropy_grad: bool = False
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Per-token log-probs ``(B, T)`` of the sampled tokens (0 where there is no token), and
    optionally the full next-token entropy at the same positions ``(B, T)`` (with a
    gradient if ``entropy_grad``, for an entropy bonus)."""
    device = next(model.parameters()).device
    ids = batch.input_ids.to(device)
    mask = batch.attention_mask.to(device)
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    logits = model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=False).logits  # (R, L, V)
    sel = logits[batch.src_row.to(device), batch.src_col.to(device)].float()  # (N, V)
    logp_all = torch.log_softmax(sel, dim=-1)  # (N, V)
    lp = logp_all.gather(1, batch.tgt_ids.to(device)[:, None]).squeeze(1)  # (N,)
    out = torch.zeros(batch.B, batch.T, device=device, dtype=lp.dtype)
    index = (batch.dst_traj.to(device), batch.dst_tok.to(device))
    out = out.index_put(index, lp)
    ent = None
    if with_entropy:
        with torch.set_grad_enabled(entropy_grad and torch.is_grad_enabled()):
            e = -(logp_all.exp() * logp_all).sum(-1)  # (N,)
            ent = torch.zeros(batch.B, batch.T, device=device, dtype=e.dtype).index_put(index, e)
    return out, ent
