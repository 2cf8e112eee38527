#!/usr/bin/env python3
"""
dev/compare_features.py -- how closely two --dump-features folders agree (e.g. train_gpt2_sae
against train_gpt2_sae_cpu on the same SAE and val data, both fp32).

    python3 dev/compare_features.py DUMP_A DUMP_B [--tol 1e-4]

From the same activations the two trainers write the same bits (llmc/feature_dump.h). Their
activations differ by fp32 rounding (cuBLAS and the CPU loops sum in other orders, ~1e-6
relative), so values agree to --tol and a discrete choice flips only for a near-tie: a top-K or
band slot (two activations, or an activation and a band bound, within rounding), a histogram
slot (an activation within rounding of an edge), a logit token (two effects within rounding).
Prints one "measured" line per tensor group and exits 1 when a bound fails:
  top-K       values: relative Frobenius error <= tol; positions: >= 99% identical
  fire_count  informational (an activation within rounding of 0 flips a count)
  logits      values (slot by slot) <= tol relative; tokens >= 99% identical
  hist        edges identical; counts moved between slots <= 0.1% of the firings
  bands       fracs identical; positions >= 99% identical; values where positions agree <= tol
  contexts    context_first identical; where the example's position agrees in both: NaN at the
              same places, values within one F16 rounding (2^-10 relative) plus tol of the scale
  ablation    the same features; effects within 1e-5 absolute plus 1%
The new tensors are skipped, saying so, when either dump predates them. Needs numpy only
(Debian's /usr/bin/python3 has it). A bad input ends with one "error:" line and exit code 1.
"""
import math
import os
import sys

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "scripts"))
from report import ArgParser, die, read_safetensors  # noqa: E402  (the repo's numpy safetensors reader)


def read(path):
    return read_safetensors(path)[0]


def rel_err(a, b):
    a, b = a.astype(np.float64), b.astype(np.float64)
    return np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30)


def main():
    p = ArgParser()
    p.add_argument("a")
    p.add_argument("b")
    p.add_argument("--tol", type=float, default=1e-4)
    args = p.parse_args()
    if not 0 <= args.tol < math.inf:  # NaN fails this too
        die(f"--tol must be a finite number >= 0, got {args.tol}")
    for dump in (args.a, args.b):
        if not os.path.isdir(dump):
            die(f"'{dump}' is not a folder (a --dump-features folder: features.safetensors)")
    a, b = read(args.a + "/features.safetensors"), read(args.b + "/features.safetensors")
    for k in sorted(set(a) | set(b)):  # the comparisons below index and compare them slot by slot
        if k in ("top_values", "top_pos") and (k not in a or k not in b):
            die(f"tensor '{k}' is missing from one of the two features.safetensors")
        if k in a and k in b and a[k].shape != b[k].shape:
            die(f"tensor '{k}' has shape {list(a[k].shape)} in '{args.a}' and {list(b[k].shape)} in '{args.b}'")
    tol, ok = args.tol, True

    def verdict(name, good, line):
        nonlocal ok
        ok = ok and good
        print(f"measured {name:<10} {line}  {'ok' if good else 'EXCEEDS'}")

    err = rel_err(a["top_values"], b["top_values"])
    same_pos = float((a["top_pos"] == b["top_pos"]).mean())
    verdict("top-K", err <= tol and same_pos >= 0.99, f"values ||a-b||/||b|| {err:.3e}; positions identical {100 * same_pos:.2f}%")
    if "fire_count" in a and "fire_count" in b:
        diff = int((a["fire_count"] != b["fire_count"]).sum())
        print(f"measured {'fire_count':<10} features whose firing count differs: {diff} of {a['fire_count'].shape[0]}")

    groups = {"logits": ["logit_top_tokens", "logit_top_values", "logit_bottom_tokens", "logit_bottom_values"],
              "hist": ["hist_edges", "hist_counts"], "bands": ["band_fracs", "band_pos", "band_values"],
              "contexts": ["context_first", "context_acts_top", "context_acts_band"]}
    for name, keys in groups.items():
        if not all(k in a and k in b for k in keys):
            print(f"measured {name:<10} skipped: a dump without {', '.join(k for k in keys if k not in a or k not in b)}")
            continue
        if name == "logits":
            tokens = np.concatenate([(a[k] == b[k]).ravel() for k in ("logit_top_tokens", "logit_bottom_tokens")]).mean()
            va = np.concatenate([a["logit_top_values"].ravel(), a["logit_bottom_values"].ravel()]).astype(np.float64)
            vb = np.concatenate([b["logit_top_values"].ravel(), b["logit_bottom_values"].ravel()]).astype(np.float64)
            both = ~np.isnan(vb)
            scale = max(np.abs(vb[both]).max(initial=0.0), 1e-30)
            worst = np.abs(va[both] - vb[both]).max(initial=0.0) / scale
            same_nan = bool((np.isnan(va) == np.isnan(vb)).all())
            verdict(name, worst <= tol and tokens >= 0.99 and same_nan,
                    f"values max |a-b| {worst:.3e} of the largest; tokens identical {100 * tokens:.2f}%")
        elif name == "hist":
            edges = bool((a["hist_edges"] == b["hist_edges"]).all())
            moved = int(np.abs(a["hist_counts"] - b["hist_counts"]).sum()) // 2
            total = max(int(b["hist_counts"].sum()), 1)
            feats = int((a["hist_counts"] != b["hist_counts"]).any(axis=1).sum())
            verdict(name, edges and moved <= 1e-3 * total,
                    f"edges {'identical' if edges else 'DIFFER'}; {moved} of {total} firings in another slot ({feats} features)")
        elif name == "bands":
            fracs = bool((a["band_fracs"] == b["band_fracs"]).all())
            same = a["band_pos"] == b["band_pos"]
            filled = same & (b["band_pos"] >= 0)
            verr = rel_err(a["band_values"][filled], b["band_values"][filled]) if filled.any() else 0.0
            verdict(name, fracs and same.mean() >= 0.99 and verr <= tol,
                    f"positions identical {100 * same.mean():.2f}% ({int((b['band_pos'] >= 0).sum())} filled); values {verr:.3e}")
        else:
            first = bool((a["context_first"] == b["context_first"]).all())
            worst, nan_diff, compared = 0.0, 0, 0
            for ctx, pos in (("context_acts_top", "top_pos"), ("context_acts_band", "band_pos")):
                same = (a[pos] == b[pos]) & (b[pos] >= 0)
                ca, cb = a[ctx][same].astype(np.float64), b[ctx][same].astype(np.float64)
                nan_diff += int((np.isnan(ca) != np.isnan(cb)).sum())
                fin = ~np.isnan(cb) & ~np.isnan(ca)
                scale = max(np.abs(cb[fin]).max(initial=0.0), 1e-30)
                excess = np.abs(ca[fin] - cb[fin]) - 2.0 ** -10 * np.abs(cb[fin])
                worst = max(worst, float(excess.max(initial=0.0)) / scale)
                compared += int(same.sum())
            verdict(name, first and nan_diff == 0 and worst <= tol,
                    f"{compared} windows compared; NaN in different places {nan_diff}; beyond one F16 rounding {worst:.3e} of the largest")
    # the ablation effects (ablation.safetensors, when both dumps have one): the same features, and
    # effects within 1e-5 absolute plus 1% (each is a difference of two KL or CE means that carry the
    # two trainers' ~1e-6 relative difference, and the GPU's per-batch sums are fp32)
    pa, pb = args.a + "/ablation.safetensors", args.b + "/ablation.safetensors"
    if not (os.path.isfile(pa) and os.path.isfile(pb)):
        print(f"measured {'ablation':<10} skipped: a dump without ablation.safetensors")
    else:
        xa, xb = read(pa), read(pb)
        same = xa["features"].shape == xb["features"].shape and bool((xa["features"] == xb["features"]).all())
        worst = 0.0
        if same:
            for k in ("d_kl", "d_ce"):
                da, db = xa[k].astype(np.float64), xb[k].astype(np.float64)
                worst = max(worst, float((np.abs(da - db) - 1e-2 * np.abs(db)).max(initial=0.0)))
        verdict("ablation", same and worst <= 1e-5,
                f"features {'identical' if same else 'DIFFER'} ({xb['features'].shape[0]}); effects beyond 1% off by {worst:.3e}")
    print(f"{'OK' if ok else 'EXCEEDS'} (tol {tol:g})")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
