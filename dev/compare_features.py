#!/usr/bin/env python3
"""
dev/compare_features.py -- how closely two --dump-features folders agree (e.g. train_gpt2_sae
against train_gpt2_sae_cpu on the same SAE and val data).

    python3 dev/compare_features.py DUMP_A DUMP_B [--tol 1e-4]

Prints the relative Frobenius error of the top-K values, the fraction of identical top-K
positions (a near-tie may swap two), and how many features' firing counts differ (an
activation within rounding of 0 flips a count); exits 1 if the values differ by more than --tol
or fewer than 99% of the positions agree. Needs numpy only.
"""
import argparse
import json
import struct
import sys

import numpy as np

DT = {"F32": np.float32, "I64": np.int64, "I32": np.int32}


def read(path):
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        data = f.read()
    return {k: np.frombuffer(data[v["data_offsets"][0]:v["data_offsets"][1]], dtype=DT[v["dtype"]]).reshape(v["shape"])
            for k, v in header.items() if k != "__metadata__"}


def main():
    p = argparse.ArgumentParser()
    p.add_argument("a")
    p.add_argument("b")
    p.add_argument("--tol", type=float, default=1e-4)
    args = p.parse_args()
    a, b = read(args.a + "/features.safetensors"), read(args.b + "/features.safetensors")
    va, vb = a["top_values"].astype(np.float64), b["top_values"].astype(np.float64)
    err = np.linalg.norm(va - vb) / max(np.linalg.norm(vb), 1e-30)
    same_pos = float((a["top_pos"] == b["top_pos"]).mean())
    diff_counts = int((a["fire_count"] != b["fire_count"]).sum()) if "fire_count" in a else -1
    print(f"  top values ||a-b||/||b||: {err:.3e}")
    print(f"  top positions identical: {100 * same_pos:.2f}%")
    print(f"  features whose firing count differs: {diff_counts} of {va.shape[0]}")
    ok = err <= args.tol and same_pos >= 0.99
    print(f"{'OK' if ok else 'EXCEEDS'} (tol {args.tol:g}, positions >= 99%)")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
