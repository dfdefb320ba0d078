"""TransformersPolicy, the character tokenizer and the random tiny policy (fast tests)."""

import os

import pytest
import torch

from prmgym.models import Policy, Proposal, TransformersPolicy, char_tokenizer, tiny

torch.set_num_threads(1)

OBS = ["Compute 2 + 3.\n", "Q: 7 * 6?\n7 * 6 = 42\n", ""]


@pytest.fixture(scope="module")
def policy():
    return tiny.random_tiny_policy(seed=0)


@pytest.fixture(scope="module")
def scripted():
    """A tiny GPT-2 over-fitted so that greedy decoding is predictable:
    after "Q\\n" it writes "12\\n34\\n", then <eos>."""
    pol = tiny.random_tiny_policy(seed=1)
    tok = pol.tokenizer
    ids = pol.encode("Q\n12\n34\n") + [tok.eos_token_id]
    x = torch.tensor([ids])
    model = pol.model
    model.train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    torch.manual_seed(0)
    for _ in range(400):
        loss = model(input_ids=x, labels=x).loss
        if loss.item() < 0.01:
            break
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    assert loss.item() < 0.05, f"scripted model did not fit: loss {loss.item()}"
    return pol


# -- tokenizer --------------------------------------------------------------------------
def test_char_tokenizer_roundtrip_and_loads_with_autotokenizer(tmp_path):
    from transformers import AutoTokenizer

    tok = char_tokenizer("é")
    text = "Compute 12 + 3 = 15.\nAnswer: 15\té"
    ids = tok(text)["input_ids"]
    assert ids[0] == tok.bos_token_id and len(ids) == len(text) + 1
    assert tok.decode(ids, skip_special_tokens=True) == text
    tok.save_pretrained(tmp_path)
    loaded = AutoTokenizer.from_pretrained(tmp_path)
    assert loaded(text)["input_ids"] == ids
    assert (loaded.pad_token_id, loaded.bos_token_id, loaded.eos_token_id) == (0, 1, 2)
    assert tok("ü")["input_ids"][1] == tok.unk_token_id  # outside the charset


def test_random_tiny_policy_is_seeded():
    a, b, c = tiny.random_tiny_policy(seed=3), tiny.random_tiny_policy(seed=3), tiny.random_tiny_policy(seed=4)
    pa, pb, pc = (next(p.model.parameters()) for p in (a, b, c))
    assert torch.equal(pa, pb) and not torch.equal(pa, pc)
    assert isinstance(a, Policy)


# -- propose ----------------------------------------------------------------------------
def test_propose_shapes_and_token_accounting(policy):
    out = policy.propose(OBS, n=3, max_new_tokens=12, seed=0)
    assert len(out) == len(OBS) and all(len(g) == 3 for g in out)
    for obs, group in zip(OBS, out):
        assert [p.tokens_encoded for p in group] == [len(policy.encode(obs)), 0, 0]
        for p in group:
            assert isinstance(p, Proposal)
            assert len(p.token_ids) == len(p.logprobs) == p.tokens_generated >= 1
            assert p.finish_reason in ("stop", "eos", "length")
            assert all(lp <= 0 for lp in p.logprobs)
            if p.finish_reason == "length":
                assert p.tokens_generated == 12
            if p.finish_reason == "eos":
                assert p.token_ids[-1] == policy.tokenizer.eos_token_id


def test_propose_is_reproducible_with_a_seed(policy):
    a = policy.propose(OBS, n=4, max_new_tokens=10, seed=123)
    b = policy.propose(OBS, n=4, max_new_tokens=10, seed=123)
    c = policy.propose(OBS, n=4, max_new_tokens=10, seed=124)
    ids = lambda out: [[p.token_ids for p in g] for g in out]  # noqa: E731
    assert ids(a) == ids(b)
    assert [[p.logprobs for p in g] for g in a] == [[p.logprobs for p in g] for g in b]
    assert ids(a) != ids(c)


def test_samples_of_one_observation_differ(policy):
    [group] = policy.propose(["x"], n=6, max_new_tokens=8, seed=0, stop=None)
    assert len({tuple(p.token_ids) for p in group}) > 1


def test_prefix_is_encoded_once_for_n_samples(policy):
    shapes = []
    hook = policy.model.register_forward_pre_hook(
        lambda mod, args, kwargs: shapes.append(tuple(kwargs["input_ids"].shape)), with_kwargs=True
    )
    try:
        obs = "A long shared prefix that should be encoded a single time.\n"
        [group] = policy.propose([obs], n=8, max_new_tokens=5, stop=None, seed=0)
    finally:
        hook.remove()
    L = len(policy.encode(obs))
    assert shapes[0] == (1, L)  # prefill: one row, not eight
    assert all(s[1] == 1 for s in shapes[1:])  # then one new token per row per step
    assert shapes[1][0] == 8
    assert sum(p.tokens_encoded for p in group) == L


@pytest.mark.parametrize("arch", tiny.ARCHS)
def test_logprobs_match_propose(arch):
    pol = tiny.random_tiny_policy(seed=0, arch=arch)
    out = pol.propose(OBS, n=3, max_new_tokens=15, seed=7, temperature=1.3, top_p=0.9)
    props = [p for g in out for p in g]
    obs = [o for o, g in zip(OBS, out) for _ in g]
    lps = pol.logprobs(obs, [p.token_ids for p in props])
    for lp, p in zip(lps, props):
        assert lp.shape == (len(p.token_ids),)
        assert torch.allclose(lp, torch.tensor(p.logprobs), atol=1e-4), (lp, p.logprobs)
        assert abs(lp.sum().item() - p.logprob) < 1e-3


def test_logprobs_with_gradients_and_string_continuations(policy):
    lps = policy.logprobs(["Q\n", "Longer question\n"], ["ab\n", [5, 6, 7, 8]], requires_grad=True)
    assert [lp.shape[0] for lp in lps] == [3, 4]
    loss = -(lps[0].sum() + lps[1].sum())
    loss.backward()
    grads = [p.grad for p in policy.model.parameters() if p.grad is not None]
    assert grads and any(g.abs().sum() > 0 for g in grads)
    policy.model.zero_grad(set_to_none=True)
    (empty,) = policy.logprobs(["Q\n"], [[]])
    assert empty.shape == (0,)


def test_greedy_stop_eos_and_length(scripted):
    [[p]] = scripted.propose(["Q\n"], n=1, temperature=0, stop="\n", max_new_tokens=10)
    assert (p.text, p.finish_reason) == ("12", "stop")
    assert scripted.tokenizer.decode(p.token_ids) == "12\n"  # the stop token is kept in the ids
    [[p]] = scripted.propose(["Q\n12\n"], n=1, temperature=0, stop="\n", max_new_tokens=10)
    assert (p.text, p.finish_reason) == ("34", "stop")
    [[p]] = scripted.propose(["Q\n12\n34\n"], n=1, temperature=0, stop="\n", max_new_tokens=10)
    assert (p.text, p.finish_reason, p.token_ids) == ("", "eos", [scripted.tokenizer.eos_token_id])
    [[p]] = scripted.propose(["Q\n"], n=1, temperature=0, stop=None, max_new_tokens=4)
    assert (p.text, p.finish_reason) == ("12\n3", "length")
    # a multi-character stop string, and several stop strings (earliest wins)
    [[p]] = scripted.propose(["Q\n"], n=1, temperature=0, stop="\n3", max_new_tokens=10)
    assert (p.text, p.finish_reason, len(p.token_ids)) == ("12", "stop", 4)
    [[p]] = scripted.propose(["Q\n"], n=1, temperature=0, stop=["4", "2"], max_new_tokens=10)
    assert (p.text, p.finish_reason) == ("1", "stop")
    # greedy ignores the seed; top_p close to 0 is greedy too
    [[g1, g2]] = scripted.propose(["Q\n"], n=2, temperature=0, seed=1)
    [[t1]] = scripted.propose(["Q\n"], n=1, top_p=1e-6, seed=5)
    assert g1.token_ids == g2.token_ids == t1.token_ids


def test_rows_finishing_early_do_not_disturb_others(scripted):
    # Different observations finish at different steps; batched result == one-by-one result.
    obs = ["Q\n", "Q\n12\n34\n", "Q\n12\n"]
    batched = scripted.propose(obs, n=1, temperature=0, stop=None, max_new_tokens=8)
    for o, [b] in zip(obs, batched):
        [[single]] = scripted.propose([o], n=1, temperature=0, stop=None, max_new_tokens=8)
        assert b.token_ids == single.token_ids
        assert b.logprobs == pytest.approx(single.logprobs, abs=1e-4)


def test_stop_invariants_on_random_samples(policy):
    out = policy.propose(OBS, n=8, max_new_tokens=30, seed=0, stop=["e", "1"], temperature=1.0)
    stopped = [p for g in out for p in g if p.finish_reason == "stop"]
    assert stopped
    for p in stopped:
        assert "e" not in p.text and "1" not in p.text
        full = policy.tokenizer.decode(p.token_ids, skip_special_tokens=True)
        assert full.startswith(p.text) and full[len(p.text)] in "e1"


def test_save_and_from_pretrained_roundtrip(policy, tmp_path):
    from transformers import AutoModelForCausalLM

    policy.save(tmp_path)
    assert AutoModelForCausalLM.from_pretrained(tmp_path) is not None
    loaded = TransformersPolicy.from_pretrained(tmp_path)
    a = policy.propose(OBS, n=2, max_new_tokens=6, seed=3)
    b = loaded.propose(OBS, n=2, max_new_tokens=6, seed=3)
    assert [[p.token_ids for p in g] for g in a] == [[p.token_ids for p in g] for g in b]


def test_context_limit_clips_and_rejects():
    pol = tiny.random_tiny_policy(seed=0, n_positions=16)
    [[p]] = pol.propose(["abcdefghij"], n=1, max_new_tokens=50, stop=None, seed=0)
    assert p.tokens_generated <= 16 - 11
    with pytest.raises(ValueError, match="context"):
        pol.propose(["x" * 40], n=1)


# -- bad input --------------------------------------------------------------------------
def test_bad_input_errors(policy, tmp_path):
    with pytest.raises(ValueError, match="n must be"):
        policy.propose(["a"], n=0)
    with pytest.raises(ValueError, match="empty"):
        policy.propose([], n=1)
    with pytest.raises(TypeError, match="single string"):
        policy.propose("a", n=1)
    with pytest.raises(ValueError, match="top_p"):
        policy.propose(["a"], top_p=0)
    with pytest.raises(ValueError, match="one continuation per observation"):
        policy.logprobs(["a", "b"], [[1]])
    with pytest.raises(FileNotFoundError, match="does not exist"):
        TransformersPolicy.from_pretrained(tmp_path / "missing")
    os.makedirs(tmp_path / "empty")
    with pytest.raises(ValueError, match="config.json"):
        TransformersPolicy.from_pretrained(tmp_path / "empty")


def test_not_a_causal_lm_is_rejected(tmp_path):
    from transformers import ViTConfig, ViTModel

    cfg = ViTConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=16,
                    image_size=8, patch_size=4)
    ViTModel(cfg).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="not a causal language model"):
        TransformersPolicy.from_pretrained(tmp_path)


def test_tokenizer_without_pad_uses_eos_and_without_both_is_rejected(policy):
    from transformers import PreTrainedTokenizerFast

    tok = char_tokenizer()
    no_pad = PreTrainedTokenizerFast(tokenizer_object=tok.backend_tokenizer, eos_token="<eos>", bos_token="<bos>")
    assert no_pad.pad_token_id is None
    pol = TransformersPolicy(policy.model, no_pad)
    assert pol.tokenizer.pad_token_id == pol.tokenizer.eos_token_id
    assert pol.propose(["ab", "abcd"], n=2, max_new_tokens=3, seed=0)
    bare = PreTrainedTokenizerFast(tokenizer_object=tok.backend_tokenizer)
    with pytest.raises(ValueError, match="neither a pad token nor an eos token"):
        TransformersPolicy(policy.model, bare)
