#!/usr/bin/env python3
"""
dev/flops.py -- matmul FLOPs per token of one e2e SAE training step (SPEC §9's count), and MFU.

    python3 dev/flops.py --layer 6 --mode e2e --tokens-per-s 232883 [--peak 800e12]

Counts 2·m·n·k per matmul per token, attention as full (non-causal) T×T products as the engine
computes them: per GPT-2 layer forward 24·C² + 4·T·C, backward (activation gradients only) the
same matmuls again plus the attention's four products (24·C² + 8·T·C); LM head 2·C·V each way;
SAE forward 4·C·D, SAE backward 6·C·D (dW_dec, dc, dW_enc; no dx). Elementwise work is ignored.
"""
import argparse


def flops_per_token(mode, layer, n_layer=12, C=768, T=1024, V=50257, D=46080):
    fwd_layer = 24 * C * C + 4 * T * C
    bwd_layer = 24 * C * C + 8 * T * C
    head = 2 * C * V
    above = n_layer - layer
    parts = {"blocks < L": layer * fwd_layer, "SAE forward": 4 * C * D, "SAE backward": 6 * C * D}
    if mode != "local":
        parts["clean blocks+head"] = above * fwd_layer + head
        parts["spliced blocks+head"] = above * fwd_layer + head
        parts["backward blocks+head"] = above * bwd_layer + head
    return parts


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--mode", default="e2e")
    p.add_argument("--layer", type=int, default=6)
    p.add_argument("--tokens-per-s", type=float, default=0)
    p.add_argument("--peak", type=float, default=800e12, help="bf16 FLOP/s measured on the card (H100: ~800e12)")
    a = p.parse_args()
    parts = flops_per_token(a.mode, a.layer)
    total = sum(parts.values())
    for k, v in parts.items():
        print(f"  {k:22s} {v / 1e9:.3f} GFLOP/token")
    print(f"  total                  {total / 1e9:.3f} GFLOP/token")
    if a.tokens_per_s:
        achieved = total * a.tokens_per_s
        print(f"  at {a.tokens_per_s:.0f} tokens/s: {achieved / 1e12:.1f} TFLOP/s = {100 * achieved / a.peak:.1f}% of {a.peak / 1e12:.0f}")
        print(f"  409.6M tokens in {409.6e6 / a.tokens_per_s / 60:.1f} minutes")


if __name__ == "__main__":
    main()
