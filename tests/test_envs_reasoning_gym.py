"""prmgym/ReasoningGym-v0: submitting the dataset's own answer scores what score_answer gives."""

from __future__ import annotations

import gymnasium as gym
import pytest

import prmgym  # noqa: F401
from prmgym.envs import ReasoningGym, reasoning_gym_names

# fast, local datasets from different reasoning-gym categories
DATASETS = [
    ("chain_sum", {}),
    ("basic_arithmetic", {}),
    ("gcd", {}),
    ("lcm", {}),
    ("spell_backward", {}),
    ("word_sorting", {}),
    ("number_sorting", {}),
    ("letter_counting", {}),
    ("caesar_cipher", {}),
    ("simple_equations", {}),
    ("fraction_simplification", {}),
    ("count_bits", {}),
    ("base_conversion", {}),
    ("prime_factorization", {}),
    ("products", {}),
    ("coin_flip", {}),
    ("binary_matrix", {}),  # multi-line answers: submitted as one step
    ("chain_sum", {"min_terms": 2, "max_terms": 3, "min_digits": 1, "max_digits": 1}),
]


@pytest.mark.parametrize("name,config", DATASETS, ids=[f"{n}{'-cfg' if c else ''}" for n, c in DATASETS])
def test_own_answer_scores_exactly_score_answer(name, config):
    env = gym.make("prmgym/ReasoningGym-v0", task=name, size=2000, **config)
    u = env.unwrapped
    ds = u.source.dataset
    for split in ("train", "test"):
        for task in u.source.tasks(split, 4, seed=0):
            entry = task.metadata["entry"]
            expected = ds.score_answer(entry["answer"], entry)
            env.reset(options={"task": task})
            _, reward, terminated, truncated, info = env.step(u.format_answer(entry["answer"]))
            assert terminated and not truncated
            assert reward == min(1.0, max(0.0, float(expected))), (name, entry["answer"], info["answer"])
            assert info["verdict"].details["score_answer"] == expected
            # a wrong answer scores what score_answer gives it too
            env.reset(options={"task": task})
            _, reward, _, _, info = env.step(u.format_answer("definitely wrong"))
            try:
                expected_wrong = min(1.0, max(0.0, float(ds.score_answer("definitely wrong", entry))))
            except Exception:  # the scorer cannot parse it: prmgym scores that 0 and says why
                expected_wrong = 0.0
                assert "score_answer raised" in info["verdict"].details["error"]
            assert reward == expected_wrong < 1.0


def test_config_reaches_the_dataset_and_splits_are_disjoint():
    src = ReasoningGym("chain_sum", size=3000, min_terms=2, max_terms=2, min_digits=1, max_digits=1)
    train = src.tasks("train", 100)
    test = src.tasks("test", 20)
    assert not {t.prompt for t in train} & {t.prompt for t in test}
    assert all(t.prompt.count("+") + t.prompt.count(" - ") == 1 for t in train)
    assert src.tasks("train", 10, seed=3) == src.tasks("train", 10, seed=3)


def test_unknown_task_lists_valid_names():
    with pytest.raises(ValueError) as e:
        gym.make("prmgym/ReasoningGym-v0", task="chain_summ")
    msg = str(e.value)
    assert "chain_summ" in msg and "chain_sum" in msg and "countdown" in msg
    assert len(reasoning_gym_names()) > 50


def test_unknown_config_option_lists_valid_options():
    with pytest.raises(ValueError, match="valid options: .*min_terms"):
        gym.make("prmgym/ReasoningGym-v0", task="chain_sum", min_termz=2)
    with pytest.raises(ValueError, match="rejected config"):
        gym.make("prmgym/ReasoningGym-v0", task="chain_sum", min_terms=0)
    with pytest.raises(ValueError, match="do not pass the dataset seed"):
        gym.make("prmgym/ReasoningGym-v0", task="chain_sum", seed=3)


def test_expert_steps_submit_the_answer():
    env = gym.make("prmgym/ReasoningGym-v0", task="gcd", size=500)
    _, info = env.reset(seed=4)
    for s in info["task"].expert_steps:
        _, r, te, _, _ = env.step(s)
    assert te and r == 1.0
