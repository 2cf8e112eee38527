#!/usr/bin/env python3
"""
dev/make_random_gpt2.py -- a randomly initialised GPT-2 of any size plus random token shards,
for benchmarks at the paper's shape without downloading weights, and (--real-scale) for checking
bf16 at the numeric scales of real GPT-2 small.

    python3 dev/make_random_gpt2.py --out /tmp/gpt2s            # GPT-2 small shape, 12 x 768
    python3 dev/make_random_gpt2.py --out /tmp/m --n-layer 4 --d-model 128 --vocab 512 --max-t 64
    python3 dev/make_random_gpt2.py --out /tmp/rs --real-scale --n-layer 4 --n-head 4 --d-model 256 \\
        --max-t 64 --dict-size 2048 --layer 2 --bf16-estimate

Writes OUT/model.safetensors (HF key names, F32), OUT/config.json, OUT/train.bin and OUT/val.bin
(llm.c shards of uniform random tokens), and with --dict-size OUT/init_sae/ (an initial SAE; with
--target-l0 also OUT/init_sae_sparse/, the same SAE at about that L0, see sparse_sae). Weights
come from scripts/reference.py's init_gpt2 and init_sae, files from its writers; the speed of the
engine does not depend on the values, only the shapes.

--real-scale gives the weights real GPT-2 small's scales (reference.py's real_scale_gpt2): logits
averaging about -80 with a spread of a few units over the vocabulary, and a residual of norm ~3000
at position 0, which random init lacks and where bf16 loses the most. Its SAE (init_sae_near_identity,
D >= 2C, default 60·C) is scaled so that the fp32 KL of the spliced model is --target-kl (0.05, about
a trained SAE's) on the first --calib-rows rows of --calib-seq-len tokens of train.bin, at --layer
(default n_layer/2). It prints what it measured on those rows: the mean logit, the spread, the
position-0 norm per layer, the KL; with --bf16-estimate also the bf16 KL error with and without
the shift of W_U by its mean row (gpt2_shift_unembed), from a CPU emulation of the GPU trainer's
bf16 storage (fp32 arithmetic, every activation the engine stores in bf16 rounded to bf16, the
logits kept in fp32 as the engine keeps them): an estimate of
what test_gpt2_sae measures on the GPU, not a measurement of it.

Needs torch and numpy (Debian's /usr/bin/python3 has both). A bad flag ends with one "error:"
line and exit code 1, before anything is written.
"""
import argparse
import math
import os
import sys
import types

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "scripts"))
from reference import (block_forward, centre_weights, gelu_tanh, gpt2_forward_from, gpt2_forward_to, init_gpt2,  # noqa: E402
                       init_sae, init_sae_near_identity, kl_div, layernorm, real_scale_gpt2, sae_forward, write_json,
                       write_safetensors, write_shard)


# ----------------------------------------------------------------------------
# bf16 emulation of the GPU trainer's forward: fp32 arithmetic from inputs rounded to bf16, each
# stored activation rounded to bf16 (weights, residual, LN outputs, qkv, scores, probabilities,
# attention output, MLP activations, SAE c and x_hat; the logits stay fp32), as train_gpt2_sae stores them

def bf(t):
    return t.to(torch.bfloat16).float()


def block_bf16(x, w, i, n_head):
    p = f"h.{i}."
    h = bf(layernorm(x, w[p + "ln_1.weight"], w[p + "ln_1.bias"]))
    qkv = bf(h @ w[p + "attn.c_attn.weight"] + w[p + "attn.c_attn.bias"])
    B, T, C3 = qkv.shape
    C = C3 // 3
    hs = C // n_head
    q, k, v = [t.reshape(B, T, n_head, hs).transpose(1, 2) for t in qkv.split(C, dim=-1)]
    att = bf(q @ k.transpose(-2, -1))
    future = torch.ones(T, T, dtype=torch.bool).triu(1)
    att = bf(F.softmax((att / math.sqrt(hs)).masked_fill(future, float("-inf")), dim=-1))
    a = bf((att @ v).transpose(1, 2).reshape(B, T, C))
    x = bf(x + a @ w[p + "attn.c_proj.weight"] + w[p + "attn.c_proj.bias"])
    h = bf(layernorm(x, w[p + "ln_2.weight"], w[p + "ln_2.bias"]))
    h = bf(gelu_tanh(bf(h @ w[p + "mlp.c_fc.weight"] + w[p + "mlp.c_fc.bias"])))
    return bf(x + h @ w[p + "mlp.c_proj.weight"] + w[p + "mlp.c_proj.bias"])


def kl_bf16(tokens, w, sae, cfg, shift):
    """KL(clean || spliced) with the forward emulated in bf16; shift: W_U less its mean row, as gpt2_load does."""
    w = dict(w)
    if shift:
        w["lm_head.weight"] = (w["lm_head.weight"].double() - w["lm_head.weight"].double().mean(0)).float()
    w = {k: bf(v) for k, v in w.items()}
    sae = {k: bf(v) for k, v in sae.items()}
    W_dec_norm = bf(sae["W_dec"] / sae["W_dec"].norm(dim=1, keepdim=True).clamp_min(1e-12))

    def head(x):  # the engine keeps logits in fp32 (bf16 rounding of the logits alone biased this KL by +2.2%)
        return bf(layernorm(x, w["ln_f.weight"], w["ln_f.bias"])) @ w["lm_head.weight"].t()

    def run_from(x):
        for i in range(cfg.layer, cfg.n_layer):
            x = block_bf16(x, w, i, cfg.n_head)
        return head(x)

    x = bf(w["wte.weight"][tokens] + w["wpe.weight"][:tokens.shape[1]])
    for i in range(cfg.layer):
        x = block_bf16(x, w, i, cfg.n_head)
    c = bf(F.relu(x @ sae["W_enc"] + sae["b_enc"]))
    x_hat = bf(c @ W_dec_norm + sae["b_dec"])
    return kl_div(run_from(x), run_from(x_hat)).item()

# ----------------------------------------------------------------------------
# --real-scale: the SAE scaled to a KL, and what the model's scales came out as


def real_scale_sae(w, tokens, cfg, target_kl):
    """init_sae_near_identity with eps scaled until the fp32 KL on `tokens` is within 2% of target_kl
    (KL ~ eps² while small, so each try rescales eps by sqrt(target / KL)). Returns the SAE and what it measured."""
    with torch.no_grad():
        x = gpt2_forward_to(cfg.layer, tokens, w, cfg)
        logits_clean, _ = gpt2_forward_from(cfg.layer, x, w, cfg)
        x_scale = x.norm(dim=-1).median().item()  # the typical row: position 0's norm is an outlier
        next_eps = 0.1
        for _ in range(8):  # the last try stands if none lands within 2%
            eps = float(f"{next_eps:.3g}")  # 3 digits: the same SAE whatever the thread count's rounding
            sae = init_sae_near_identity(cfg, eps, x_scale)
            c, x_hat = sae_forward(x, sae)
            logits_spliced, _ = gpt2_forward_from(cfg.layer, x_hat, w, cfg)
            kl = kl_div(logits_clean, logits_spliced).item()
            if abs(kl / target_kl - 1) < 0.02:
                break
            next_eps = eps * math.sqrt(target_kl / max(kl, 1e-12))
        stats = dict(eps=eps, kl=kl, l0=(c > 0).float().sum(-1).mean().item(),
                     rel_err=((x_hat - x).norm(dim=-1) / x.norm(dim=-1)).mean().item())
    return sae, stats


def sparse_sae(sae, w, train, cfg, a):
    """--target-l0: b_enc less one offset t, the (1 - L0/D) quantile of the pre-activations over the calibration
    tokens, so that about L0 of the D features fire per token there (as a trained SAE's do; the library init fires
    on about half). Returns the SAE and the L0 it measured on those tokens."""
    torch.set_num_threads(os.cpu_count() or 1)
    with torch.no_grad():
        tokens = train[:a.calib_rows * a.calib_seq_len].view(a.calib_rows, a.calib_seq_len).long()
        pre = (gpt2_forward_to(cfg.layer, tokens, w, cfg) @ sae["W_enc"] + sae["b_enc"]).flatten()
        fire = round(a.target_l0 / cfg.dict_size * pre.numel())  # values above the offset
        t = pre.kthvalue(pre.numel() - fire).values.item()
        sae = dict(sae, b_enc=sae["b_enc"] - t)
        l0 = ((pre - t) > 0).float().sum().item() / (a.calib_rows * a.calib_seq_len)
    return sae, l0


def print_scales(w, tokens, cfg):
    """The scales --real-scale aims at, measured on `tokens` with the weights as the engine loads them."""
    with torch.no_grad():
        x = w["wte.weight"][tokens] + w["wpe.weight"][:tokens.shape[1]]
        norms = []
        for i in range(cfg.n_layer):
            norms.append((x[:, 0].norm(dim=-1).mean().item(), x[:, 1:].norm(dim=-1).median().item()))
            x = block_forward(x, w, i, cfg.n_head)
        logits = layernorm(x, w["ln_f.weight"], w["ln_f.bias"]) @ w["lm_head.weight"].t()
        p = logits.softmax(-1)
    per_pos = logits.mean(-1)
    print(f"logits (unshifted W_U): mean {logits.mean().item():.2f} (per position {per_pos.min().item():.2f} .. "
          f"{per_pos.max().item():.2f}), spread over the vocabulary (std per position, averaged) "
          f"{logits.std(-1).mean().item():.2f}, top probability {p.max(-1).values.mean().item():.3f}, "
          f"entropy {-(p * p.clamp_min(1e-30).log()).sum(-1).mean().item():.2f} nats")
    print("residual norm entering each block, position 0 / median of the others: " +
          " ".join(f"L{i}: {a:.0f}/{b:.1f}" for i, (a, b) in enumerate(norms)))


class ArgParser(argparse.ArgumentParser):
    """argparse whose usage errors are one "error:" line and exit 1 (not a usage block and exit 2)"""

    def error(self, message):
        print(f"error: {self.prog}: {message}", file=sys.stderr)
        sys.exit(1)


def main():
    p = ArgParser(description=__doc__.split("\n")[1])
    p.add_argument("--out", required=True)
    p.add_argument("--n-layer", type=int, default=12)
    p.add_argument("--n-head", type=int, default=12)
    p.add_argument("--d-model", type=int, default=768)
    p.add_argument("--vocab", type=int, default=50257)
    p.add_argument("--max-t", type=int, default=1024)
    p.add_argument("--train-tokens", type=int, default=8 * 1024 * 2 * 40)
    p.add_argument("--val-tokens", type=int, default=8 * 1024 * 4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dict-size", type=int, default=0, help="also write OUT/init_sae with this d_sae (library init; "
                   "with --real-scale the near-identity SAE, default 60 x d_model)")
    p.add_argument("--real-scale", action="store_true", help="GPT-2 small's logit and position-0 scales, SAE at --target-kl")
    p.add_argument("--layer", type=int, default=-1, help="--real-scale: the SAE's layer (default n_layer // 2)")
    p.add_argument("--target-kl", type=float, default=0.05, help="--real-scale: the SAE's fp32 KL on the calibration rows")
    p.add_argument("--calib-rows", type=int, default=4, help="--real-scale: rows of train.bin the KL is measured on")
    p.add_argument("--calib-seq-len", type=int, default=64, help="--real-scale: tokens per calibration row")
    p.add_argument("--bf16-estimate", action="store_true", help="--real-scale: also the emulated bf16 KL error, with and without the shift")
    p.add_argument("--target-l0", type=float, default=0, help="with --dict-size (not --real-scale): also OUT/init_sae_sparse/, the same SAE "
                   "with b_enc lowered by one offset so that it fires on about this many features per token at --layer on the "
                   "calibration rows (a trained SAE's sparsity, for timing --sae-kernels sparse)")
    a = p.parse_args()
    g = torch.Generator().manual_seed(a.seed)
    C, V = a.d_model, a.vocab
    # the ranges the trainers' loader accepts (llmc/gpt2_load.h); V also has to fit the uint16 token shards
    for flag, value, lo, hi in (("--n-layer", a.n_layer, 1, 4096), ("--n-head", a.n_head, 1, 65536), ("--d-model", C, 1, 65536),
                                ("--vocab", V, 1, 65536), ("--max-t", a.max_t, 1, 1 << 24), ("--train-tokens", a.train_tokens, 1, 2**31 - 1),
                                ("--val-tokens", a.val_tokens, 1, 2**31 - 1), ("--dict-size", a.dict_size, 0, 2**31 - 1),
                                ("--calib-rows", a.calib_rows, 1, 2**31 - 1), ("--calib-seq-len", a.calib_seq_len, 1, 2**31 - 1)):
        if not lo <= value <= hi:
            p.error(f"{flag} must be in {lo}..{hi}, got {value}")
    if not 0 < a.target_kl < math.inf:
        p.error(f"--target-kl must be a positive number, got {a.target_kl}")
    if a.d_model % a.n_head:
        p.error(f"--d-model {a.d_model} must be divisible by --n-head {a.n_head}")
    if os.path.exists(a.out) and not os.path.isdir(a.out):
        p.error(f"--out '{a.out}' is a file, not a folder")
    if a.real_scale:
        a.layer = a.n_layer // 2 if a.layer < 0 else a.layer
        a.dict_size = a.dict_size or 60 * C
        if not 0 <= a.layer < a.n_layer:
            p.error("--layer must be in [0, n_layer)")
        if a.dict_size < 2 * C:
            p.error("--real-scale needs --dict-size >= 2 x d_model (its SAE starts from an exact reconstruction)")
    if a.target_l0:
        a.layer = a.n_layer // 2 if a.layer < 0 else a.layer
        if a.real_scale or not a.dict_size or not 0 < a.target_l0 < a.dict_size or not 0 <= a.layer < a.n_layer:
            p.error("--target-l0 needs --dict-size, no --real-scale, 0 < L0 < d_sae and --layer in [0, n_layer)")
    if a.real_scale or a.target_l0:
        if a.calib_seq_len > a.max_t or a.calib_rows * a.calib_seq_len > a.train_tokens:
            p.error("--calib-seq-len must fit --max-t and the calibration rows --train-tokens")

    cfg = types.SimpleNamespace(seed=a.seed, d_model=C, n_layer=a.n_layer, n_head=a.n_head, vocab=V, max_t=a.max_t,
                                dict_size=a.dict_size, layer=a.layer)
    w = init_gpt2(cfg)
    if a.real_scale:
        real_scale_gpt2(w, cfg)
    os.makedirs(a.out, exist_ok=True)
    write_safetensors(os.path.join(a.out, "model.safetensors"), w)
    write_json(os.path.join(a.out, "config.json"), {"n_layer": a.n_layer, "n_head": a.n_head, "n_embd": C,
                                                   "vocab_size": V, "n_positions": a.max_t, "model_type": "gpt2"})
    train = torch.randint(0, V, (a.train_tokens,), generator=g)
    write_shard(os.path.join(a.out, "train.bin"), train)
    write_shard(os.path.join(a.out, "val.bin"), torch.randint(0, V, (a.val_tokens,), generator=g))
    sae = None
    if a.real_scale:
        torch.set_num_threads(os.cpu_count() or 1)
        wc = centre_weights(w, a.n_layer)
        tokens = train[:a.calib_rows * a.calib_seq_len].view(a.calib_rows, a.calib_seq_len).long()
        print_scales(wc, tokens, cfg)
        sae, st = real_scale_sae(wc, tokens, cfg, a.target_kl)
        print(f"SAE at layer {a.layer}, d_sae {a.dict_size}: eps {st['eps']:.3g}, fp32 KL {st['kl']:.5f} on "
              f"{a.calib_rows} x {a.calib_seq_len} train tokens, L0 {st['l0']:.1f}, |x_hat - x| / |x| {st['rel_err']:.4f}")
        if a.bf16_estimate:
            for shift in (False, True):
                kl = kl_bf16(tokens, wc, sae, cfg, shift)
                print(f"bf16 emulation, W_U {'less its mean row' if shift else 'as loaded'}: KL {kl:.5f}, "
                      f"relative error {100 * (kl - st['kl']) / st['kl']:+.2f}% against fp32")
    elif a.dict_size:
        sae = init_sae(cfg)
    saes = {"init_sae": sae} if sae is not None else {}
    if a.target_l0:
        saes["init_sae_sparse"], l0 = sparse_sae(sae, centre_weights(w, a.n_layer), train, cfg, a)
        print(f"init_sae_sparse at layer {a.layer}, d_sae {a.dict_size}: b_enc lowered for L0 {a.target_l0:g}, measured {l0:.1f} on "
              f"{a.calib_rows} x {a.calib_seq_len} train tokens")
    for name, s in saes.items():
        os.makedirs(os.path.join(a.out, name), exist_ok=True)
        write_safetensors(os.path.join(a.out, name, "sae_weights.safetensors"), s)
        write_json(os.path.join(a.out, name, "cfg.json"), {"d_in": C, "d_sae": a.dict_size, "dtype": "float32"})
    print(f"wrote {a.out}: GPT-2 L={a.n_layer} NH={a.n_head} C={C} V={V} maxT={a.max_t}, "
          f"{a.train_tokens} train / {a.val_tokens} val tokens")


if __name__ == "__main__":
    main()
