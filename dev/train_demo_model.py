#!/usr/bin/env python3
"""
dev/train_demo_model.py -- the recipe behind the bundled demo model in models/tinyshakespeare-gpt2-4L128/.

Pretrains a small GPT-2 (GPT-2's 50257-token vocabulary, LM head tied to wte) on the tinyshakespeare
train shard, deterministically (fixed seed, fixed step count, a fixed batch order), on the CPU or a GPU,
then writes it as bf16 Hugging Face-style model.safetensors (GPT-2 key names, no prefix, Conv1D [in,out]
layout) + config.json, and reports the validation cross-entropy measured on the bf16 weights it wrote.

Run from the repo root (~25 min on 2 CPU cores; /usr/bin/python3 has Debian's torch):
    /usr/bin/python3 dev/train_demo_model.py --out /tmp/demo      # compare val_loss with the shipped config.json
    /usr/bin/python3 dev/train_demo_model.py --out models/tinyshakespeare-gpt2-4L128   # remake the shipped one
Needs torch and numpy. The forward pass is scripts/reference.py's (the tests' oracle), so the model
trains on exactly the GPT-2 that the engine implements.
"""
import argparse
import math
import os
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "scripts"))
import reference as ref  # noqa: E402

SHARDS = "models/tinyshakespeare-gpt2-4L128/tinyshakespeare_{}.bin"


def read_shard(path):
    header = np.fromfile(path, dtype="<i4", count=256)
    assert header[0] == 20240520 and header[1] == 1, f"{path}: not an llm.c token shard"
    tokens = np.fromfile(path, dtype="<u2", offset=256 * 4)
    assert len(tokens) == header[2], f"{path}: {len(tokens)} tokens, header says {header[2]}"
    return torch.from_numpy(tokens.astype(np.int64))


def init_weights(a):
    """GPT-2's init: N(0, 0.02) weights, zero biases, unit LN gains; the two projections that write to the
    residual stream scaled by 1/sqrt(2 n_layer)."""
    torch.manual_seed(a.seed)
    C, L = a.d_model, a.n_layer
    normal = lambda *shape, std=0.02: torch.randn(*shape) * std
    proj_std = 0.02 / math.sqrt(2 * L)
    w = {"wte.weight": normal(50257, C), "wpe.weight": normal(a.n_ctx, C, std=0.01)}
    for i in range(L):
        p = f"h.{i}."
        w[p + "ln_1.weight"], w[p + "ln_1.bias"] = torch.ones(C), torch.zeros(C)
        w[p + "attn.c_attn.weight"], w[p + "attn.c_attn.bias"] = normal(C, 3 * C), torch.zeros(3 * C)
        w[p + "attn.c_proj.weight"], w[p + "attn.c_proj.bias"] = normal(C, C, std=proj_std), torch.zeros(C)
        w[p + "ln_2.weight"], w[p + "ln_2.bias"] = torch.ones(C), torch.zeros(C)
        w[p + "mlp.c_fc.weight"], w[p + "mlp.c_fc.bias"] = normal(C, 4 * C), torch.zeros(4 * C)
        w[p + "mlp.c_proj.weight"], w[p + "mlp.c_proj.bias"] = normal(4 * C, C, std=proj_std), torch.zeros(C)
    w["ln_f.weight"], w["ln_f.bias"] = torch.ones(C), torch.zeros(C)
    return w


def logits_of(w, x, n_layer, n_head):
    T = x.shape[1]
    h = w["wte.weight"][x] + w["wpe.weight"][:T]
    for i in range(n_layer):
        h = ref.block_forward(h, w, i, n_head)
    return ref.layernorm(h, w["ln_f.weight"], w["ln_f.bias"]) @ w["wte.weight"].t()  # tied LM head


def val_loss(w, val, a, device):
    """Mean next-token CE over the val shard cut into consecutive rows of n_ctx tokens (the tail that does
    not fill a row is left out)."""
    rows = val[: len(val) // a.n_ctx * a.n_ctx].view(-1, a.n_ctx)
    total, count = 0.0, 0
    with torch.no_grad():
        for r in range(0, len(rows), 16):
            x = rows[r:r + 16].to(device)
            logits = logits_of(w, x[:, :-1], a.n_layer, a.n_head)
            total += F.cross_entropy(logits.reshape(-1, logits.shape[-1]), x[:, 1:].reshape(-1), reduction="sum").item()
            count += x[:, 1:].numel()
    return total / count


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="folder for model.safetensors + config.json")
    p.add_argument("--train", default=SHARDS.format("train"))
    p.add_argument("--val", default=SHARDS.format("val"))
    p.add_argument("--n-layer", type=int, default=4)
    p.add_argument("--n-head", type=int, default=4)
    p.add_argument("--d-model", type=int, default=128)
    p.add_argument("--n-ctx", type=int, default=128, help="context length (n_positions) and training row length")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--steps", type=int, default=600)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--warmup", type=int, default=30)
    p.add_argument("--weight-decay", type=float, default=0.1)
    p.add_argument("--seed", type=int, default=1234)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    a = p.parse_args()
    torch.set_num_threads(os.cpu_count())
    device = torch.device(a.device)

    train, val = read_shard(a.train), read_shard(a.val)
    w = {k: v.to(device).requires_grad_() for k, v in init_weights(a).items()}
    decay = [v for k, v in w.items() if v.dim() == 2]  # matrices and tables decay; biases and LN gains do not
    rest = [v for k, v in w.items() if v.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": a.weight_decay}, {"params": rest, "weight_decay": 0.0}],
                            lr=a.lr, betas=(0.9, 0.95), eps=1e-8)
    gen = torch.Generator().manual_seed(a.seed + 1)
    t0 = time.time()
    for step in range(a.steps):
        lr = a.lr * min(1.0, (step + 1) / a.warmup) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * step / a.steps)))
        for g in opt.param_groups:
            g["lr"] = lr
        starts = torch.randint(0, len(train) - a.n_ctx - 1, (a.batch,), generator=gen)
        x = torch.stack([train[s:s + a.n_ctx + 1] for s in starts.tolist()]).to(device)
        logits = logits_of(w, x[:, :-1], a.n_layer, a.n_head)
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), x[:, 1:].reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(list(w.values()), 1.0)
        opt.step()
        if step % 50 == 0 or step == a.steps - 1:
            print(f"step {step:4d}  loss {loss.item():.4f}  lr {lr:.2e}  {time.time() - t0:.0f}s", flush=True)

    # write bf16, then measure val CE on exactly what was written
    os.makedirs(a.out, exist_ok=True)
    path = os.path.join(a.out, "model.safetensors")
    ref.write_safetensors(path, {k: v.detach().to(torch.bfloat16).cpu() for k, v in w.items()})
    shipped = {k: v.float().to(device) for k, v in ref.read_safetensors(path).items()}
    vl = val_loss(shipped, val, a, device)
    n_tokens = a.steps * a.batch * a.n_ctx
    print(f"val CE (bf16 weights, {len(val) // a.n_ctx} rows of {a.n_ctx}): {vl:.4f}")
    ref.write_json(os.path.join(a.out, "config.json"), {
        "model_type": "gpt2", "n_layer": a.n_layer, "n_head": a.n_head, "n_embd": a.d_model,
        "n_positions": a.n_ctx, "n_ctx": a.n_ctx, "vocab_size": 50257, "layer_norm_epsilon": 1e-5,
        "activation_function": "gelu_new", "tie_word_embeddings": True, "torch_dtype": "bfloat16",
        "trained_on": "tinyshakespeare train shard beside this file",
        "recipe": "dev/train_demo_model.py", "steps": a.steps, "batch": [a.batch, a.n_ctx],
        "tokens_seen": n_tokens, "lr": a.lr, "seed": a.seed, "val_loss": round(vl, 4),
    })
    print(f"wrote {path} and config.json ({time.time() - t0:.0f}s)")


if __name__ == "__main__":
    main()
