"""Implicit PRM (PRIME): step reward = β·log(π_ψ(step|s) / π_ref(step|s)).

π_ψ starts as a copy of the policy, π_ref is a frozen copy. π_ψ is trained with the binary
cross-entropy of σ(β·Σ_t log-ratio) (the whole trace) against outcome labels
(``PRMBatch.labels``), β = 0.05 (PRIME). Both models read a trace in one forward pass each
(the same segment-wise tokenisation as every PRM here); a step's log-prob is the sum over the
tokens of ``step + delimiter``.

``score_steps`` returns the per-step reward β·log-ratio (``score="step"``, default) or its
running sum, the implicit Q of the prefix (``score="cumulative"``), through a sigmoid when
``squash`` (default).

Saved layout: ``backbone/`` = π_ψ, ``reference/`` = π_ref, ``prm_config.json``, ``head.pt``
(empty head state, kept so every PRM directory looks alike).
"""

from __future__ import annotations

import copy
import os
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from prmgym.config import help_field
from prmgym.rewards.backbone import read_prm_config
from prmgym.rewards.scalar import PRMBatch, PRMOptions, ScalarHeadPRM

REFERENCE_DIR = "reference"


@dataclass
class ImplicitOptions(PRMOptions):
    """`ImplicitPRM`'s options (besides `PRMOptions`)."""

    beta: float = help_field(0.05, "step reward = beta * log(pi_psi / pi_ref) (PRIME: 0.05)")
    score: str = help_field("step", "what score_steps returns: step (beta * log-ratio) | cumulative (its running sum)")

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.score not in ("step", "cumulative"):
            raise ValueError(f"unknown implicit PRM score {self.score!r}; valid: step, cumulative")
        if self.beta <= 0:
            raise ValueError(f"beta must be > 0, got {self.beta}")


class ImplicitPRM(ScalarHeadPRM):
    """PRIME's implicit PRM; see the module docstring.

    Options (`ImplicitOptions`, besides `PRMOptions`): ``beta`` (0.05), ``score`` (``"step"`` |
    ``"cumulative"``). ``reference``: the frozen reference model (default: a copy of ``model``
    at construction).
    """

    kind = "implicit"
    n_outputs = 1  # unused head (kept for a uniform layout)
    Options = ImplicitOptions
    validation = "outcome_sum"

    def __init__(self, model, tokenizer, *, reference=None, **options) -> None:
        if options.get("lora") is not None or options.get("share_backbone"):
            raise ValueError("the implicit PRM trains the whole LM against a frozen copy; lora and share_backbone "
                             "are not supported for it yet (drop them, or use airl / repirl / orm with lora)")
        super().__init__(model, tokenizer, **options)
        self.beta = float(self.options.beta)
        self.score_mode = self.options.score
        self.reference = reference if reference is not None else copy.deepcopy(model)
        self.reference.eval()
        for p in self.reference.parameters():
            p.requires_grad_(False)

    @classmethod
    def training_batch(cls, data, step: int) -> PRMBatch:
        """Expert solutions (1) and policy rollouts labelled by verified correctness (as the ORM)."""
        return data.outcome_batch(step)

    def parameters(self):
        return list(self.net.model.parameters())

    # -- log-probs per step -------------------------------------------------------------------
    def _step_logprobs(self, model, prompts, step_lists) -> list[torch.Tensor]:
        """Σ log π(token) over each step's tokens: ``list[(n_steps_i,)]``, one pass per trace."""
        enc = [self.encoder.encode(p, s) for p, s in zip(prompts, step_lists)]
        device = next(model.parameters()).device
        out: list[torch.Tensor] = [None] * len(enc)  # type: ignore[list-item]
        order = sorted(range(len(enc)), key=lambda i: len(enc[i][0]))
        bs = self.net.batch_size
        for b in range(0, len(order), bs):
            chunk = order[b : b + bs]
            T = max(len(enc[i][0]) for i in chunk)
            ids = torch.full((len(chunk), T), self.net.pad_token_id, dtype=torch.long, device=device)  # (B, T)
            mask = torch.zeros_like(ids)
            for k, i in enumerate(chunk):
                ids[k, : len(enc[i][0])] = torch.tensor(enc[i][0], device=device)
                mask[k, : len(enc[i][0])] = 1
            logits = model(input_ids=ids, attention_mask=mask).logits.float()  # (B, T, V)
            lp = torch.log_softmax(logits[:, :-1], dim=-1).gather(2, ids[:, 1:, None]).squeeze(2)  # (B, T-1): token t+1
            for k, i in enumerate(chunk):
                bounds = enc[i][1]
                # step j's tokens are positions bounds[j]+1 .. bounds[j+1]; token p is lp[p-1]
                cums = torch.cat([lp.new_zeros(1), lp[k].cumsum(0)])  # cums[p] = sum of lp[:p]
                b_t = torch.tensor(bounds, device=device)
                out[i] = cums[b_t[1:]] - cums[b_t[:-1]]
        return out

    def log_ratios(self, prompts, step_lists) -> list[torch.Tensor]:
        """log π_ψ(step|s) − log π_ref(step|s) per step (differentiable in ψ)."""
        mine = self._step_logprobs(self.net.model, prompts, step_lists)
        with torch.no_grad():
            ref = self._step_logprobs(self.reference, prompts, step_lists)
        return [a - b for a, b in zip(mine, ref)]

    def step_scores_tensor(self, prompts, step_lists) -> list[torch.Tensor]:
        out = []
        for lr in self.log_ratios(prompts, step_lists):
            r = self.beta * lr
            out.append(self._finish(r.cumsum(0) if self.score_mode == "cumulative" else r))
        return out

    def _search_scores(self, out, n_steps):  # not used: step_scores_tensor is overridden
        raise NotImplementedError("ImplicitPRM reads log-ratios, not a head")

    def token_count(self, prompts, step_lists) -> int:
        return 2 * super().token_count(prompts, step_lists)  # π_ψ and π_ref

    def step_rewards(self, prompts, step_lists) -> list[list[float]]:
        with torch.no_grad():
            return [(self.beta * x).tolist() for x in self.log_ratios(prompts, step_lists)]

    def loss(self, batch: PRMBatch) -> tuple[torch.Tensor, dict]:
        batch.require("labels", who="ImplicitPRM")
        keep = [i for i, s in enumerate(batch.step_lists) if s]
        if not keep:
            raise ValueError("ImplicitPRM.update needs traces with at least one step")
        lrs = self.log_ratios([batch.prompts[i] for i in keep], [batch.step_lists[i] for i in keep])
        z = torch.stack([self.beta * x.sum() for x in lrs])  # (B,)
        y = torch.tensor([float(batch.labels[i]) for i in keep], dtype=z.dtype, device=z.device)
        loss = F.binary_cross_entropy_with_logits(z, y)
        with torch.no_grad():
            acc = float(((z > 0).float() == (y >= 0.5).float()).float().mean())
            z_mean = float(z.mean())
        return loss, {"acc": acc, "z_mean": z_mean}

    # -- persistence ----------------------------------------------------------------------------
    def save(self, path, trainer_state: bool = True) -> str:
        path = super().save(path, trainer_state=trainer_state)
        self.reference.save_pretrained(os.path.join(path, REFERENCE_DIR))
        return path

    @classmethod
    def _load_new(cls, path, tokenizer=None, resume: bool = False, **overrides) -> "ImplicitPRM":
        read_prm_config(path)
        ref_dir = os.path.join(os.fspath(path), REFERENCE_DIR)
        if not os.path.isdir(ref_dir):
            raise ValueError(f"{os.fspath(path)!r} has no {REFERENCE_DIR}/ (the implicit PRM's reference model); re-save it")
        from transformers import AutoModelForCausalLM

        ref = AutoModelForCausalLM.from_pretrained(ref_dir, local_files_only=True)
        overrides.setdefault("reference", ref)
        return super()._load_new(path, tokenizer=tokenizer, resume=resume, **overrides)

    def _after_inplace_load(self, other: "ImplicitPRM") -> None:
        self.beta, self.score_mode = other.beta, other.score_mode
        self.reference.load_state_dict(other.reference.state_dict())
