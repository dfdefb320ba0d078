"""Observation formatting: plain stays byte-identical, chat goes through the tokenizer's chat
template (append-only), on tiny random Qwen2- and Llama-style models saved locally."""

import pickle

import pytest
import torch

from prmgym.envs.trace import PromptTemplate, TraceText, render_trace
from prmgym.models import TransformersPolicy, tiny
from prmgym.models.formatting import ObservationFormatter
from prmgym.rewards import AIRLPRM, ORMPRM, load_prm

torch.set_num_threads(1)

PROMPT = "Compute 3 + 4 * 2."
STEPS = ["4 * 2 = 8", "3 + 8 = 11", "Answer: 11"]
TEMPLATE = PromptTemplate(system="Solve it.", instruction="One step per line.",
                          examples=[("1+1?", ["1 + 1 = 2", "Answer: 2"])])
HEADERS = {"qwen2": "<|im_start|>assistant\n", "llama": "<|start_header_id|>assistant<|end_header_id|>\n\n"}


@pytest.fixture(scope="module", params=["qwen2", "llama"])
def chat_dir(request, tmp_path_factory):
    """A tiny random instruct-style model with a chat template, saved with save_pretrained."""
    pol = tiny.random_tiny_policy(seed=0, n_layer=1, n_embd=32, n_head=2, n_positions=512,
                                  arch=request.param, chat_template=request.param)
    path = tmp_path_factory.mktemp(f"chat-{request.param}")
    pol.save(path)
    return request.param, str(path)


def test_plain_render_is_the_old_text_and_keeps_its_parts():
    obs = render_trace(PROMPT, STEPS[:2])
    assert type(obs) is TraceText and isinstance(obs, str)
    assert obs == PROMPT + "\n" + STEPS[0] + "\n" + STEPS[1] + "\n"
    assert (obs.prompt, obs.steps, obs.delimiter, obs.template) == (PROMPT, tuple(STEPS[:2]), "\n", None)
    back = pickle.loads(pickle.dumps(render_trace(PROMPT, STEPS, template=TEMPLATE)))
    assert (back.prompt, back.steps, back.template) == (PROMPT, tuple(STEPS), TEMPLATE)


def test_plain_policy_encoding_is_unchanged():
    pol = tiny.random_tiny_policy(seed=0, n_layer=1, n_embd=32)
    obs = render_trace(PROMPT, STEPS)
    assert pol.encode(obs) == pol.tokenizer(str(obs), add_special_tokens=True)["input_ids"]


def test_chat_needs_a_chat_template():
    pol = tiny.random_tiny_policy(seed=0, n_layer=1, n_embd=32)
    with pytest.raises(ValueError, match="chat template"):
        ObservationFormatter(pol.tokenizer, "chat")
    with pytest.raises(ValueError, match="prompt_format"):
        ObservationFormatter(pol.tokenizer, "markdown")


def test_chat_encoding_is_the_chat_template_and_append_only(chat_dir):
    arch, path = chat_dir
    pol = TransformersPolicy.from_pretrained(path, prompt_format="chat")
    plain = TransformersPolicy.from_pretrained(path)
    tok = pol.tokenizer
    for template in (None, TEMPLATE):
        obs = render_trace(PROMPT, STEPS, template=template)
        ids = pol.encode(obs)
        assert ids != plain.encode(obs)
        msgs = (template or PromptTemplate()).messages(PROMPT)
        header = tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
        assert header.endswith(HEADERS[arch]) and PROMPT in header
        assert tok.decode(ids) == header + "".join(s + "\n" for s in STEPS)
        if template is not None:
            assert "Solve it." in header and "1 + 1 = 2\nAnswer: 2\n" in header and "One step per line." in header
        for k in range(len(STEPS)):  # a prefix's ids are a prefix of the whole trace's ids
            prefix = pol.encode(render_trace(PROMPT, STEPS[:k], template=template))
            assert ids[: len(prefix)] == prefix
        ids2, bounds = pol.formatter.encode_trace(PROMPT, STEPS, template)
        assert ids2 == ids and tok.decode([ids[b] for b in bounds[1:]]) == "\n" * len(STEPS)
    # a bare string is a prompt without steps
    assert pol.encode(PROMPT + "\n") == pol.encode(render_trace(PROMPT, []))


def test_chat_propose_logprobs_agree(chat_dir):
    _, path = chat_dir
    pol = TransformersPolicy.from_pretrained(path, prompt_format="chat")
    obs = [render_trace(PROMPT, STEPS[:1]), render_trace("Start at 5.", [])]
    props = pol.propose(obs, n=2, max_new_tokens=5, seed=0)
    conts = [p.token_ids for group in props for p in group]
    lps = pol.logprobs([o for o in obs for _ in range(2)], conts)
    for lp, p in zip(lps, [p for group in props for p in group]):
        assert torch.allclose(lp, torch.tensor(p.logprobs), atol=1e-4)
        assert p.tokens_generated == len(p.token_ids) > 0


def test_chat_prm_one_pass_equals_prefix_scores(chat_dir):
    _, path = chat_dir
    pol = TransformersPolicy.from_pretrained(path, prompt_format="chat")
    for cls in (AIRLPRM, ORMPRM):
        prm = cls.from_backbone(pol, squash=False, cache=False)
        assert prm.options.prompt_format == "chat"  # taken from the policy
        ids, _ = prm.encoder.encode(PROMPT, STEPS)
        assert ids == pol.encode(render_trace(PROMPT, STEPS))  # the PRM reads what the policy is fed
        [full] = prm.score_steps([PROMPT], [STEPS])
        for i in range(len(STEPS)):
            [prefix] = prm.score_steps([PROMPT], [STEPS[: i + 1]])
            assert prefix[-1] == pytest.approx(full[i], abs=1e-4)
        plain = cls.from_backbone(pol, squash=False, cache=False, prompt_format="plain")
        assert plain.score_steps([PROMPT], [STEPS])[0] != pytest.approx(full, abs=1e-4)


def test_chat_prm_save_load_keeps_the_format(chat_dir, tmp_path):
    _, path = chat_dir
    prm = ORMPRM.from_backbone(TransformersPolicy.from_pretrained(path, prompt_format="chat"), cache=False)
    before = prm.score_steps([PROMPT], [STEPS])
    prm.save(tmp_path / "prm")
    again = load_prm(tmp_path / "prm")
    assert again.options.prompt_format == "chat"
    assert again.score_steps([PROMPT], [STEPS])[0] == pytest.approx(before[0], abs=1e-5)


def test_propose_uses_the_current_cache_api():
    import warnings

    pol = tiny.random_tiny_policy(seed=0, n_layer=1, n_embd=32)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        pol.propose(["2 + 3 = "], n=2, max_new_tokens=3, seed=0)
    assert not [w for w in caught if "past_key_values" in str(w.message)]


def test_env_template_reaches_the_chat_policy(chat_dir):
    import gymnasium as gym

    import prmgym  # noqa: F401

    _, path = chat_dir
    pol = TransformersPolicy.from_pretrained(path, prompt_format="chat")
    env = gym.make("prmgym/ChainArithmetic-v0", prompt_template={"system": "Add.", "instruction": "Be brief."})
    obs, info = env.reset(seed=0)
    obs, *_ = env.step(info["task"].expert_steps[0])
    text = pol.tokenizer.decode(pol.encode(obs))
    assert text.count("Add.") == 1 and text.count(info["task"].prompt + "\nBe brief.") == 1
    assert text.endswith(info["task"].expert_steps[0] + "\n")
    assert text == pol.formatter.render(info["task"].prompt, [info["task"].expert_steps[0]], PromptTemplate("Add.", (), "Be brief."))


def test_prm_data_log_probs_use_the_env_template():
    import gymnasium as gym

    import prmgym  # noqa: F401
    from prmgym.rewards.data import fill_logprobs, template_of

    pol = tiny.random_tiny_policy(seed=0, n_layer=1, n_embd=32)
    env = gym.make("prmgym/ChainArithmetic-v0", prompt_template={"system": "Add.", "instruction": "Be brief."})
    obs, info = env.reset(seed=0)
    steps = info["task"].expert_steps[:2]
    obs, *_ = env.step(steps[0])
    assert template_of(env) == obs.template is not None
    want = float(pol.logprobs([obs], [steps[1] + "\n"])[0].sum())  # what the policy saw at step 2
    lp, _ = fill_logprobs(pol, [info["task"].prompt], [steps], "\n", template=template_of(env))
    assert lp[0][1] == pytest.approx(want, abs=1e-4)
    bare, _ = fill_logprobs(pol, [info["task"].prompt], [steps], "\n")
    assert bare[0][1] != pytest.approx(want, abs=1e-4)
