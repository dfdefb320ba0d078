"""`TransformersPolicy`: the `Policy` interface over any local Hugging Face causal LM.

Generation is a custom sampling loop over the model's ``forward`` with a key/value cache
(``transformers.DynamicCache``): each observation is encoded **once** (left padded, with an
attention mask and explicit position ids), its cache is repeated to the ``n`` samples, and
every step feeds only the newly sampled token. Rows that finish (stop string, end of
sequence) are dropped from the batch and the cache, so short steps do not pay for long ones.

Log-probabilities are ``log_softmax`` of the model's **raw** logits (before temperature and
top-p), i.e. log π(token | prefix) of the policy itself, whatever sampling settings were used;
`TransformersPolicy.logprobs` computes the same quantity in one full forward pass (with
gradients when asked) and matches `propose` to ~1e-5 in float32.

>>> from prmgym.models import tiny
>>> policy = tiny.random_tiny_policy(seed=0)
>>> [[p]] = policy.propose(["2 + 3 = "], n=1, max_new_tokens=4, seed=0)
>>> len(p.token_ids) == len(p.logprobs) == p.tokens_generated
True
"""

from __future__ import annotations

import os
from typing import Sequence

import torch
import torch.nn.functional as F

from prmgym.models.formatting import ObservationFormatter
from prmgym.models.policy import Policy, Proposal, check_propose_args
from prmgym.models.tokenizer import load_tokenizer



class TransformersPolicy(Policy):
    """A `Policy` backed by a Hugging Face ``AutoModelForCausalLM`` and its tokenizer.

    Args:
        model: a causal LM (``PreTrainedModel`` with a language-model head).
        tokenizer: its tokenizer. Without a pad token the eos token is used for padding;
            a tokenizer with neither is rejected.
        device: where to run (default: the model's device).
        prompt_format: ``"plain"`` (the observation text as is) or ``"chat"`` (through the
            tokenizer's chat template), see `prmgym.models.formatting`.

    Attributes:
        model, tokenizer, device, formatter (the `ObservationFormatter`).
    """

    def __init__(self, model, tokenizer, device: str | torch.device | None = None, prompt_format: str = "plain") -> None:
        if tokenizer.pad_token_id is None:
            if tokenizer.eos_token_id is None:
                raise ValueError(
                    "the tokenizer has neither a pad token nor an eos token; TransformersPolicy "
                    "needs one to pad batches and to end proposals. Fix: set one, e.g. "
                    "tokenizer.add_special_tokens({'eos_token': '</s>'}) and resize the model's "
                    "embeddings, or save a tokenizer that defines eos_token."
                )
            tokenizer.pad_token = tokenizer.eos_token
        self.model = model
        self.tokenizer = tokenizer
        self.formatter = ObservationFormatter(tokenizer, prompt_format)
        if device is not None:
            self.model.to(device)
        self.device = next(model.parameters()).device
        self.model.eval()

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_pretrained(
        cls,
        path: str | os.PathLike,
        device: str | torch.device | None = None,
        dtype: torch.dtype | None = None,
        prompt_format: str = "plain",
    ) -> "TransformersPolicy":
        """Load a local directory saved with ``save_pretrained`` (model + tokenizer).

        Nothing is downloaded: the path must exist locally. Transformers' weight-loading
        progress bar is off while loading (set ``PRMGYM_LOADING_BARS=1`` to see it).
        """
        from transformers import AutoConfig, AutoModelForCausalLM

        path = os.fspath(path)
        from prmgym.models import lora

        if os.path.isdir(path) and lora.is_adapter_dir(path):  # a LoRA policy: base named in adapter_config.json
            policy = cls.from_pretrained(lora.base_model_path(path), device=device, dtype=dtype,
                                     prompt_format=prompt_format)
            policy.model = lora.load_adapter(policy.model, path)
            policy.model.eval()
            return policy
        if not os.path.isdir(path):
            raise FileNotFoundError(
                f"model directory {path!r} does not exist. Pass a local directory written by "
                "save_pretrained (e.g. one made with `prmgym pretrain --env prmgym/ChainArithmetic-v0 --out DIR`)."
            )
        if not os.path.exists(os.path.join(path, "config.json")):
            raise ValueError(
                f"{path!r} has no config.json, so it is not a Hugging Face model directory. "
                "Save the model with model.save_pretrained(dir) and tokenizer.save_pretrained(dir)."
            )
        config = AutoConfig.from_pretrained(path, local_files_only=True)
        try:
            with quiet_loading():
                model = AutoModelForCausalLM.from_pretrained(path, local_files_only=True, dtype=dtype)
        except ValueError as e:
            raise ValueError(
                f"{path!r} holds a {type(config).__name__} ({config.model_type!r}) that is not a causal "
                f"language model; TransformersPolicy needs one AutoModelForCausalLM can load "
                f"({str(e).splitlines()[0]})"
            ) from e
        tokenizer = load_tokenizer(path)
        return cls(model, tokenizer, device=device, prompt_format=prompt_format)

    def save(self, path: str | os.PathLike) -> str:
        """Write model and tokenizer with ``save_pretrained``; returns the directory. A LoRA
        policy writes its adapter only, in PEFT's format (`prmgym.models.lora.save_adapter`)."""
        from prmgym.models import lora

        path = os.fspath(path)
        os.makedirs(path, exist_ok=True)
        if lora.is_peft_model(self.model):
            lora.save_adapter(self.model, path)
        else:
            with quiet_loading():
                self.model.save_pretrained(path)
        self.tokenizer.save_pretrained(path)
        return path

    # ------------------------------------------------------------------ helpers
    @property
    def context_length(self) -> int | None:
        cfg = self.model.config
        for name in ("n_positions", "max_position_embeddings"):
            v = getattr(cfg, name, None)
            if v:
                return int(v)
        return None

    def encode(self, text: str) -> list[int]:
        """Token ids of an observation, exactly as `propose`/`logprobs` feed it: the
        `formatter`'s (plain: the text with the tokenizer's special tokens such as a bos;
        chat: through the chat template)."""
        return self.formatter.encode_observation(text)

    def _encode_continuation(self, cont: Sequence[int] | str) -> list[int]:
        if isinstance(cont, str):
            return list(self.tokenizer(cont, add_special_tokens=False)["input_ids"])
        return [int(t) for t in cont]

    @staticmethod
    def _check_observations(observations) -> list[str]:
        return check_propose_args(observations, 1, None, 1, 0.0, 1.0)[0]

    def _left_pad(self, seqs: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(input_ids, attention_mask, position_ids), each (B, L), left padded."""
        L = max(len(s) for s in seqs)
        pad = self.tokenizer.pad_token_id
        ids = torch.full((len(seqs), L), pad, dtype=torch.long)
        mask = torch.zeros((len(seqs), L), dtype=torch.long)
        for i, s in enumerate(seqs):
            if s:
                ids[i, L - len(s):] = torch.tensor(s, dtype=torch.long)
                mask[i, L - len(s):] = 1
        pos = (mask.cumsum(-1) - 1).clamp(min=0)
        return ids.to(self.device), mask.to(self.device), pos.to(self.device)

    # ------------------------------------------------------------------ propose
    @torch.inference_mode()
    def propose(
        self,
        observations: Sequence[str],
        n: int = 1,
        stop: str | Sequence[str] | None = "\n",
        max_new_tokens: int = 64,
        temperature: float = 1.0,
        top_p: float = 1.0,
        seed: int | None = None,
    ) -> list[list[Proposal]]:
        """Sample ``n`` next steps per observation.

        Args:
            observations: partial traces (``render_trace`` layout), one string each.
            n: proposals per observation (>= 1).
            stop: string(s) that end a step (the env's delimiter). The proposal's text is cut
                before the stop string; its ``token_ids`` keep the tokens that produced it.
                ``None``/``""`` disables stop strings.
            max_new_tokens: token limit per proposal (finish reason ``"length"``); also
                clipped so prefix + proposal fit the model's context.
            temperature: 0 means greedy; otherwise logits are divided by it before sampling.
            top_p: nucleus sampling (keep the smallest set of tokens with mass >= top_p).
            seed: seeds a private ``torch.Generator``: the same call returns the same proposals.
                Each sample row draws one uniform number per step whatever the other rows do,
                so a proposal does not change when its neighbours finish earlier.

        Returns:
            ``out[i][j]``: proposal j for observation i.
        """
        observations, stops = check_propose_args(observations, n, stop, max_new_tokens, temperature, top_p)
        # The stop string can only first appear inside the last few tokens: decode a window.
        window = max((4 * len(s) + 2 for s in stops), default=0)
        eos_ids = self._eos_ids()

        prefixes = [self.encode(o) for o in observations]
        B = len(prefixes)
        ctx = self.context_length
        longest = max(len(p) for p in prefixes)
        if ctx is not None:
            if longest >= ctx:
                raise ValueError(
                    f"an observation is {longest} tokens long but the model's context is {ctx}; "
                    "shorten the trace (fewer steps) or use a model with a longer context"
                )
            max_new_tokens = min(max_new_tokens, ctx - longest)

        gen = torch.Generator(device="cpu")
        if seed is None:
            gen.seed()
        else:
            gen.manual_seed(int(seed))

        ids, mask, pos = self._left_pad(prefixes)
        extra = {"logits_to_keep": 1} if self._accepts_logits_to_keep() else {}
        cache = self._new_cache()  # filled in place by every forward pass below
        out = self.model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True,
                         **{self._cache_kwarg(): cache}, **extra)
        logits = out.logits[:, -1, :].float()  # (B, V)
        # Expand prefix state to the n samples per observation (row r = obs r // n, sample r % n).
        if n > 1:
            cache.batch_repeat_interleave(n)
            logits = logits.repeat_interleave(n, dim=0)  # (B*n, V)
            mask = mask.repeat_interleave(n, dim=0)
            pos = pos.repeat_interleave(n, dim=0)
        R = B * n
        next_pos = pos[:, -1] + 1  # (R,)

        tokens: list[list[int]] = [[] for _ in range(R)]
        lps: list[list[float]] = [[] for _ in range(R)]
        finish: list[str | None] = [None] * R
        texts: list[str | None] = [None] * R
        active = torch.arange(R, device=self.device)  # rows still generating, in cache order

        for t in range(max_new_tokens):
            u = torch.rand(R, generator=gen)[active.cpu()].to(self.device)  # (A,)
            logp = torch.log_softmax(logits, dim=-1)  # (A, V): raw-logit log-probs (reported)
            nxt = _sample(logits, temperature, top_p, u)  # (A,)
            chosen_lp = logp.gather(1, nxt[:, None]).squeeze(1)  # (A,)
            nxt_l, lp_l, rows = nxt.tolist(), chosen_lp.tolist(), active.tolist()
            keep = []
            check_rows = []
            for k, r in enumerate(rows):
                tokens[r].append(nxt_l[k])
                lps[r].append(lp_l[k])
                if nxt_l[k] in eos_ids:
                    finish[r] = "eos"
                else:
                    check_rows.append((k, r))
            if stops and check_rows:
                tails = self.tokenizer.batch_decode(
                    [tokens[r][-window:] for _, r in check_rows], skip_special_tokens=True
                )
                for (k, r), tail in zip(check_rows, tails):
                    if any(s in tail for s in stops):
                        full = self.tokenizer.decode(tokens[r], skip_special_tokens=True)
                        cut = min((full.find(s) for s in stops if s in full), default=-1)
                        if cut >= 0:
                            finish[r] = "stop"
                            texts[r] = full[:cut]
            for k, r in enumerate(rows):
                if finish[r] is None:
                    keep.append(k)
            if not keep or t == max_new_tokens - 1:
                break
            if len(keep) < len(rows):  # drop finished rows from the batch and the cache
                sel = torch.tensor(keep, device=self.device)
                cache.batch_select_indices(sel)
                mask = mask[sel]
                next_pos = next_pos[sel]
                nxt = nxt[sel]
                active = active[sel]
            mask = torch.cat([mask, mask.new_ones((mask.shape[0], 1))], dim=1)  # (A, L+t+1)
            out = self.model(
                input_ids=nxt[:, None],
                attention_mask=mask,
                position_ids=next_pos[:, None],
                use_cache=True,
                **{self._cache_kwarg(): cache},
            )
            logits = out.logits[:, -1, :].float()
            next_pos = next_pos + 1

        results: list[list[Proposal]] = []
        for i in range(B):
            group = []
            for j in range(n):
                r = i * n + j
                reason = finish[r] or "length"
                if texts[r] is not None:
                    text = texts[r]
                else:
                    body = tokens[r][:-1] if reason == "eos" else tokens[r]
                    text = self.tokenizer.decode(body, skip_special_tokens=True)
                group.append(
                    Proposal(
                        text=text,
                        token_ids=list(tokens[r]),
                        logprobs=list(lps[r]),
                        finish_reason=reason,
                        tokens_generated=len(tokens[r]),
                        tokens_encoded=len(prefixes[i]) if j == 0 else 0,
                    )
                )
            results.append(group)
        return results

    def _new_cache(self):
        from transformers import DynamicCache

        try:
            return DynamicCache(config=self.model.config)
        except TypeError:  # transformers releases whose DynamicCache takes no config
            return DynamicCache()

    def _cache_kwarg(self) -> str:
        """``cache`` (current transformers) or ``past_key_values`` (releases before the rename)."""
        if not hasattr(self, "_ckw"):
            import inspect

            base = self.model.get_base_model() if hasattr(self.model, "get_base_model") else self.model  # PEFT wraps it
            params = inspect.signature(base.forward).parameters
            self._ckw = "cache" if "cache" in params else "past_key_values"
        return self._ckw

    def _accepts_logits_to_keep(self) -> bool:
        if not hasattr(self, "_ltk"):
            import inspect

            self._ltk = "logits_to_keep" in inspect.signature(self.model.forward).parameters
        return self._ltk

    def _eos_ids(self) -> set[int]:
        ids = set()
        if self.tokenizer.eos_token_id is not None:
            ids.add(int(self.tokenizer.eos_token_id))
        gen_cfg = getattr(self.model, "generation_config", None)
        e = getattr(gen_cfg, "eos_token_id", None) if gen_cfg is not None else None
        if isinstance(e, int):
            ids.add(e)
        elif e:
            ids.update(int(x) for x in e)
        return ids

    # ------------------------------------------------------------------ logprobs
    def logprobs(
        self,
        observations: Sequence[str],
        continuations: Sequence[Sequence[int] | str],
        requires_grad: bool = False,
    ) -> list[torch.Tensor]:
        """Per-token log π(token | observation + earlier tokens) of each continuation.

        One forward pass over the left-padded batch of ``observation + continuation``.
        Token-id continuations are used as given (pass ``Proposal.token_ids`` to score what
        was sampled); string continuations are tokenized without special tokens.

        Returns:
            a list of 1-D float32 tensors, one per continuation (length = its token count;
            empty continuations give empty tensors). With ``requires_grad=True`` they carry
            gradients to the model's parameters (the model is not switched to train mode:
            call ``policy.model.train()`` yourself if you want dropout).
        """
        observations = self._check_observations(observations)
        if isinstance(continuations, str):
            raise TypeError("continuations must be a list (of strings or token-id lists), got a single string")
        continuations = list(continuations)
        if len(continuations) != len(observations):
            raise ValueError(
                f"got {len(observations)} observations but {len(continuations)} continuations; "
                "pass one continuation per observation (repeat an observation to score several)"
            )
        prefixes = [self.encode(o) for o in observations]
        conts = [self._encode_continuation(c) for c in continuations]
        seqs = [p + c for p, c in zip(prefixes, conts)]
        ctx = self.context_length
        longest = max(len(s) for s in seqs)
        if ctx is not None and longest > ctx:
            raise ValueError(
                f"observation + continuation is {longest} tokens but the model's context is {ctx}"
            )
        ids, mask, pos = self._left_pad(seqs)
        L = ids.shape[1]
        with torch.set_grad_enabled(requires_grad):
            logits = self.model(input_ids=ids, attention_mask=mask, position_ids=pos).logits  # (B, L, V)
            out = []
            for i, c in enumerate(conts):
                if not c:
                    out.append(logits.new_zeros((0,), dtype=torch.float32))
                    continue
                # Continuation token k sits at column L - len(c) + k and is predicted one column earlier.
                rows = logits[i, L - len(c) - 1 : L - 1, :].float()  # (len(c), V)
                lp = torch.log_softmax(rows, dim=-1)
                target = torch.tensor(c, device=lp.device)[:, None]
                out.append(lp.gather(1, target).squeeze(1))
        return out


class quiet_loading:
    """Context manager: transformers' weight-loading progress bars off inside (unless
    ``PRMGYM_LOADING_BARS=1``), restored on exit."""

    def __enter__(self):
        from transformers.utils import logging as hf_logging

        self._was = hf_logging.is_progress_bar_enabled()
        if os.environ.get("PRMGYM_LOADING_BARS", "") != "1":
            hf_logging.disable_progress_bar()
        return self

    def __exit__(self, *exc):
        from transformers.utils import logging as hf_logging

        if self._was:
            hf_logging.enable_progress_bar()
        return False


def _sample(logits: torch.Tensor, temperature: float, top_p: float, u: torch.Tensor) -> torch.Tensor:
    """Pick one token per row by inverse-CDF sampling with the given uniforms ``u`` (A,)."""
    if temperature == 0:
        return logits.argmax(dim=-1)
    probs = torch.softmax(logits / temperature, dim=-1)  # (A, V)
    if top_p < 1.0:
        sp, si = probs.sort(dim=-1, descending=True)
        cum = sp.cumsum(-1)
        # keep a token if the mass before it is < top_p (always keeps the most likely one)
        sp = sp.masked_fill(cum - sp >= top_p, 0.0)
        c = sp.cumsum(-1)
        k = torch.searchsorted(c, (u * c[:, -1])[:, None], right=True).clamp(max=c.shape[1] - 1)
        return si.gather(1, k).squeeze(1)
    c = probs.cumsum(-1)
    k = torch.searchsorted(c, (u * c[:, -1])[:, None], right=True).clamp(max=c.shape[1] - 1)
    return k.squeeze(1)
