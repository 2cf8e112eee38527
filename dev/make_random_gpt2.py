#!/usr/bin/env python3
"""
dev/make_random_gpt2.py -- a randomly initialised GPT-2 of any size plus random token shards,
for benchmarks at the paper's shape without downloading weights.

    python3 dev/make_random_gpt2.py --out /tmp/gpt2s            # GPT-2 small shape, 12 x 768
    python3 dev/make_random_gpt2.py --out /tmp/m --n-layer 4 --d-model 128 --vocab 512 --max-t 64

Writes OUT/model.safetensors (HF key names, F32), OUT/config.json, OUT/train.bin and OUT/val.bin
(llm.c shards of uniform random tokens), and with --dict-size OUT/init_sae/ (an initial SAE). Weights
come from scripts/reference.py's init_gpt2 and init_sae, files from its writers; the speed of the
engine does not depend on the values, only the shapes.
"""
import argparse
import os
import sys
import types

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "scripts"))
from reference import init_gpt2, init_sae, write_json, write_safetensors, write_shard  # noqa: E402


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[1])
    p.add_argument("--out", required=True)
    p.add_argument("--n-layer", type=int, default=12)
    p.add_argument("--n-head", type=int, default=12)
    p.add_argument("--d-model", type=int, default=768)
    p.add_argument("--vocab", type=int, default=50257)
    p.add_argument("--max-t", type=int, default=1024)
    p.add_argument("--train-tokens", type=int, default=8 * 1024 * 2 * 40)
    p.add_argument("--val-tokens", type=int, default=8 * 1024 * 4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dict-size", type=int, default=0, help="also write OUT/init_sae with this d_sae (library init)")
    a = p.parse_args()
    g = torch.Generator().manual_seed(a.seed)
    C, V = a.d_model, a.vocab

    w = init_gpt2(types.SimpleNamespace(seed=a.seed, d_model=C, n_layer=a.n_layer, vocab=V, max_t=a.max_t))
    os.makedirs(a.out, exist_ok=True)
    write_safetensors(os.path.join(a.out, "model.safetensors"), w)
    write_json(os.path.join(a.out, "config.json"), {"n_layer": a.n_layer, "n_head": a.n_head, "n_embd": C,
                                                   "vocab_size": V, "n_positions": a.max_t, "model_type": "gpt2"})
    write_shard(os.path.join(a.out, "train.bin"), torch.randint(0, V, (a.train_tokens,), generator=g))
    write_shard(os.path.join(a.out, "val.bin"), torch.randint(0, V, (a.val_tokens,), generator=g))
    if a.dict_size:
        sae = init_sae(types.SimpleNamespace(seed=a.seed, d_model=C, dict_size=a.dict_size))
        os.makedirs(os.path.join(a.out, "init_sae"), exist_ok=True)
        write_safetensors(os.path.join(a.out, "init_sae", "sae_weights.safetensors"), sae)
        write_json(os.path.join(a.out, "init_sae", "cfg.json"), {"d_in": C, "d_sae": a.dict_size, "dtype": "float32"})
    print(f"wrote {a.out}: GPT-2 L={a.n_layer} NH={a.n_head} C={C} V={V} maxT={a.max_t}, "
          f"{a.train_tokens} train / {a.val_tokens} val tokens")


if __name__ == "__main__":
    main()
