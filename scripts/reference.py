#!/usr/bin/env python3
"""
scripts/reference.py -- the PyTorch reference (the oracle) for the e2e SAE trainers.

Builds a small random GPT-2 and a random SAE, writes them in every format the engine loads, then
computes, in float32 on the CPU and deterministically, what docs/SPEC.md says the engine must
compute: the forward pass, the three losses, their gradients and a few training updates. The C++
and CUDA tests read the files and compare.

Files written into --out DIR (each written to NAME.tmp, then renamed):
  model.safetensors, config.json  Hugging Face GPT-2 (original, uncentred weights: the engine centres)
  model.bin                       the same weights as an llm.c fp32 checkpoint (version 3)
  train.bin, val.bin              llm.c token shards of random tokens
  init_sae/                       initial SAE: sae_weights.safetensors (raw W_dec) + cfg.json
  expected.safetensors            micro-batch 0 forward/losses/metrics/grads, per-update log, final params
  layers.safetensors              single-op forward/backward checks on random data
  args.json                       the resolved configuration (coefficients after per-mode defaults)

Run:
  /usr/bin/python3 scripts/reference.py --out /tmp/ref --mode e2e
  /usr/bin/python3 scripts/reference.py --out /tmp/ref_ds --mode e2e+ds --model-dtype bf16 --prefix transformer.
  /usr/bin/python3 scripts/reference.py --help
Needs torch (1.13 or 2.x) and numpy only: no transformers, TransformerLens or safetensors packages.
Leaves out: several SAEs at once, shuffling, eval over val.bin, resume, bf16 llm.c checkpoints.
"""
import argparse
import json
import math
import os
import struct
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

LN_EPS = 1e-5
SAE_NAMES = ["W_enc", "b_enc", "W_dec", "b_dec"]
MODES = ["local", "e2e", "e2e+ds"]
# SPEC §1: the library's shipped GPT-2 configs. Coefficients a mode does not use are 0.
MODE_DEFAULTS = {
    "e2e":    dict(sparsity_coeff=1.5, kl_coeff=1.0, mse_coeff=0.0, ds_coeff=0.0),
    "local":  dict(sparsity_coeff=6.0, kl_coeff=0.0, mse_coeff=1.0, ds_coeff=0.0),
    "e2e+ds": dict(sparsity_coeff=1.5, kl_coeff=0.5, mse_coeff=0.0, ds_coeff=2.5),
}
MODEL_DTYPES = {"f32": torch.float32, "f16": torch.float16, "bf16": torch.bfloat16}

# ----------------------------------------------------------------------------
# file writing: safetensors, llm.c checkpoint and token shards

# safetensors dtype code, and the integer type of the same width we view the data as to get its
# bytes (numpy has no bfloat16)
ST_DTYPES = {torch.float32: ("F32", torch.int32, np.int32),
             torch.float16: ("F16", torch.int16, np.int16),
             torch.bfloat16: ("BF16", torch.int16, np.int16)}
ST_CODES = {code: dt for dt, (code, _, _) in ST_DTYPES.items()}


def atomic_write(path, data):
    # write to path.tmp then rename, so a crash never leaves a half-written file under the real name
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def write_json(path, obj):
    atomic_write(path, (json.dumps(obj, indent=2) + "\n").encode())


def write_safetensors(path, tensors):
    """tensors: dict name -> tensor (F32/F16/BF16), written in insertion order, C-order, little-endian."""
    header = {"__metadata__": {"format": "pt"}}
    blobs, offset = [], 0
    for name, t in tensors.items():
        code, int_view, _ = ST_DTYPES[t.dtype]
        raw = t.detach().cpu().contiguous().view(int_view).numpy().tobytes()
        header[name] = {"dtype": code, "shape": list(t.shape), "data_offsets": [offset, offset + len(raw)]}
        blobs.append(raw)
        offset += len(raw)
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * (-len(h) % 8)  # space-pad so the data starts 8-byte aligned, as HF's writer does
    atomic_write(path, struct.pack("<Q", len(h)) + h + b"".join(blobs))


def read_safetensors(path):
    """The inverse of write_safetensors; checks the data offsets tile the data exactly."""
    with open(path, "rb") as f:
        data = f.read()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + n])
    body = data[8 + n:]
    out, spans = {}, []
    for name, info in header.items():
        if name == "__metadata__":
            continue
        dtype = ST_CODES[info["dtype"]]
        start, end = info["data_offsets"]
        arr = np.frombuffer(body[start:end], dtype=ST_DTYPES[dtype][2]).copy()
        out[name] = torch.from_numpy(arr).view(dtype).reshape(info["shape"])
        spans.append((start, end))
    pos = 0
    for start, end in sorted(spans):
        assert start == pos, f"{path}: hole or overlap at byte {start}"
        pos = end
    assert pos == len(body), f"{path}: {len(body) - pos} trailing bytes"
    return out


def write_llmc_checkpoint(path, w, cfg):
    """llm.c fp32 checkpoint: 256 int32 header, then all params of one kind for all layers before the
    next kind; matrices in nn.Linear layout [out,in], i.e. the HF Conv1D [in,out] transposed."""
    V, C, L = cfg.vocab, cfg.d_model, cfg.n_layer
    Vp = (V + 127) // 128 * 128
    header = np.zeros(256, dtype="<i4")
    header[:8] = [20240326, 3, cfg.max_t, V, L, cfg.n_head, C, Vp]
    wte = torch.zeros(Vp, C)
    wte[:V] = w["wte.weight"]  # padded rows are zero and never enter softmax

    def per_layer(name, transpose=False):
        ts = [w[f"h.{i}.{name}"] for i in range(L)]
        return torch.stack([t.t() for t in ts] if transpose else ts)

    params = [wte, w["wpe.weight"],
              per_layer("ln_1.weight"), per_layer("ln_1.bias"),
              per_layer("attn.c_attn.weight", True), per_layer("attn.c_attn.bias"),
              per_layer("attn.c_proj.weight", True), per_layer("attn.c_proj.bias"),
              per_layer("ln_2.weight"), per_layer("ln_2.bias"),
              per_layer("mlp.c_fc.weight", True), per_layer("mlp.c_fc.bias"),
              per_layer("mlp.c_proj.weight", True), per_layer("mlp.c_proj.bias"),
              w["ln_f.weight"], w["ln_f.bias"]]
    body = b"".join(p.float().contiguous().numpy().astype("<f4").tobytes() for p in params)
    atomic_write(path, header.tobytes() + body)


def write_shard(path, tokens):
    """llm.c token shard: 256 int32 header [20240520, 1, n], then n little-endian uint16 tokens."""
    header = np.zeros(256, dtype="<i4")
    header[:3] = [20240520, 1, len(tokens)]
    atomic_write(path, header.tobytes() + tokens.numpy().astype("<u2").tobytes())

# ----------------------------------------------------------------------------
# GPT-2 weights: random init (HF names and layouts), centring

def init_gpt2(cfg):
    """Random GPT-2 in HF layout (Conv1D weights [in,out]). Nonzero biases and LN params so that a
    forgotten bias or LN affine shows up in the tests."""
    torch.manual_seed(cfg.seed)
    C, L = cfg.d_model, cfg.n_layer
    normal = lambda *shape, std=0.02: torch.randn(*shape) * std
    w = {"wte.weight": normal(cfg.vocab, C), "wpe.weight": normal(cfg.max_t, C)}
    for i in range(L):
        p = f"h.{i}."
        w[p + "ln_1.weight"] = 1 + normal(C, std=0.1)
        w[p + "ln_1.bias"] = normal(C)
        w[p + "attn.c_attn.weight"] = normal(C, 3 * C)
        w[p + "attn.c_attn.bias"] = normal(3 * C)
        w[p + "attn.c_proj.weight"] = normal(C, C)
        w[p + "attn.c_proj.bias"] = normal(C)
        w[p + "ln_2.weight"] = 1 + normal(C, std=0.1)
        w[p + "ln_2.bias"] = normal(C)
        w[p + "mlp.c_fc.weight"] = normal(C, 4 * C)
        w[p + "mlp.c_fc.bias"] = normal(4 * C)
        w[p + "mlp.c_proj.weight"] = normal(4 * C, C)
        w[p + "mlp.c_proj.bias"] = normal(C)
    w["ln_f.weight"] = 1 + normal(C, std=0.1)
    w["ln_f.bias"] = normal(C)
    return w


def real_scale_gpt2(w, cfg):
    """Gives init_gpt2's weights (in place) the scales of real GPT-2 small that strain bf16 (dev/make_random_gpt2.py
    --real-scale): logits averaging about -80 with a few units of spread over the vocabulary, and a residual of
    norm ~3000 at position 0 in every layer. wte = r_v + u + s_v·w2: r_v random (the spread), u a shared row (the
    -80) and s_v a per-token multiple of w2 (a per-token bias, as GPT-2's frequency bias), u and w2 on 16 dims each.
    ln_f's bias puts 20 on u's dims and 4 on w2's, where ln_f's weight is 0.05, so ln_f's output meets u in ~-80 at
    every position. wpe[0] gets (+2450, -1225, -1225) on three dims: norm 3000, and a zero mean over d_model, so it
    survives the centring at load."""
    C, V = cfg.d_model, cfg.vocab
    g = torch.Generator().manual_seed(cfg.seed + 5)
    dims = torch.randperm(C, generator=g)
    big, u_dims, w2_dims = dims[:3], dims[3:19], dims[19:35]
    alpha, beta_u, beta_w2 = -4.0, 20.0, 4.0  # u's size and ln_f's bias along u and w2: alpha·beta_u = -80
    wte = torch.randn(V, C, generator=g) * (4.0 / math.sqrt(C + beta_u ** 2 + beta_w2 ** 2))  # spread ~4 per position
    wte[:, u_dims] += alpha / 4.0  # |u| = |alpha| over 16 dims
    wte[:, w2_dims] += torch.randn(V, 1, generator=g) * 0.6 / 4.0  # s_v ~ N(0, 0.6²): a few units of per-token bias
    w["wte.weight"] = wte
    w["ln_f.weight"][u_dims] = 0.05
    w["ln_f.weight"][w2_dims] = 0.05
    w["ln_f.bias"][u_dims] = beta_u / 4.0
    w["ln_f.bias"][w2_dims] = beta_w2 / 4.0
    w["wpe.weight"][0, big] += torch.tensor([2450.0, -1225.0, -1225.0])
    return w


def load_weights(path, prefix):
    """Read model.safetensors back (so the reference uses exactly what the file holds, rounded to its
    dtype) and return float32 weights under the unprefixed HF names."""
    raw = read_safetensors(path)
    return {k[len(prefix):]: v.float() for k, v in raw.items() if k.startswith(prefix)}


def centre_weights(w, n_layer):
    """SPEC §2: TransformerLens centres every weight that writes to the residual stream (mean over the
    d_model axis subtracted). d_model is the last axis of each of these in HF layout. The LM head keeps
    the ORIGINAL wte; only the embedding lookup uses the centred copy."""
    centre = lambda t: t - t.mean(-1, keepdim=True)
    c = dict(w)
    c["lm_head.weight"] = w["wte.weight"]
    c["wte.weight"] = centre(w["wte.weight"])
    c["wpe.weight"] = centre(w["wpe.weight"])
    for i in range(n_layer):
        for name in ["attn.c_proj.weight", "attn.c_proj.bias", "mlp.c_proj.weight", "mlp.c_proj.bias"]:
            c[f"h.{i}.{name}"] = centre(w[f"h.{i}.{name}"])
    return c

# ----------------------------------------------------------------------------
# GPT-2 forward, as plain torch ops (HF GPT2LMHeadModel semantics)

def layernorm(x, weight, bias):
    return F.layer_norm(x, (x.shape[-1],), weight, bias, LN_EPS)


def gelu_tanh(x):
    # HF "gelu_new", written out so it does not depend on F.gelu's approximate= argument
    return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * torch.pow(x, 3.0))))


def attention(qkv, n_head):
    """qkv (B,T,3C): q in [0,C), k in [C,2C), v in [2C,3C), head h at h*hs. Returns (B,T,C), the
    concatenated head outputs before c_proj."""
    B, T, C3 = qkv.shape
    C = C3 // 3
    hs = C // n_head
    q, k, v = [t.reshape(B, T, n_head, hs).transpose(1, 2) for t in qkv.split(C, dim=-1)]  # (B,NH,T,hs)
    att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(hs))
    future = torch.ones(T, T, dtype=torch.bool).triu(1)
    att = F.softmax(att.masked_fill(future, float("-inf")), dim=-1)
    return (att @ v).transpose(1, 2).reshape(B, T, C)


def block_forward(x, w, i, n_head):
    p = f"h.{i}."
    h = layernorm(x, w[p + "ln_1.weight"], w[p + "ln_1.bias"])
    a = attention(h @ w[p + "attn.c_attn.weight"] + w[p + "attn.c_attn.bias"], n_head)
    x = x + a @ w[p + "attn.c_proj.weight"] + w[p + "attn.c_proj.bias"]
    h = layernorm(x, w[p + "ln_2.weight"], w[p + "ln_2.bias"])
    h = gelu_tanh(h @ w[p + "mlp.c_fc.weight"] + w[p + "mlp.c_fc.bias"])
    return x + h @ w[p + "mlp.c_proj.weight"] + w[p + "mlp.c_proj.bias"]


def lm_head(x, w):
    # final LN, then the unembedding with the ORIGINAL (uncentred) wte
    return layernorm(x, w["ln_f.weight"], w["ln_f.bias"]) @ w["lm_head.weight"].t()


def gpt2_forward_to(layer, tokens, w, cfg):
    """tokens (B,T) -> resid_pre of block `layer` (B,T,C) (the centred residual the SAE sees)."""
    T = tokens.shape[1]
    x = w["wte.weight"][tokens] + w["wpe.weight"][:T]
    for i in range(layer):
        x = block_forward(x, w, i, cfg.n_head)
    return x


def gpt2_forward_from(layer, resid, w, cfg):
    """Runs blocks layer..n_layer-1 and the head on resid (B,T,C). Returns logits (B,T,V) and
    {k: resid_pre_k} for k = layer+1..n_layer-1 (the downstream residuals of e2e+ds)."""
    resids = {}
    x = resid
    for i in range(layer, cfg.n_layer):
        if i > layer:
            resids[i] = x
        x = block_forward(x, w, i, cfg.n_head)
    return lm_head(x, w), resids

# ----------------------------------------------------------------------------
# SAE

def init_sae(cfg):
    """SPEC §3: nn.Linear default init (bound 1/sqrt(fan_in)), then orthogonal_ on W_dec [D,C] itself
    (orthonormal columns, raw row norms ~ sqrt(C/D))."""
    torch.manual_seed(cfg.seed + 2)
    C, D = cfg.d_model, cfg.dict_size
    W_enc = torch.empty(C, D).uniform_(-1 / math.sqrt(C), 1 / math.sqrt(C))
    b_enc = torch.empty(D).uniform_(-1 / math.sqrt(C), 1 / math.sqrt(C))
    b_dec = torch.empty(C).uniform_(-1 / math.sqrt(D), 1 / math.sqrt(D))
    W_dec = torch.nn.init.orthogonal_(torch.empty(D, C))
    return {"W_enc": W_enc, "b_enc": b_enc, "W_dec": W_dec, "b_dec": b_dec}


def init_sae_near_identity(cfg, eps, x_scale):
    """An SAE that reconstructs x up to a relative error ~eps (dev/make_random_gpt2.py --real-scale scales eps to a
    KL of ~0.05). Features 0..2C-1 are ±q_i for a random orthonormal basis q (relu(x·q_i)·q_i - relu(-x·q_i)·q_i = x
    exactly at eps = 0), their encoder columns perturbed by eps·N(0, 1/C); the other D-2C features are random unit
    directions that fire on a few percent of tokens (threshold 2·x_scale/sqrt(C), x_scale the typical |x|) with an
    encoder scaled by eps. Needs D >= 2C."""
    C, D = cfg.d_model, cfg.dict_size
    assert D >= 2 * C, "init_sae_near_identity needs dict_size >= 2 * d_model"
    g = torch.Generator().manual_seed(cfg.seed + 6)
    q, _ = torch.linalg.qr(torch.randn(C, C, generator=g))  # columns q_i
    extra = torch.randn(D - 2 * C, C, generator=g)
    extra = extra / extra.norm(dim=1, keepdim=True)
    W_enc = torch.cat([torch.cat([q, -q], 1) + eps * torch.randn(C, 2 * C, generator=g) / math.sqrt(C), eps * extra.t()], 1)
    b_enc = torch.cat([torch.zeros(2 * C), torch.full((D - 2 * C,), -eps * 2.0 * x_scale / math.sqrt(C))])
    return {"W_enc": W_enc.contiguous(), "b_enc": b_enc, "W_dec": torch.cat([q.t(), -q.t(), extra], 0).contiguous(),
            "b_dec": torch.zeros(C)}


def sae_forward(x, sae):
    """x (B,T,C) -> c (B,T,D), x_hat (B,T,C). The dictionary is normalised on every forward and the
    gradient flows through the normalisation (the library's F.normalize(decoder.weight, dim=0))."""
    c = F.relu(x @ sae["W_enc"] + sae["b_enc"])
    W_dec = sae["W_dec"]
    D = W_dec / W_dec.norm(dim=1, keepdim=True).clamp_min(1e-12)
    return c, c @ D + sae["b_dec"]

# ----------------------------------------------------------------------------
# losses and metrics

def kl_div(logits_clean, logits_spliced):
    """KL(clean || spliced), summed over vocab, averaged over the B*T tokens; clean is detached."""
    lp_clean = F.log_softmax(logits_clean.detach(), dim=-1)
    lp_spliced = F.log_softmax(logits_spliced, dim=-1)
    return (lp_clean.exp() * (lp_clean - lp_spliced)).sum(-1).mean()


def cross_entropy(logits, tokens):
    # SPEC §6: next-token CE within each row: positions 0..T-2 predict the row's tokens 1..T-1
    V = logits.shape[-1]
    return F.cross_entropy(logits[:, :-1].reshape(-1, V), tokens[:, 1:].reshape(-1))


def losses(x, c, x_hat, logits_clean, logits_spliced, resids_clean, resids_spliced, cfg):
    """SPEC §4 terms (unweighted) and the mode's weighted total, plus the §6 metrics."""
    C = x.shape[-1]
    t = {}
    t["kl"] = kl_div(logits_clean, logits_spliced)  # a metric in local mode, not in its loss
    t["sparsity"] = c.abs().sum(-1).mean() / C
    t["mse"] = F.mse_loss(x_hat, x)
    ds = [F.mse_loss(resids_spliced[k], resids_clean[k].detach()) for k in sorted(resids_clean)]
    if cfg.mode == "local" or not ds:
        t["ds_mse"] = torch.zeros(())
    else:
        t["ds_mse"] = torch.stack(ds).mean()
    if cfg.mode == "local":
        t["loss"] = cfg.sparsity_coeff * t["sparsity"] + cfg.mse_coeff * t["mse"]
    elif cfg.mode == "e2e":
        t["loss"] = cfg.kl_coeff * t["kl"] + cfg.sparsity_coeff * t["sparsity"]
    else:  # e2e+ds: each downstream layer weighted ds_coeff / K
        t["loss"] = cfg.kl_coeff * t["kl"] + cfg.sparsity_coeff * t["sparsity"]
        for d in ds:
            t["loss"] = t["loss"] + (cfg.ds_coeff / len(ds)) * d
    with torch.no_grad():
        t["l0"] = (c > 0).float().sum(-1).mean()
        xf, xhf = x.reshape(-1, C), x_hat.reshape(-1, C)
        resid_var = ((xf - xf.mean(0)) ** 2).sum(-1)  # per token, around the batch's mean x
        t["explained_variance"] = (1 - ((xhf - xf) ** 2).sum(-1) / resid_var).mean()
        t["top1_agree"] = (logits_clean.argmax(-1) == logits_spliced.argmax(-1)).float().mean()
    return t


def run_microbatch(tokens, sae, w, cfg):
    """One micro-batch (B,T) through clean and spliced model. Layers below L are shared and the clean
    run needs no gradient; the spliced run is always computed (its KL is a metric in local mode)."""
    with torch.no_grad():
        x = gpt2_forward_to(cfg.layer, tokens, w, cfg)
        logits_clean, resids_clean = gpt2_forward_from(cfg.layer, x, w, cfg)
    c, x_hat = sae_forward(x, sae)
    logits_spliced, resids_spliced = gpt2_forward_from(cfg.layer, x_hat, w, cfg)
    t = losses(x, c, x_hat, logits_clean, logits_spliced, resids_clean, resids_spliced, cfg)
    with torch.no_grad():
        t["ce_clean"] = cross_entropy(logits_clean, tokens)
        t["ce_spliced"] = cross_entropy(logits_spliced, tokens)
    act = dict(x=x, c=c, x_hat=x_hat, logits_clean=logits_clean, logits_spliced=logits_spliced,
               resids_clean=resids_clean, resids_spliced=resids_spliced)
    return t, act

# ----------------------------------------------------------------------------
# training

def lr_at(s, cfg):
    """SPEC §5: linear warmup from 0, then cosine down to min_lr_factor*lr; s = updates already made."""
    eff = cfg.batch * cfg.grad_accum
    W, S = cfg.warmup_samples // eff, cfg.samples // eff
    if s < W:
        return cfg.lr * s / max(1, W)
    p = (s - W) / max(1, S - W)
    m = cfg.min_lr_factor
    return cfg.lr * max(m, m + (1 - m) * 0.5 * (1 + math.cos(math.pi * p)))


def micro_batch(tokens, n, cfg):
    # SPEC §7, no shuffle: micro-batch n holds rows n*B..n*B+B-1, row r = tokens [r*T, r*T+T)
    B, T = cfg.batch, cfg.seq_len
    return tokens[n * B * T:(n + 1) * B * T].view(B, T)


def train_steps(sae_init, w, tokens, cfg):
    """cfg.steps updates of grad_accum micro-batches each; returns the per-update log and final params."""
    params = {k: sae_init[k].clone().requires_grad_(True) for k in SAE_NAMES}
    plist = [params[k] for k in SAE_NAMES]
    betas, eps = (0.9, 0.999), 1e-8
    if cfg.weight_decay > 0:
        opt = torch.optim.AdamW(plist, lr=cfg.lr, betas=betas, eps=eps, weight_decay=cfg.weight_decay, foreach=False)
    else:
        opt = torch.optim.Adam(plist, lr=cfg.lr, betas=betas, eps=eps, weight_decay=0.0, foreach=False)
    keys = ["loss", "kl", "sparsity", "mse", "ds_mse", "l0"]
    log = {k: [] for k in keys + ["grad_norm", "lr"]}
    for s in range(cfg.steps):
        lr_s = lr_at(s, cfg)
        for g in opt.param_groups:
            g["lr"] = lr_s  # an update with lr 0 still advances Adam's m, v and step
        opt.zero_grad(set_to_none=True)
        sums = {k: 0.0 for k in keys}
        for j in range(cfg.grad_accum):
            t, _ = run_microbatch(micro_batch(tokens, s * cfg.grad_accum + j, cfg), params, w, cfg)
            (t["loss"] / cfg.grad_accum).backward()
            for k in keys:
                sums[k] += t[k].item() / cfg.grad_accum
        # returns the total norm before clipping; scales all grads by min(1, max/(total+1e-6))
        total = torch.nn.utils.clip_grad_norm_(plist, cfg.max_grad_norm)
        opt.step()
        for k in keys:
            log[k].append(sums[k])
        log["grad_norm"].append(float(total))
        log["lr"].append(lr_s)
    return log, {k: v.detach() for k, v in params.items()}

# ----------------------------------------------------------------------------
# isolated single-op checks

def forward_backward(f, inputs, dout):
    """y = f(*inputs); returns y and the gradients of sum(y*dout) wrt each input."""
    inputs = [t.clone().requires_grad_(True) for t in inputs]
    y = f(*inputs)
    grads = torch.autograd.grad(y, inputs, dout)
    return y.detach(), grads


def layer_checks(w, cfg):
    torch.manual_seed(cfg.seed + 3)  # separate stream: independent of the training data and SAE
    B, T, C, V = cfg.batch, cfg.seq_len, cfg.d_model, cfg.vocab
    r = lambda *shape, scale=1.0: torch.randn(*shape) * scale
    out = {}

    inp, lw, lb, dout = r(B, T, C), 1 + r(C, scale=0.1), r(C, scale=0.1), r(B, T, C)
    y, (dinp,) = forward_backward(lambda x: layernorm(x, lw, lb), [inp], dout)
    out.update(ln_inp=inp, ln_w=lw, ln_b=lb, ln_out=y, ln_dout=dout, ln_dinp=dinp)

    OC = 4 * C
    inp, mw, mb, dout = r(B, T, C), r(OC, C, scale=0.1), r(OC, scale=0.1), r(B, T, OC)
    y, (dinp,) = forward_backward(lambda x: x @ mw.t() + mb, [inp], dout)  # nn.Linear layout [out,in]
    out.update(mm_inp=inp, mm_w=mw, mm_b=mb, mm_out=y, mm_dout=dout, mm_dinp=dinp)

    qkv, dout = r(B, T, 3 * C), r(B, T, C)
    y, (dqkv,) = forward_backward(lambda q: attention(q, cfg.n_head), [qkv], dout)
    out.update(att_qkv=qkv, att_out=y, att_dout=dout, att_dqkv=dqkv)

    inp, dout = r(B, T, 4 * C, scale=2.0), r(B, T, 4 * C)
    y, (dinp,) = forward_backward(gelu_tanh, [inp], dout)
    out.update(gelu_inp=inp, gelu_out=y, gelu_dout=dout, gelu_dinp=dinp)

    inp, dout = r(B, T, C), r(B, T, C)
    y, (dinp,) = forward_backward(lambda x: block_forward(x, w, 0, cfg.n_head), [inp], dout)
    out.update(block_inp=inp, block_out=y, block_dout=dout, block_dinp=dinp)

    lc, ls = r(B, T, V, scale=3.0), r(B, T, V, scale=3.0)
    ls_ = ls.clone().requires_grad_(True)
    kl = kl_div(lc, ls_)
    (dls,) = torch.autograd.grad(kl, [ls_])
    out.update(kl_logits_clean=lc, kl_logits_spliced=ls, kl_value=kl.detach().reshape(1), kl_dlogits=dls)

    # a softmax loss's gradient sums to 0 over the vocabulary; only such a gradient ignores the
    # engine's shift of W_U by its mean row (SPEC §2), so the test gradient is one too
    inp, dlogits = r(B, T, C), r(B, T, V)
    dlogits = dlogits - dlogits.mean(dim=-1, keepdim=True)
    _, (dinp,) = forward_backward(lambda x: lm_head(x, w), [inp], dlogits)
    out.update(head_inp=inp, head_dlogits=dlogits, head_dinp=dinp)
    return out

# ----------------------------------------------------------------------------
# main

def parse_args(argv=None):
    p = argparse.ArgumentParser(description="PyTorch reference for the e2e SAE trainers: writes a random "
                                "GPT-2, token shards, an SAE init and the expected outputs into --out.")
    a = p.add_argument
    a("--out", required=True, help="output directory (created)")
    a("--n-layer", type=int, default=3)
    a("--n-head", type=int, default=2)
    a("--d-model", type=int, default=32)
    a("--vocab", type=int, default=97)
    a("--max-t", type=int, default=16, help="n_positions (wpe rows)")
    a("--seed", type=int, default=0)
    a("--layer", type=int, default=1, help="SAE at blocks.LAYER.hook_resid_pre")
    a("--dict-size", type=int, default=64, help="d_sae")
    a("--mode", choices=MODES, default="e2e")
    a("--sparsity-coeff", type=float, default=None, help="default per mode: e2e 1.5, local 6, e2e+ds 1.5")
    a("--kl-coeff", type=float, default=None, help="default per mode: e2e 1, e2e+ds 0.5")
    a("--mse-coeff", type=float, default=None, help="default: local 1")
    a("--ds-coeff", type=float, default=None, help="default: e2e+ds 2.5")
    a("--batch", type=int, default=2, help="micro-batch rows B")
    a("--seq-len", type=int, default=8, help="T")
    a("--grad-accum", type=int, default=2)
    a("--steps", type=int, default=10, help="optimizer updates to run")
    a("--lr", type=float, default=1e-3)
    a("--warmup-samples", type=int, default=8)
    a("--samples", type=int, default=200, help="total samples of the schedule (sets the cosine length)")
    a("--min-lr-factor", type=float, default=0.1)
    a("--max-grad-norm", type=float, default=0.1,
      help="default 0.1, small so clipping is active at the default test config")
    a("--weight-decay", type=float, default=0.0, help="> 0 uses AdamW")
    a("--model-dtype", choices=list(MODEL_DTYPES), default="f32", help="dtype of model.safetensors")
    a("--prefix", default="", help='key prefix in model.safetensors, e.g. "transformer."')
    a("--threads", type=int, default=1, help="torch CPU threads (1 keeps results machine-independent)")
    cfg = p.parse_args(argv)
    for k, v in MODE_DEFAULTS[cfg.mode].items():
        if getattr(cfg, k) is None:
            setattr(cfg, k, v)
    if cfg.d_model % cfg.n_head:
        p.error("--d-model must be divisible by --n-head")
    if not 0 <= cfg.layer < cfg.n_layer:
        p.error("--layer must be in [0, n_layer)")
    if cfg.mode == "e2e+ds" and cfg.layer > cfg.n_layer - 2:
        p.error("e2e+ds needs --layer <= n_layer-2 (no downstream layers otherwise)")
    if cfg.seq_len > cfg.max_t:
        p.error("--seq-len must be <= --max-t")
    if not 0 < cfg.vocab <= 65536:
        p.error("--vocab must fit uint16 tokens")
    return cfg


def main(argv=None):
    cfg = parse_args(argv)
    assert sys.byteorder == "little", "writes little-endian files by viewing memory"
    torch.set_num_threads(cfg.threads)
    t0 = time.time()
    out = cfg.out
    os.makedirs(os.path.join(out, "init_sae"), exist_ok=True)
    B, T, C, D, V, L = cfg.batch, cfg.seq_len, cfg.d_model, cfg.dict_size, cfg.vocab, cfg.layer

    # model: write HF safetensors in the requested dtype, read it back so the reference uses the
    # rounded weights, then write the same (rounded) weights as an llm.c checkpoint
    w0 = init_gpt2(cfg)
    mdt = MODEL_DTYPES[cfg.model_dtype]
    write_safetensors(os.path.join(out, "model.safetensors"), {cfg.prefix + k: v.to(mdt) for k, v in w0.items()})
    write_json(os.path.join(out, "config.json"), {
        "n_layer": cfg.n_layer, "n_head": cfg.n_head, "n_embd": C, "vocab_size": V,
        "n_positions": cfg.max_t, "n_ctx": cfg.max_t, "layer_norm_epsilon": LN_EPS,
        "activation_function": "gelu_new", "model_type": "gpt2"})
    w_orig = load_weights(os.path.join(out, "model.safetensors"), cfg.prefix)
    write_llmc_checkpoint(os.path.join(out, "model.bin"), w_orig, cfg)
    w = centre_weights(w_orig, cfg.n_layer)

    # data: enough rows for every micro-batch of every update, plus one spare micro-batch
    torch.manual_seed(cfg.seed + 1)
    n_micro = cfg.steps * cfg.grad_accum
    train_tokens = torch.randint(0, V, ((n_micro + 1) * B * T,))
    val_tokens = torch.randint(0, V, (max(16, B) * T,))
    write_shard(os.path.join(out, "train.bin"), train_tokens)
    write_shard(os.path.join(out, "val.bin"), val_tokens)

    # SAE init, written and read back
    sae_dir = os.path.join(out, "init_sae")
    write_safetensors(os.path.join(sae_dir, "sae_weights.safetensors"), init_sae(cfg))
    write_json(os.path.join(sae_dir, "cfg.json"), {"d_in": C, "d_sae": D, "dtype": "float32", "architecture": "standard"})
    sae0 = read_safetensors(os.path.join(sae_dir, "sae_weights.safetensors"))

    # micro-batch 0 with the initial SAE: activations, terms, metrics, gradient of the total loss
    exp = {}
    params = {k: sae0[k].clone().requires_grad_(True) for k in SAE_NAMES}
    tokens0 = micro_batch(train_tokens, 0, cfg)
    terms, act = run_microbatch(tokens0, params, w, cfg)
    terms["loss"].backward()
    exp["logits_clean"] = act["logits_clean"]
    exp["logits_spliced"] = act["logits_spliced"]
    exp["sae_in"] = act["x"]
    exp["c"] = act["c"]
    exp["x_hat"] = act["x_hat"]
    for k in ["kl", "sparsity", "mse", "ds_mse", "loss", "l0", "ce_clean", "ce_spliced",
              "explained_variance", "top1_agree"]:
        exp[k] = terms[k].reshape(1)
    if cfg.mode == "e2e+ds":
        for k in sorted(act["resids_clean"]):
            exp[f"ds_resid_clean_{k}"] = act["resids_clean"][k]
            exp[f"ds_resid_spliced_{k}"] = act["resids_spliced"][k]
    for k in SAE_NAMES:
        exp["grad_" + k] = params[k].grad
    grad0_norm = torch.sqrt(sum((params[k].grad ** 2).sum() for k in SAE_NAMES)).item()

    log, final = train_steps(sae0, w, train_tokens, cfg)
    for k, v in log.items():
        exp["steps_" + k] = torch.tensor(v, dtype=torch.float32)
    for k in SAE_NAMES:
        exp["final_" + k] = final[k]
    write_safetensors(os.path.join(out, "expected.safetensors"),
                      {k: v.detach().float().contiguous() for k, v in exp.items()})

    layers = layer_checks(w, cfg)
    write_safetensors(os.path.join(out, "layers.safetensors"), {k: v.float().contiguous() for k, v in layers.items()})
    write_json(os.path.join(out, "args.json"), vars(cfg))

    # summary
    print(f"reference: {cfg.mode} | GPT-2 L={cfg.n_layer} NH={cfg.n_head} C={C} V={V} maxT={cfg.max_t} "
          f"({cfg.model_dtype}, prefix '{cfg.prefix}') | SAE at blocks.{L}.hook_resid_pre D={D} | "
          f"B={B} T={T} accum={cfg.grad_accum} steps={cfg.steps}")
    print(f"coeffs: sparsity {cfg.sparsity_coeff} kl {cfg.kl_coeff} mse {cfg.mse_coeff} ds {cfg.ds_coeff} | "
          f"lr {cfg.lr} max_grad_norm {cfg.max_grad_norm} wd {cfg.weight_decay}")
    print("micro-batch 0: " + " ".join(f"{k} {terms[k].item():.6g}" for k in
          ["loss", "kl", "sparsity", "mse", "ds_mse", "l0", "ce_clean", "ce_spliced", "explained_variance", "top1_agree"])
          + f" | grad norm {grad0_norm:.6g}")
    n_clipped = 0
    for s in range(cfg.steps):
        clipped = log["grad_norm"][s] > cfg.max_grad_norm
        n_clipped += clipped
        print(f"step {s + 1:3d} lr {log['lr'][s]:.3e} loss {log['loss'][s]:.6f} kl {log['kl'][s]:.6f} "
              f"sparsity {log['sparsity'][s]:.6f} mse {log['mse'][s]:.6f} ds_mse {log['ds_mse'][s]:.6f} "
              f"l0 {log['l0'][s]:.2f} grad_norm {log['grad_norm'][s]:.6f}{' (clipped)' if clipped else ''}")
    print(f"clipping active in {n_clipped}/{cfg.steps} updates; wrote {out} in {time.time() - t0:.2f}s")


if __name__ == "__main__":
    main()
