"""Policies: the `Policy` interface, the Hugging Face and vLLM backends and the tiny character model.

>>> from prmgym.models import TransformersPolicy, tiny
>>> policy = tiny.random_tiny_policy(seed=0)
>>> [[a, b]] = policy.propose(["Q: 1+1?\\n"], n=2, max_new_tokens=3, seed=1)
"""

from prmgym.models import tiny
from prmgym.models.hf import TransformersPolicy
from prmgym.models.policy import FinishReason, Policy, Proposal
from prmgym.models.tokenizer import char_tokenizer
from prmgym.models.vllm_policy import VLLMPolicy  # imports vllm only when one is built

__all__ = ["Policy", "Proposal", "FinishReason", "TransformersPolicy", "VLLMPolicy", "char_tokenizer", "tiny"]
