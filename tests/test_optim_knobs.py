"""The optimisation knobs (prmgym.models.optim) in GRPO: every test fails if its knob is ignored.

Gradient accumulation equals the one-batch gradient; the LR schedule's values and their logs;
clipping changes the update; gradient checkpointing is on and changes nothing but the
recomputation; bf16 autocast is active and close to fp32; fp16 and unknown devices are refused.
"""

import json
import math

import pytest
import torch

from prmgym.agents.grpo import GRPOConfig, GRPOTrainer
from prmgym.models import tiny
from prmgym.models.optim import (
    OptimKnobs,
    Optimization,
    autocast,
    gradient_checkpointing_on,
    lr_at,
    micro_batches,
    resolve_device,
)
from test_rollout_toyenv import ToyEnv

torch.set_num_threads(1)

BASE = dict(num_generations=4, batch_size=8, max_new_tokens=6, max_steps=1, learning_rate=1e-3)


def stop_early_policy():
    """The random tiny policy with the step delimiter's logit raised, so episodes end after 1 to 6
    tokens (a plain random model never samples it and every episode would be 6 tokens long)."""
    policy = tiny.random_tiny_policy(seed=0)
    bias = torch.zeros(len(policy.tokenizer))
    bias[policy.tokenizer.convert_tokens_to_ids("\n")] = 3.0
    policy.model.lm_head.register_forward_hook(lambda mod, inp, out: out + bias.to(out.dtype))
    return policy


def trainer(**kw):
    cfg = GRPOConfig(**{**BASE, **kw})
    return GRPOTrainer(stop_early_policy(), lambda: ToyEnv(), cfg)


def batch(tr):
    """One step's episodes (lengths vary: the random policy stops at different tokens) and random
    per-token advantages (so every token's weight in the loss matters)."""
    trajs, _ = tr.collect_batch()
    T = max(t.num_tokens for t in trajs)
    g = torch.Generator().manual_seed(0)
    return trajs, torch.randn(len(trajs), T, generator=g)


def capture_grads(tr) -> dict:
    """A dict that receives the gradients the trainer's optimizer sees at its next step (after clipping)."""
    seen = {}
    real = tr.optim.optimizer.step

    def capture(*a, **k):
        seen.update({n: p.grad.detach().clone() for n, p in tr.model.named_parameters() if p.grad is not None})
        return real(*a, **k)

    tr.optim.optimizer.step = capture
    return seen


def grads_of_update(tr, trajs, adv):
    """The gradient the optimizer receives in one `optimizer_update` and the metrics."""
    seen = capture_grads(tr)
    tr.model.train()
    m = tr.optimizer_update(trajs, adv)
    tr.model.eval()
    return seen, m


# ------------------------------------------------------------------ accumulation
@pytest.mark.parametrize("loss_type", ["token_mean", "seq_mean", "dr_grpo"])
def test_four_micro_batches_give_the_full_batch_gradient(loss_type):
    full = trainer(loss_type=loss_type, max_grad_norm=0.0, beta=0.04)
    trajs, adv = batch(full)
    lengths = {t.num_tokens for t in trajs}
    assert len(lengths) > 1, "episodes of equal length would not tell token- from sequence-weighting apart"
    g_full, m_full = grads_of_update(full, trajs, adv)
    accum = trainer(loss_type=loss_type, max_grad_norm=0.0, beta=0.04, micro_batch_size=2)  # 8 episodes -> 4 micro-batches
    calls = []
    real_loss = accum._loss
    accum._loss = lambda mb, a: calls.append(len(mb)) or real_loss(mb, a)
    g_acc, m_acc = grads_of_update(accum, trajs, adv)
    assert calls == [2, 2, 2, 2]
    assert g_full.keys() == g_acc.keys() and g_full
    worst = max(float((g_full[k] - g_acc[k]).abs().max()) for k in g_full)
    assert worst < 1e-5, worst
    assert math.isclose(m_full["loss"], m_acc["loss"], rel_tol=1e-5, abs_tol=1e-6)
    assert math.isclose(m_full["grad_norm"], m_acc["grad_norm"], rel_tol=1e-4)


def test_micro_batch_shares_follow_the_normaliser():
    assert micro_batches([1, 3, 0, 4], 2) == [([0, 1], 0.5), ([2, 3], 0.5)]
    assert micro_batches([1, 3, 0, 4], 0) == [([0, 1, 2, 3], 1.0)]
    assert micro_batches([2, 2, 2], 2) == [([0, 1], 2 / 3), ([2], 1 / 3)]


# ------------------------------------------------------------------ LR schedule
def test_schedule_values_at_given_updates():
    const = OptimKnobs(learning_rate=1.0, warmup_steps=4)
    assert [lr_at(const, u) for u in (0, 1, 3, 4, 100)] == [0.25, 0.5, 1.0, 1.0, 1.0]
    lin = OptimKnobs(learning_rate=2.0, lr_schedule="linear", warmup_steps=0, schedule_steps=10, min_lr_ratio=0.5)
    assert [lr_at(lin, u) for u in (0, 5, 10, 20)] == [2.0, 1.5, 1.0, 1.0]
    cos = OptimKnobs(learning_rate=1.0, lr_schedule="cosine", warmup_steps=2, schedule_steps=12)
    assert lr_at(cos, 1) == 1.0 and lr_at(cos, 2) == 1.0
    assert math.isclose(lr_at(cos, 7), 0.5) and math.isclose(lr_at(cos, 12), 0.0, abs_tol=1e-12)


def test_grpo_follows_and_logs_the_schedule(tmp_path):
    from prmgym.logger import Logger

    cfg = dict(num_generations=4, batch_size=8, max_new_tokens=1, max_steps=1, num_iterations=1,
               learning_rate=1e-3, lr_schedule="cosine", warmup_steps=1, schedule_steps=4)
    log = Logger(tmp_path, formats=("jsonl",))
    tr = GRPOTrainer(tiny.random_tiny_policy(seed=0), lambda: ToyEnv(), GRPOConfig(**cfg), logger=log)
    hist = tr.train(4)
    log.close()
    want = [lr_at(tr.config, u) for u in range(4)]
    assert want == pytest.approx([1e-3, 1e-3, 7.5e-4, 2.5e-4])  # warm-up 1 update, then cos over 3
    assert [m["lr"] for m in hist] == pytest.approx(want)
    rows = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
    assert [r["train/lr"] for r in rows] == pytest.approx(want)
    assert all("train/grad_norm" in r for r in rows)


def test_schedule_resumes_where_it_stopped(tmp_path):
    cfg = dict(lr_schedule="linear", warmup_steps=0, schedule_steps=6, num_iterations=1, max_new_tokens=1)
    tr = trainer(**cfg)
    tr.train(2)
    tr.save(tmp_path / "ck")
    again = trainer(**cfg).load(tmp_path / "ck")
    assert again.optim.updates == 2 and again.train(1)[0]["lr"] == pytest.approx(lr_at(again.config, 2))


def test_decaying_schedule_needs_its_length():
    with pytest.raises(ValueError, match="schedule_steps"):
        GRPOConfig(lr_schedule="cosine")
    with pytest.raises(ValueError, match="constant, linear, cosine"):
        GRPOConfig(lr_schedule="step")


# ------------------------------------------------------------------ clipping
def test_clipping_changes_the_update():
    torch.manual_seed(0)
    lin = torch.nn.Linear(4, 1)

    def one_update(max_grad_norm):
        model = torch.nn.Linear(4, 1)
        model.load_state_dict(lin.state_dict())
        opt = Optimization(OptimKnobs(learning_rate=0.1, max_grad_norm=max_grad_norm), model.parameters(),
                           optimizer_cls=torch.optim.SGD)
        before = torch.cat([p.detach().flatten().clone() for p in model.parameters()])
        opt.backward((model(torch.ones(2, 4)) * 100).sum())
        info = opt.step()
        after = torch.cat([p.detach().flatten() for p in model.parameters()])
        return float((after - before).norm()), info["grad_norm"]

    free, norm = one_update(0.0)
    clipped, norm_c = one_update(0.5)
    assert norm == norm_c > 0.5  # the logged norm is the one before clipping
    assert math.isclose(free, 0.1 * norm, rel_tol=1e-5) and math.isclose(clipped, 0.1 * 0.5, rel_tol=1e-5)


def test_grpo_gradient_is_clipped():
    tr = trainer(max_grad_norm=1e-3)
    trajs, adv = batch(tr)
    g, m = grads_of_update(tr, trajs, adv)
    total = math.sqrt(sum(float((x ** 2).sum()) for x in g.values()))
    assert m["grad_norm"] > 1e-3 and total == pytest.approx(1e-3, rel=1e-3)


# ------------------------------------------------------------------ gradient checkpointing
def test_gradient_checkpointing_is_on_and_changes_nothing_but_recomputation():
    plain = trainer(max_grad_norm=0.0)
    trajs, adv = batch(plain)
    ck = trainer(max_grad_norm=0.0, gradient_checkpointing=True)
    assert gradient_checkpointing_on(ck.model) and not gradient_checkpointing_on(plain.model)

    def block_calls(tr):
        calls = []
        h = tr.model.transformer.h[0].mlp.register_forward_pre_hook(lambda *a: calls.append(1))  # inside the checkpointed block
        g, m = grads_of_update(tr, trajs, adv)
        h.remove()
        return g, m, len(calls)

    g_plain, m_plain, n_plain = block_calls(plain)
    g_ck, m_ck, n_ck = block_calls(ck)
    assert n_ck == 2 * n_plain > 0  # each block's forward runs again in the backward pass
    assert m_ck["loss"] == pytest.approx(m_plain["loss"], abs=1e-6)
    assert max(float((g_plain[k] - g_ck[k]).abs().max()) for k in g_plain) < 1e-6


def test_gradient_checkpointing_refused_for_a_plain_module():
    from prmgym.models.optim import enable_gradient_checkpointing

    with pytest.raises(ValueError, match="gradient_checkpointing: false"):
        enable_gradient_checkpointing(torch.nn.Linear(2, 2))


# ------------------------------------------------------------------ precision and device
def test_bf16_first_step_is_finite_and_close_to_fp32():
    fp32 = trainer(max_grad_norm=0.0)
    trajs, adv = batch(fp32)
    _, m32 = grads_of_update(fp32, trajs, adv)
    bf16 = trainer(max_grad_norm=0.0, dtype="bf16")
    _, m16 = grads_of_update(bf16, trajs, adv)
    for k in ("loss", "entropy", "grad_norm"):
        assert math.isfinite(m16[k])
    assert m16["entropy"] != m32["entropy"]  # autocast really ran the forward in bf16
    assert m16["entropy"] == pytest.approx(m32["entropy"], rel=2e-2)
    assert m16["loss"] == pytest.approx(m32["loss"], rel=5e-2, abs=5e-3)
    assert m16["grad_norm"] == pytest.approx(m32["grad_norm"], rel=1e-1)
    assert all(p.dtype == torch.float32 for p in bf16.model.parameters())  # master weights stay fp32


def test_autocast_runs_matmuls_in_bf16_and_fp32_is_untouched():
    x = torch.ones(2, 2)
    with autocast("bf16", "cpu"):
        assert (x @ x).dtype == torch.bfloat16
    with autocast("fp32", "cpu"):
        assert (x @ x).dtype == torch.float32


def test_fp16_on_cpu_is_refused_with_the_fix():
    with pytest.raises(ValueError, match="fp16 needs a CUDA device.*bf16"):
        trainer(dtype="fp16", device="cpu")


def test_dtype_and_device_spellings():
    assert GRPOConfig(dtype="bfloat16").dtype == "bf16"
    with pytest.raises(ValueError, match="fp32, bf16, fp16"):
        GRPOConfig(dtype="int8")
    with pytest.raises(ValueError, match="unknown device"):
        GRPOConfig(device="gpu0")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA GPU"):
            resolve_device("cuda")


def test_device_knob_moves_the_policy():
    policy = tiny.random_tiny_policy(seed=0)
    policy.device = torch.device("meta")  # a stale attribute: the knob must set it
    tr = GRPOTrainer(policy, lambda: ToyEnv(), GRPOConfig(**BASE, device="cpu"))
    assert tr.device == policy.device == torch.device("cpu")


# ------------------------------------------------------------------ SFT shares the knobs
SFT_EXAMPLES = [("12+3=", "15\n"), ("1+1=", "2\n"), ("7*6=", "42 and some more\n"), ("9-9=", "0\n")]


def sft_grads(arch="gpt2", **kw):
    from prmgym.agents.sft import SFTConfig, SFTTrainer

    tr = SFTTrainer(tiny.random_tiny_policy(seed=0, arch=arch), SFT_EXAMPLES, SFTConfig(batch_size=4, max_grad_norm=0.0, **kw))
    seen = capture_grads(tr)
    return seen, tr.step(), tr


def test_sft_micro_batches_give_the_full_batch_gradient():
    g_full, m_full, _ = sft_grads()
    g_acc, m_acc, _ = sft_grads(micro_batch_size=1)  # 4 micro-batches of unequal token counts
    assert max(float((g_full[k] - g_acc[k]).abs().max()) for k in g_full) < 1e-5
    assert m_acc["train/loss"] == pytest.approx(m_full["train/loss"], rel=1e-5)


@pytest.mark.parametrize("arch", ["gpt2", "qwen2"])
def test_sft_bf16_and_checkpointing(arch):
    _, m32, _ = sft_grads(arch)
    _, m16, _ = sft_grads(arch, dtype="bf16")
    assert math.isfinite(m16["train/loss"]) and m16["train/loss"] != m32["train/loss"]
    assert m16["train/loss"] == pytest.approx(m32["train/loss"], rel=1e-2)
    g_ck, m_ck, tr = sft_grads(arch, gradient_checkpointing=True)
    assert gradient_checkpointing_on(tr.model) and m_ck["train/loss"] == pytest.approx(m32["train/loss"], abs=1e-6)


def test_sft_schedule_is_logged():
    from prmgym.agents.sft import SFTConfig, SFTTrainer

    tr = SFTTrainer(tiny.random_tiny_policy(seed=0), SFT_EXAMPLES,
                    SFTConfig(batch_size=2, learning_rate=1.0, warmup_steps=0, lr_schedule="linear", schedule_steps=4))
    assert [tr.step()["train/lr"] for _ in range(5)] == [1.0, 0.775, 0.55, 0.325, 0.1]


# ------------------------------------------------------------------ PRMs share the knobs
def prm_batch():
    from prmgym.rewards.scalar import PRMBatch

    good = [("Compute 2+3.", ["2 + 3 = 5", "Answer: 5"]), ("Compute 4+4.", ["4 + 4 = 8", "Answer: 8"])]
    bad = [("Compute 2+3.", ["2 + 3 = 6", "Answer: 6"]), ("Compute 4+4.", ["4 + 4 = 9", "Answer: 9"])]
    traces = good + bad
    return PRMBatch([p for p, _ in traces], [s for _, s in traces], labels=[1.0, 1.0, 0.0, 0.0],
                    step_logprobs=[[-8.0] * len(s) for _, s in traces], step_ntokens=[[4] * len(s) for _, s in traces])


def orm(**options):
    from prmgym.rewards.baselines import ORMPRM

    torch.manual_seed(0)
    return ORMPRM.from_backbone(tiny.random_tiny_policy(seed=0, n_layer=1, n_embd=32), **options)


def test_prm_update_follows_the_schedule_and_clips():
    prm = orm(learning_rate=1.0, lr_schedule="linear", schedule_steps=2, max_grad_norm=1e-4)
    ms = [prm.update(prm_batch()) for _ in range(3)]
    assert [m["lr"] for m in ms] == [1.0, 0.5, 0.0]
    assert ms[0]["grad_norm"] > 1e-4


def test_prm_bf16_checkpointing_and_refusals():
    from prmgym.config import ConfigError

    m32 = orm().update(prm_batch())
    m16 = orm(dtype="bf16").update(prm_batch())
    assert math.isfinite(m16["loss"]) and m16["loss"] != m32["loss"]
    assert m16["loss"] == pytest.approx(m32["loss"], rel=2e-2)
    ck = orm(gradient_checkpointing=True)
    assert gradient_checkpointing_on(ck.net.model)
    assert ck.update(prm_batch())["loss"] == pytest.approx(m32["loss"], abs=1e-6)
    with pytest.raises(ConfigError, match="'grad_clip' is spelled 'max_grad_norm'"):
        orm(grad_clip=1.0)
    with pytest.raises(ConfigError, match="do not accumulate"):
        orm(micro_batch_size=2)


def test_checkpointing_with_lora_gives_the_adapters_the_same_gradient():
    pytest.importorskip("peft")
    from prmgym.models.lora import apply_lora, lora_config

    def lora_trainer(**kw):
        policy = stop_early_policy()
        torch.manual_seed(0)  # the adapters' A matrices are drawn from the global generator
        policy.model = apply_lora(policy.model, lora_config({"r": 4}))
        return GRPOTrainer(policy, lambda: ToyEnv(), GRPOConfig(**{**BASE, "max_grad_norm": 0.0, **kw}))

    plain = lora_trainer()
    trajs, adv = batch(plain)
    g_plain, _ = grads_of_update(plain, trajs, adv)
    ck = lora_trainer(gradient_checkpointing=True, micro_batch_size=2)
    assert gradient_checkpointing_on(ck.model)
    g_ck, _ = grads_of_update(ck, trajs, adv)
    assert g_plain and all("lora_" in k for k in g_plain)  # only the adapters train
    assert g_plain.keys() == g_ck.keys() and max(float(v.abs().max()) for v in g_ck.values()) > 0
    assert max(float((g_plain[k] - g_ck[k]).abs().max()) for k in g_plain) < 1e-5
