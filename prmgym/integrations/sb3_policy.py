"""`LMActorCriticPolicy`: an SB3 actor-critic whose actions are a causal LM's next tokens.

The policy reads `TokenEnv` observations (``input_ids`` right-padded, ``length``). Its action
logits are the LM's next-token logits at the last real position (the first ``n`` of them,
``n`` = the action space size), so PPO starts from whatever the pretrained model already
does. The value head is a linear layer on the LM's last hidden state at that position.

**Past key/values.** SB3's ``collect_rollouts`` calls ``policy.forward`` once per env step,
with one observation row per env (row ``i`` is env ``i``), under ``no_grad``. When
``reuse_past`` is on, the policy keeps each row's key/value cache and, when the new row is the
cached row plus one token, runs only that token. A row that does not extend its cache (a new
episode, a chunk boundary whose re-tokenized text differs) is recomputed in full. The caches
are dropped whenever the weights change (the parameters' version counters move) or training
mode starts, so a rollout never mixes old weights' keys with new weights. Rows run one by one
(batch 1), because rows of different lengths cannot share one cache tensor cheaply.

Where SB3's API does not allow reuse: ``evaluate_actions`` (the PPO update) gets shuffled
minibatches of single (observation, action) pairs, so every sampled token costs a forward pass
over its whole prefix; so do ``predict``, ``predict_values`` (bootstrap values at rollout end)
and ``get_distribution``. docs/sb3.md has the measured costs.

Saving: the LM is rebuilt from the config dict kept in ``policy_kwargs`` (`make_ppo` stores the
config there, not the path), and SB3's ``PPO.save`` / ``PPO.load`` carry its weights in the
policy's ``state_dict``, so a saved zip needs no model directory.
"""

from __future__ import annotations

import os
from typing import Any

import torch
from gymnasium import spaces
from stable_baselines3.common.policies import ActorCriticPolicy
from torch import nn


def _build_lm(lm: Any, seed: int):
    """A causal LM from a local directory (str) or a config dict (``config.to_dict()``)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    if isinstance(lm, (str, os.PathLike)):
        if not os.path.exists(os.path.join(lm, "config.json")):
            raise FileNotFoundError(f"{lm!r} is not a local Hugging Face model directory (no config.json); pass one saved with save_pretrained")
        return AutoModelForCausalLM.from_pretrained(lm)
    if isinstance(lm, dict) and "model_type" in lm:
        cfg = dict(lm)
        config = AutoConfig.for_model(cfg.pop("model_type"), **cfg)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return AutoModelForCausalLM.from_config(config)
    raise TypeError(f"lm must be a model directory or a transformers config dict (config.to_dict()), got {type(lm).__name__}")


def _as_long(x: torch.Tensor) -> torch.Tensor:
    return x if x.dtype == torch.long else x.round().long()  # SB3's rollout buffer stores observations as float32


class LMActorCriticPolicy(ActorCriticPolicy):
    """An `ActorCriticPolicy` over `TokenEnv` observations whose actor is a causal LM.

    Args (``policy_kwargs``):
        lm: a local model directory or a transformers config dict (see `make_ppo`).
        reuse_past: keep per-env key/value caches during rollouts (see the module docstring).
        lm_seed: initialisation seed when ``lm`` is a config dict (weights are then loaded).
    """

    def __init__(self, observation_space: spaces.Space, action_space: spaces.Space, lr_schedule, lm: Any = None,
                 reuse_past: bool = True, lm_seed: int = 0, **kwargs: Any) -> None:
        if not isinstance(action_space, spaces.Discrete):
            raise TypeError(f"LMActorCriticPolicy needs a Discrete action space (one token per action), got {action_space}")
        if not (isinstance(observation_space, spaces.Dict) and {"input_ids", "length"} <= set(observation_space.spaces)):
            raise TypeError("LMActorCriticPolicy reads TokenEnv observations: a Dict with 'input_ids' and 'length'; wrap the env in prmgym.integrations.sb3.TokenEnv")
        if lm is None:
            raise ValueError("LMActorCriticPolicy needs policy_kwargs={'lm': <model directory or config dict>}; prmgym.integrations.sb3.make_ppo sets it")
        self._lm_spec, self.reuse_past, self.lm_seed = lm, bool(reuse_past), int(lm_seed)
        kwargs["ortho_init"] = False  # the LM is pretrained: no re-initialisation
        kwargs.setdefault("net_arch", [])
        super().__init__(observation_space, action_space, lr_schedule, **kwargs)

    def _build(self, lr_schedule) -> None:
        self.lm = _build_lm(self._lm_spec, self.lm_seed)
        self.lm.config.use_cache = True
        out = self.lm.get_output_embeddings().weight.shape[0]
        n = int(self.action_space.n)
        if out < n:
            raise ValueError(f"the LM has {out} output logits but the action space is Discrete({n}); build TokenEnv with this model's tokenizer")
        positions = getattr(self.lm.config, "n_positions", None) or getattr(self.lm.config, "max_position_embeddings", None)
        max_length = self.observation_space["input_ids"].shape[0]
        if positions is not None and max_length > positions:
            raise ValueError(f"TokenEnv max_length={max_length} exceeds the LM's {positions} positions; lower max_length")
        self.value_net = nn.Linear(self.lm.config.hidden_size, 1)
        nn.init.zeros_(self.value_net.weight)
        nn.init.zeros_(self.value_net.bias)
        self._past: dict[int, tuple[torch.Tensor, list]] = {}  # row -> (its ids, per-layer (keys, values))
        self._weights_version: tuple[int, ...] = ()
        self.past_stats = {"incremental": 0, "full": 0}
        self.optimizer = self.optimizer_class(self.parameters(), lr=lr_schedule(1), **self.optimizer_kwargs)

    def _get_constructor_parameters(self) -> dict[str, Any]:
        data = super()._get_constructor_parameters()
        data.update(lm=self.lm.config.to_dict(), reuse_past=self.reuse_past, lm_seed=self.lm_seed)
        return data

    # ------------------------------------------------------------------ forward passes
    def _full(self, obs: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """(next-token logits [B, n], last hidden state [B, H]) with one padded forward pass."""
        ids = _as_long(obs["input_ids"]).to(self.device)
        lengths = _as_long(obs["length"]).reshape(-1).to(self.device).clamp(min=1)
        T = int(lengths.max())
        ids = ids[:, :T]
        mask = (torch.arange(T, device=self.device)[None, :] < lengths[:, None]).long()
        out = self.lm(input_ids=ids, attention_mask=mask, output_hidden_states=True, use_cache=False)
        rows = torch.arange(ids.shape[0], device=self.device)
        last = lengths - 1
        return out.logits[rows, last, : self.action_space.n], out.hidden_states[-1][rows, last]

    def _weights_fingerprint(self) -> tuple[int, ...]:
        return tuple(p._version for p in self.parameters())

    def _incremental(self, obs: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """Like `_full`, but a row that extends its cached row by one token runs only that token."""
        v = self._weights_fingerprint()
        if v != self._weights_version:
            self._past.clear()
            self._weights_version = v
        ids = _as_long(obs["input_ids"]).to(self.device)
        lengths = [max(int(L), 1) for L in _as_long(obs["length"]).reshape(-1).tolist()]
        extend, fresh = [], []
        for i, L in enumerate(lengths):
            cached = self._past.get(i)
            ok = cached is not None and cached[0].shape[0] == L - 1 and torch.equal(cached[0], ids[i, : L - 1])
            (extend if ok else fresh).append(i)
        logits = torch.empty(len(lengths), int(self.action_space.n), device=self.device)
        hidden = torch.empty(len(lengths), self.lm.config.hidden_size, device=self.device)
        if extend:
            self._extend_rows(ids, lengths, extend, logits, hidden)
        if fresh:
            self._fresh_rows(ids, lengths, fresh, logits, hidden)
        self.past_stats["incremental"] += len(extend)
        self.past_stats["full"] += len(fresh)
        return logits, hidden

    def _fresh_rows(self, ids, lengths, rows, logits, hidden) -> None:
        """One right-padded pass over whole prefixes; keeps each row's keys/values."""
        L = torch.tensor([lengths[i] for i in rows], device=self.device)
        T = int(L.max())
        mask = (torch.arange(T, device=self.device)[None, :] < L[:, None]).long()
        out = self.lm(input_ids=ids[rows, :T], attention_mask=mask, use_cache=True, output_hidden_states=True)
        r = torch.arange(len(rows), device=self.device)
        logits[rows] = out.logits[r, L - 1, : self.action_space.n]
        hidden[rows] = out.hidden_states[-1][r, L - 1]
        layers = [(layer.keys, layer.values) for layer in out.cache.layers]
        for j, i in enumerate(rows):
            n = lengths[i]
            self._past[i] = (ids[i, :n].clone(), [(k[j : j + 1, :, :n], v[j : j + 1, :, :n]) for k, v in layers])

    def _extend_rows(self, ids, lengths, rows, logits, hidden) -> None:
        """One pass over each row's newest token, the cached keys/values left-padded into one batch."""
        from transformers import DynamicCache

        cached = [lengths[i] - 1 for i in rows]
        P = max(cached)
        mask = torch.zeros(len(rows), P + 1, dtype=torch.long, device=self.device)
        batch = []
        for layer in range(len(self._past[rows[0]][1])):
            k0, v0 = self._past[rows[0]][1][layer]
            k = k0.new_zeros(len(rows), k0.shape[1], P, k0.shape[3])
            v = v0.new_zeros(len(rows), v0.shape[1], P, v0.shape[3])
            for j, i in enumerate(rows):
                ki, vi = self._past[i][1][layer]
                k[j, :, P - cached[j]:] = ki[0]
                v[j, :, P - cached[j]:] = vi[0]
            batch.append((k, v))
        for j, c in enumerate(cached):
            mask[j, P - c:] = 1
        pos = torch.tensor(cached, device=self.device)[:, None]
        new = torch.stack([ids[i, lengths[i] - 1] for i in rows])[:, None]
        out = self.lm(input_ids=new, attention_mask=mask, position_ids=pos, cache=DynamicCache(ddp_cache_data=batch),
                      use_cache=True, output_hidden_states=True)
        logits[rows] = out.logits[:, -1, : self.action_space.n]
        hidden[rows] = out.hidden_states[-1][:, -1]
        layers = [(layer.keys, layer.values) for layer in out.cache.layers]
        for j, i in enumerate(rows):
            n = lengths[i]
            self._past[i] = (ids[i, :n].clone(), [(k[j : j + 1, :, P + 1 - n :], v[j : j + 1, :, P + 1 - n :]) for k, v in layers])

    def set_training_mode(self, mode: bool) -> None:
        if mode:
            self._past.clear()
        super().set_training_mode(mode)

    def forward(self, obs: dict, deterministic: bool = False):
        if self.reuse_past and not torch.is_grad_enabled():
            logits, hidden = self._incremental(obs)
        else:
            logits, hidden = self._full(obs)
        dist = self.action_dist.proba_distribution(action_logits=logits)
        actions = dist.get_actions(deterministic=deterministic)
        return actions, self.value_net(hidden), dist.log_prob(actions)

    def evaluate_actions(self, obs: dict, actions: torch.Tensor):
        logits, hidden = self._full(obs)
        dist = self.action_dist.proba_distribution(action_logits=logits)
        return self.value_net(hidden), dist.log_prob(actions), dist.entropy()

    def get_distribution(self, obs: dict):
        return self.action_dist.proba_distribution(action_logits=self._full(obs)[0])

    def predict_values(self, obs: dict) -> torch.Tensor:
        return self.value_net(self._full(obs)[1])


def make_ppo(model_dir: str, env: Any, *, reuse_past: bool = True, seed: int = 0, device: str = "cpu",
             policy_kwargs: dict | None = None, **ppo_kwargs: Any):
    """SB3 ``PPO`` with an `LMActorCriticPolicy` starting from the model in ``model_dir``.

    ``policy_kwargs`` holds the model's config (not its path), and the pretrained weights are
    copied in after construction, so ``PPO.save`` writes a self-contained zip and
    ``PPO.load(path, env=...)`` rebuilds the same policy without the directory.
    """
    from stable_baselines3 import PPO
    from transformers import AutoModelForCausalLM

    lm = AutoModelForCausalLM.from_pretrained(model_dir)
    kw = {"lm": lm.config.to_dict(), "reuse_past": reuse_past, "lm_seed": seed, **(policy_kwargs or {})}
    ppo = PPO(LMActorCriticPolicy, env, policy_kwargs=kw, seed=seed, device=device, **ppo_kwargs)
    ppo.policy.lm.load_state_dict(lm.state_dict())
    return ppo


def export_lm(ppo: Any, tokenizer: Any, out_dir: str) -> str:
    """Save the trained LM (and ``tokenizer``) as a Hugging Face directory, e.g. for
    `prmgym.models.TransformersPolicy.from_pretrained` (held-out evaluation, search)."""
    from prmgym.integrations.sb3 import load_tokenizer

    os.makedirs(out_dir, exist_ok=True)
    ppo.policy.lm.save_pretrained(out_dir)
    load_tokenizer(tokenizer).save_pretrained(out_dir)
    return out_dir
