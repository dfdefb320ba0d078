"""stable-baselines3 interop: TokenEnv over every registered env, LMActorCriticPolicy, PPO learning, save/load."""

import json
import pathlib

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium.utils.env_checker import check_env as gym_check_env
from stable_baselines3 import PPO
from stable_baselines3.common.env_checker import check_env as sb3_check_env
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.vec_env import DummyVecEnv, SubprocVecEnv

import prmgym  # noqa: F401  (registers the envs)
from prmgym.envs import DESCRIPTIONS, ExactMatchVerifier, ReasoningEnv, Task, TaskList
from prmgym.integrations.sb3 import LMActorCriticPolicy, TokenEnv, make_ppo, make_token_env, token_env_fn
from prmgym.models import tiny
from prmgym.models.tokenizer import char_tokenizer
from prmgym.rewards.base import ProcessRewardModel

#: per registered id: gym.make kwargs and an observation length that holds its prompts
ENV_ARGS = {
    "prmgym/ChainArithmetic-v0": ({}, 256),
    "prmgym/Countdown-v0": ({}, 256),
    "prmgym/ReasoningGym-v0": ({"task": "chain_sum", "size": 20}, 512),
    "prmgym/Jsonl-v0": (None, 256),  # path= written per test
    "prmgym/ProgramSynthesis-v0": ({"sandbox": "local"}, 1024),
    "prmgym/HumanEval-v0": ({"sandbox": "local"}, 4096),
    "prmgym/ToolMath-v0": ({"sandbox": "local"}, 1024),
}


@pytest.fixture(autouse=True)
def one_thread():
    """The tiny model gains nothing from intra-op threads, and on a busy machine they slow it many-fold."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("tiny")
    tiny.random_tiny_policy(seed=0, n_layer=1, n_embd=32, n_head=2).save(str(d))
    return str(d)


def _jsonl(tmp_path):
    p = tmp_path / "p.jsonl"
    p.write_text("\n".join(json.dumps({"prompt": f"{i} + 1 = ?", "answer": str(i + 1)}) for i in range(10)) + "\n")
    return {"path": str(p)}


def test_every_registered_env_is_covered():
    ours = sorted(k for k in gym.registry if k.startswith("prmgym/"))
    assert sorted(ENV_ARGS) == ours == sorted(k for k in DESCRIPTIONS if k.startswith("prmgym/"))


@pytest.mark.parametrize("env_id", sorted(ENV_ARGS))
def test_check_env_sb3_and_gymnasium(env_id, tmp_path):
    kwargs, max_length = ENV_ARGS[env_id]
    kwargs = _jsonl(tmp_path) if kwargs is None else kwargs
    env = make_token_env(env_id, char_tokenizer(), kwargs, max_length=max_length, max_new_tokens=64)
    sb3_check_env(env, warn=True)
    gym_check_env(env, skip_render_check=True)
    obs, info = env.reset(seed=1)
    assert obs in env.observation_space and int(obs["length"][0]) == len(info["text"]) + 1
    env.close()


def _type(env, tok, text):
    out = []
    for ch in text:
        out.append(env.step(tok.convert_tokens_to_ids(ch)))
    return out


class DigitPRM(ProcessRewardModel):
    """Scores a step 1 if it is the single character "7" (a PRM made to be learnable)."""

    def score_steps(self, prompts, step_lists):
        return [[1.0 if s == "7" else 0.0 for s in steps] for steps in step_lists]


def test_chunks_go_to_env_step_and_outcome_reward_arrives_at_termination():
    tok = char_tokenizer()
    env = TokenEnv(gym.make("prmgym/ChainArithmetic-v0"), tok, max_length=128)
    obs, info = env.reset(seed=0)
    results = []
    for step in info["task"].expert_steps:
        out = _type(env, tok, step + "\n")
        assert all(r[1] == 0.0 and not r[2] and r[4]["chunk"] is None for r in out[:-1])  # mid-chunk: nothing
        results.append(out[-1])
    assert [r[4]["chunk"] for r in results] == [s + "\n" for s in info["task"].expert_steps]
    assert [r[1] for r in results] == [0.0] * (len(results) - 1) + [1.0]
    assert results[-1][2] and not results[-1][3] and results[-1][4]["verdict"].correct
    assert env.env.unwrapped.steps == tuple(info["task"].expert_steps)
    with pytest.raises(gym.error.ResetNeeded):
        env.step(5)


def test_prm_reward_at_chunk_boundaries_and_truncation_limits():
    tok = char_tokenizer()
    base = ReasoningEnv(TaskList(train=[Task(id="t", prompt="Say 7", answer="7")]), ExactMatchVerifier(), max_steps=50)
    env = TokenEnv(base, tok, max_length=64, max_new_tokens=5, max_chunk_tokens=1, prm=DigitPRM(), prm_weight=0.5)
    env.reset(seed=0)
    out = _type(env, tok, "7a77")
    assert [r[1] for r in out] == [0.5, 0.0, 0.5, 0.5]
    _, r, term, trunc, _ = env.step(tok.convert_tokens_to_ids("7"))
    assert (r, term, trunc) == (0.5, False, True)  # the 5-token budget ends the episode
    # EOS ends a chunk that does not answer: truncated; a prompt longer than max_length is refused
    env2 = TokenEnv(gym.make("prmgym/ChainArithmetic-v0"), tok, max_length=128)
    env2.reset(seed=0)
    _, r, term, trunc, info = env2.step(tok.eos_token_id)
    assert (r, term, trunc) == (0.0, False, True) and info["chunk"] == ""
    with pytest.raises(ValueError, match="raise max_length"):
        TokenEnv(gym.make("prmgym/ChainArithmetic-v0"), tok, max_length=8).reset(seed=0)
    with pytest.raises(TypeError, match="ReasoningEnv"):
        TokenEnv(gym.make("CartPole-v1"), tok)


@pytest.mark.parametrize("vec_cls", [DummyVecEnv, SubprocVecEnv])
def test_make_vec_env(vec_cls, model_dir):
    venv = make_vec_env(token_env_fn("prmgym/ChainArithmetic-v0", model_dir, max_length=96, max_new_tokens=12),
                        n_envs=2, seed=3, vec_env_cls=vec_cls)
    try:
        obs = venv.reset()
        assert obs["input_ids"].shape == (2, 96) and obs["length"].shape == (2, 1)
        dones = 0
        for _ in range(13):
            obs, rewards, done, infos = venv.step(np.array([5, 6]))
            dones += int(done.sum())
        assert dones == 2  # both envs truncated at 12 tokens and auto-reset
        assert obs["length"][0, 0] < 40
    finally:
        venv.close()


def test_incremental_past_matches_full_forward_and_drops_stale_caches(model_dir):
    venv = make_vec_env(token_env_fn("prmgym/ChainArithmetic-v0", model_dir, max_length=96, max_new_tokens=5),
                        n_envs=3, seed=0)
    ppo = make_ppo(model_dir, venv, seed=0, n_steps=8, batch_size=8)
    pol = ppo.policy
    pol.set_training_mode(False)
    obs = venv.reset()
    assert len(set(obs["length"][:, 0].tolist())) > 1  # rows of different lengths share one padded batch
    with torch.no_grad():
        for _ in range(12):  # 5-token episodes: rows restart (full pass) while others extend their caches
            t = {k: torch.as_tensor(v) for k, v in obs.items()}
            inc, hinc = pol._incremental(t)
            full, hfull = pol._full(t)
            torch.testing.assert_close(inc, full, atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(hinc, hfull, atol=1e-5, rtol=1e-5)
            obs, *_ = venv.step(inc.argmax(-1).numpy())
    assert pol.past_stats["incremental"] >= 20 and pol.past_stats["full"] >= 6
    with torch.no_grad():
        for p in pol.lm.parameters():
            p.add_(0.01)
    full_before = pol.past_stats["full"]
    with torch.no_grad():
        pol._incremental({k: torch.as_tensor(v) for k, v in obs.items()})
    assert pol.past_stats["full"] == full_before + 3  # new weights: every row recomputed
    venv.close()


def _greedy_tokens(model, venv, n=20):
    obs = venv.reset()
    out = []
    for _ in range(n):
        a, _ = model.predict(obs, deterministic=True)
        out.append(a.copy())
        obs, *_ = venv.step(a)
    return np.stack(out)


def test_ppo_save_load_reproduces_greedy_outputs(model_dir, tmp_path):
    make = token_env_fn("prmgym/ChainArithmetic-v0", model_dir, max_length=96, max_new_tokens=24)
    venv = make_vec_env(make, n_envs=2, seed=0)
    ppo = make_ppo(model_dir, venv, seed=0, n_steps=32, batch_size=32, n_epochs=2, learning_rate=1e-3, ent_coef=0.01)
    before = [p.detach().clone() for p in ppo.policy.lm.parameters()]
    ppo.learn(64)
    assert any(not torch.equal(a, b) for a, b in zip(before, ppo.policy.lm.parameters()))
    ppo.save(tmp_path / "ppo.zip")
    venv2 = make_vec_env(make, n_envs=2, seed=0)
    loaded = PPO.load(tmp_path / "ppo.zip", env=venv2)
    assert isinstance(loaded.policy, LMActorCriticPolicy)
    venv.seed(7)
    venv2.seed(7)
    a, b = _greedy_tokens(ppo, venv), _greedy_tokens(loaded, venv2)
    np.testing.assert_array_equal(a, b)
    for p, q in zip(ppo.policy.state_dict().values(), loaded.policy.state_dict().values()):
        assert torch.equal(p, q)
    venv.close()
    venv2.close()


def test_sb3_ppo_learns_a_learnable_task(model_dir):
    """A random tiny LM, one token per step; the PRM pays 1 for every "7" (1 in ~100 at random)."""
    tok = char_tokenizer()

    def make():
        base = ReasoningEnv(TaskList(train=[Task(id="t", prompt="Say 7", answer="7")]), ExactMatchVerifier(), max_steps=50)
        return TokenEnv(base, model_dir, max_length=32, max_new_tokens=8, max_chunk_tokens=1, prm=DigitPRM())

    venv = make_vec_env(make, n_envs=4, seed=0)
    ppo = make_ppo(model_dir, venv, seed=0, n_steps=64, batch_size=64, n_epochs=4, learning_rate=3e-3,
                   gamma=1.0, ent_coef=0.0)
    seven = tok.convert_tokens_to_ids("7")
    obs = {k: torch.as_tensor(v) for k, v in venv.reset().items()}
    with torch.no_grad():
        p0 = torch.softmax(ppo.policy._full(obs)[0], -1)[:, seven].mean().item()
    before = [p.detach().clone() for p in ppo.policy.lm.parameters()]
    ppo.learn(256)
    first = np.mean([e["r"] for e in ppo.ep_info_buffer])
    ppo.learn(2048, reset_num_timesteps=False)
    last = np.mean([e["r"] for e in list(ppo.ep_info_buffer)[-32:]])
    with torch.no_grad():
        p1 = torch.softmax(ppo.policy._full(obs)[0], -1)[:, seven].mean().item()
    venv.close()
    assert any(not torch.equal(a, b) for a, b in zip(before, ppo.policy.lm.parameters()))
    # random play: 8 tokens x ~1% = ~0.08 per episode; learning must lift it well beyond that noise
    assert first < 0.5 and last > 2.0, (first, last)
    assert p1 > 10 * p0, (p0, p1)


CONFIG = str(pathlib.Path(__file__).resolve().parents[1] / "examples" / "configs" / "sb3_ppo_chain.yaml")


def _train(*argv):
    from prmgym.cli import main

    return main(["train", *argv, "--no-progress"])


def test_prmgym_train_sb3_ppo_logs_checkpoints_and_resumes(model_dir, tmp_path, capsys):
    run = tmp_path / "run"
    sets = ["--set", f"model={model_dir}", "--set", f"run_dir={run}", "--set", "steps=2", "--set", "eval_tasks=4",
            "--set", "trainer.n_envs=2", "--set", "trainer.n_steps=16", "--set", "trainer.batch_size=16",
            "--set", "trainer.checkpoint_every=1", "--set", "trainer.max_length=160"]
    assert _train("--config", CONFIG, *sets) == 0
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["ppo_32_steps.zip", "ppo_64_steps.zip"]
    assert list((run / "tb").glob("events.out.tfevents.*"))
    assert (run / "policy" / "config.json").exists()
    summary = json.loads((run / "summary.json").read_text())
    assert summary["timesteps"] == 64 and "pass@1_before" in summary and "pass@1_after" in summary
    loaded = PPO.load(run / "checkpoints" / "ppo_64_steps.zip")
    assert loaded.num_timesteps == 64
    assert _train("--config", CONFIG, *sets) == 2  # run_dir already holds a run
    assert "already holds a run" in capsys.readouterr().err
    assert _train("--resume", str(run), "--set", "steps=3") == 0
    assert "resumed from" in capsys.readouterr().err and (run / "checkpoints" / "ppo_96_steps.zip").exists()
    assert json.loads((run / "summary.json").read_text())["timesteps"] == 96
    assert _train("--config", CONFIG, *sets, "--set", f"run_dir={tmp_path / 'r2'}",
                  "--set", "reward=airl") == 2
    assert "reward: none" in capsys.readouterr().err
    with pytest.raises(ValueError, match="vec_env"):
        from prmgym.recipes.sb3 import SB3PPOConfig

        SB3PPOConfig(vec_env="threads")
