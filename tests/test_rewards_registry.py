"""A PRM kind owns its recipe: the registry lists the kinds, a class builds its own batch, a
missing class is a typed error, and `prmgym train-prm` takes --config YAML and --set."""

import dataclasses
import json
import os

import gymnasium as gym
import pytest
import torch
import yaml

import prmgym.rewards
from prmgym.cli import main
from prmgym.config import ConfigError, help_field
from prmgym.models import tiny
from prmgym.rewards import (AIRLPRM, ORMPRM, PRM_CLASSES, MissingClassError, PRMBatch, PRMOptions, RePIRLPRM, ScalarHeadPRM,
                            ValueModel, load_prm)
from prmgym.rewards.train import OfflinePRMTrainer, PRMTrainConfig, build_prm

torch.set_num_threads(1)
ENV = "prmgym/ChainArithmetic-v0"


@pytest.fixture(scope="module")
def policy():
    return tiny.random_tiny_policy(seed=0, n_layer=1, n_embd=32, n_head=2, n_positions=256)


@pytest.fixture
def toy_kinds():
    """Kinds defined inside a test, removed from the registry afterwards."""
    before = dict(PRM_CLASSES)
    yield
    PRM_CLASSES.clear()
    PRM_CLASSES.update(before)


def env_fn():
    return gym.make(ENV, split="train")


def define_truncation_orm():
    """A new kind in a few lines: an ORM whose negatives are expert solutions cut ``cut`` steps
    short (a recipe setting of its own, in its Options: no edit to PRMTrainConfig)."""

    @dataclasses.dataclass
    class TruncationOptions(PRMOptions):
        cut: int = help_field(1, "steps cut off an expert solution to make a negative")

    class TruncationORM(ORMPRM):
        kind = "toy_truncation"
        Options = TruncationOptions

        @classmethod
        def training_batch(cls, data, step):
            cut = data.prm.options.cut
            experts = [t for t in data.experts(data.tasks(step)) if len(t.steps) > cut]
            prompts = [t.prompt for t in experts] * 2
            steps = [list(t.steps) for t in experts] + [list(t.steps[:-cut]) for t in experts]
            return PRMBatch(prompts, steps, labels=[1.0] * len(experts) + [0.0] * len(experts))

    return TruncationORM


def test_kinds_come_from_the_registry(toy_kinds):
    assert set(prmgym.rewards.KINDS) == {"airl", "repirl", "orm", "mc", "value", "implicit"}
    assert prmgym.rewards.KINDS == tuple(PRM_CLASSES)
    cls = define_truncation_orm()
    assert "toy_truncation" in prmgym.rewards.KINDS and PRM_CLASSES["toy_truncation"] is cls
    assert PRMTrainConfig(kind="toy_truncation").kind == "toy_truncation"  # the config's check reads the registry
    with pytest.raises(ValueError, match="unknown PRM kind 'magic'; choose one of .*toy_truncation"):
        PRMTrainConfig(kind="magic")
    # every built-in kind declares its recipe and what it trains from
    for kind, c in PRM_CLASSES.items():
        assert c.training_batch.__func__ is not ScalarHeadPRM.training_batch.__func__, kind
        assert c.data_source in ("env", "targets") and issubclass(c.Options, PRMOptions)
    assert ValueModel.data_source == "targets" and AIRLPRM.data_source == "env"


def test_a_new_kind_trains_through_its_own_recipe(policy, toy_kinds, tmp_path):
    define_truncation_orm()
    prm = build_prm("toy_truncation", policy, learning_rate=1e-3)
    cfg = PRMTrainConfig(kind="toy_truncation", steps=2, tasks_per_step=3)
    tr = OfflinePRMTrainer(prm, policy, env_fn, cfg)
    batch = tr.collect(0)
    assert batch.labels[: len(batch) // 2] == [1.0] * (len(batch) // 2) and tr.stats["rollout_traces"] == 0
    before = [p.detach().clone() for p in prm.parameters()]
    hist = tr.train()
    tr.close()
    assert len(hist) == 2 and prm.updates == 2 and not any(h.get("skipped") for h in hist)
    assert any(not torch.equal(a, b) for a, b in zip(before, prm.parameters()))
    # and from the command line, without editing the CLI
    pdir = str(tmp_path / "pol")
    policy.save(pdir)
    out = str(tmp_path / "toy")
    assert main(["train-prm", "--kind", "toy_truncation", "--policy", pdir, "--env", ENV, "--out", out, "--steps", "1",
                 "--set", "tasks_per_step=2", "--set", "prm.cut=2", "--set", "eval_every=0", "--quiet"]) == 0
    saved = load_prm(out)
    assert saved.kind == "toy_truncation" and saved.updates == 1 and saved.options.cut == 2
    cut2 = OfflinePRMTrainer(saved, policy, env_fn, cfg).collect(0)
    n = len(cut2) // 2
    assert all(len(a) == len(b) + 2 for a, b in zip(cut2.step_lists[:n], cut2.step_lists[n:]))


def test_missing_class_is_a_typed_error_and_skips_the_update(policy, toy_kinds):
    prm = AIRLPRM.from_backbone(policy)
    experts_only = PRMBatch(["Compute 1 + 2."], [["1 + 2 = 3"]], labels=[1.0], step_logprobs=[[-1.0]], step_ntokens=[[4]])
    with pytest.raises(MissingClassError, match="needs expert .* and policy"):
        prm.update(experts_only)
    assert issubclass(MissingClassError, ValueError)

    class ExpertsOnlyAIRL(AIRLPRM):
        kind = "toy_experts_only"

        @classmethod
        def training_batch(cls, data, step):
            return data.contrast_batch(data.experts(data.tasks(step)), [])

    prm = build_prm("toy_experts_only", policy)
    tr = OfflinePRMTrainer(prm, policy, env_fn, PRMTrainConfig(kind="toy_experts_only", steps=2, tasks_per_step=2))
    hist = tr.train()
    assert [h["skipped"] for h in hist] == [1.0, 1.0] and prm.updates == 2  # skipped, still counted
    tr.close()

    class NoLogprobsRePIRL(RePIRLPRM):  # any other ValueError is a bug in the recipe: it propagates
        kind = "toy_no_logprobs"

        @classmethod
        def training_batch(cls, data, step):
            return PRMBatch(["p", "p"], [["a"], ["b"]], labels=[1.0, 0.0])

    tr = OfflinePRMTrainer(build_prm("toy_no_logprobs", policy), policy, env_fn,
                           PRMTrainConfig(kind="toy_no_logprobs", steps=1, tasks_per_step=1))
    with pytest.raises(ValueError, match="needs step_logprobs") as e:
        tr.step()
    assert not isinstance(e.value, MissingClassError)
    tr.close()


def test_options_are_dataclasses_with_one_learning_rate_each(policy):
    assert AIRLPRM.Options().learning_rate == 1e-3  # docs/rewards.md: the one AIRL default, every entry point
    for kind in ("repirl", "orm", "mc", "value", "implicit"):
        assert PRM_CLASSES[kind].Options().learning_rate == 1e-4
    prm = build_prm("airl", policy, search_score="f", gamma=0.5)
    assert prm.learning_rate == 1e-3 and prm.options.search_score == "f" and prm.gamma == 0.5
    with pytest.raises(ConfigError, match="'lr' is spelled 'learning_rate'"):
        build_prm("orm", policy, lr=1e-3)
    with pytest.raises(ConfigError, match="did you mean 'search_score'"):
        build_prm("airl", policy, search_scor="f")
    with pytest.raises(ConfigError, match="unknown search_score 'h'"):
        build_prm("airl", policy, search_score="h")


def write_targets(path, n=8):
    with open(path, "w") as f:
        for i in range(n):
            f.write(json.dumps({"prompt": f"Compute {i} + 1.", "steps": [f"{i} + 1 = {i + 1}"] if i % 2 else [],
                                "value": (i % 4) / 3, "visits": 1 + i}) + "\n")


def test_train_prm_config_yaml_and_set(policy, tmp_path, capsys):
    pdir = str(tmp_path / "pol")
    policy.save(pdir)
    write_targets(tmp_path / "t.jsonl")
    out = str(tmp_path / "vm")
    cfg = tmp_path / "vm.yaml"
    cfg.write_text(yaml.safe_dump({"kind": "value", "policy": pdir, "targets": str(tmp_path / "t.jsonl"), "out": out,
                                   "steps": 5, "batch_size": 4, "quiet": True, "eval_every": 0,
                                   "prm": {"learning_rate": 3e-4, "train_backbone": False, "weight_by_visits": True}}))
    # YAML, then the flags, then every --set (later wins)
    assert main(["train-prm", "--config", str(cfg), "--steps", "3", "--set", "steps=2", "--set", "prm.learning_rate=2e-4"]) == 0
    prm = load_prm(out)
    assert isinstance(prm, ValueModel) and prm.updates == 2 and prm.learning_rate == 2e-4
    assert prm.options.train_backbone is False and prm.weight_by_visits is True
    lines = [json.loads(line) for line in open(os.path.join(out, "metrics.jsonl"))]
    assert [line["step"] for line in lines] == [1, 2]
    # bad input: one line naming the key and the fix, exit 2
    capsys.readouterr()
    for extra, want in [(["--set", "step=3"], "did you mean 'steps'"),
                        (["--set", "prm.lr=1e-3"], "'lr' is spelled 'learning_rate'"),
                        (["--set", "prm.gamma=0.9"], "unknown key 'prm.gamma'"),
                        (["--kind", "magic"], "unknown PRM kind 'magic'; choose one of"),
                        (["--set", "airl_negatives=prefixes"], "airl_negatives only apply to kind airl, not value"),
                        (["--set", "steps=0"], "steps must be >= 1")]:
        assert main(["train-prm", "--config", str(cfg), *extra]) == 2, extra
        err = capsys.readouterr().err.strip()
        assert want in err and len(err.splitlines()) == 1, (extra, err)
    assert main(["train-prm", "--config", str(tmp_path / "none.yaml")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["train-prm", "--kind", "orm", "--env", ENV, "--out", str(tmp_path / "o")]) == 2
    assert "train-prm needs policy: pass --policy DIR" in capsys.readouterr().err


def test_a_prm_saved_with_lr_still_loads(policy, tmp_path):
    """PRM directories written before the option was spelled learning_rate keep loading."""
    prm = build_prm("airl", policy, learning_rate=3e-4, gamma=0.7)
    prm.save(tmp_path / "p")
    path = tmp_path / "p" / "prm_config.json"
    cfg = json.loads(path.read_text())
    cfg["lr"] = cfg.pop("learning_rate")
    path.write_text(json.dumps(cfg))
    old = load_prm(tmp_path / "p")
    assert isinstance(old, AIRLPRM) and old.learning_rate == 3e-4 and old.gamma == 0.7
    assert old.score_steps(["Compute 1 + 2."], [["1 + 2 = 3"]]) == prm.score_steps(["Compute 1 + 2."], [["1 + 2 = 3"]])
