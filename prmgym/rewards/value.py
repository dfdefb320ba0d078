"""Value model (ReST-RL): a scalar head trained by mean squared error on MCTS value targets.

Targets file (JSONL, written by the search package's MCTS collection; one line per tree node)::

    {"prompt": "Compute 3 + 4.", "steps": ["3 + 4 = 7"], "value": 0.8, "visits": 5}

* ``prompt``: the task prompt (str); ``steps``: the node's partial solution (list of str,
  may be empty for the root); ``value``: the mean outcome reward of the rollouts beneath the
  node (float in [0, 1]); ``visits``: how many rollouts that mean is over (int >= 1).
* Extra keys are allowed and ignored. Blank lines are skipped.

`load_value_targets(path)` reads it (errors name the line); `ValueModel.update` takes a
`PRMBatch` whose ``labels`` are the values (and optionally ``weights`` the visits). The model
is read at the node's last step boundary (the prompt boundary for the root). Outputs are
clipped to [0, 1]: `score_steps` gives V(prefix) for every prefix of a trace.
"""

from __future__ import annotations

import json
import math
import os
import random
from dataclasses import dataclass

import torch

from prmgym.config import help_field
from prmgym.rewards.scalar import PRMBatch, PRMOptions, ScalarHeadPRM


@dataclass(frozen=True)
class ValueTarget:
    prompt: str
    steps: tuple[str, ...]
    value: float
    visits: int


def load_value_targets(path: str | os.PathLike) -> list[ValueTarget]:
    """Read a targets JSONL file (format in the module docstring); clear errors with line numbers."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"no value-targets file at {path!r}: write one with MCTS collection (docs/rewards.md)")
    out: list[ValueTarget] = []
    with open(path) as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            where = f"{path}:{n}"
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{where}: not valid JSON ({e.msg}); each line must be one JSON object") from None
            if not isinstance(row, dict):
                raise ValueError(f"{where}: expected a JSON object with prompt, steps, value, visits; got {type(row).__name__}")
            missing = [k for k in ("prompt", "steps", "value", "visits") if k not in row]
            if missing:
                raise ValueError(f"{where}: missing key(s) {missing}; each line needs prompt, steps, value, visits")
            prompt, steps, value, visits = row["prompt"], row["steps"], row["value"], row["visits"]
            if not isinstance(prompt, str):
                raise ValueError(f"{where}: 'prompt' must be a string, got {type(prompt).__name__}")
            if not isinstance(steps, list) or not all(isinstance(s, str) for s in steps):
                raise ValueError(f"{where}: 'steps' must be a list of strings")
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or not 0.0 <= value <= 1.0:
                raise ValueError(f"{where}: 'value' must be a number in [0, 1], got {value!r}")
            if isinstance(visits, bool) or not isinstance(visits, int) or visits < 1:
                raise ValueError(f"{where}: 'visits' must be an integer >= 1, got {visits!r}")
            out.append(ValueTarget(prompt, tuple(steps), float(value), visits))
    if not out:
        raise ValueError(f"{path}: no targets (the file is empty)")
    return out


def targets_to_batch(targets: list[ValueTarget], weight_by_visits: bool = False) -> PRMBatch:
    return PRMBatch(
        prompts=[t.prompt for t in targets],
        step_lists=[list(t.steps) for t in targets],
        labels=[t.value for t in targets],
        weights=[float(t.visits) for t in targets] if weight_by_visits else None,
    )


@dataclass
class ValueOptions(PRMOptions):
    """`ValueModel`'s options (besides `PRMOptions`; ``squash`` is off: values are clipped)."""

    squash: bool = help_field(False, "pass scores through a sigmoid (off: V is clipped to [0, 1])")
    weight_by_visits: bool = help_field(False, "weight each node's squared error by its visit count")


class ValueModel(ScalarHeadPRM):
    """V(prefix) in [0, 1]: scalar head, MSE on value targets, outputs clipped to [0, 1].

    Options (`ValueOptions`, besides `PRMOptions`): ``weight_by_visits``: weight each node's
    squared error by its visit count.
    """

    kind = "value"
    n_outputs = 1
    Options = ValueOptions
    data_source = "targets"
    recipe_fields = ("batch_size",)
    validation = "value_mse"

    def __init__(self, model, tokenizer, **options) -> None:
        super().__init__(model, tokenizer, **options)
        self.weight_by_visits = bool(self.options.weight_by_visits)

    def _after_inplace_load(self, other: "ValueModel") -> None:
        self.weight_by_visits = other.weight_by_visits

    @classmethod
    def training_batch(cls, data, step: int) -> PRMBatch:
        """``batch_size`` targets of ``data.targets``: one shuffled pass over the file per epoch
        (the order drawn from the seed and the epoch)."""
        cfg, targets = data.config, data.targets
        per_epoch = max(1, len(targets) // cfg.batch_size)
        rng = random.Random(cfg.seed * 7919 + step // per_epoch)
        order = list(range(len(targets)))
        rng.shuffle(order)
        k = step % per_epoch
        chosen = [targets[i] for i in order[k * cfg.batch_size : (k + 1) * cfg.batch_size]] or [targets[i] for i in order]
        return targets_to_batch(chosen, weight_by_visits=data.prm.weight_by_visits)

    def _search_scores(self, out: torch.Tensor, n_steps: int) -> torch.Tensor:
        return out[1:, 0]

    def _finish(self, raw: torch.Tensor) -> torch.Tensor:
        return raw.clamp(0.0, 1.0)

    def values(self, prompts, step_lists) -> list[float]:
        """V of each (prompt, steps) node (the root, with no steps, is read at the prompt)."""
        was = self.net.training
        self.net.eval()
        try:
            with torch.no_grad():
                outs = self.outputs(prompts, step_lists)
        finally:
            self.net.train(was)
        self.tokens_scored += self.token_count(prompts, step_lists)
        return [float(o[-1, 0].clamp(0.0, 1.0)) for o in outs]

    def loss(self, batch: PRMBatch) -> tuple[torch.Tensor, dict]:
        batch.require("labels", who="ValueModel")
        outs = self.outputs(batch.prompts, batch.step_lists)
        v = torch.stack([o[-1, 0] for o in outs])  # (B,) raw value at the node
        y = torch.tensor([float(x) for x in batch.labels], dtype=v.dtype, device=v.device)
        if self.weight_by_visits and batch.weights is not None:
            w = torch.tensor(batch.weights, dtype=v.dtype, device=v.device)
        else:
            w = torch.ones_like(v)
        loss = (w * (v - y) ** 2).sum() / w.sum()
        with torch.no_grad():
            mae = float((v.clamp(0, 1) - y).abs().mean())
        return loss, {"mse": float(loss.detach()), "mae_clipped": mae}
