"""The LM feature of ORM, MC-PRM and rePIRL (prmgym.rewards.lmfeature): an untrained PRM ranks as
the policy's LM does, the head starts at zero on everything else, training moves the head."""

import random

import pytest
import torch

from prmgym.models import tiny
from prmgym.rewards import MCPRM, ORMPRM, PRMBatch, RePIRLPRM, load_prm
from prmgym.rewards.data import fill_logprobs
from prmgym.rewards.heldout import auc

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def policy():
    return tiny.random_tiny_policy(seed=0, n_layer=1, n_embd=32, n_head=2, n_positions=256)


def traces(n, seed):
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        a, b = rng.randint(1, 9), rng.randint(1, 9)
        out.append((f"Compute {a} + {b}.", [f"{a} + {b} = {a + b}", rng.choice(["Answer: 7", "qzx#", "1 + 1 = 2"])]))
    return out


def mean_logprobs(policy, rows):
    lp, nt = fill_logprobs(policy, [p for p, _ in rows], [s for _, s in rows])
    return [[a / n for a, n in zip(l, m)] for l, m in zip(lp, nt)]


@pytest.mark.parametrize("cls,mode", [(ORMPRM, "running_min"), (MCPRM, "running_min"), (RePIRLPRM, "step")])
def test_defaults_and_zero_head(policy, cls, mode):
    prm = cls.from_backbone(policy)
    assert prm.lm_feature == mode == cls.Options().lm_feature
    w, b = prm.net.head.weight, prm.net.head.bias
    assert w.shape[1] == policy.model.config.n_embd + 1  # hidden state + the LM feature
    assert torch.count_nonzero(w[:, :-1]) == 0 and torch.count_nonzero(b) == 0
    assert w[0, -1].item() == pytest.approx(1.0)


@pytest.mark.parametrize("mode", ["step", "running_min"])
def test_untrained_score_is_the_lm_prior(policy, mode):
    rows = traces(12, seed=1)
    prm = ORMPRM.from_backbone(policy, lm_feature=mode, lm_feature_weight=2.0, squash=False, cache=False)
    mlp = mean_logprobs(policy, rows)
    want = [[2.0 * x for x in (torch.cummin(torch.tensor(r), 0).values.tolist() if mode == "running_min" else r)]
            for r in mlp]
    got = prm.score_steps([p for p, _ in rows], [s for _, s in rows])
    for g, w in zip(got, want):
        assert g == pytest.approx(w, abs=1e-4)
    # so its ranking of whole traces (aggregation last) is the LM's: same order, ties aside
    flat_prior = [r[-1] for r in want]
    flat_prm = prm.score([p for p, _ in rows], [s for _, s in rows])
    order = sorted(range(len(rows)), key=lambda i: flat_prior[i])
    assert sorted(range(len(rows)), key=lambda i: flat_prm[i]) == order


def test_training_changes_the_head_and_learns(policy):
    torch.manual_seed(0)
    rows = traces(16, seed=2)
    labels = [1.0 if s[-1].startswith("Answer") else 0.0 for _, s in rows]
    batch = PRMBatch([p for p, _ in rows], [s for _, s in rows], labels=labels)
    prm = ORMPRM.from_backbone(policy, learning_rate=3e-3, train_backbone=False)
    before = prm.net.head.weight.detach().clone()
    prior = auc(*[[s for s, y in zip(prm.score(batch.prompts, batch.step_lists), labels) if y == c] for c in (1, 0)])
    first = prm.update(batch)
    for _ in range(30):
        last = prm.update(batch)
    assert torch.count_nonzero(prm.net.head.weight[:, :-1]) > 0  # the hidden-state weights left zero
    assert not torch.equal(before, prm.net.head.weight)
    assert last["loss"] < first["loss"] - 0.1
    after = auc(*[[s for s, y in zip(prm.score(batch.prompts, batch.step_lists), labels) if y == c] for c in (1, 0)])
    assert after > prior + 0.3  # measured: 0.29 (the LM prior of a random body) -> 0.75


def test_save_load_and_old_prms(policy, tmp_path):
    rows = traces(4, seed=3)
    prm = MCPRM.from_backbone(policy)
    with torch.no_grad():
        prm.net.head.weight.normal_(std=0.1)
    prm.save(tmp_path / "mc")
    again = load_prm(tmp_path / "mc")
    assert again.lm_feature == "running_min" and torch.equal(again.net.head.weight, prm.net.head.weight)
    ps, ss = [p for p, _ in rows], [s for _, s in rows]
    for a, b in zip(again.score_steps(ps, ss), prm.score_steps(ps, ss)):
        assert a == pytest.approx(b, abs=1e-5)
    # a PRM saved before the option existed has no feature column: it loads as lm_feature=none
    old = MCPRM.from_backbone(policy, lm_feature="none")
    old.save(tmp_path / "old")
    import json

    cfg_path = tmp_path / "old" / "prm_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg.pop("lm_feature"), cfg.pop("lm_feature_weight")
    cfg_path.write_text(json.dumps(cfg))
    assert load_prm(tmp_path / "old").lm_feature == "none"


def test_bad_options(policy):
    with pytest.raises(ValueError, match="unknown lm_feature"):
        ORMPRM.from_backbone(policy, lm_feature="max")
    with pytest.raises(ValueError, match="lm_feature_weight must be > 0"):
        ORMPRM.from_backbone(policy, lm_feature_weight=0.0)
