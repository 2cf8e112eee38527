#!/usr/bin/env python3
"""
dev/compare_runs.py -- how closely two training runs agree: their JSON-lines logs (every loss
term of every step) and their exported SAEs (sae_weights.safetensors). Used to compare
train_gpt2_sae (fp32 or bf16) with train_gpt2_sae_cpu on the same model, data and initial SAE.

    python3 dev/compare_runs.py RUN_A RUN_B [--tol 1e-4]

Prints, per term, the largest relative difference over the steps, and per tensor the relative
Frobenius error ||a-b|| / ||b|| (and, for information, max|a-b| / max|b|); exits 1 if a log term
or a tensor's Frobenius error exceeds --tol. Why not the max: Adam divides each update by
sqrt(v), so an element whose gradient is ~0 on one side and a rounding-level ~1e-9 on the other
still moves by ~lr per step on one side only. After 30 updates a few such elements of W_enc
differ by ~1e-3 of max|W_enc| between any two fp32 implementations (measured: the CPU trainer
against PyTorch, 30 updates, max 6.3e-4, Frobenius 5.4e-6, log terms <= 9e-6), so the max
measures how many features sit at the ReLU threshold, not the arithmetic. Needs numpy only
(Debian's /usr/bin/python3 has it). A bad input ends with one "error:" line and exit code 1.
"""
import json
import math
import os
import sys

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "scripts"))
from report import ArgParser, die, read_safetensors  # noqa: E402  (the repo's numpy safetensors reader)


def read_log(path):
    """-> the training lines of a JSON-lines log (not the eval lines)"""
    if not os.path.isfile(path):
        die(f"'{path}' not found")
    try:
        with open(path, encoding="utf-8") as f:
            lines = [json.loads(line) for line in f if line.strip()]
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        die(f"'{path}' is not a JSON-lines log: {e}")
    return [x for x in lines if isinstance(x, dict) and "eval" not in x]


def main():
    p = ArgParser()
    p.add_argument("a")
    p.add_argument("b")
    p.add_argument("--tol", type=float, default=1e-4)
    args = p.parse_args()
    if not 0 <= args.tol < math.inf:  # NaN fails this too
        die(f"--tol must be a finite number >= 0, got {args.tol}")
    for run in (args.a, args.b):
        if not os.path.isdir(run):
            die(f"'{run}' is not a folder (a run's --out folder: log.jsonl, sae_weights.safetensors)")
    worst = 0.0
    la, lb = read_log(os.path.join(args.a, "log.jsonl")), read_log(os.path.join(args.b, "log.jsonl"))
    if len(la) != len(lb):
        sys.exit(f"logs differ in length: {len(la)} vs {len(lb)} steps")
    for key in ["loss", "kl", "sparsity", "mse", "ds_mse", "l0", "grad_norm", "lr"]:
        pairs = [(x.get(key), y.get(key)) for x, y in zip(la, lb) if x.get(key) is not None and y.get(key) is not None]
        if not pairs:
            continue
        err = max(abs(x - y) / max(abs(y), 1e-30) for x, y in pairs)
        worst = max(worst, err)
        print(f"  log {key:10s} max rel diff over {len(pairs)} steps: {err:.3e}")
    sa = {k: v.astype(np.float64) for k, v in read_safetensors(os.path.join(args.a, "sae_weights.safetensors"))[0].items()}
    sb = {k: v.astype(np.float64) for k, v in read_safetensors(os.path.join(args.b, "sae_weights.safetensors"))[0].items()}
    for k in ["W_enc", "b_enc", "W_dec", "b_dec"]:
        if k not in sa or k not in sb or sa[k].shape != sb[k].shape:
            die(f"tensor '{k}' is missing from or of another shape in one of the two sae_weights.safetensors")
        frob = np.linalg.norm(sa[k] - sb[k]) / max(np.linalg.norm(sb[k]), 1e-30)
        mx = np.abs(sa[k] - sb[k]).max() / max(np.abs(sb[k]).max(), 1e-30)
        worst = max(worst, frob)
        print(f"  SAE {k:10s} ||a-b||/||b||: {frob:.3e}   (max|a-b|/max|b|: {mx:.3e})")
    print(f"worst {worst:.3e} (tol {args.tol:g}): {'OK' if worst <= args.tol else 'EXCEEDS'}")
    sys.exit(0 if worst <= args.tol else 1)


if __name__ == "__main__":
    main()
