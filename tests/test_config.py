"""prmgym.config: YAML + overrides onto dataclasses, with errors that say how to fix them."""

from dataclasses import dataclass, field

import pytest

from prmgym.config import ConfigError, apply_overrides, field_help, from_dict, load_yaml, parse_override, to_dict


@dataclass
class Inner:
    lr: float = field(default=1e-3, metadata={"help": "learning rate"})
    name: str | None = None

    def __post_init__(self):
        if self.lr <= 0:
            raise ValueError("lr must be > 0; try lr: 1e-4")


@dataclass
class Outer:
    steps: int = 10
    flag: bool = False
    tags: list = field(default_factory=list)
    extra: dict = field(default_factory=dict)
    inner: Inner = field(default_factory=Inner)


def test_yaml_and_overrides(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("steps: 3\ninner:\n  lr: 1e-5\n")  # YAML 1.1 reads 1e-5 as a string
    data = apply_overrides(load_yaml(p), ["inner.name=abc", "flag=true", "extra.k=[1, 2]", "tags=[a]"])
    cfg = from_dict(Outer, data)
    assert cfg == Outer(steps=3, flag=True, tags=["a"], extra={"k": [1, 2]}, inner=Inner(lr=1e-5, name="abc"))
    assert to_dict(cfg)["inner"] == {"lr": 1e-5, "name": "abc"}
    assert field_help(Inner)["lr"] == "learning rate"


def test_unknown_key_suggests():
    with pytest.raises(ConfigError, match=r"unknown key 'inner.lrr'; did you mean 'lr'\? Valid keys: lr, name"):
        from_dict(Outer, {"inner": {"lrr": 1}})
    with pytest.raises(ConfigError, match=r"unknown key 'zzz'\. Valid keys"):
        from_dict(Outer, {"zzz": 1})


def test_type_errors_name_the_key():
    with pytest.raises(ConfigError, match="steps must be an integer, got 'many'"):
        from_dict(Outer, {"steps": "many"})
    with pytest.raises(ConfigError, match="flag must be true or false"):
        from_dict(Outer, {"flag": "perhaps"})
    with pytest.raises(ConfigError, match="inner: lr must be > 0; try lr: 1e-4"):
        from_dict(Outer, {"inner": {"lr": -1}})
    assert from_dict(Outer, {"steps": 4.0}).steps == 4


def test_bad_files_and_overrides(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_yaml(tmp_path / "missing.yaml")
    (tmp_path / "bad.yaml").write_text("a: [1,\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_yaml(tmp_path / "bad.yaml")
    (tmp_path / "list.yaml").write_text("- 1\n")
    with pytest.raises(ConfigError, match="must hold a mapping"):
        load_yaml(tmp_path / "list.yaml")
    with pytest.raises(ConfigError, match="write key=value"):
        parse_override("steps")
    with pytest.raises(ConfigError, match="is a value, not a section"):
        apply_overrides({"steps": 1}, ["steps.x=2"])


def test_example_run_configs_validate():
    import glob
    import os

    from prmgym.recipes.train import load_run_config

    root = os.path.join(os.path.dirname(__file__), "..", "examples", "configs")
    files = sorted(glob.glob(os.path.join(root, "*grpo*.yaml")))
    assert {os.path.basename(f) for f in files} >= {"grpo_chain.yaml", "rest_grpo_chain.yaml", "grpo_countdown.yaml"}
    for f in files:
        cfg = load_run_config(load_yaml(f))
        assert cfg.trainer_config().num_generations >= 2
