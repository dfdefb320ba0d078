"""Memory of a PRM next to a LoRA policy: its own copy of the LM vs sharing the policy's frozen backbone.

Both settings train the policy with LoRA (`prmgym.models.lora.apply_lora`) and an AIRL PRM with
its own LoRA adapter and head; they differ only in where the PRM's adapter sits:

* ``copy``   -- ``AIRLPRM.from_backbone(policy, lora=...)``: a deep copy of the LM (the policy's
                adapter merged in) carries the PRM's adapter (the default before this option);
* ``shared`` -- ``AIRLPRM.from_backbone(policy, lora=..., share_backbone=True)``: the PRM's adapter
                is a second adapter on the policy's own PEFT model; one frozen base serves both.

Each setting runs in a fresh subprocess that builds a random Qwen2-style model in memory (no
download), attaches the PRM, takes one PRM update and one policy backward + AdamW step, and
reports (a) the bytes of the distinct parameter and buffer tensors held by policy and PRM together
and (b) the process's resident-set growth over the whole run (peak RSS after the steps minus RSS
before the model was built). The ratios copy / shared are printed; nothing is asserted.

    python benchmarks/lora_memory.py                    # ~1 min on 2 CPU cores
    python benchmarks/lora_memory.py --hidden 256 --layers 4
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys


def _rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _unique_bytes(*modules) -> int:
    seen, total = set(), 0
    for m in modules:
        for t in list(m.parameters()) + list(m.buffers()):
            if t.data_ptr() not in seen:
                seen.add(t.data_ptr())
                total += t.numel() * t.element_size()
    return total


def child(mode: str, hidden: int, layers: int, vocab: int, rank: int) -> dict:
    import torch

    torch.set_num_threads(1)
    from transformers import AutoModelForCausalLM, Qwen2Config

    from prmgym.models import TransformersPolicy
    from prmgym.models import lora as L
    from prmgym.models.tokenizer import char_tokenizer
    from prmgym.rewards import AIRLPRM
    from prmgym.rewards.scalar import PRMBatch

    start = _rss_mb()
    tok = char_tokenizer(model_max_length=256)
    cfg = Qwen2Config(vocab_size=max(vocab, len(tok)), hidden_size=hidden, num_hidden_layers=layers,
                      num_attention_heads=max(1, hidden // 64), num_key_value_heads=max(1, hidden // 128),
                      intermediate_size=4 * hidden, max_position_embeddings=256, tie_word_embeddings=True,
                      bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    torch.manual_seed(0)
    policy = TransformersPolicy(AutoModelForCausalLM.from_config(cfg), tok)
    policy.model = L.apply_lora(policy.model, L.LoRAConfig(r=rank))
    base_mb = _unique_bytes(policy.model) / 2**20
    prm = AIRLPRM.from_backbone(policy, lora={"r": rank}, share_backbone=(mode == "shared"))
    held_mb = _unique_bytes(policy.model, prm.net) / 2**20
    batch = PRMBatch(["12+7=", "3*4="], [["19"], ["11"]], labels=[1.0, 0.0], step_logprobs=[[-1.0], [-2.0]],
                     step_ntokens=[[2], [2]])
    prm.update(batch)
    opt = torch.optim.AdamW(L.policy_parameters(policy.model), lr=1e-4)
    policy.model.train()
    loss = -torch.cat(policy.logprobs(["12+7=", "3*4="], ["19\n", "12\n"], requires_grad=True)).sum()
    loss.backward()
    opt.step()
    return {"mode": mode, "policy_mb": round(base_mb, 2), "policy_and_prm_tensors_mb": round(held_mb, 2),
            "prm_extra_tensors_mb": round(held_mb - base_mb, 2), "rss_growth_mb": round(_peak_mb() - start, 1),
            "params_total": L.parameter_summary(policy.model)["total"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--hidden", type=int, default=512)
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--vocab", type=int, default=8192)
    ap.add_argument("--rank", type=int, default=8)
    ap.add_argument("--out", default="runs/bench_lora_memory")
    ap.add_argument("--child", choices=("copy", "shared"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.hidden, args.layers, args.vocab, args.rank)))
        return
    rows = {}
    for mode in ("copy", "shared"):
        cmd = [sys.executable, __file__, "--child", mode, "--hidden", str(args.hidden), "--layers", str(args.layers),
               "--vocab", str(args.vocab), "--rank", str(args.rank)]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
        rows[mode] = json.loads(out.strip().splitlines()[-1])
        print(json.dumps(rows[mode]))
    c, s = rows["copy"], rows["shared"]
    ratios = {
        "tensors_copy_over_shared": round(c["policy_and_prm_tensors_mb"] / s["policy_and_prm_tensors_mb"], 3),
        "prm_extra_tensors_copy_over_shared": round(c["prm_extra_tensors_mb"] / max(s["prm_extra_tensors_mb"], 1e-9), 1),
        "rss_growth_copy_over_shared": round(c["rss_growth_mb"] / s["rss_growth_mb"], 3),
    }
    print(f"model: Qwen2-style, hidden {args.hidden}, {args.layers} layers, vocab {args.vocab}, "
          f"{c['params_total'] / 1e6:.1f}M parameters; LoRA rank {args.rank}")
    print(f"policy + PRM tensors: copy {c['policy_and_prm_tensors_mb']} MB, shared {s['policy_and_prm_tensors_mb']} MB "
          f"-> ratio {ratios['tensors_copy_over_shared']}x")
    print(f"PRM's own tensors:   copy {c['prm_extra_tensors_mb']} MB, shared {s['prm_extra_tensors_mb']} MB "
          f"-> ratio {ratios['prm_extra_tensors_copy_over_shared']}x")
    print(f"process RSS growth:  copy {c['rss_growth_mb']} MB, shared {s['rss_growth_mb']} MB "
          f"-> ratio {ratios['rss_growth_copy_over_shared']}x")
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "lora_memory.json"), "w") as f:
        json.dump({"args": vars(args), "rows": rows, "ratios": ratios}, f, indent=2)


if __name__ == "__main__":
    main()
