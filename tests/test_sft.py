"""SFTTrainer: it learns, trains only on completions, resumes exactly, obeys callbacks."""

import json
import os

import pytest
import torch

from prmgym.agents.common import Callback
from prmgym.agents.sft import SFTConfig, SFTTrainer, trace_example
from prmgym.logger import Logger
from prmgym.models import tiny

torch.set_num_threads(1)

# A learnable task: the answer is the prompt's digit + 1 (mod 10), then a fixed step.
EXAMPLES = [(f"Q {d}\n", f"{(d + 1) % 10}\nAnswer: {(d + 1) % 10}\n") for d in range(10)]


def _params(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_sft_learns_a_small_task():
    policy = tiny.random_tiny_policy(seed=0)
    before = _params(policy.model)
    trainer = SFTTrainer(policy, EXAMPLES, SFTConfig(batch_size=10, learning_rate=3e-3, warmup_steps=5))
    first = trainer.step()["train/loss"]
    last = trainer.train(150, progress=False)
    assert last["train/loss"] < 0.1 * first
    assert any(not torch.equal(before[k], v) for k, v in policy.model.state_dict().items())
    obs = [p for p, _ in EXAMPLES]
    props = policy.propose(obs, n=1, temperature=0, stop="\n", max_new_tokens=4)
    assert [g[0].text for g in props] == [c.split("\n")[0] for _, c in EXAMPLES]
    assert trainer.num_steps == 151 and not policy.model.training


def test_loss_is_on_completion_tokens_only():
    policy = tiny.random_tiny_policy(seed=0)
    trainer = SFTTrainer(policy, [("abc\n", "de\n")], SFTConfig(batch_size=1))
    ids, attn, lmask = trainer._batch([0])
    # <bos> a b c \n | d e \n <eos>: 5 prompt tokens, 4 trained tokens
    assert ids.shape == (1, 9) and lmask.sum().item() == 4 and not lmask[0, :5].any()
    assert trainer.step()["train/tokens"] == 4
    both = SFTTrainer(policy, [("abc\n", "de\n")], SFTConfig(batch_size=1, loss_on_prompt=True, add_eos=False))
    assert both._batch([0])[2].sum().item() == 7  # every token but <bos>


def test_save_load_resumes_exactly(tmp_path):
    cfg = SFTConfig(batch_size=4, learning_rate=2e-3, warmup_steps=2, lr_schedule="cosine", schedule_steps=10)
    a = SFTTrainer(tiny.random_tiny_policy(seed=0), EXAMPLES, cfg)
    a.train(4, progress=False)
    a.save(tmp_path / "ckpt")
    a.train(3, progress=False)
    b = SFTTrainer(tiny.random_tiny_policy(seed=5), EXAMPLES, cfg).load(tmp_path / "ckpt")
    assert b.num_steps == 4
    b.train(3, progress=False)
    sa, sb = a.policy.model.state_dict(), b.policy.model.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert os.path.exists(tmp_path / "ckpt" / "policy" / "config.json")
    with pytest.raises(ValueError, match="config differs"):
        SFTTrainer(tiny.random_tiny_policy(seed=0), EXAMPLES, SFTConfig(batch_size=8)).load(tmp_path / "ckpt")
    with pytest.raises(FileNotFoundError, match="trainer_state"):
        SFTTrainer(tiny.random_tiny_policy(seed=0), EXAMPLES, cfg).load(tmp_path)


def test_callbacks_can_stop_training_and_see_metrics():
    seen = []

    class StopAfter3(Callback):
        def _on_step(self):
            seen.append(self.metrics["train/step"])
            return self.n_calls < 3

    trainer = SFTTrainer(tiny.random_tiny_policy(seed=0), EXAMPLES, SFTConfig(batch_size=2),
                         callbacks=[StopAfter3(), lambda tr, m: None])
    trainer.train(10, progress=False)
    assert seen == [1, 2, 3] and trainer.num_steps == 3


def test_logger_receives_metrics(tmp_path):
    with Logger(tmp_path, formats=("jsonl",)) as log:
        trainer = SFTTrainer(tiny.random_tiny_policy(seed=0), EXAMPLES, SFTConfig(batch_size=2, log_every=2), logger=log)
        trainer.train(5, progress=False)
    rows = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
    assert [r["step"] for r in rows] == [2, 4, 5]
    assert all("train/loss" in r and "train/lr" in r for r in rows)


def test_learning_rate_schedule():
    t = SFTTrainer(tiny.random_tiny_policy(seed=0), EXAMPLES,
                   SFTConfig(learning_rate=1.0, warmup_steps=4, lr_schedule="cosine", schedule_steps=14, min_lr_ratio=0.1))
    assert [t.lr_at(s) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert t.lr_at(4) == pytest.approx(1.0) and t.lr_at(9) == pytest.approx(0.55) and t.lr_at(14) == pytest.approx(0.1)
    assert t.lr_at(100) == pytest.approx(0.1)


def test_trace_example_matches_render_trace():
    from prmgym.envs.trace import render_trace

    p, c = trace_example("Q", ["a", "b"])
    assert p + c == render_trace("Q", ["a", "b"]) and p == render_trace("Q", [])


def test_bad_input():
    pol = tiny.random_tiny_policy(seed=0)
    with pytest.raises(ValueError, match="at least one"):
        SFTTrainer(pol, [])
    with pytest.raises(TypeError, match="pair of strings"):
        SFTTrainer(pol, [("only a prompt",)])
    with pytest.raises(ValueError, match="batch_size"):
        SFTConfig(batch_size=0)
    with pytest.raises(ValueError, match="context"):
        SFTTrainer(tiny.random_tiny_policy(seed=0, n_positions=8), [("a" * 10, "b")])
