"""stable-baselines3 interop: every reasoning env at the token level, and an LM actor-critic.

SB3 cannot take ``Text`` spaces, so `TokenEnv` shows a `ReasoningEnv` one token at a time:

* **observation** — ``{"input_ids": int64[max_length], "length": int64[1]}``: the token ids of
  the current text (the env's rendered trace plus the chunk written so far), right-padded
  with the pad id, and how many of them are real.
* **action** — ``Discrete(vocab_size)``: the next token, appended to the text.
* **chunks** — when the text written since the last chunk ends with the env's step
  delimiter or one of the ``stop`` strings (or reaches ``max_chunk_tokens``, or the action is
  the EOS token), the chunk is decoded and handed to the underlying env's ``step``. The
  observation is then the env's own rendered text, tokenized again.
* **reward** — the env's outcome reward at termination, plus ``prm_weight`` times the score
  a `ProcessRewardModel` gives the newest step at every chunk boundary (``prm=``).
* **episode end** — the env terminates or truncates; or the text reaches ``max_length``
  tokens or the episode ``max_new_tokens`` generated tokens (truncated, reward 0 for the
  unfinished chunk); or EOS ends a chunk that does not terminate (truncated).

`LMActorCriticPolicy` (in `prmgym.integrations.sb3_policy`) is the matching SB3 policy, and
`make_ppo` builds SB3's PPO from a pretrained local model directory.

>>> import gymnasium as gym, prmgym
>>> from prmgym.models.tokenizer import char_tokenizer
>>> env = TokenEnv(gym.make("prmgym/ChainArithmetic-v0"), char_tokenizer(), max_length=128)
>>> obs, info = env.reset(seed=0)
>>> int(obs["length"][0]) == len(info["text"]) + 1   # one token per character, plus <bos>
True
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from prmgym.envs.core import ReasoningEnv


def load_tokenizer(tokenizer: Any) -> Any:
    """A tokenizer object, or the one saved in a local model directory (path)."""
    if isinstance(tokenizer, str):
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(tokenizer)
    if not callable(getattr(tokenizer, "decode", None)):
        raise TypeError(f"tokenizer must be a Hugging Face tokenizer or the path of a directory holding one, got {type(tokenizer).__name__}")
    return tokenizer


class TokenEnv(gym.Env):
    """A token-level Gymnasium env over a `ReasoningEnv` (see the module docstring).

    Args:
        env: a `ReasoningEnv`, or a Gymnasium env wrapping one (``gym.make("prmgym/...")``).
        tokenizer: the policy's tokenizer (or its model directory).
        max_length: tokens in the observation (prompt + everything written); prompts must be
            shorter.
        max_new_tokens: tokens generated per episode before truncation (default: no limit
            beyond ``max_length``).
        stop: strings that also end a chunk, besides the env's step delimiter.
        max_chunk_tokens: a chunk this long is handed to the env even without a delimiter.
        prm: a `ProcessRewardModel`; its score of each new step is added to the reward.
        prm_weight: multiplier of the PRM score.
        vocab_size: size of the action space (default ``len(tokenizer)``; pass the model's
            output size when it is larger).
    """

    metadata = {"render_modes": ["ansi"], "render_fps": 4}

    def __init__(
        self,
        env: gym.Env,
        tokenizer: Any,
        *,
        max_length: int = 256,
        max_new_tokens: int | None = None,
        stop: Sequence[str] = (),
        max_chunk_tokens: int | None = None,
        prm: Any = None,
        prm_weight: float = 1.0,
        vocab_size: int | None = None,
        render_mode: str | None = None,
    ) -> None:
        if not isinstance(getattr(env, "unwrapped", None), ReasoningEnv):
            raise TypeError(f"TokenEnv wraps a prmgym ReasoningEnv (e.g. gym.make('prmgym/ChainArithmetic-v0')), got {type(env).__name__}")
        for name, v in (("max_length", max_length), ("max_new_tokens", max_new_tokens), ("max_chunk_tokens", max_chunk_tokens)):
            if v is not None and (not isinstance(v, int) or v < 1):
                raise ValueError(f"{name} must be a positive integer, got {v!r}")
        if isinstance(stop, str):
            stop = (stop,)
        if any(not isinstance(s, str) or not s for s in stop):
            raise ValueError(f"stop must be non-empty strings, got {stop!r}")
        if prm is not None and not callable(getattr(prm, "score_steps", None)):
            raise TypeError(f"prm must be a prmgym.rewards.ProcessRewardModel (it needs score_steps), got {type(prm).__name__}")
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise ValueError(f"render_mode must be None or 'ansi', got {render_mode!r}")
        self.env = env
        self.tokenizer = load_tokenizer(tokenizer)
        self.max_length = max_length
        self.max_new_tokens = max_new_tokens
        self.max_chunk_tokens = max_chunk_tokens
        self.prm = prm
        self.prm_weight = float(prm_weight)
        self.render_mode = render_mode
        u = env.unwrapped
        self.stops = (u.delimiter, *[s for s in stop if s != u.delimiter])
        n = int(vocab_size or len(self.tokenizer))
        if n < len(self.tokenizer):
            raise ValueError(f"vocab_size={n} is smaller than the tokenizer's {len(self.tokenizer)} tokens")
        self.vocab_size = n
        pad = self.tokenizer.pad_token_id
        self.pad_id = int(pad if pad is not None else (self.tokenizer.eos_token_id or 0))
        self.eos_id = self.tokenizer.eos_token_id
        self.action_space = spaces.Discrete(n)
        self.observation_space = spaces.Dict({
            "input_ids": spaces.Box(0, n - 1, shape=(max_length,), dtype=np.int64),
            "length": spaces.Box(0, max_length, shape=(1,), dtype=np.int64),
        })
        self._ids: list[int] = []
        self._chunk: list[int] = []
        self._generated = 0
        self._text = self._base = ""
        self._last_info: dict[str, Any] = {}
        self._done = True

    # ------------------------------------------------------------------ helpers
    def _encode(self, text: str) -> list[int]:
        ids = list(self.tokenizer(text)["input_ids"])
        if len(ids) >= self.max_length:
            task = self.env.unwrapped.task
            raise ValueError(
                f"the text of task {getattr(task, 'id', '?')!r} is {len(ids)} tokens, which leaves no room to generate "
                f"under max_length={self.max_length}; raise max_length (the model must accept that many positions)"
            )
        return ids

    def _obs(self) -> dict[str, np.ndarray]:
        ids = np.full(self.max_length, self.pad_id, dtype=np.int64)
        ids[: len(self._ids)] = self._ids
        return {"input_ids": ids, "length": np.array([len(self._ids)], dtype=np.int64)}

    def _info(self, env_info: dict, chunk: str | None = None) -> dict[str, Any]:
        return {**env_info, "text": self._text, "chunk": chunk, "tokens_generated": self._generated}

    def _ends_chunk(self, token: int, text: str) -> bool:
        if self.eos_id is not None and token == self.eos_id:
            return True
        if self.max_chunk_tokens is not None and len(self._chunk) >= self.max_chunk_tokens:
            return True
        return any(text.endswith(s) for s in self.stops)

    # ------------------------------------------------------------------ gym API
    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        text, info = self.env.reset(seed=seed, options=options)
        self._base = self._text = text
        self._last_info = info
        self._ids = self._encode(text)
        self._chunk, self._generated, self._done = [], 0, False
        return self._obs(), self._info(info)

    def step(self, action):
        if self._done:
            raise gym.error.ResetNeeded("this episode is over; call reset() before step()")
        token = int(np.asarray(action).reshape(-1)[0]) if np.ndim(action) else int(action)
        if not 0 <= token < self.vocab_size:
            raise ValueError(f"action {token} is outside Discrete({self.vocab_size})")
        self._ids.append(token)
        self._chunk.append(token)
        self._generated += 1
        chunk = self.tokenizer.decode(self._chunk, skip_special_tokens=True)
        reward, terminated, truncated, env_info, sent = 0.0, False, False, {}, None
        if self._ends_chunk(token, chunk):
            sent = chunk
            text, r, terminated, truncated, env_info = self.env.step(chunk)
            reward = float(r)
            if self.prm is not None and env_info.get("steps"):
                task = self.env.unwrapped.task
                score = self.prm.score_steps([task.prompt], [list(env_info["steps"])])[0][-1]
                reward += self.prm_weight * float(score)
            if self.eos_id is not None and token == self.eos_id and not terminated:
                truncated = True
            self._base = self._text = text
            self._last_info = env_info
            self._chunk = []
            if not (terminated or truncated):
                ids = list(self.tokenizer(text)["input_ids"])
                if len(ids) >= self.max_length:
                    truncated = True
                    ids = ids[: self.max_length]
                self._ids = ids
        else:
            self._text = self._base + chunk
            env_info = self._last_info
        if not (terminated or truncated):
            if len(self._ids) >= self.max_length or (self.max_new_tokens and self._generated >= self.max_new_tokens):
                truncated = True
        if terminated or truncated:
            self._ids = self._ids[: self.max_length]
        self._done = terminated or truncated
        return self._obs(), reward, terminated, truncated, self._info(env_info, sent)

    def render(self) -> str | None:
        if self.render_mode is None:
            gym.logger.warn("render() called with render_mode=None; pass render_mode='ansi'")
            return None
        return self._text

    def close(self) -> None:
        self.env.close()


def make_token_env(env_id: str, tokenizer: Any, env_kwargs: dict | None = None, **token_kwargs: Any) -> TokenEnv:
    """``TokenEnv(gym.make(env_id, **env_kwargs), tokenizer, **token_kwargs)``."""
    from prmgym.envs.registration import make

    return TokenEnv(make(env_id, **(env_kwargs or {})), tokenizer, **token_kwargs)


def token_env_fn(env_id: str, tokenizer: Any, env_kwargs: dict | None = None, **token_kwargs: Any) -> Callable[[], TokenEnv]:
    """A picklable zero-argument builder for SB3's ``make_vec_env`` (works with SubprocVecEnv).
    ``tokenizer`` is best a model directory path: each process loads its own copy."""
    import functools

    return functools.partial(make_token_env, env_id, tokenizer, env_kwargs, **token_kwargs)


def __getattr__(name: str):
    # the policy needs torch and stable-baselines3; importing TokenEnv needs neither
    if name in ("LMActorCriticPolicy", "make_ppo", "export_lm"):
        from prmgym.integrations import sb3_policy

        return getattr(sb3_policy, name)
    raise AttributeError(name)
