"""PRM learners: AIRL, rePIRL, ORM, MC-PRM, implicit PRM, value model — they learn, they
do not saturate at init, they save and load, bad input fails clearly."""

import json
import math
import random

import pytest
import torch

from prmgym.models import tiny
from prmgym.rewards import AIRLPRM, MCPRM, ORMPRM, ImplicitPRM, PRMBatch, RePIRLPRM, ValueModel, load_prm
from prmgym.rewards.data import fill_logprobs
from prmgym.rewards.value import load_value_targets, targets_to_batch

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def policy():
    return tiny.random_tiny_policy(seed=0, n_layer=1, n_embd=32, n_head=2, n_positions=256)


def toy_traces(n, seed):
    """Good traces (correct sums) and bad traces (garbage steps): separable by text."""
    rng = random.Random(seed)
    good, bad = [], []
    for _ in range(n):
        a, b, c = rng.randint(1, 9), rng.randint(1, 9), rng.randint(1, 9)
        prompt = f"Compute {a} + {b} + {c}."
        good.append((prompt, [f"{a} + {b} = {a + b}", f"{a + b} + {c} = {a + b + c}", f"Answer: {a + b + c}"]))
        junk = ["".join(rng.choice("qxzjwk#") for _ in range(rng.randint(5, 9))) for _ in range(3)]
        bad.append((prompt, junk))
    return good, bad


def toy_batch(n, seed, logprob=-2.0):
    good, bad = toy_traces(n, seed)
    traces = good + bad
    return PRMBatch(
        prompts=[p for p, _ in traces],
        step_lists=[s for _, s in traces],
        labels=[1.0] * len(good) + [0.0] * len(bad),
        step_logprobs=[[logprob * 4] * len(s) for _, s in traces],
        step_ntokens=[[4] * len(s) for _, s in traces],
    )


def params_vector(prm):
    return torch.cat([p.detach().flatten().clone() for p in prm.parameters()])


# ------------------------------------------------------------------------------- AIRL
@pytest.mark.parametrize("options", [
    {"head_learning_rate": 3e-3},  # the default split: heads by the discriminator loss, the body by expert_nll
    {"head_learning_rate": 0.0, "expert_nll": 0.0, "discriminator_trains_body": True},  # one loss trains everything
], ids=["split", "whole"])
def test_airl_discriminator_learns_separable_toy(policy, options):
    torch.manual_seed(0)
    prm = AIRLPRM.from_backbone(policy, learning_rate=3e-3, **options)
    before = params_vector(prm)
    train, held = toy_batch(8, seed=1), toy_batch(8, seed=2)
    first = prm.update(train)
    for _ in range(25):
        last = prm.update(train)
    assert not torch.equal(before, params_vector(prm))
    assert last["loss"] < first["loss"] - 0.2
    assert first["disc_acc"] <= 0.75 and last["disc_acc"] >= 0.95
    # held-out: expert steps get a higher search score and a higher RL reward
    D = prm.discriminator(held)
    d_exp = [x for row, y in zip(D, held.labels) if y for x in row]
    d_pol = [x for row, y in zip(D, held.labels) if not y for x in row]
    assert min(d_exp) > max(d_pol)
    scores = prm.score_steps(held.prompts, held.step_lists)
    s_exp = [x for row, y in zip(scores, held.labels) if y for x in row]
    s_pol = [x for row, y in zip(scores, held.labels) if not y for x in row]
    assert sum(s_exp) / len(s_exp) > sum(s_pol) / len(s_pol)


def test_airl_does_not_saturate_at_init(policy):
    good, bad = toy_traces(4, seed=3)
    traces = good + bad
    prompts, steps = [p for p, _ in traces], [s for _, s in traces]
    lp, nt = fill_logprobs(policy, prompts, steps)  # real log-probs of a random policy
    batch = PRMBatch(prompts, steps, labels=[1.0] * 4 + [0.0] * 4, step_logprobs=lp, step_ntokens=nt)
    assert min(x for row in lp for x in row) < -20  # whole-step log π is large

    def all_D(prm):
        prm._init_bias(batch)
        return [x for row in prm.discriminator(batch) for x in row]

    # default: LM prior (f starts at the backbone's own log π, i.e. the policy's, and the heads
    # start at zero): D = 1/2 exactly
    for scale in ("mean", "sum"):
        D = all_D(AIRLPRM.from_backbone(policy, logpi_scale=scale))
        assert D == pytest.approx([0.5] * len(D), abs=1e-5), (scale, D)
    # no prior: length-normalised log π + data-dependent bias keeps D away from 0 and 1
    D = all_D(AIRLPRM.from_backbone(policy, lm_prior=False))
    assert all(0.1 < d < 0.9 for d in D), D
    assert 0.35 < sum(D) / len(D) < 0.65
    # no prior, raw per-step sums, no bias init: D pinned at 1 (why the defaults are what they are)
    raw = AIRLPRM.from_backbone(policy, lm_prior=False, logpi_scale="sum", init_bias_from_data=False)
    assert min(x for row in raw.discriminator(batch) for x in row) > 0.999


def test_airl_lm_prior_is_the_backbone_log_prob(policy, tmp_path):
    prm = AIRLPRM.from_backbone(policy, cache=False)  # untrained: no head to zero by hand
    p, s = "Compute 1 + 2.", ["1 + 2 = 3", "Answer: 3"]
    [out] = prm.outputs([p], [s])
    lp, nt = fill_logprobs(policy, [p], [s])
    mean_lp = [a / n for a, n in zip(lp[0], nt[0])]
    assert out[1:, 0].tolist() == pytest.approx(mean_lp, abs=1e-4)
    assert out[:, 1].abs().max() < 1e-6  # h: zero head
    # so the untrained search score is σ(mean token log-prob): it ranks steps as the policy does
    assert prm.score_steps([p], [s])[0] == pytest.approx(torch.sigmoid(torch.tensor(mean_lp)).tolist(), abs=1e-4)
    # a saved, trained head is loaded over the zero initialisation
    with torch.no_grad():
        prm.net.head.weight.normal_(std=0.5)
    prm.save(tmp_path / "prm")
    again = load_prm(tmp_path / "prm")
    assert torch.equal(again.net.head.weight, prm.net.head.weight)


@pytest.mark.parametrize("search_score", ["g", "f"])
def test_airl_search_score_options(policy, search_score):
    torch.manual_seed(1)
    prm = AIRLPRM.from_backbone(policy, search_score=search_score, gamma=0.9, cache=False, init_bias_from_data=False)
    with torch.no_grad():
        prm.net.head.weight.normal_(std=0.5)
    batch = toy_batch(2, seed=4)
    [out] = prm.outputs(batch.prompts[:1], batch.step_lists[:1])
    g = out[1:, 0]
    f = g + 0.9 * out[1:, 1] - out[:-1, 1]
    want = torch.sigmoid(g if search_score == "g" else f).tolist()
    assert prm.score_steps(batch.prompts[:1], batch.step_lists[:1])[0] == pytest.approx(want, abs=1e-5)
    # g and f differ, so the option matters
    assert not torch.allclose(g, f, atol=1e-3)
    # the search score does not move with the policy; the RL reward f − log π does
    r1 = prm.step_rewards(batch.prompts[:1], batch.step_lists[:1], [[-4.0] * 3], [[4] * 3])[0]
    r2 = prm.step_rewards(batch.prompts[:1], batch.step_lists[:1], [[-8.0] * 3], [[4] * 3])[0]
    assert r2 == pytest.approx([x + 1.0 for x in r1], abs=1e-5)  # mean scale: −(−8/4) vs −(−4/4)
    assert r1 == pytest.approx((f + 1.0).tolist(), abs=1e-5)
    assert prm.score_steps(batch.prompts[:1], batch.step_lists[:1])[0] == pytest.approx(want, abs=1e-5)


def test_airl_bad_input(policy):
    prm = AIRLPRM.from_backbone(policy)
    b = toy_batch(2, seed=5)
    with pytest.raises(ValueError, match="step_logprobs"):
        prm.update(PRMBatch(b.prompts, b.step_lists, labels=b.labels))
    with pytest.raises(ValueError, match="expert .* and policy"):
        prm.update(PRMBatch(b.prompts[:2], b.step_lists[:2], labels=[1.0, 1.0],
                            step_logprobs=b.step_logprobs[:2], step_ntokens=b.step_ntokens[:2]))
    with pytest.raises(ValueError, match="search_score"):
        AIRLPRM.from_backbone(policy, search_score="h")
    with pytest.raises(ValueError, match="has 1 values for 3 steps"):
        PRMBatch(["p"], [["a", "b", "c"]], step_logprobs=[[0.0]])


def test_airl_context_steps_are_state_not_examples(policy):
    """A policy step proposed after an expert prefix is one negative; the prefix is only its state."""
    import torch.nn.functional as F

    torch.manual_seed(2)
    prm = AIRLPRM.from_backbone(policy, cache=False, expert_nll=0.0, discriminator_trains_body=True)
    with torch.no_grad():
        prm.net.head.weight.normal_(std=0.5)
    prm.net.eval()  # no dropout: the two losses below must see the same logits
    good, bad = toy_traces(2, seed=6)
    prompts = [good[0][0], good[0][0], good[1][0]]
    steps = [good[0][1], good[0][1][:2] + [bad[0][1][0]], good[1][1]]  # the middle one: prefix + a junk step
    batch = PRMBatch(prompts, steps, labels=[1.0, 0.0, 1.0], step_logprobs=[[-8.0] * 3] * 3,
                     step_ntokens=[[4] * 3] * 3, context_steps=[0, 2, 0])
    loss, m = prm.loss(batch)
    z = prm.logits(batch)
    zp, zn = torch.cat([z[0], z[2]]), z[1][2:]  # only the proposed step is a policy example
    want = 0.5 * (F.binary_cross_entropy_with_logits(zp, torch.ones_like(zp))
                  + F.binary_cross_entropy_with_logits(zn, torch.zeros_like(zn)))
    assert float(loss) == pytest.approx(float(want), abs=1e-5)
    assert m["disc_acc_policy"] == float((zn < 0).float().mean())
    without = prm.loss(PRMBatch(prompts, steps, labels=[1.0, 0.0, 1.0], step_logprobs=[[-8.0] * 3] * 3,
                                step_ntokens=[[4] * 3] * 3))[0]
    assert float(without) != pytest.approx(float(loss), abs=1e-4)  # counting the prefix changes the loss
    # without the LM prior the first update sets g's bias to the mean log π of the *examples*:
    # the context steps' placeholder log-probs (0) do not count
    plain = AIRLPRM.from_backbone(policy, lm_prior=False)
    placeholders = PRMBatch(prompts, steps, labels=[1.0, 0.0, 1.0], step_ntokens=[[4] * 3] * 3, context_steps=[0, 2, 0],
                            step_logprobs=[[-8.0] * 3, [0.0, 0.0, -8.0], [-8.0] * 3])
    plain._init_bias(placeholders)
    assert float(plain.net.head.bias[0]) == pytest.approx(-2.0)  # −8 / 4 tokens, every example
    # concatenation keeps the context of the batches that have one; the others have none
    cat = PRMBatch.concat([batch, PRMBatch(prompts[:1], steps[:1], labels=[1.0])])
    assert cat.context_steps == [0, 2, 0, 0]
    with pytest.raises(ValueError, match="context_steps\\[0\\] is 4 for a trace of 3 steps"):
        PRMBatch(prompts[:1], steps[:1], context_steps=[4])


def test_airl_residual_features_start_at_the_prior_and_are_read(policy, tmp_path):
    """``residual_features``: the heads also read statistics of the body's token log-probs of the
    step (zero weights at first, so the untrained PRM is still exactly the LM prior)."""
    p, s = "Compute 1 + 2.", ["1 + 2 = 3", "Answer: 3"]
    prm = AIRLPRM.from_backbone(policy, cache=False, residual_features="token_min,sum")
    assert prm.net.head.in_features == 32 + 2
    [out] = prm.outputs([p], [s])
    lp, nt = fill_logprobs(policy, [p], [s])
    assert out[1:, 0].tolist() == pytest.approx([a / n for a, n in zip(lp[0], nt[0])], abs=1e-4)
    # the feature columns are the least likely token's log-prob and the step's summed log-prob
    ids, bounds = prm.encoder.encode(p, s)
    [(_, seg_sum, seg_min)] = prm.net.hidden_and_segment_logprobs([ids], [bounds], token_min=True)
    toks = policy.logprobs(["Compute 1 + 2.\n", "Compute 1 + 2.\n1 + 2 = 3\n"], ["1 + 2 = 3\n", "Answer: 3\n"])
    assert seg_min.tolist() == pytest.approx([float(t.min()) for t in toks], abs=1e-4)
    assert seg_sum.tolist() == pytest.approx(lp[0], abs=1e-4)
    with torch.no_grad():  # a weight on token_min moves g by that multiple of it
        prm.net.head.weight[0, -2] = 0.5
    with torch.no_grad():
        [moved] = prm.outputs([p], [s])
    assert (moved[1:, 0] - out[1:, 0]).tolist() == pytest.approx((0.5 * seg_min).tolist(), abs=1e-4)
    assert float(moved[0, 0]) == pytest.approx(float(out[0, 0]), abs=1e-6)  # the prompt boundary has no step
    prm.save(tmp_path / "prm")
    again = load_prm(tmp_path / "prm")
    assert again.residual_features == ("token_min", "sum")
    assert torch.allclose(again.outputs([p], [s])[0], moved, atol=1e-5)
    with pytest.raises(ValueError, match="comma list of distinct names"):
        AIRLPRM.from_backbone(policy, residual_features="token_max")
    with pytest.raises(ValueError, match="lm_prior=False does not compute"):
        AIRLPRM.from_backbone(policy, residual_features="token_min", lm_prior=False)


def test_airl_expert_nll_adds_the_expert_steps_token_nll_to_the_loss(policy):
    """``expert_nll``: λ × the body's mean token NLL of the label-1 steps (context steps left out)
    is added to the discriminator loss, and updates on it raise the body's log-prob of those steps."""
    prompts = ["Compute 1 + 2.", "Compute 3 + 4.", "Compute 5 + 1."]
    steps = [["1 + 2 = 3", "Answer: 3"], ["3 + 4 = 9", "Answer: 9"], ["5 + 1 = 6", "Answer: 6"]]
    lp, nt = fill_logprobs(policy, prompts, steps)
    # the second trace is a policy step proposed after one expert step of context
    batch = PRMBatch(prompts, steps, labels=[1.0, 0.0, 1.0], step_logprobs=lp, step_ntokens=nt, context_steps=[1, 1, 0])
    plain = AIRLPRM.from_backbone(policy, cache=False, expert_nll=0.0, discriminator_trains_body=True)
    with_nll = AIRLPRM.from_backbone(policy, cache=False, expert_nll=0.5)
    loss0, m0 = plain.loss(batch)
    loss1, m1 = with_nll.loss(batch)
    # label 1, context dropped: step 2 of trace 1 and both steps of trace 3
    want = -(lp[0][1] + lp[2][0] + lp[2][1]) / (nt[0][1] + nt[2][0] + nt[2][1])
    assert m1["expert_nll"] == pytest.approx(want, rel=1e-4)
    assert float(loss1 - loss0) == pytest.approx(0.5 * want, rel=1e-4)
    assert "expert_nll" not in m0
    # with demonstrations marked, a label-1 trace that is not one (a verified rollout) is left out
    batch.demonstrations = [False, False, True]
    _, m2 = with_nll.loss(batch)
    assert m2["expert_nll"] == pytest.approx(-(lp[2][0] + lp[2][1]) / (nt[2][0] + nt[2][1]), rel=1e-4)
    batch.demonstrations = None
    torch.manual_seed(0)
    for _ in range(5):
        with_nll.update(batch)
    after = with_nll.net.hidden_and_segment_logprobs(*zip(*[with_nll.encoder.encode(prompts[2], steps[2])]))[0][1]
    assert float(after.sum()) > lp[2][0] + lp[2][1]
    with pytest.raises(ValueError, match="expert_nll must be >= 0"):
        AIRLPRM.from_backbone(policy, expert_nll=-1.0)
    # without the LM prior there is no LM term to fit: expert_nll does not apply
    _, m3 = AIRLPRM.from_backbone(policy, cache=False, lm_prior=False).loss(batch)
    assert "expert_nll" not in m3


def test_airl_discriminator_trains_body_false_leaves_the_body_to_expert_nll(policy):
    """``discriminator_trains_body=False``: the discriminator loss reaches only the heads; the
    body's gradient is exactly that of ``expert_nll`` × the demonstrations' NLL."""
    prompts, steps = ["Compute 1 + 2.", "Compute 3 + 4."], [["1 + 2 = 3", "Answer: 3"], ["3 + 4 = 9", "Answer: 9"]]
    lp, nt = fill_logprobs(policy, prompts, steps)
    batch = PRMBatch(prompts, steps, labels=[1.0, 0.0], step_logprobs=lp, step_ntokens=nt)
    prm = AIRLPRM.from_backbone(policy, cache=False, expert_nll=2.0, discriminator_trains_body=False)
    with torch.no_grad():  # non-zero heads, so the discriminator loss has a gradient to send
        prm.net.head.weight.normal_(0, 0.1)
    head = {id(p) for p in prm.net.head.parameters()}
    body = [p for p in prm.parameters() if id(p) not in head]

    def grads(loss):
        prm.optim.zero_grad()
        loss.backward()
        return [p.grad.clone() if p.grad is not None else torch.zeros_like(p) for p in body]

    loss, _ = prm.loss(batch)
    full = grads(loss)
    head_grad = prm.net.head.weight.grad.clone()
    nll_only = grads(2.0 * prm._demonstration_nll(batch, prm.forward_all(prompts, steps)))
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(full, nll_only))
    assert any(float(g.abs().max()) > 0 for g in full)
    assert float(head_grad.abs().max()) > 0  # the discriminator loss trains the heads
    with pytest.raises(ValueError, match="leaves the body to expert_nll"):
        AIRLPRM.from_backbone(policy, expert_nll=0.0)  # discriminator_trains_body=False by default


def test_head_learning_rate_is_a_group_of_its_own(policy):
    torch.manual_seed(0)
    prm = AIRLPRM.from_backbone(policy, learning_rate=1e-5, head_learning_rate=1e-3)
    groups = prm.optimizer.param_groups
    assert len(groups) == 2 and len(groups[1]["params"]) == 2  # the head's weight and bias
    body_before = [q.detach().clone() for q in groups[0]["params"]]
    head_before = prm.net.head.weight.detach().clone()
    m = prm.update(toy_batch(3, seed=15))
    assert m["lr"] == pytest.approx(1e-5)  # the schedule's rate, logged as before
    assert [g["lr"] for g in groups] == pytest.approx([1e-5, 1e-3])
    # AdamW's first step moves each parameter by about its group's rate
    assert float((prm.net.head.weight - head_before).abs().max()) == pytest.approx(1e-3, rel=0.05)
    assert max(float((q - b).abs().max()) for q, b in zip(groups[0]["params"], body_before)) < 1.1e-5
    assert len(AIRLPRM.from_backbone(policy, head_learning_rate=0.0).optimizer.param_groups) == 1  # 0: one group
    assert len(AIRLPRM.from_backbone(policy).optimizer.param_groups) == 2  # AIRL's default heads train at 1e-5
    with pytest.raises(ValueError, match="head_learning_rate must be >= 0"):
        AIRLPRM.from_backbone(policy, head_learning_rate=-1.0)


# ------------------------------------------------------------------------------- rePIRL
def test_repirl_learns(policy):
    torch.manual_seed(0)
    prm = RePIRLPRM.from_backbone(policy, learning_rate=3e-3)
    before = params_vector(prm)
    train, held = toy_batch(8, seed=6), toy_batch(8, seed=7)
    first = prm.update(train)
    for _ in range(20):
        last = prm.update(train)
    assert not torch.equal(before, params_vector(prm))
    assert last["R_demo"] - last["R_policy"] > first["R_demo"] - first["R_policy"] + 1.0
    assert 0 < last["ess_frac"] <= 1.0 and math.isfinite(last["log_Z"])
    r = prm.step_rewards(held.prompts, held.step_lists)
    good = [x for row, y in zip(r, held.labels) if y for x in row]
    bad = [x for row, y in zip(r, held.labels) if not y for x in row]
    assert min(good) > max(bad)


# ------------------------------------------------------------------------------- baselines
def test_orm_learns_and_reads_last_step(policy):
    torch.manual_seed(0)
    prm = ORMPRM.from_backbone(policy, learning_rate=3e-3)
    train, held = toy_batch(8, seed=8), toy_batch(8, seed=9)
    first = prm.update(train)
    for _ in range(30):  # 30: the head starts at the LM feature of a random body (lm_feature), its bias at 0
        last = prm.update(train)
    assert last["loss"] < first["loss"] - 0.2 and last["acc"] == 1.0
    final = prm.score(held.prompts, held.step_lists)  # aggregation "last"
    assert min(f for f, y in zip(final, held.labels) if y) > max(f for f, y in zip(final, held.labels) if not y)


def test_mc_prm_learns_step_labels(policy):
    torch.manual_seed(0)
    prm = MCPRM.from_backbone(policy, learning_rate=3e-3)
    good, bad = toy_traces(6, seed=10)
    # a mixed trace: good first step, then junk -> labels 1, 0, 0 ; soft labels allowed
    traces = good + bad + [(p, g[:1] + b[1:]) for (p, g), (_, b) in zip(good, bad)]
    labels = [[1.0, 1.0, 1.0]] * 6 + [[0.0, 0.0, 0.0]] * 6 + [[0.75, 0.0, 0.0]] * 6
    batch = PRMBatch([p for p, _ in traces], [s for _, s in traces], step_labels=labels)
    first = prm.update(batch)
    for _ in range(20):
        last = prm.update(batch)
    assert last["loss"] < first["loss"] - 0.1
    s = prm.score_steps(batch.prompts[-1:], batch.step_lists[-1:])[0]
    assert s[0] > s[1] and s[0] > s[2]
    with pytest.raises(ValueError, match="step_labels"):
        prm.update(PRMBatch(batch.prompts, batch.step_lists, labels=[1.0] * len(batch)))


def test_implicit_prm_starts_at_zero_and_learns(policy):
    torch.manual_seed(0)
    prm = ImplicitPRM.from_backbone(policy, learning_rate=3e-3, squash=False)
    train = toy_batch(6, seed=11)
    # ψ == ref at init: every step reward is exactly 0
    assert all(abs(x) < 1e-6 for row in prm.score_steps(train.prompts, train.step_lists) for x in row)
    first = prm.update(train)
    for _ in range(10):
        last = prm.update(train)
    assert last["loss"] < first["loss"]
    r = prm.step_rewards(train.prompts, train.step_lists)
    good = sum(sum(row) for row, y in zip(r, train.labels) if y)
    bad = sum(sum(row) for row, y in zip(r, train.labels) if not y)
    assert good > bad
    # the reference stays frozen
    assert all(not p.requires_grad for p in prm.reference.parameters())


def test_implicit_save_load(policy, tmp_path):
    prm = ImplicitPRM.from_backbone(policy, learning_rate=3e-3, score="cumulative")
    b = toy_batch(2, seed=12)
    prm.update(b)
    want = prm.score_steps(b.prompts, b.step_lists)
    prm.save(tmp_path / "imp")
    back = load_prm(tmp_path / "imp")
    assert isinstance(back, ImplicitPRM) and back.score_mode == "cumulative"
    assert back.score_steps(b.prompts, b.step_lists) == [pytest.approx(w, abs=1e-5) for w in want]


# ------------------------------------------------------------------------------- value model
def write_targets(path, rows):
    with open(path, "w") as f:
        for r in rows:
            f.write((r if isinstance(r, str) else json.dumps(r)) + "\n")


def test_value_model_learns_and_clips(policy, tmp_path):
    torch.manual_seed(0)
    good, bad = toy_traces(6, seed=13)
    rows = [{"prompt": p, "steps": s[:2], "value": 0.9, "visits": 5} for p, s in good]
    rows += [{"prompt": p, "steps": s[:2], "value": 0.1, "visits": 3} for p, s in bad]
    rows += [{"prompt": good[0][0], "steps": [], "value": 0.5, "visits": 10}]  # a root node
    write_targets(tmp_path / "t.jsonl", rows)
    targets = load_value_targets(tmp_path / "t.jsonl")
    assert len(targets) == 13 and targets[-1].steps == ()
    vm = ValueModel.from_backbone(policy, learning_rate=3e-3, weight_by_visits=True)
    batch = targets_to_batch(targets, weight_by_visits=True)
    first = vm.update(batch)
    for _ in range(20):
        last = vm.update(batch)
    assert last["mse"] < first["mse"] * 0.5
    v = vm.values(batch.prompts[:12], batch.step_lists[:12])
    assert min(v[:6]) > max(v[6:12])
    # clipping: push the head far out of range
    with torch.no_grad():
        vm.net.head.bias.fill_(5.0)
    assert all(x == 1.0 for row in vm.score_steps(batch.prompts[:3], batch.step_lists[:3]) for x in row)
    with torch.no_grad():
        vm.net.head.bias.fill_(-5.0)
    vm.clear_cache()
    assert all(x == 0.0 for x in vm.values(batch.prompts[:3], batch.step_lists[:3]))


@pytest.mark.parametrize(
    "line, match",
    [
        ("not json", r"t\.jsonl:2: not valid JSON"),
        ('{"prompt": "p", "steps": ["a"], "value": 0.5}', r":2: missing key\(s\) \['visits'\]"),
        ('{"prompt": "p", "steps": "a", "value": 0.5, "visits": 1}', r":2: 'steps' must be a list"),
        ('{"prompt": "p", "steps": ["a"], "value": 1.5, "visits": 1}', r":2: 'value' must be a number in \[0, 1\]"),
        ('{"prompt": "p", "steps": ["a"], "value": 0.5, "visits": 0}', r":2: 'visits' must be an integer >= 1"),
        ('[1, 2]', r":2: expected a JSON object"),
    ],
)
def test_value_targets_file_errors(tmp_path, line, match):
    write_targets(tmp_path / "t.jsonl", [{"prompt": "p", "steps": [], "value": 0.2, "visits": 1}, line])
    with pytest.raises(ValueError, match=match):
        load_value_targets(tmp_path / "t.jsonl")


def test_value_targets_missing_or_empty(tmp_path):
    with pytest.raises(FileNotFoundError, match="no value-targets file"):
        load_value_targets(tmp_path / "nope.jsonl")
    (tmp_path / "e.jsonl").write_text("\n")
    with pytest.raises(ValueError, match="empty"):
        load_value_targets(tmp_path / "e.jsonl")


# ------------------------------------------------------------------------------- resume
def test_inplace_load_restores_weights_and_optimizer(policy, tmp_path):
    torch.manual_seed(0)
    a = AIRLPRM.from_backbone(policy, learning_rate=3e-3)
    b = toy_batch(3, seed=14)
    for _ in range(3):
        a.update(b)
    a.save(tmp_path / "ck")
    fresh = AIRLPRM.from_backbone(policy, learning_rate=3e-3)
    assert fresh.load(tmp_path / "ck") is fresh  # the in-place form trainers use
    assert fresh.updates == 3 and fresh.bias_initialised
    assert torch.equal(params_vector(fresh), params_vector(a))
    # continuing from the checkpoint matches continuing the original
    m1, m2 = a.update(b), fresh.update(b)
    assert m1["loss"] == pytest.approx(m2["loss"], abs=1e-5)
    assert torch.allclose(params_vector(fresh), params_vector(a), atol=1e-6)


def test_airl_saved_before_expert_nll_loads_as_it_was_trained(policy, tmp_path):
    """A PRM saved without ``expert_nll`` / ``discriminator_trains_body`` (before they existed)
    loads with the values it was trained with (0 / True), not with the new defaults; and a batch
    without any demonstration trains without the NLL term instead of failing."""
    prm = AIRLPRM.from_backbone(policy, cache=False)
    d = prm.save(tmp_path / "prm")
    cfg_path = tmp_path / "prm" / "prm_config.json"
    cfg = json.loads(cfg_path.read_text())
    for key in ("expert_nll", "discriminator_trains_body"):
        cfg.get("options", cfg).pop(key, None)
    cfg_path.write_text(json.dumps(cfg))
    old = load_prm(d)
    assert old.options.expert_nll == 0.0 and old.options.discriminator_trains_body is True
    assert load_prm(d, expert_nll=1.0).options.expert_nll == 1.0  # an explicit override still wins
    prompts, steps = ["Compute 1 + 2.", "Compute 3 + 4."], [["1 + 2 = 3", "Answer: 3"], ["3 + 4 = 9", "Answer: 9"]]
    lp, nt = fill_logprobs(policy, prompts, steps)
    no_demo = PRMBatch(prompts, steps, labels=[1.0, 0.0], step_logprobs=lp, step_ntokens=nt, demonstrations=[False, False])
    loss, m = prm.loss(no_demo)
    assert torch.isfinite(loss) and "expert_nll" not in m
