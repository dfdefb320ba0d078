"""AIRL discriminator as a process reward model (AIRL-S).

Two linear heads on one LM body, read at step boundaries (see `prmgym.rewards.backbone`):

* ``g(s, a)`` read at the end of step ``a`` (the body has seen ``s`` and ``a``),
* ``h(s)`` read at the end of state ``s`` (the prompt for ``s_0``, step ``i`` for ``s_i``).

    f(s, a, s') = g(s, a) + γ·h(s') − h(s)
    D(s, a)     = exp f / (exp f + π(a|s)) = σ(f − log π(a|s))

**LM prior (``lm_prior=True``, default).** The optimal AIRL discriminator has
``f* = log π_expert(a|s)``. The PRM's body is a copy of the policy's LM, so g starts from that
LM's own log-probability of the step (on the scale below) plus a learned linear head:
``g(s, a) = log p_θ(a|s) + w_g·x + b``, all in the same forward pass. At initialisation
f − log π = 0 exactly (D = 1/2), and training moves both the head and p_θ. (Without it, g and
h(s') are read from the same hidden state — in reasoning MDPs s' = s + a, so g(s, a) and
h(s') are the same function class and the split of f into g and h is not identified; on
corrupted-step traces the unanchored g ranked steps worse than chance: docs/rewards.md.)

**Scale of log π.** ``log π(a|s)`` of a whole step is the sum of its token log-probs, tens
of nats for a step of a dozen tokens, which would pin D at 1 for every step. We use the
*length-normalised* log-probability by default (``logpi_scale="mean"``: the mean token
log-prob of ``step + delimiter``); ``"sum"`` is available. On its first update the
discriminator without the LM prior also sets the bias of g to the batch mean of ``log π`` (a
data-dependent initialisation), so that D starts near 1/2 instead of saturating; `tests/test_rewards_airl.py`
checks both.

**Outputs.** ``step_rewards`` gives the RL reward ``log D − log(1 − D) = f − log π`` per step.
``score_steps`` gives the search score: ``g`` (default, ``search_score="g"``) or ``f``
(``search_score="f"``); neither moves when the policy moves. With ``squash=True`` (default)
the score is ``σ(g)`` (resp. ``σ(f)``) in [0, 1], so ``prod``/``min`` aggregations make sense.

Training batch (`PRMBatch`): ``labels`` 1 for expert steps (expert solutions and the policy's
verified-correct rollouts), 0 for policy steps; ``step_logprobs``/``step_ntokens`` from the
current policy (`prmgym.rewards.data.fill_logprobs`); optional ``context_steps``: leading steps
that are only the state of a trace (an expert prefix before one proposed policy step) and are
left out of the loss. Loss: class-balanced binary cross-entropy on the logit ``f − log π``,
plus ``expert_nll`` × the body's mean token NLL of the demonstrations' steps
(``PRMBatch.demonstrations``: the expert solutions, not the policy's correct rollouts).

**Who trains what (defaults).** The optimum ``f* = log π_E`` can be estimated two ways: by
contrast with the policy (the BCE: D is noise-contrastive estimation with π as the noise) and,
for g's LM term ``log p_θ``, which is a normalised distribution over steps, by maximum likelihood
on the demonstrations. With ``discriminator_trains_body=False`` (default) the BCE trains only
the heads (at ``head_learning_rate``, 1e-5) and the body learns from the NLL alone (at
``learning_rate``, 1e-3). The BCE's gradient into the body pushes down the policy's steps, most
of which are right; at every rate high enough to move the body it lowered the outcome AUC below
the untrained prior, while the NLL raised it (docs/rewards.md, "AIRL beyond its prior").

**Where the policy's steps come from** (`prmgym.rewards.train.PRMTrainConfig.airl_negatives`).
The optimum ``f* − log π = log π_E(a|s) − log π(a|s)`` holds when expert and policy steps are
taken in the same states. Steps of whole policy rollouts (``"rollouts"``) are taken in the
policy's own states, which after its first error the expert never visits; the discriminator can
then separate the classes by the state alone. Steps the policy proposes at the prefixes of the
expert's solutions (``"prefixes"``, `prmgym.rewards.data.prefix_proposals`) share the expert's
states, so the only thing left to tell them apart is the step itself: the ranking of sibling
steps that beam search and MCTS ask of a PRM. Neither uses a step label.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch
import torch.nn.functional as F

from prmgym.config import help_field
from prmgym.rewards.scalar import MissingClassError, PRMBatch, PRMOptions, ScalarHeadPRM

SEARCH_SCORES = ("g", "f")
LOGPI_SCALES = ("mean", "sum")
#: statistics of the body's token log-probs of a step that the heads may read next to the hidden state
RESIDUAL_FEATURES = ("token_min", "sum")


def parse_residual_features(spec: str) -> tuple[str, ...]:
    """``"token_min,sum"`` -> ``("token_min", "sum")``; ``"none"`` or ``""`` -> ``()``.

    >>> parse_residual_features("token_min")
    ('token_min',)
    """
    names = tuple(x.strip() for x in str(spec).split(",") if x.strip() and x.strip() != "none")
    bad = [n for n in names if n not in RESIDUAL_FEATURES]
    if bad or len(set(names)) != len(names):
        raise ValueError(f"residual_features {spec!r}: a comma list of distinct names from "
                         f"{', '.join(RESIDUAL_FEATURES)} (or none)")
    return names


def normalised_logpi(step_logprobs: Sequence[Sequence[float]], step_ntokens: Sequence[Sequence[int]] | None, scale: str) -> list[list[float]]:
    """``log π`` per step on the chosen scale (``mean``: divided by the step's token count)."""
    if scale not in LOGPI_SCALES:
        raise ValueError(f"unknown logpi_scale {scale!r}; valid: {', '.join(LOGPI_SCALES)}")
    if scale == "sum":
        return [[float(x) for x in lp] for lp in step_logprobs]
    if step_ntokens is None:
        raise ValueError("logpi_scale='mean' needs step_ntokens (tokens per step) next to step_logprobs")
    return [[float(x) / max(1, int(n)) for x, n in zip(lp, nt)] for lp, nt in zip(step_logprobs, step_ntokens)]


def expert_vs_policy_batch(data: Any, step: int, negatives: str = "rollouts", extra_experts: bool = False) -> PRMBatch:
    """The batch of a learner that contrasts expert and policy steps (AIRL, rePIRL): expert
    solutions and verified-correct rollouts labelled 1, the policy's steps labelled 0, with the
    policy's log-probs. ``negatives``: ``"rollouts"`` (its other whole rollouts), ``"prefixes"``
    (steps proposed at the expert's prefixes, the prefix as context) or ``"both"``. With
    ``extra_experts`` the expert solutions of ``expert_tasks`` more tasks join the positives."""
    cfg = data.config
    tasks = data.tasks(step)
    experts = data.experts(tasks)
    at_prefixes = negatives != "rollouts"
    if at_prefixes and not experts:
        raise ValueError(f"airl_negatives={negatives!r} samples at the prefixes of expert solutions, but none of "
                         f"this update's {len(tasks)} training tasks has one (Task.expert_steps); use "
                         "airl_negatives='rollouts' for a task source without expert solutions")
    rolls = data.rollouts(tasks, step) if negatives != "prefixes" else []
    demos = experts + (data.experts(data.expert_only_tasks(step)) if extra_experts else [])  # more tasks: no rollouts
    pos = demos + [r for r in rolls if r.correct]
    neg = [r for r in rolls if not r.correct]
    if at_prefixes:
        neg = data.prefix_proposals(experts, step, cfg.proposals_per_prefix) + neg
    batch = data.contrast_batch(pos, neg, context_prefixes=at_prefixes)
    batch.demonstrations = [i < len(demos) for i in range(len(batch))]
    return batch


@dataclass
class AIRLOptions(PRMOptions):
    """`AIRLPRM`'s options. By default (measured: docs/rewards.md, "AIRL beyond its prior") the body
    is trained only by ``expert_nll``, the maximum-likelihood fit of g's LM term to the
    demonstrations, at ``learning_rate`` 1e-3; the discriminator loss trains the heads at
    ``head_learning_rate`` 1e-5. With the discriminator loss on the body, every rate from 1e-4 up
    lowered the outcome AUC of the policy's own solutions below the untrained prior."""

    learning_rate: float = help_field(1e-3, "AdamW learning rate of `update` (the body's)")
    head_learning_rate: float = help_field(1e-5, "learning rate of the heads g, h (0 = learning_rate)")
    gamma: float = help_field(1.0, "discount in the shaping term f = g + gamma * h(s') - h(s)")
    search_score: str = help_field("g", "what score_steps returns: g | f")
    logpi_scale: str = help_field("mean", "log pi of a step: mean (length-normalised) | sum")
    lm_prior: bool = help_field(True, "g starts from the body's LM log-prob of the step (zero heads)")
    init_bias_from_data: bool = help_field(True, "without lm_prior: set g's bias to the first batch's mean log pi")
    expert_nll: float = help_field(1.0, "with lm_prior: weight of the body's mean token negative log-likelihood "
                                   "of the expert (label 1) steps, added to the discriminator loss: fits g's LM "
                                   "term to the expert's steps by maximum likelihood (0 = off)")
    discriminator_trains_body: bool = help_field(False, "with lm_prior: true lets the discriminator loss train the body "
                                                 "too; false (default): it trains only the heads (it reads the body's "
                                                 "hidden states and LM log-prob without a gradient) and the body learns "
                                                 "from expert_nll alone. Without lm_prior (no LM term to fit) the "
                                                 "discriminator loss trains the whole PRM")
    legacy_options = {"expert_nll": 0.0, "discriminator_trains_body": True}  # saved before they existed: as trained
    residual_features: str = help_field("none", "with lm_prior: statistics of the body's token log-probs of the step "
                                        "the heads read next to the hidden state (zero weights at first): none | a "
                                        "comma list of token_min (the least likely token), sum (summed log-prob)")

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.search_score not in SEARCH_SCORES:
            raise ValueError(f"unknown search_score {self.search_score!r}; valid: {', '.join(SEARCH_SCORES)}")
        if self.logpi_scale not in LOGPI_SCALES:
            raise ValueError(f"unknown logpi_scale {self.logpi_scale!r}; valid: {', '.join(LOGPI_SCALES)}")
        if self.expert_nll < 0:
            raise ValueError(f"expert_nll must be >= 0 (0 = off), got {self.expert_nll}")
        if self.lm_prior and not self.discriminator_trains_body and not self.expert_nll and self.train_backbone:
            raise ValueError("discriminator_trains_body=False leaves the body to expert_nll, which is 0: nothing would "
                             "train the body; set expert_nll > 0, discriminator_trains_body=True, or "
                             "train_backbone=False to freeze the body")
        if parse_residual_features(self.residual_features) and not self.lm_prior:
            raise ValueError(f"residual_features={self.residual_features!r} reads the body's LM log-probs, which "
                             "lm_prior=False does not compute; set lm_prior=True or residual_features=none")


class AIRLPRM(ScalarHeadPRM):
    """The AIRL discriminator ``D = σ(g + γ·h(s') − h(s) − log π)``; see the module docstring.

    Options (`AIRLOptions`, besides `PRMOptions`): ``gamma``, ``search_score`` (``"g"`` | ``"f"``:
    what `score_steps` returns), ``logpi_scale`` (``"mean"``, default, | ``"sum"``), ``lm_prior``,
    ``init_bias_from_data`` (set g's bias to the mean log π of the first batch).
    ``bias_initialised`` is state (saved with the PRM), not an option.
    """

    kind = "airl"
    n_outputs = 2  # 0: g(s, a), 1: h(s)
    Options = AIRLOptions
    recipe_fields = ("airl_negatives", "proposals_per_prefix", "expert_tasks")
    needs_both_classes = True
    validation = "proposals"
    also_validate = ("corrupted",)  # prmgym.rewards.heldout: one-step-corrupted expert solutions

    def __init__(self, model, tokenizer, *, bias_initialised: bool = False, **options) -> None:
        super().__init__(model, tokenizer, **options)
        o = self.options
        self.residual_features = parse_residual_features(o.residual_features)
        if self.residual_features:  # the heads read [hidden, features]
            h = self.net.head
            self.net.head = torch.nn.Linear(h.in_features + len(self.residual_features), h.out_features,
                                            device=h.weight.device, dtype=h.weight.dtype)
        if o.lm_prior:
            # Zero heads: an untrained discriminator is exactly the LM prior (g = log p_θ(a|s),
            # h = 0, so f − log π = 0 and D = 1/2). A random head would add noise of the size of
            # the log-prob gaps between sibling steps (it lowered the AUC of the policy's own
            # proposals; figures in docs/rewards.md). A saved PRM loads its trained head over these.
            with torch.no_grad():
                self.net.head.weight.zero_()
                self.net.head.bias.zero_()
        self.gamma = float(o.gamma)
        self.search_score = o.search_score
        self.logpi_scale = o.logpi_scale
        self.lm_prior = bool(o.lm_prior)
        self.init_bias_from_data = bool(o.init_bias_from_data)
        self.bias_initialised = bool(bias_initialised)

    def config(self) -> dict:
        return {**super().config(), "bias_initialised": self.bias_initialised}

    def _after_inplace_load(self, other: "AIRLPRM") -> None:
        for k in ("gamma", "search_score", "logpi_scale", "lm_prior", "init_bias_from_data", "bias_initialised",
                  "residual_features"):
            setattr(self, k, getattr(other, k))

    @classmethod
    def training_batch(cls, data, step: int) -> PRMBatch:
        """Expert solutions and verified-correct rollouts (1) vs the policy's steps (0): its other
        rollouts (``airl_negatives="rollouts"``), ``proposals_per_prefix`` steps it proposes at
        every expert prefix with the prefix as context (``"prefixes"``), or both."""
        return expert_vs_policy_batch(data, step, data.config.airl_negatives, extra_experts=True)

    # -- the pieces of f --------------------------------------------------------------------
    def outputs(self, prompts, step_lists) -> list[torch.Tensor]:
        """``[g, h]`` at the boundaries ``(n+1, 2)``; with ``lm_prior`` g includes the LM term."""
        return [o[:, :2] for o in self.forward_all(prompts, step_lists)]

    def forward_all(self, prompts, step_lists) -> list[torch.Tensor]:
        """The one forward pass of training and scoring, per trace ``(n+1, 4)``: g and h at the
        boundaries, then (with ``lm_prior``) the body's summed LM log-prob of each step and its token
        count (row 0, the prompt, holds zeros there). Without ``discriminator_trains_body`` g and h
        carry no gradient to the body; the log-prob column always does (``expert_nll``)."""
        if not self.lm_prior:
            return super().outputs(prompts, step_lists)
        from prmgym.rewards.scalar import check_traces

        check_traces(prompts, step_lists)
        enc = [self.encoder.encode(p, s) for p, s in zip(prompts, step_lists)]
        feats = self.residual_features
        detach = not self.options.discriminator_trains_body
        res = self.net.hidden_and_segment_logprobs([e[0] for e in enc], [e[1] for e in enc], token_min="token_min" in feats)
        outs = []
        for (ids, bounds), (hidden, lm_sum, *seg_min) in zip(enc, res):
            seg_sum = lm_sum.detach() if detach else lm_sum
            if detach:
                hidden, seg_min = hidden.detach(), [m.detach() for m in seg_min]
            x = hidden
            if feats:  # per boundary, 0 at the prompt (no step there)
                cols = {"sum": seg_sum, "token_min": seg_min[0] if seg_min else None}
                extra = torch.stack([torch.cat([seg_sum.new_zeros(1), cols[f]]) for f in feats], dim=1)
                x = torch.cat([hidden, extra.to(hidden.dtype)], dim=1)
            out = self.net.head(x).float()
            n_tok = torch.tensor([b - a for a, b in zip(bounds[:-1], bounds[1:])], dtype=seg_sum.dtype, device=seg_sum.device)
            seg_lp = seg_sum / n_tok.clamp(min=1) if self.logpi_scale == "mean" else seg_sum
            pad = seg_lp.new_zeros(1)  # no step at the prompt
            outs.append(torch.stack([out[:, 0] + torch.cat([pad, seg_lp]).to(out.dtype), out[:, 1],
                                     torch.cat([pad, lm_sum]).to(out.dtype), torch.cat([pad, n_tok]).to(out.dtype)], dim=1))
        return outs

    def f_values(self, out: torch.Tensor) -> torch.Tensor:
        """``f`` per step from one trace's outputs ``(n+1, 2)`` -> ``(n,)``."""
        g = out[1:, 0]  # g(s_i, a_i) at the end of step i
        h = out[:, 1]  # h(s_0..s_n)
        return g + self.gamma * h[1:] - h[:-1]

    def _search_scores(self, out: torch.Tensor, n_steps: int) -> torch.Tensor:
        return out[1:, 0] if self.search_score == "g" else self.f_values(out)

    def logits(self, batch: PRMBatch) -> list[torch.Tensor]:
        """Discriminator logits ``f − log π`` per step (differentiable)."""
        return self._logits(batch, self.outputs(batch.prompts, batch.step_lists))

    def _logits(self, batch: PRMBatch, outs: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        batch.require("step_logprobs", who="AIRLPRM")
        lp = normalised_logpi(batch.step_logprobs, batch.step_ntokens, self.logpi_scale)
        dev = outs[0].device if outs else None
        return [self.f_values(o) - torch.tensor(l, dtype=o.dtype, device=dev) for o, l in zip(outs, lp)]

    def discriminator(self, batch: PRMBatch) -> list[list[float]]:
        """D(s, a) per step (no gradient)."""
        with torch.no_grad():
            return [torch.sigmoid(z).tolist() for z in self.logits(batch)]

    def step_rewards(self, prompts, step_lists, step_logprobs, step_ntokens=None) -> list[list[float]]:
        """The RL reward ``log D − log(1 − D) = f − log π`` per step (no gradient)."""
        batch = PRMBatch(prompts, step_lists, step_logprobs=step_logprobs, step_ntokens=step_ntokens)
        if self.init_bias_from_data and not self.bias_initialised:
            self._init_bias(batch)  # rewards asked before the first update: start D near 1/2 too
        was = self.net.training
        self.net.eval()
        try:
            with torch.no_grad():
                return [z.tolist() for z in self.logits(batch)]
        finally:
            self.net.train(was)

    # -- training ----------------------------------------------------------------------------
    def _init_bias(self, batch: PRMBatch) -> None:
        if self.lm_prior:  # f already starts at the LM's log π: D starts at 1/2 without a bias
            self.bias_initialised = True
            return
        lp = normalised_logpi(batch.step_logprobs, batch.step_ntokens, self.logpi_scale)
        vals = [x for row in batch.drop_context(lp) for x in row]  # context steps carry placeholder log-probs
        if vals:
            with torch.no_grad():
                self.net.head.bias[0] = float(sum(vals) / len(vals))
        self.bias_initialised = True

    @staticmethod
    def _demonstration_nll(batch: PRMBatch, full: Sequence[torch.Tensor]) -> torch.Tensor | None:
        """The body's mean token NLL of the demonstrations' steps (``batch.demonstrations``, or every
        label-1 trace without it), context steps left out; `forward_all`'s columns 2 and 3. None
        when the batch holds no demonstration."""
        demo = batch.demonstrations if batch.demonstrations is not None else [y >= 0.5 for y in batch.labels]
        rows = [o[1:, 2:] for o in full]
        kept = [r for r, d in zip(batch.drop_context(rows), demo) if d and len(r)]
        if not kept:  # no expert solution in this batch (use_expert off, a source without them): no NLL term
            return None
        cat = torch.cat(kept)
        return -cat[:, 0].sum() / cat[:, 1].sum().clamp(min=1)

    def loss(self, batch: PRMBatch) -> tuple[torch.Tensor, dict]:
        batch.require("labels", "step_logprobs", who="AIRLPRM")
        if self.init_bias_from_data and not self.bias_initialised:
            self._init_bias(batch)
        full = self.forward_all(batch.prompts, batch.step_lists)
        z = batch.drop_context(self._logits(batch, [o[:, :2] for o in full]))  # leading context steps are the state
        pos = [zi for zi, y in zip(z, batch.labels) if y >= 0.5 and len(zi)]
        neg = [zi for zi, y in zip(z, batch.labels) if y < 0.5 and len(zi)]
        if not pos or not neg:
            raise MissingClassError(
                f"AIRL update needs expert (label 1) and policy (label 0) steps; got {len(pos)} expert and "
                f"{len(neg)} policy traces with steps"
            )
        zp, zn = torch.cat(pos), torch.cat(neg)
        # class-balanced BCE: −E_expert[log D] − E_policy[log(1 − D)]
        loss = 0.5 * (F.binary_cross_entropy_with_logits(zp, torch.ones_like(zp))
                      + F.binary_cross_entropy_with_logits(zn, torch.zeros_like(zn)))
        nll = None
        if self.options.expert_nll and self.lm_prior:
            nll = self._demonstration_nll(batch, full)
            if nll is not None:
                loss = loss + float(self.options.expert_nll) * nll.to(loss.dtype)
        with torch.no_grad():
            metrics = {
                "disc_acc_expert": float((zp > 0).float().mean()),
                "disc_acc_policy": float((zn < 0).float().mean()),
                "D_expert": float(torch.sigmoid(zp).mean()),
                "D_policy": float(torch.sigmoid(zn).mean()),
            }
            metrics["disc_acc"] = 0.5 * (metrics["disc_acc_expert"] + metrics["disc_acc_policy"])
            if nll is not None:
                metrics["expert_nll"] = float(nll)
        return loss, metrics
