"""The tiny-model recipe: expert examples, pretrain (cache, manifest, loading), held-out evaluation.

A small hand-made environment with the pinned prmgym env API (``source.tasks``,
``delimiter``, ``reset(options={"task": ...})``, verifier verdicts) keeps these tests
independent of the real procedural environments; the slow test runs the real one.
"""

import json
import os
import random
import re
from types import SimpleNamespace

import gymnasium as gym
import pytest
import torch

from prmgym.envs.episodes import evaluate_policy
from prmgym.envs.task import Task
from prmgym.envs.trace import render_trace
from prmgym.models import TransformersPolicy, tiny
from prmgym.recipes import tiny as tiny_recipe

torch.set_num_threads(1)

FAKE_ID = "prmgymtest/AddSub-v0"


class _Source:
    def tasks(self, split, n, seed=0):
        rng = random.Random(f"{split}-{seed}")
        out = []
        for i in range(n):
            a, b, c = rng.randint(1, 9), rng.randint(1, 9), rng.randint(1, 9)
            s = a + b
            r = s - c
            out.append(Task(id=f"addsub/{split}/{i}", prompt=f"Compute {a} + {b} - {c}.", answer=str(r),
                            expert_steps=(f"{a} + {b} = {s}", f"{s} - {c} = {r}", f"Answer: {r}")))
        return out


class _Verifier:
    def score(self, task, text):
        m = re.search(r"Answer: (-?\d+)\s*$", text)
        ok = bool(m) and m.group(1) == task.answer
        return SimpleNamespace(reward=float(ok), correct=ok, details={})


class FakeAddSubEnv(gym.Env):
    metadata = {"render_modes": []}

    def __init__(self, split="train", max_steps=6):
        self.split, self.max_steps = split, max_steps
        self.source, self.verifier, self.delimiter = _Source(), _Verifier(), "\n"
        self.observation_space = gym.spaces.Text(2000, charset="".join(chr(i) for i in range(10, 127)))
        self.action_space = gym.spaces.Text(200, charset="".join(chr(i) for i in range(10, 127)))
        self.task, self.steps = None, []

    def reset(self, seed=None, options=None):
        super().reset(seed=seed)
        self.task = (options or {}).get("task") or self.source.tasks(self.split, 1, seed=seed or 0)[0]
        self.steps = []
        return render_trace(self.task.prompt, self.steps), {"task": self.task}

    def step(self, action):
        self.steps.append(action)
        obs = render_trace(self.task.prompt, self.steps)
        if action.startswith("Answer:"):
            v = self.verifier.score(self.task, obs)
            return obs, v.reward, True, False, {"verdict": v, "steps": list(self.steps)}
        return obs, 0.0, False, len(self.steps) >= self.max_steps, {"verdict": None, "steps": list(self.steps)}


if FAKE_ID not in gym.registry:
    gym.register(id=FAKE_ID, entry_point=FakeAddSubEnv)


def test_expert_examples_layout_and_corruption():
    tasks = _Source().tasks("train", 50)
    ex = tiny_recipe.expert_examples(tasks)
    t = tasks[0]
    assert ex[0] == (t.prompt + "\n", "".join(s + "\n" for s in t.expert_steps))
    assert ex[0][0] + ex[0][1] == render_trace(t.prompt, t.expert_steps)
    bad = tiny_recipe.expert_examples(tasks, corrupt_rate=1.0, seed=0)
    changed = sum(a != b for a, b in zip(ex, bad))
    assert changed == len(tasks)  # every trace has a corruptible step
    for (p0, c0), (p1, c1) in zip(ex, bad):
        assert p0 == p1 and c0.splitlines()[-1] == c1.splitlines()[-1]  # the answer step is untouched
    half = tiny_recipe.expert_examples(tasks, corrupt_rate=0.5, seed=0)
    assert 10 < sum(a != b for a, b in zip(ex, half)) < 40
    with pytest.raises(ValueError, match="expert_steps"):
        tiny_recipe.expert_examples([Task(id="x", prompt="p")])


def test_evaluate_scores_an_expert_like_policy_and_a_random_one():
    class ExpertPolicy:  # replays the expert steps: the env's verifier must score it 1.0
        def propose(self, observations, n=1, stop="\n", **kw):
            out = []
            for o in observations:
                lines = o.split("\n")
                task = next(t for t in _Source().tasks("test", 8) if t.prompt == lines[0])
                step = task.expert_steps[len([x for x in lines[1:] if x])]
                from prmgym.models import Proposal

                out.append([Proposal(step, [1], [0.0], "stop", 1, 1)])
            return out

    res = evaluate_policy(ExpertPolicy(), FAKE_ID, n_tasks=8)
    assert res["pass@1"] == 1.0 and res["solved"] == 8 and res["mean_steps"] == 3
    rand = tiny.random_tiny_policy(seed=0)
    res = evaluate_policy(rand, FAKE_ID, n_tasks=4, max_new_tokens=8)
    assert res["pass@1"] == 0.0 and res["truncated"] == 4  # the step limit cuts it off


def test_pretrain_learns_caches_and_loads(tmp_path):
    out = tmp_path / "tiny"
    kw = dict(num_train_tasks=100, steps=40, batch_size=16, learning_rate=3e-3, n_layer=1, n_embd=32, n_head=2,
              n_positions=96, eval_tasks=6, warmup_steps=5)
    path = tiny_recipe.pretrain(FAKE_ID, out, progress=False, **kw)
    m = tiny_recipe.load_manifest(path)
    assert m["config"]["num_train_tasks"] == 100 and m["n_params"] > 0
    rows = [json.loads(line) for line in open(os.path.join(path, "logs", "metrics.jsonl"))]
    losses = [r["train/loss"] for r in rows if "train/loss" in r]
    assert losses[-1] < 0.6 * losses[0]  # it learned something (random init: ~log(100) = 4.6)
    assert 0.0 <= m["eval"]["pass@1"] <= 1.0 and m["eval"]["n_tasks"] == 6
    # standard Hugging Face directory
    from transformers import AutoModelForCausalLM, AutoTokenizer

    assert AutoModelForCausalLM.from_pretrained(path).config.model_type == "gpt2"
    assert AutoTokenizer.from_pretrained(path).eos_token == "<eos>"
    # logs: JSONL metrics and TensorBoard events
    assert any("train/loss" in r for r in rows) and any("eval/pass@1" in r for r in rows)
    assert os.listdir(os.path.join(path, "logs", "tb"))
    # cache: same arguments -> no retraining (the weights file is not rewritten)
    weights = os.path.join(path, "model.safetensors")
    mtime = os.path.getmtime(weights)
    assert tiny_recipe.pretrain(FAKE_ID, out, progress=False, **kw) == path
    assert os.path.getmtime(weights) == mtime
    with pytest.raises(FileExistsError, match="other arguments"):
        tiny_recipe.pretrain(FAKE_ID, out, progress=False, **{**kw, "steps": 121})
    pol = TransformersPolicy.from_pretrained(path)
    assert pol.propose(["Compute 3 + 4 - 2.\n"], n=2, max_new_tokens=5, seed=0)
    assert tiny_recipe.pretrain(FAKE_ID, out, progress=False, force=True, **{**kw, "steps": 2}) == path
    assert tiny_recipe.load_manifest(path)["config"]["steps"] == 2


def test_pretrain_rejects_bad_arguments(tmp_path):
    with pytest.raises(TypeError, match="unknown pretrain argument"):
        tiny_recipe.pretrain(FAKE_ID, tmp_path / "a", num_tasks=3)
    with pytest.raises(ValueError, match="corrupt_rate"):
        tiny_recipe.pretrain(FAKE_ID, tmp_path / "a", corrupt_rate=2.0)
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="not a prmgym tiny-model directory"):
        tiny_recipe.pretrain(FAKE_ID, tmp_path / "b", steps=1)
    with pytest.raises(ValueError, match="cannot make environment"):
        tiny_recipe.pretrain("prmgym/NoSuchEnv-v0", tmp_path / "c", steps=1)


@pytest.mark.slow
def test_short_pretrain_on_chain_arithmetic_end_to_end(tmp_path):
    """A short real run of the recipe on the real environment (the full default is not run
    in the suite): it trains, loads through Hugging Face, and pass@1 is computed."""
    import prmgym  # noqa: F401

    from prmgym.recipes.pretrain_cli import add_arguments, run

    import argparse

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(["--env", "prmgym/ChainArithmetic-v0", "--out", str(tmp_path / "m"), "--steps", "150",
                              "--num-train-tasks", "1000", "--n-layer", "2", "--n-embd", "64", "--n-head", "2",
                              "--eval-tasks", "50", "--no-progress"])
    assert run(args) == 0
    m = tiny_recipe.load_manifest(tmp_path / "m")
    assert m["eval"]["n_tasks"] == 50 and 0.0 <= m["eval"]["pass@1"] <= 1.0
    policy = TransformersPolicy.from_pretrained(tmp_path / "m")
    # it learned the step format: the first greedy step of a held-out task is "a<op>b=c"
    env = gym.make("prmgym/ChainArithmetic-v0", split="test")
    task = env.unwrapped.source.tasks("test", 1, seed=3)[0]
    obs, _ = env.reset(seed=0, options={"task": task})
    [[p]] = policy.propose([obs], n=1, temperature=0, stop="\n", max_new_tokens=16)
    assert p.finish_reason == "stop" and re.fullmatch(r"\d+[-+*/]\d+=\d+", p.text), p.text
    # the same pass@1 through the reusable evaluator
    assert evaluate_policy(policy, "prmgym/ChainArithmetic-v0", n_tasks=50, seed=0)["pass@1"] == m["eval"]["pass@1"]
    assert run(args) == 0  # cached: loads


def test_pretrain_on_a_source_with_fewer_distinct_tasks_uses_them_all(tmp_path):
    # Countdown difficulty 1 has ~4,100 distinct train problems, fewer than the default 6000
    path = tiny_recipe.pretrain("prmgym/Countdown-v0", tmp_path / "cd", progress=False, steps=2, n_layer=1,
                                n_embd=16, n_head=1, eval_tasks=0)
    m = tiny_recipe.load_manifest(path)
    assert m["config"]["num_train_tasks"] == 6000
    assert 1000 < m["n_examples"] < 6000, m


def test_cli_rejects_bad_arguments(tmp_path, capsys):
    import argparse

    from prmgym.recipes.pretrain_cli import add_arguments, run

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    assert run(parser.parse_args(["--out", str(tmp_path / "m"), "--env-kwargs", "{bad"])) == 2
    assert "not valid JSON" in capsys.readouterr().err
    assert run(parser.parse_args(["--out", str(tmp_path / "m"), "--steps", "0"])) == 2
    assert "steps must be >= 1" in capsys.readouterr().err
