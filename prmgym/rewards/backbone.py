"""A causal LM with a linear scalar head, read at step boundaries: the base of every learned PRM.

Layout. A trace is tokenised segment by segment: ``prompt + delimiter`` first (or, with
``prompt_format="chat"``, the chat template's header with the prompt as the user turn), then
``step + delimiter`` for each step (`prmgym.models.formatting.ObservationFormatter`). The PRM reads its head at the *last token of each segment*, i.e. the last token
of each step's delimiter (character offset ``step_end_offsets(...)[i] - 1``). Tokenising per
segment makes the token sequence of a prefix a prefix of the token sequence of the full trace,
so (causal attention) one forward pass over the whole trace gives exactly the scores that
scoring every prefix separately would give.

>>> import torch, transformers
>>> from prmgym.rewards.backbone import LMScalarHead, TraceEncoder
>>> class Chars:                       # any tokenizer with encode(text, add_special_tokens=False)
...     pad_token_id = 0
...     def encode(self, text, add_special_tokens=False):
...         return [min(ord(c), 127) for c in text]
>>> cfg = transformers.GPT2Config(vocab_size=128, n_positions=64, n_embd=16, n_layer=1, n_head=2)
>>> torch.manual_seed(0) and None
>>> net = LMScalarHead(transformers.GPT2LMHeadModel(cfg), n_outputs=1)
>>> enc = TraceEncoder(Chars(), "\\n")
>>> ids, bounds = enc.encode("Q", ["a", "bc"])
>>> bounds                               # last token of "Q\\n", "a\\n", "bc\\n"
[1, 3, 6]
>>> [tuple(o.shape) for o in net.outputs_at([ids], [bounds])]
[(3, 1)]
"""

from __future__ import annotations

import json
import os
from typing import Any, Sequence

import torch
from torch import nn

from prmgym.checkpoints import TRAINER_STATE  # noqa: F401  (the PRM's optimiser/RNG state file, one name project-wide)
from prmgym.envs.trace import DEFAULT_DELIMITER
from prmgym.models import lora
from prmgym.models.formatting import ObservationFormatter, encode_text  # noqa: F401  (encode_text re-exported)

PRM_CONFIG = "prm_config.json"
HEAD_FILE = "head.pt"
BACKBONE_DIR = "backbone"


# ----------------------------------------------------------------------------------------
# tokenisation
# ----------------------------------------------------------------------------------------
def pad_id(tokenizer: Any) -> int:
    for name in ("pad_token_id", "eos_token_id"):
        v = getattr(tokenizer, name, None)
        if v is not None:
            return int(v)
    return 0


class TraceEncoder(ObservationFormatter):
    """Turns (prompt, steps) into token ids and the positions the PRM reads: the
    `ObservationFormatter` of the PRM's ``prompt_format`` (``"plain"`` or ``"chat"``), so a PRM
    on a policy's backbone reads the ids that policy is fed. Segments and chat headers are
    memoised (planners re-encode the same prefixes over and over).
    """

    def __init__(self, tokenizer: Any, delimiter: str = DEFAULT_DELIMITER, memo_size: int = 20000,
                 add_bos: bool = True, mode: str = "plain", template: Any = None) -> None:
        super().__init__(tokenizer, mode, delimiter, template=template, add_bos=add_bos, memo_size=memo_size)

    def encode(self, prompt: str, steps: Sequence[str]) -> tuple[list[int], list[int]]:
        """Token ids of the trace and the boundary positions ``[prompt_end, step_1_end, ...]``
        (`ObservationFormatter.encode_trace`)."""
        return self.encode_trace(prompt, steps)


# ----------------------------------------------------------------------------------------
# the network
# ----------------------------------------------------------------------------------------
def hidden_size(model: nn.Module) -> int:
    cfg = model.config
    for name in ("hidden_size", "n_embd", "d_model"):
        v = getattr(cfg, name, None)
        if isinstance(v, int):
            return v
    raise ValueError(f"cannot find the hidden size in {type(cfg).__name__}: expected hidden_size, n_embd or d_model")


def max_positions(model: nn.Module) -> int | None:
    cfg = model.config
    for name in ("n_positions", "max_position_embeddings", "n_ctx"):
        v = getattr(cfg, name, None)
        if isinstance(v, int) and v > 0:
            return v
    return None


class LMScalarHead(nn.Module):
    """A causal LM body with ``n_outputs`` linear heads over its last hidden state.

    ``outputs_at(id_rows, positions)`` runs one padded, batched forward pass and returns the
    head outputs at the requested positions: ``list[(len(positions[i]), n_outputs)]``.
    Traces longer than the model's context are split into left-truncated windows (one extra
    row per window); each boundary is read from the window that ends nearest after it.
    """

    def __init__(self, model: nn.Module, n_outputs: int = 1, batch_size: int = 16, head_init_std: float = 0.02) -> None:
        super().__init__()
        self.model = model
        self.n_outputs = int(n_outputs)
        self.head = nn.Linear(hidden_size(model), self.n_outputs)
        nn.init.normal_(self.head.weight, std=head_init_std)
        nn.init.zeros_(self.head.bias)
        self.batch_size = int(batch_size)
        self.pad_token_id = 0

    #: the PEFT adapter this head reads through (None: no LoRA); set by `ScalarHeadPRM`
    adapter: str | None = None

    @property
    def body(self) -> nn.Module:
        """The transformer without its LM head (``model.base_model`` for HF causal LMs; inside a
        PEFT model, whose adapter layers it keeps)."""
        inner = lora.base_model(self.model)
        return getattr(inner, "base_model", inner)

    def _windows(self, ids: list[int], pos: list[int]) -> list[tuple[list[int], list[int], list[int]]]:
        """(row ids, positions in the row, indices into ``pos``) covering every position."""
        limit = max_positions(self.model)
        if limit is None or len(ids) <= limit:
            return [(ids, list(pos), list(range(len(pos))))]
        out = []
        remaining = sorted(range(len(pos)), key=lambda j: pos[j])
        while remaining:
            end = pos[remaining[-1]] + 1
            start = max(0, end - limit)
            take = [j for j in remaining if pos[j] >= start]
            out.append((ids[start:end], [pos[j] - start for j in take], take))
            remaining = [j for j in remaining if pos[j] < start]
        return out

    def hidden_at(self, id_rows: Sequence[Sequence[int]], positions: Sequence[Sequence[int]]) -> list[torch.Tensor]:
        """Last hidden states at ``positions[i]`` of row ``i``: ``list[(len(positions[i]), H)]``."""
        if len(id_rows) != len(positions):
            raise ValueError(f"{len(id_rows)} token rows but {len(positions)} position lists")
        device = next(self.parameters()).device
        rows: list[tuple[int, list[int], list[int], list[int]]] = []  # (trace, ids, pos, idx)
        for i, (ids, pos) in enumerate(zip(id_rows, positions)):
            for wids, wpos, idx in self._windows(list(ids), list(pos)):
                rows.append((i, wids, wpos, idx))
        H = hidden_size(self.model)
        out = [torch.zeros(len(p), H, device=device) for p in positions]
        parts: list[list[tuple[list[int], torch.Tensor]]] = [[] for _ in positions]
        order = sorted(range(len(rows)), key=lambda r: len(rows[r][1]))  # similar lengths together
        for b in range(0, len(order), self.batch_size):
            chunk = [rows[r] for r in order[b : b + self.batch_size]]
            T = max(len(r[1]) for r in chunk)
            input_ids = torch.full((len(chunk), T), self.pad_token_id, dtype=torch.long, device=device)  # (B, T)
            mask = torch.zeros((len(chunk), T), dtype=torch.long, device=device)  # (B, T)
            for k, (_, wids, _, _) in enumerate(chunk):
                input_ids[k, : len(wids)] = torch.tensor(wids, dtype=torch.long, device=device)
                mask[k, : len(wids)] = 1
            with lora.adapter_active(self.model, self.adapter):
                hidden = self.body(input_ids=input_ids, attention_mask=mask, use_cache=False).last_hidden_state.float()  # (B, T, H), fp32 under autocast too
            for k, (i, _, wpos, idx) in enumerate(chunk):
                parts[i].append((idx, hidden[k, torch.tensor(wpos, dtype=torch.long, device=device)]))
        for i, plist in enumerate(parts):
            if len(plist) == 1 and plist[0][0] == list(range(len(positions[i]))):
                out[i] = plist[0][1]
            elif plist:
                idx = torch.tensor([j for ix, _ in plist for j in ix], dtype=torch.long, device=device)
                vals = torch.cat([h for _, h in plist], dim=0)
                out[i] = torch.zeros_like(out[i]).index_copy(0, idx, vals)
        return out

    def hidden_and_segment_logprobs(
        self, id_rows: Sequence[Sequence[int]], positions: Sequence[Sequence[int]], token_min: bool = False
    ) -> list[tuple[torch.Tensor, ...]]:
        """Last hidden states at ``positions`` and the LM's log-prob of each segment between them:
        ``list[(hidden (n, H), seg_logprob (n-1,))]``, one forward pass (no windowing). With
        ``token_min`` each tuple also holds the log-prob of each segment's least likely token ``(n-1,)``."""
        limit = max_positions(self.model)
        for ids in id_rows:
            if limit is not None and len(ids) > limit:
                raise ValueError(
                    f"a trace of {len(ids)} tokens exceeds the model's context ({limit}); reading the LM's log-prob "
                    "needs the whole trace in context: shorten the trace (max_steps / max_new_tokens), or turn the "
                    "LM term off (AIRL: lm_prior=False; ORM/MC/rePIRL: lm_feature=none)"
                )
        device = next(self.parameters()).device
        out: list = [None] * len(id_rows)
        order = sorted(range(len(id_rows)), key=lambda i: len(id_rows[i]))
        for b in range(0, len(order), self.batch_size):
            chunk = order[b : b + self.batch_size]
            T = max(len(id_rows[i]) for i in chunk)
            ids = torch.full((len(chunk), T), self.pad_token_id, dtype=torch.long, device=device)  # (B, T)
            mask = torch.zeros_like(ids)
            for k, i in enumerate(chunk):
                ids[k, : len(id_rows[i])] = torch.tensor(list(id_rows[i]), dtype=torch.long, device=device)
                mask[k, : len(id_rows[i])] = 1
            with lora.adapter_active(self.model, self.adapter):
                res = self.model(input_ids=ids, attention_mask=mask, output_hidden_states=True, use_cache=False)
            hidden = res.hidden_states[-1].float()  # (B, T, H) final (normed) hidden state
            lp = torch.log_softmax(res.logits[:, :-1].float(), dim=-1).gather(2, ids[:, 1:, None]).squeeze(2)  # (B, T-1)
            for k, i in enumerate(chunk):
                pos = torch.tensor(list(positions[i]), dtype=torch.long, device=device)
                cums = torch.cat([lp.new_zeros(1), lp[k].cumsum(0)])  # cums[p] = Σ lp[:p]; token p is lp[p-1]
                out[i] = (hidden[k, pos], cums[pos[1:]] - cums[pos[:-1]])
                if token_min:  # segment j holds tokens pos[j]+1 .. pos[j+1]: lp[pos[j] .. pos[j+1]-1]
                    bounds = positions[i]
                    mins = [lp[k, a:b].min() if b > a else lp.new_zeros(()) for a, b in zip(bounds[:-1], bounds[1:])]
                    out[i] += (torch.stack(mins) if mins else lp.new_zeros(0),)
        return out

    def outputs_at(self, id_rows: Sequence[Sequence[int]], positions: Sequence[Sequence[int]]) -> list[torch.Tensor]:
        """Head outputs at ``positions``: ``list[(len(positions[i]), n_outputs)]``."""
        return [self.head(h).float() for h in self.hidden_at(id_rows, positions)]  # fp32 under autocast too


    def trainable(self) -> list[nn.Parameter]:
        """With an adapter: the head's and the adapter's parameters (never a shared model's other
        adapters or frozen base); else every parameter."""
        if self.adapter is None:
            return list(self.parameters())
        return list(self.head.parameters()) + lora.adapter_parameters(self.model, self.adapter)

    def save_backbone(self, path: str, tokenizer: Any) -> None:
        """``path/backbone`` (``save_pretrained``; with an adapter the frozen base only) and, with
        an adapter, ``path/adapter`` in PEFT's format."""
        bb = os.path.join(path, BACKBONE_DIR)
        if self.adapter is None:
            self.model.save_pretrained(bb)
        else:
            lora.save_base(self.model, bb)
            lora.save_adapter(self.model, os.path.join(path, lora.ADAPTER_DIR), self.adapter)
        if hasattr(tokenizer, "save_pretrained"):
            tokenizer.save_pretrained(bb)

    def load_weights_from(self, other: "LMScalarHead") -> None:
        """Copy ``other``'s trained weights (head; with an adapter only the adapter, so a model
        shared with a policy keeps the policy's weights)."""
        if self.adapter is None:
            self.load_state_dict(other.state_dict())
            return
        self.head.load_state_dict(other.head.state_dict())
        with torch.no_grad():
            for mine, theirs in zip(lora.adapter_parameters(self.model, self.adapter),
                                    lora.adapter_parameters(other.model, other.adapter)):
                mine.copy_(theirs)


# ----------------------------------------------------------------------------------------
# loading helpers
# ----------------------------------------------------------------------------------------
def load_causal_lm(path: str | os.PathLike) -> tuple[nn.Module, Any]:
    """(model, tokenizer) from a Hugging Face causal LM directory.

    Uses `prmgym.models.TransformersPolicy.from_pretrained` when available (it knows the
    project's own tokenizers), else ``AutoModelForCausalLM`` + ``AutoTokenizer``.
    """
    path = os.fspath(path)
    if not os.path.isdir(path):
        raise FileNotFoundError(f"no model directory at {path!r}: pass a directory written by save_pretrained")
    if not os.path.exists(os.path.join(path, "config.json")) and not lora.is_adapter_dir(path):
        raise ValueError(f"{path!r} is not a Hugging Face model directory (no config.json) nor a LoRA adapter directory")
    try:
        from prmgym.models import TransformersPolicy  # type: ignore[attr-defined]
    except ImportError:
        TransformersPolicy = None
    if TransformersPolicy is not None:
        pol = TransformersPolicy.from_pretrained(path)
        return pol.model, pol.tokenizer
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return AutoModelForCausalLM.from_pretrained(path), AutoTokenizer.from_pretrained(path)


def resolve_backbone(source: Any, tokenizer: Any = None) -> tuple[nn.Module, Any]:
    """(model, tokenizer) from a directory, a policy (``.model``/``.tokenizer``) or a model."""
    if isinstance(source, (str, os.PathLike)):
        model, tok = load_causal_lm(source)
        return model, tokenizer or tok
    if hasattr(source, "model") and hasattr(source, "tokenizer") and not isinstance(source, nn.Module):
        return source.model, tokenizer or source.tokenizer
    if isinstance(source, nn.Module):
        if tokenizer is None:
            raise ValueError("a model object needs its tokenizer: pass tokenizer=...")
        return source, tokenizer
    raise TypeError(
        f"cannot build a PRM backbone from {type(source).__name__}: pass a model directory, a policy "
        "with .model/.tokenizer, or a causal LM module plus tokenizer"
    )


def read_prm_config(path: str | os.PathLike) -> dict:
    """The JSON config of a saved PRM, with clear errors for a missing dir or a bare backbone."""
    path = os.fspath(path)
    if not os.path.isdir(path):
        raise FileNotFoundError(
            f"no PRM directory at {path!r}: train one with 'prmgym train-prm --kind ... --out {path}'"
        )
    cfg_path = os.path.join(path, PRM_CONFIG)
    if not os.path.exists(cfg_path):
        hint = ""
        if os.path.exists(os.path.join(path, "config.json")):
            hint = (
                " It looks like a bare causal LM (backbone without a PRM head): build a new PRM on it "
                "with e.g. AIRLPRM.from_backbone(path) and train it, or load a directory written by PRM.save."
            )
        raise ValueError(f"{path!r} is not a saved PRM (no {PRM_CONFIG}).{hint}")
    with open(cfg_path) as f:
        cfg = json.load(f)
    if "kind" not in cfg:
        raise ValueError(f"{cfg_path} has no 'kind' field; it was not written by PRM.save")
    return cfg
