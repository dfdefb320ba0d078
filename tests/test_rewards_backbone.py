"""Scalar-head backbone: one-pass scoring, cache, token counts, save/load, bad input."""

import os

import pytest
import torch

from prmgym.envs.trace import render_trace, step_end_offsets
from prmgym.models import tiny
from prmgym.rewards import AIRLPRM, ORMPRM, load_prm
from prmgym.rewards.backbone import TraceEncoder

torch.set_num_threads(1)

PROMPTS = ["Compute 3 + 4 * 2.", "Start at 5."]
STEPS = [["4 * 2 = 8", "3 + 8 = 11", "Answer: 11"], ["5 - 1 = 4", "Answer: 4"]]


@pytest.fixture(scope="module")
def policy():
    return tiny.random_tiny_policy(seed=0, n_layer=1, n_embd=32, n_head=2, n_positions=256)


def test_encoder_boundaries_are_the_delimiter_ends(policy):
    enc = TraceEncoder(policy.tokenizer, "\n")
    ids, bounds = enc.encode(PROMPTS[0], STEPS[0])
    text = render_trace(PROMPTS[0], STEPS[0])
    # char tokenizer: one token per char after <bos>, so position == char offset + 1 - 1
    assert ids[0] == policy.tokenizer.bos_token_id
    assert len(ids) == len(text) + 1
    offsets = [len(PROMPTS[0]) + 1] + step_end_offsets(PROMPTS[0], STEPS[0])
    assert bounds == offsets  # last token of each delimiter: offset - 1, shifted by <bos>
    assert policy.tokenizer.decode([ids[b] for b in bounds]) == "\n" * len(bounds)


@pytest.mark.parametrize("kind", ["airl", "orm"])
def test_one_pass_equals_per_prefix(policy, kind):
    cls = {"airl": AIRLPRM, "orm": ORMPRM}[kind]
    prm = cls.from_backbone(policy, squash=False, cache=False)
    full = prm.score_steps(PROMPTS, STEPS)
    assert [len(s) for s in full] == [len(s) for s in STEPS]
    for p, steps, scores in zip(PROMPTS, STEPS, full):
        for i in range(len(steps)):
            [prefix_scores] = prm.score_steps([p], [steps[: i + 1]])
            assert prefix_scores[-1] == pytest.approx(scores[i], abs=1e-4)
    # scores differ between steps (the head is not constant)
    assert len({round(x, 6) for row in full for x in row}) > 1


def test_batched_equals_unbatched_with_padding(policy):
    prm = ORMPRM.from_backbone(policy, cache=False, batch_size=8)
    both = prm.score_steps(PROMPTS, STEPS)
    alone = [prm.score_steps([p], [s])[0] for p, s in zip(PROMPTS, STEPS)]
    for a, b in zip(both, alone):
        assert a == pytest.approx(b, abs=1e-5)


def test_long_trace_is_windowed(policy):
    small = tiny.random_tiny_policy(seed=1, n_layer=1, n_embd=32, n_head=2, n_positions=32)
    steps = [f"{i} + 1 = {i + 1}" for i in range(8)]  # ~90 tokens > 32
    with pytest.raises(ValueError, match="lm_feature=none"):  # the LM feature needs the whole trace in context
        ORMPRM.from_backbone(small, cache=False).score_steps(["Count."], [steps])
    prm = ORMPRM.from_backbone(small, cache=False, lm_feature="none")  # the head alone reads windows
    [scores] = prm.score_steps(["Count."], [steps])
    assert len(scores) == 8 and all(0.0 <= s <= 1.0 for s in scores)
    # the last step is read from the window of the last 32 tokens, which ends at it
    ids, bounds = prm.encoder.encode("Count.", steps)
    assert len(ids) > 32
    with torch.no_grad():
        [out] = prm.net.outputs_at([ids[-32:]], [[31]])
    assert scores[-1] == pytest.approx(float(torch.sigmoid(out[0, 0])), abs=1e-5)


def test_cache_hits_and_token_counter(policy):
    prm = ORMPRM.from_backbone(policy)
    first = prm.score_steps(PROMPTS, STEPS)
    tokens = prm.tokens_scored
    assert tokens == sum(len(render_trace(p, s)) + 1 for p, s in zip(PROMPTS, STEPS))
    # every prefix of an already-scored trace is free
    again = prm.score_steps([PROMPTS[0], PROMPTS[0]], [STEPS[0][:2], STEPS[0]])
    assert prm.tokens_scored == tokens
    assert prm.cache_hits == 2
    assert again[1] == pytest.approx(first[0])
    # a new step costs a pass over the new trace, and is then cached
    prm.score_steps([PROMPTS[1]], [STEPS[1] + ["extra"]])
    assert prm.tokens_scored > tokens
    assert (PROMPTS[1], tuple(STEPS[1] + ["extra"])) in prm.cache


def test_bad_inputs(policy):
    prm = ORMPRM.from_backbone(policy)
    with pytest.raises(ValueError, match="2 prompts but 1 step lists"):
        prm.score_steps(PROMPTS, STEPS[:1])
    with pytest.raises(TypeError, match="list of strings"):
        prm.score_steps("one prompt", [["a"]])
    with pytest.raises(TypeError, match="step_lists\\[0\\] is a string"):
        prm.score_steps(["p"], ["a step"])
    with pytest.raises(ValueError, match="aggregation"):
        prm.score(PROMPTS, STEPS, aggregation="median")
    assert prm.score_steps(["p"], [[]]) == [[]]


def test_save_load_round_trip(policy, tmp_path):
    prm = AIRLPRM.from_backbone(policy, search_score="f", gamma=0.9, aggregation="min")
    with torch.no_grad():
        prm.net.head.weight.add_(0.5)
    before = prm.score_steps(PROMPTS, STEPS)
    prm.save(tmp_path / "prm")
    for name in ("prm_config.json", "head.pt", "backbone/config.json"):
        assert os.path.exists(tmp_path / "prm" / name)
    back = load_prm(tmp_path / "prm")
    assert isinstance(back, AIRLPRM)
    assert (back.search_score, back.gamma, back.aggregation) == ("f", 0.9, "min")
    assert back.score_steps(PROMPTS, STEPS) == [pytest.approx(b, abs=1e-6) for b in before]
    assert back.score(PROMPTS, STEPS) == pytest.approx([min(b) for b in before], abs=1e-6)


def test_load_errors(policy, tmp_path):
    with pytest.raises(FileNotFoundError, match="no PRM directory"):
        load_prm(tmp_path / "missing")
    policy.save(tmp_path / "bare")
    with pytest.raises(ValueError, match="backbone without a PRM head"):
        load_prm(tmp_path / "bare")
    prm = ORMPRM.from_backbone(policy)
    prm.save(tmp_path / "orm")
    os.remove(tmp_path / "orm" / "head.pt")
    with pytest.raises(ValueError, match="head is missing"):
        load_prm(tmp_path / "orm")
    prm.save(tmp_path / "orm2")
    with pytest.raises(ValueError, match="holds a 'orm' PRM"):
        AIRLPRM.load(tmp_path / "orm2")


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_one_pass_equals_per_prefix_other_architectures(arch):
    pol = tiny.random_tiny_policy(seed=0, n_layer=1, n_embd=32, n_head=2, arch=arch)
    prm = ORMPRM.from_backbone(pol, cache=False, squash=False)
    full = prm.score_steps(PROMPTS, STEPS)
    for p, steps, scores in zip(PROMPTS, STEPS, full):
        per = [prm.score_steps([p], [steps[: i + 1]])[0][-1] for i in range(len(steps))]
        assert per == pytest.approx(scores, abs=1e-4)
