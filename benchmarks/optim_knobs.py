"""What the optimisation knobs cost and change, each against its baseline in the same run.

One GRPO batch (B episodes of a random GPT-2-layout model on ChainArithmetic) is collected once;
then the same optimizer update (`GRPOTrainer.optimizer_update`, from the same weights) is timed
under each setting, and its gradient compared with the baseline's:

A. gradient accumulation: ``micro_batch_size = B / 4`` vs the whole batch at once -- time ratio,
   largest gradient difference, and the activation bytes autograd saves per forward (the memory
   that accumulation divides).
B. gradient checkpointing on vs off -- time ratio, gradient difference, saved activation bytes.
C. ``dtype: bf16`` (autocast) vs fp32 -- time ratio, loss difference, relative gradient-norm
   difference.

"Saved activation bytes" is the sum of the tensors autograd keeps for the backward pass during one
forward (`torch.autograd.graph.saved_tensors_hooks`), measured on the largest micro-batch: on a
GPU it is the part of peak memory these knobs act on; here it is measured, not guessed from RSS.

    python benchmarks/optim_knobs.py            # default sizes (~1-2 min on 2 CPU cores)
    python benchmarks/optim_knobs.py --quick    # seconds
    python benchmarks/optim_knobs.py --out DIR  # also DIR/optim_knobs.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import torch

from prmgym.agents.grpo import GRPOConfig, GRPOTrainer
from prmgym.models import tiny


def make_trainer(args, **knobs) -> GRPOTrainer:
    policy = tiny.random_tiny_policy(seed=0, n_layer=args.n_layer, n_embd=args.n_embd, n_head=4)
    cfg = GRPOConfig(num_generations=4, batch_size=args.batch, max_new_tokens=args.tokens, max_steps=args.steps_per_episode,
                     max_grad_norm=0.0, beta=0.0, learning_rate=1e-4, rollout_workers=1, **knobs)
    return GRPOTrainer(policy, "prmgym/ChainArithmetic-v0", cfg, env_kwargs={"split": "train"})


def measure(tr: GRPOTrainer, trajs, adv, state, repeats: int) -> dict:
    """Median time of ``repeats`` updates from ``state``; gradient, loss and saved bytes of the first."""
    grads, saved, times, metrics = {}, [], [], None
    real_step = tr.optim.optimizer.step

    def capture(*a, **k):
        if not grads:
            grads.update({n: p.grad.detach().clone() for n, p in tr.model.named_parameters() if p.grad is not None})
        return real_step(*a, **k)

    tr.optim.optimizer.step = capture
    real_loss = tr._loss

    def counted_loss(mb, a):
        total = [0]

        def pack(t):
            total[0] += t.numel() * t.element_size()
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            out = real_loss(mb, a)
        saved.append(total[0])
        return out

    tr._loss = counted_loss
    for _ in range(repeats):
        tr.model.load_state_dict(state)
        tr.model.train()
        t0 = time.perf_counter()
        m = tr.optimizer_update(trajs, adv)
        times.append(time.perf_counter() - t0)
        tr.model.eval()
        metrics = metrics or m
    return {"seconds": statistics.median(times), "grads": grads, "loss": metrics["loss"],
            "grad_norm": metrics["grad_norm"], "saved_bytes": max(saved)}


def max_diff(a: dict, b: dict) -> float:
    return max(float((a[k].float() - b[k].float()).abs().max()) for k in a)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--batch", type=int, default=16, help="episodes in the batch (a multiple of 4)")
    ap.add_argument("--tokens", type=int, default=24, help="max new tokens per step")
    ap.add_argument("--steps-per-episode", type=int, default=4)
    ap.add_argument("--n-layer", type=int, default=4)
    ap.add_argument("--n-embd", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    if args.quick:
        args.batch, args.tokens, args.n_layer, args.n_embd, args.repeats = 8, 12, 2, 64, 1
    torch.set_num_threads(args.threads)

    base = make_trainer(args)
    trajs, _ = base.collect_batch()
    g = torch.Generator().manual_seed(0)
    adv = torch.randn(len(trajs), max(t.num_tokens for t in trajs), generator=g)  # every token's weight matters
    state = {k: v.clone() for k, v in base.model.state_dict().items()}
    ref = measure(base, trajs, adv, state, args.repeats)
    n_tok = sum(t.num_tokens for t in trajs)
    print(f"batch: {len(trajs)} episodes, {n_tok} trained tokens; model {args.n_layer} layers x {args.n_embd}; "
          f"torch threads {args.threads}; median of {args.repeats} updates")
    print(f"baseline (fp32, whole batch, no checkpointing): {ref['seconds'] * 1e3:.1f} ms/update, "
          f"saved activations {ref['saved_bytes'] / 2**20:.2f} MiB")

    results = {"batch": len(trajs), "tokens": n_tok, "baseline_s": ref["seconds"], "baseline_saved_bytes": ref["saved_bytes"]}
    rows = [("accumulation (4 micro-batches)", dict(micro_batch_size=len(trajs) // 4)),
            ("gradient checkpointing", dict(gradient_checkpointing=True)),
            ("bf16 autocast", dict(dtype="bf16"))]
    for name, knobs in rows:
        r = measure(make_trainer(args, **knobs), trajs, adv, state, args.repeats)
        entry = {"time_ratio": r["seconds"] / ref["seconds"], "max_grad_diff": max_diff(ref["grads"], r["grads"]),
                 "saved_bytes_ratio": r["saved_bytes"] / ref["saved_bytes"], "loss_diff": abs(r["loss"] - ref["loss"]),
                 "grad_norm_rel_diff": abs(r["grad_norm"] - ref["grad_norm"]) / ref["grad_norm"]}
        results[name] = entry
        print(f"{name:<32} time x{entry['time_ratio']:.2f}  saved activations x{entry['saved_bytes_ratio']:.2f}  "
              f"max |grad diff| {entry['max_grad_diff']:.2e}  |loss diff| {entry['loss_diff']:.2e}  "
              f"grad-norm rel diff {entry['grad_norm_rel_diff']:.2e}")
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        with open(os.path.join(args.out, "optim_knobs.json"), "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
