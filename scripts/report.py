#!/usr/bin/env python3
"""
One self-contained HTML page about a trained SAE: its training curves, its eval metrics, how
often its features fire, and a card for each of its most and least frequent live features with
the items of that feature's scripts/features.py page: its logit effects, the histogram of its
activations, its top and band examples with every context token shaded by its activation, and
its ablation effect.

    scripts/report.py --log RUN/log.jsonl --features DUMPDIR --tokenizer data/gpt2 \
        [--out DUMPDIR/report.html] [--n-features 20] [--context 12]

Reads
  --log        the trainer's JSON-lines log (SPEC §8): training lines and "eval": true lines
  --features   the folder --dump-features wrote (llmc/feature_dump.h): features.safetensors
               (frequency, top_values, top_pos, ...), features.json (the val shards the
               positions index into, seq_len, and what was run) and ablation.safetensors if
               the trainer wrote one. A dump written before the logit effects, histogram, band
               examples and context activations existed still renders: each card says what it lacks.
  --tokenizer  a folder holding GPT-2's encoder.json (or the file itself), to decode tokens
Writes one HTML file with inline SVG and CSS: no scripts, nothing fetched when it is viewed.

This file also holds what scripts/features.py (the viewer of any feature) imports: the readers,
the Dump it serves from, and the renderers of one feature's items, so a card and a page show
the same thing. Needs only Python 3 and numpy (Debian's /usr/bin/python3 has both). Every bad
input ends with one line "error: ..." and exit code 1. Left out: anything interactive.
"""
import argparse
import html
import json
import math
import os
import sys

import numpy as np


def die(msg):
    print(f"error: {msg}", file=sys.stderr)
    sys.exit(1)


class ArgParser(argparse.ArgumentParser):
    """argparse whose usage errors end like every other bad input: one "error:" line, exit 1
    (argparse's own are a usage block and exit 2). features.py and pareto.py use it too."""

    def error(self, message):
        die(f"{self.prog}: {message}")


# ----------------------------------------------------------------------------
# inputs

def read_log(path):
    """-> (training lines, eval lines), each a list of dicts sorted by step; when a step
    appears twice (a resumed run re-logs from its checkpoint) the later line wins."""
    if not os.path.isfile(path):
        die(f"--log '{path}' not found")
    train, evals = {}, {}
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.readlines()
    except UnicodeDecodeError:
        die(f"--log '{path}' is not a text file (not UTF-8): not the trainer's log.jsonl?")
    for lineno, line in enumerate(lines, 1):
        line = line.strip()
        if not line:
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            die(f"--log '{path}' line {lineno} is not JSON: {e.msg}")
        # a finite step: int() of NaN or infinity would raise
        if not isinstance(obj, dict) or not isinstance(obj.get("step"), (int, float)) or not math.isfinite(obj["step"]):
            die(f"--log '{path}' line {lineno} has no numeric 'step'")
        (evals if obj.get("eval") else train)[int(obj["step"])] = obj
    if not train and not evals:
        die(f"--log '{path}' has no lines")
    return [train[s] for s in sorted(train)], [evals[s] for s in sorted(evals)]


ST_DTYPES = {"F32": np.float32, "F64": np.float64, "I64": np.int64, "I32": np.int32, "F16": np.float16}


def read_safetensors(path):
    """-> ({name: array}, metadata dict); the header is checked the way llmc/safetensors.h does."""
    if not os.path.isfile(path):
        die(f"'{path}' not found (did the trainer run with --dump-features?)")
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        raw = f.read()
    if size < 8:
        die(f"'{path}' is not a safetensors file: only {size} bytes")
    hlen = int.from_bytes(raw[:8], "little")
    if hlen == 0 or hlen > size - 8:
        die(f"'{path}' is not a valid safetensors file: header length {hlen} does not fit the file")
    try:
        header = json.loads(raw[8:8 + hlen].decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        die(f"'{path}' is not a valid safetensors file: its header is not JSON")
    if not isinstance(header, dict):
        die(f"'{path}' is not a valid safetensors file: its header is not a JSON object")
    data = raw[8 + hlen:]
    meta = header.pop("__metadata__", {}) or {}
    tensors = {}
    for name, info in header.items():
        try:
            dtype = ST_DTYPES[info["dtype"]]
            shape = [int(d) for d in info["shape"]]
            begin, end = (int(o) for o in info["data_offsets"])
        except (KeyError, TypeError, ValueError):
            die(f"'{path}': tensor '{name}' has a bad header entry or unsupported dtype")
        count = int(np.prod(shape)) if shape else 1
        if end > len(data) or end - begin != count * np.dtype(dtype).itemsize:
            die(f"'{path}': tensor '{name}' data_offsets do not match its shape and dtype (truncated file?)")
        tensors[name] = np.frombuffer(data[begin:end], dtype=dtype).reshape(shape)
    return tensors, meta


def read_features(folder):
    """-> (features.json dict, frequency (D), top_values (D,K), top_pos (D,K), fire_count (D) or None)"""
    if not os.path.isdir(folder):
        die(f"--features '{folder}' is not a folder (the --dump-features DIR of a run)")
    jpath = os.path.join(folder, "features.json")
    if not os.path.isfile(jpath):
        die(f"'{jpath}' not found (did the trainer run with --dump-features?)")
    try:
        with open(jpath, encoding="utf-8") as f:
            meta = json.load(f)
    except UnicodeDecodeError:
        die(f"'{jpath}' is not JSON: not UTF-8 text")
    except json.JSONDecodeError as e:
        die(f"'{jpath}' is not JSON: {e.msg}")
    if not isinstance(meta, dict):
        die(f"'{jpath}' is not a JSON object")
    for key in ("val_shards", "seq_len"):
        if key not in meta:
            die(f"'{jpath}' lacks '{key}'")
    if not isinstance(meta["val_shards"], list) or not meta["val_shards"] or not all(isinstance(p, str) for p in meta["val_shards"]):
        die(f"'{jpath}': 'val_shards' must be a non-empty list of paths")
    if not isinstance(meta.get("cwd", ""), str):
        die(f"'{jpath}': 'cwd' must be a path")
    spath = os.path.join(folder, "features.safetensors")
    t, _ = read_safetensors(spath)
    for key in ("frequency", "top_values", "top_pos"):
        if key not in t:
            die(f"'{spath}' lacks tensor '{key}'")
    freq, vals, pos = t["frequency"].astype(np.float64), t["top_values"], t["top_pos"].astype(np.int64)
    if freq.ndim != 1 or vals.ndim != 2 or vals.shape != pos.shape or vals.shape[0] != freq.shape[0]:
        die(f"'{spath}': expected frequency (D), top_values (D,K), top_pos (D,K); got {freq.shape}, {vals.shape}, {pos.shape}")
    # frequency is fire_count / tokens: a NaN or a value outside [0, 1] would break the plots' arithmetic
    if not np.all((freq >= 0) & (freq <= 1)):
        die(f"'{spath}': 'frequency' must hold fractions in [0, 1], found {freq[~((freq >= 0) & (freq <= 1))][0]}")
    fires = t["fire_count"].astype(np.int64) if "fire_count" in t else None
    return meta, freq, vals, pos, fires


def bytes_to_unicode():
    """GPT-2's map from bytes to the printable characters encoder.json spells tokens with."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs)))


def read_tokenizer(path):
    """-> list: token id -> its bytes (None for ids encoder.json lacks)"""
    epath = os.path.join(path, "encoder.json") if os.path.isdir(path) else path
    if not os.path.isfile(epath):
        die(f"--tokenizer: '{epath}' not found (scripts/download_starter_pack.sh puts it in data/gpt2/)")
    try:
        with open(epath, encoding="utf-8") as f:
            encoder = json.load(f)
    except UnicodeDecodeError:
        die(f"--tokenizer: '{epath}' is not JSON: not UTF-8 text")
    except json.JSONDecodeError as e:
        die(f"--tokenizer: '{epath}' is not JSON: {e.msg}")
    # ids beyond the shards' uint16 could not be looked up anyway, and would size the table
    if (not isinstance(encoder, dict) or not encoder
            or not all(type(i) is int and 0 <= i < 65536 for i in encoder.values())):
        die(f"--tokenizer: '{epath}' is not a GPT-2 encoder.json (a map from token to an id in 0..65535)")
    byte_decoder = {c: b for b, c in bytes_to_unicode().items()}
    table = [None] * (max(encoder.values()) + 1)
    for tok, i in encoder.items():
        if tok == "<|endoftext|>" or any(ch not in byte_decoder for ch in tok):
            table[i] = tok.encode("utf-8")  # special tokens are spelled as themselves
        else:
            table[i] = bytes(byte_decoder[ch] for ch in tok)
    return table


class TokenStream:
    """The val shards (llm.c format: 256 int32 header, then uint16 tokens) as one stream of
    positions, in the order features.json lists them (sorted names, as the trainer read them)."""
    MAGIC, VERSION = 20240520, 1

    def __init__(self, paths, cwd, features_dir):
        self.shards, self.starts = [], []
        total = 0
        for p in paths:
            # as written; else relative to where the trainer ran (features.json's cwd), or to the dump
            tries = [p] if os.path.isabs(p) else [p, os.path.join(cwd or "", p), os.path.join(features_dir, p)]
            path = next((t for t in tries if os.path.isfile(t)), None)
            if path is None:
                die(f"val shard '{p}' (listed in features.json) not found here, under the trainer's folder '{cwd}' or the dump")
            size = os.path.getsize(path)
            if size < 1024:
                die(f"val shard '{path}' is truncated: {size} bytes, less than its 1024-byte header")
            header = np.fromfile(path, dtype="<i4", count=256)
            if header[0] != self.MAGIC or header[1] != self.VERSION:
                die(f"val shard '{path}' is not an llm.c token shard (magic {header[0]}, version {header[1]})")
            n = int(header[2])
            if size != 1024 + 2 * n:
                die(f"val shard '{path}' has {size} bytes, its header says {1024 + 2 * n}: truncated or corrupt")
            self.shards.append(np.memmap(path, dtype="<u2", mode="r", offset=1024, shape=(n,)))
            self.starts.append(total)
            total += n
        self.total = total

    def get(self, start, end):
        """tokens [start, end) of the stream, crossing shard boundaries"""
        out = []
        for shard, s0 in zip(self.shards, self.starts):
            lo, hi = max(start, s0), min(end, s0 + len(shard))
            if lo < hi:
                out.append(np.asarray(shard[lo - s0:hi - s0]))
        return np.concatenate(out).astype(np.int64) if out else np.zeros(0, np.int64)


# ----------------------------------------------------------------------------
# the dump, read whole: the report's cards and every request of scripts/features.py index these arrays

# the tensors each item needs beyond the core ones read_features reads; a dump without them is older
SECTIONS = {
    "logits": ["logit_top_tokens", "logit_top_values", "logit_bottom_tokens", "logit_bottom_values"],
    "hist": ["hist_edges", "hist_counts"],
    "bands": ["band_fracs", "band_pos", "band_values"],
    "contexts": ["context_acts_top", "context_first"],
    "band_contexts": ["context_acts_band"],
}
OLD_FIRST, OLD_WIDTH = -19, 24  # the context window newer dumps store, shown for older ones too


class Dump:
    """a --dump-features folder (or a run folder holding it at features/) with every tensor in memory;
    missing[item] names the tensors of SECTIONS an older dump lacks"""

    def __init__(self, run, tokenizer):
        folder = run
        if not os.path.isfile(os.path.join(run, "features.safetensors")) and os.path.isfile(os.path.join(run, "features", "features.safetensors")):
            folder = os.path.join(run, "features")  # a run folder, the dump where demo.sh and README put it
        self.folder = folder
        # read_features checks features.json and the core tensors; the rest come from the same file
        self.meta, self.freq, self.top_values, self.top_pos, fires = read_features(folder)
        spath = os.path.join(folder, "features.safetensors")
        t, _ = read_safetensors(spath)
        D, K = self.top_values.shape
        self.D, self.K = D, K
        self.fires = fires  # None in a dump without fire_count
        self.live = fires > 0 if fires is not None else self.freq > 0
        self.T = self.meta["seq_len"]
        if not isinstance(self.T, int) or self.T <= 0:
            die(f"'{folder}/features.json': seq_len must be a positive integer, got {self.T!r}")

        # the newer tensors: each must have its shape when present
        n_edges = t["hist_edges"].shape[0] if "hist_edges" in t and t["hist_edges"].ndim == 1 else None
        n_bands = t["band_fracs"].shape[0] - 1 if "band_fracs" in t and t["band_fracs"].ndim == 1 else None
        E = t["band_pos"].shape[2] if "band_pos" in t and t["band_pos"].ndim == 3 else None
        W = t["context_acts_top"].shape[2] if "context_acts_top" in t and t["context_acts_top"].ndim == 3 else None
        shapes = {"logit_top_tokens": (D, None), "logit_top_values": (D, None), "logit_bottom_tokens": (D, None),
                  "logit_bottom_values": (D, None), "hist_edges": (n_edges,), "hist_counts": (D, n_edges + 1 if n_edges else None),
                  "band_fracs": (None,), "band_pos": (D, n_bands, E), "band_values": (D, n_bands, E),
                  "context_acts_top": (D, K, W), "context_first": (1,), "context_acts_band": (D, n_bands, E, W)}
        for name, want in shapes.items():
            if name in t:
                got = t[name].shape
                if len(got) != len(want) or any(w is not None and g != w for g, w in zip(got, want)):
                    die(f"'{spath}': tensor '{name}' has shape {list(got)}, expected {['*' if w is None else w for w in want]}")
        for a, b in (("logit_top_tokens", "logit_top_values"), ("logit_bottom_tokens", "logit_bottom_values")):
            if a in t and b in t and t[a].shape != t[b].shape:
                die(f"'{spath}': '{a}' {list(t[a].shape)} and '{b}' {list(t[b].shape)} differ")
        self.t = t
        self.missing = {s: [n for n in names if n not in t] for s, names in SECTIONS.items()}

        self.ablation, self.ablation_n = self.read_ablation(os.path.join(folder, "ablation.safetensors"))
        self.table = read_tokenizer(tokenizer)
        self.stream = TokenStream(self.meta["val_shards"], self.meta.get("cwd"), folder)
        for name in ("top_pos", "band_pos"):
            if name in t and t[name].size and int(t[name].max()) >= self.stream.total:
                die(f"{name} holds position {int(t[name].max())} but the val shards hold {self.stream.total} tokens: "
                    f"features.json does not match features.safetensors")

        # the live features by frequency and by max activation (the viewer's index, the report's most
        # and least frequent), ties broken by id so every run lists the same
        live = np.nonzero(self.live)[0]
        self.max_act = self.top_values[:, 0].astype(np.float64) if K else np.zeros(D)
        self.orders = {}
        for sort, key in (("freq", self.freq), ("max", self.max_act)):
            self.orders[(sort, "desc")] = live[np.lexsort((live, -key[live]))]
            self.orders[(sort, "asc")] = live[np.lexsort((live, key[live]))]
        self.dead = np.nonzero(~self.live)[0]

    def read_ablation(self, path):
        """-> ({feature: (mean dKL, mean dCE)}, features covered); ({}, 0) without the file"""
        if not os.path.isfile(path):
            return {}, 0
        t, _ = read_safetensors(path)
        shapes = [t[n].shape if n in t else None for n in ("features", "d_kl", "d_ce")]
        if None in shapes or len(shapes[0]) != 1 or len(set(shapes)) != 1:
            die(f"'{path}': expected tensors features, d_kl and d_ce, all of one shape (F); got {shapes}")
        ids = t["features"].astype(np.int64)
        if ids.size and (ids.min() < 0 or ids.max() >= self.D):
            die(f"'{path}': feature ids must be in 0..{self.D - 1}, found {int(ids.min())}..{int(ids.max())}")
        return {int(f): (float(k), float(c)) for f, k, c in zip(ids, t["d_kl"], t["d_ce"])}, int(ids.size)

    def token(self, i):
        """a token id -> its decoded text as HTML (per token: a character split over two tokens shows as �)"""
        i = int(i)
        b = self.table[i] if 0 <= i < len(self.table) and self.table[i] is not None else f"<unk {i}>".encode()
        return display_text(b) or "&nbsp;"


# ----------------------------------------------------------------------------
# numbers and SVG plots

def fmt(x, digits=4):
    """a number for the page: thousands separators for integers, 4 significant digits otherwise"""
    if isinstance(x, (np.integer, np.floating)):
        x = x.item()
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        return "–" if x is None else html.escape(str(x))
    if isinstance(x, float) and not math.isfinite(x):
        return "–"
    if isinstance(x, int) or (isinstance(x, float) and x.is_integer() and abs(x) < 1e15):
        return f"{int(x):,}"
    if x != 0 and (abs(x) < 1e-3 or abs(x) >= 1e5):
        mant, exp = f"{x:.{digits - 1}e}".split("e")
        return (mant.rstrip("0").rstrip(".") if "." in mant else mant) + "e" + exp
    return f"{x:.{digits}g}" if abs(x) >= 1 else f"{x:.{digits}f}".rstrip("0").rstrip(".")


def nice_ticks(lo, hi, n=5):
    """round tick values covering [lo, hi]"""
    if hi <= lo:
        hi = lo + (abs(lo) or 1.0)
    raw = (hi - lo) / n
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    first = math.floor(lo / step) * step
    ticks, v = [], first
    while v <= hi + step * 1e-9:
        ticks.append(round(v, 12))
        v += step
    return ticks


COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b"]


def svg_line_plot(title, series, xlabel="step", width=360, height=210, logy=None, markers=False):
    """series: list of (label, xs, ys); None / non-finite ys are skipped. logy=None picks a log
    axis when every value is positive and they span more than 30x (losses falling for decades)."""
    clean = []
    for label, xs, ys in series:
        pts = [(float(x), float(y)) for x, y in zip(xs, ys) if y is not None and math.isfinite(float(y))]
        if pts:
            clean.append((label, pts))
    if not clean:
        return ""
    allx = [x for _, pts in clean for x, _ in pts]
    ally = [y for _, pts in clean for _, y in pts]
    if logy is None:
        logy = min(ally) > 0 and max(ally) / min(ally) > 30
    ty = (lambda y: math.log10(y)) if logy else (lambda y: y)
    x0, x1 = min(allx), max(allx)
    if x1 == x0:
        x0, x1 = x0 - 1, x1 + 1
    ylo, yhi = min(map(ty, ally)), max(map(ty, ally))
    if logy:
        yticks = list(range(math.floor(ylo), math.ceil(yhi) + 1))
        if len(yticks) < 2:
            yticks = [yticks[0], yticks[0] + 1]
    else:
        if yhi == ylo:
            ylo, yhi = ylo - (abs(ylo) * 0.1 or 1), yhi + (abs(yhi) * 0.1 or 1)
        yticks = nice_ticks(ylo, yhi)
    y0, y1 = min(yticks[0], ylo), max(yticks[-1], yhi)
    xticks = [t for t in nice_ticks(x0, x1) if x0 <= t <= x1]
    ml, mr, mt, mb = 56, 12, 26, 32
    pw, ph = width - ml - mr, height - mt - mb
    sx = lambda x: ml + (x - x0) / (x1 - x0) * pw
    sy = lambda y: mt + ph - (ty(y) - y0) / (y1 - y0) * ph
    out = [f'<svg class="plot" width="{width}" height="{height}" viewBox="0 0 {width} {height}" role="img">',
           f'<title>{html.escape(title)}</title>',
           f'<text x="{ml}" y="16" class="ptitle">{html.escape(title)}{" (log scale)" if logy else ""}</text>',
           f'<rect x="{ml}" y="{mt}" width="{pw}" height="{ph}" class="frame"/>']
    for t in yticks:
        yv = mt + ph - (t - y0) / (y1 - y0) * ph
        label = fmt(10.0 ** t, 2) if logy else fmt(t, 3)
        out.append(f'<line x1="{ml}" x2="{ml + pw}" y1="{yv:.1f}" y2="{yv:.1f}" class="grid"/>'
                   f'<text x="{ml - 4}" y="{yv + 3:.1f}" class="tick" text-anchor="end">{label}</text>')
    for t in xticks:
        xv = sx(t)
        out.append(f'<line x1="{xv:.1f}" x2="{xv:.1f}" y1="{mt + ph}" y2="{mt + ph + 4}" class="axis"/>'
                   f'<text x="{xv:.1f}" y="{mt + ph + 15}" class="tick" text-anchor="middle">{fmt(t, 3)}</text>')
    out.append(f'<text x="{ml + pw / 2}" y="{height - 3}" class="tick" text-anchor="middle">{html.escape(xlabel)}</text>')
    for i, (label, pts) in enumerate(clean):
        color = COLORS[i % len(COLORS)]
        if len(pts) > 1000:  # thousands of steps: plot means of equal buckets, the trend is what reads
            k = math.ceil(len(pts) / 1000)
            pts = [(np.mean([p[0] for p in pts[j:j + k]]), np.mean([p[1] for p in pts[j:j + k]])) for j in range(0, len(pts), k)]
        path = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in pts)
        out.append(f'<polyline points="{path}" fill="none" stroke="{color}" stroke-width="1.5"/>')
        if markers or len(pts) == 1:
            out += [f'<circle cx="{sx(x):.1f}" cy="{sy(y):.1f}" r="2.5" fill="{color}"><title>{fmt(x)}: {fmt(y)}</title></circle>'
                    for x, y in pts]
        if len(clean) > 1:
            out.append(f'<text x="{ml + pw - 4}" y="{mt + 12 + 12 * i}" class="tick" text-anchor="end" style="fill:{color}">{html.escape(label)}</text>')
    out.append("</svg>")
    return "".join(out)


def svg_histogram(title, edges, counts, xlabel, width=720, height=240):
    ml, mr, mt, mb = 56, 12, 26, 34
    pw, ph = width - ml - mr, height - mt - mb
    top = max(nice_ticks(0, max(max(counts), 1))[-1], 1)
    x0, x1 = edges[0], edges[-1]
    sx = lambda x: ml + (x - x0) / (x1 - x0) * pw
    out = [f'<svg class="plot" width="{width}" height="{height}" viewBox="0 0 {width} {height}" role="img">',
           f'<title>{html.escape(title)}</title>',
           f'<text x="{ml}" y="16" class="ptitle">{html.escape(title)}</text>',
           f'<rect x="{ml}" y="{mt}" width="{pw}" height="{ph}" class="frame"/>']
    for t in nice_ticks(0, top):
        yv = mt + ph - t / top * ph
        out.append(f'<line x1="{ml}" x2="{ml + pw}" y1="{yv:.1f}" y2="{yv:.1f}" class="grid"/>'
                   f'<text x="{ml - 4}" y="{yv + 3:.1f}" class="tick" text-anchor="end">{fmt(t, 3)}</text>')
    for lo, hi, c in zip(edges[:-1], edges[1:], counts):
        if c:
            h = c / top * ph
            out.append(f'<rect x="{sx(lo) + 0.5:.1f}" y="{mt + ph - h:.1f}" width="{max(sx(hi) - sx(lo) - 1, 0.5):.1f}" '
                       f'height="{h:.1f}" class="bar"><title>[{lo:.2f}, {hi:.2f}): {c}</title></rect>')
    for t in nice_ticks(x0, x1, 8):
        if x0 <= t <= x1:
            out.append(f'<text x="{sx(t):.1f}" y="{mt + ph + 15}" class="tick" text-anchor="middle">{fmt(t, 3)}</text>')
    out.append(f'<text x="{ml + pw / 2}" y="{height - 3}" class="tick" text-anchor="middle">{html.escape(xlabel)}</text></svg>')
    return "".join(out)


def svg_log_histogram(edges, counts, width=720, height=230):
    """counts = [underflow, one per bin of edges, overflow]; bins are log-spaced, so drawn equally
    wide; the under- and overflow bars stand apart at the ends"""
    nb = len(edges) - 1
    ml, mr, mt, mb = 56, 12, 26, 36
    pw, ph = width - ml - mr, height - mt - mb
    slot = pw / (nb + 6)  # nb bins, the two flow bars, and room between for the end labels
    xs = [ml + slot * 0.5] + [ml + slot * (3 + i) for i in range(nb)] + [ml + slot * (nb + 4.5)]
    top = max(nice_ticks(0, max(max(counts), 1))[-1], 1)
    out = [f'<svg class="plot hist" width="{width}" height="{height}" viewBox="0 0 {width} {height}" role="img">',
           "<title>histogram of nonzero activations</title>",
           f'<text x="{ml}" y="16" class="ptitle">nonzero activations ({fmt(int(sum(counts)))}), log-spaced bins</text>',
           f'<rect x="{ml}" y="{mt}" width="{pw}" height="{ph}" class="frame"/>']
    for t in nice_ticks(0, top):
        yv = mt + ph - t / top * ph
        out.append(f'<line x1="{ml}" x2="{ml + pw}" y1="{yv:.1f}" y2="{yv:.1f}" class="grid"/>'
                   f'<text x="{ml - 4}" y="{yv + 3:.1f}" class="tick" text-anchor="end">{fmt(t, 3)}</text>')
    labels = [f"&lt; {edges[0]:.3g}"] + [f"[{lo:.3g}, {hi:.3g})" for lo, hi in zip(edges[:-1], edges[1:])] + [f"≥ {edges[-1]:.3g}"]
    for i, (x, c) in enumerate(zip(xs, counts)):
        if c > 0:
            h = c / top * ph
            cls = "bar flow" if i in (0, nb + 1) else "bar"
            out.append(f'<rect x="{x + 0.5:.1f}" y="{mt + ph - h:.1f}" width="{max(slot - 1, 0.5):.1f}" height="{h:.1f}" '
                       f'class="{cls}"><title>{labels[i]}: {int(c):,}</title></rect>')
    ty = mt + ph + 14
    out.append(f'<text x="{xs[0] + slot / 2:.1f}" y="{ty}" class="tick" text-anchor="middle">&lt;</text>'
               f'<text x="{xs[-1] + slot / 2:.1f}" y="{ty}" class="tick" text-anchor="middle">≥</text>')
    for i, e in enumerate(edges):  # a label at each decade
        k = math.log10(e) if e > 0 else None
        if k is not None and abs(k - round(k)) < 1e-4:
            x = ml + slot * (3 + i)
            out.append(f'<text x="{x:.1f}" y="{ty}" class="tick" text-anchor="middle">1e{int(round(k))}</text>')
    out.append(f'<text x="{ml + pw / 2}" y="{height - 3}" class="tick" text-anchor="middle">activation (log scale)</text></svg>')
    return "".join(out)


# ----------------------------------------------------------------------------
# page sections

TRAIN_TERMS = [("loss", "loss (weighted total)"), ("kl", "KL (unweighted)"), ("sparsity", "sparsity L1/d_in (unweighted)"),
               ("mse", "MSE (unweighted)"), ("ds_mse", "downstream MSE (unweighted)"), ("l0", "L0"), ("lr", "learning rate"),
               ("grad_norm", "grad norm (before clipping)"), ("alive_train", "alive features (training window)")]

EVAL_COLUMNS = [("step", "step"), ("tokens", "tokens"), ("ce_clean", "CE clean"), ("ce_spliced", "CE spliced"),
                ("ce_increase", "CE increase"), ("kl", "KL"), ("l0", "L0"), ("explained_variance", "expl. var."),
                ("top1_agree", "top-1 agree"), ("alive", "alive"), ("dead", "dead"), ("alive_train", "alive (train)")]


def column(rows, key):
    xs, ys = [], []
    for r in rows:
        v = r.get(key)
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            xs.append(r["step"])
            ys.append(v)
    return xs, ys


def section_training(train):
    if not train:
        return "<h2>Training</h2><p>The log has no training lines (an --eval-only run).</p>"
    plots = []
    for key, title in TRAIN_TERMS:
        xs, ys = column(train, key)
        if ys and any(math.isfinite(y) for y in ys):
            plots.append(svg_line_plot(title, [(key, xs, ys)], logy=False if key in ("lr", "alive_train", "l0") else None,
                                       markers=key == "alive_train"))
    return (f"<h2>Training</h2><p>{len(train):,} optimizer updates logged (steps {train[0]['step']:,} to {train[-1]['step']:,}). "
            f"Terms the mode does not compute are null in the log and not plotted.</p><div class=plots>{''.join(plots)}</div>")


def section_eval(evals):
    if not evals:
        return "<h2>Eval</h2><p>The log has no eval lines.</p>"
    cols = [(k, t) for k, t in EVAL_COLUMNS if any(isinstance(e.get(k), (int, float)) for e in evals)]
    head = "".join(f"<th>{html.escape(t)}</th>" for _, t in cols)
    body = "".join("<tr>" + "".join(f"<td>{fmt(e.get(k))}</td>" for k, _ in cols) + "</tr>" for e in evals)
    plots = [svg_line_plot("CE increase (spliced − clean)", [("ce_increase", *column(evals, "ce_increase"))], logy=False, markers=True),
             svg_line_plot("L0 (eval)", [("l0", *column(evals, "l0"))], logy=False, markers=True),
             svg_line_plot("CE clean and spliced", [("clean", *column(evals, "ce_clean")), ("spliced", *column(evals, "ce_spliced"))],
                           logy=False, markers=True)]
    return (f"<h2>Eval</h2><p>On the first rows of the --val data, the same rows each time (SPEC §6).</p>"
            f"<table class=metrics><tr>{head}</tr>{body}</table><div class=plots>{''.join(plots)}</div>")


def section_frequency(meta, freq, fires, n_tokens):
    D = len(freq)
    dead = fires == 0 if fires is not None else freq <= 0
    live = np.log10(freq[~dead])
    title = f"log10 firing frequency of the {int((~dead).sum()):,} live features"
    if live.size:
        lo = math.floor(min(live.min(), -1) * 4) / 4
        edges = np.linspace(lo, 0.0, int(round(-lo * 4)) + 1)  # quarter-decade bins
        counts, _ = np.histogram(live, bins=edges)
        hist = svg_histogram(title, list(edges), [int(c) for c in counts], "log10(fraction of tokens on which the feature is > 0)")
    else:
        hist = "<p>No feature fired.</p>"
    return (f"<h2>Firing frequency</h2><p>Over {fmt(n_tokens)} val tokens: {int((~dead).sum()):,} of {D:,} features fired at least once; "
            f"<b>{int(dead.sum()):,} dead</b> (never fired, not in the histogram). Median frequency of the live ones: "
            f"{fmt(float(np.median(freq[~dead])) if live.size else None)}.</p>{hist}")


def display_text(b):
    """bytes of a token run -> escaped HTML, newlines shown as a visible mark so each example stays one line"""
    s = b.decode("utf-8", errors="replace")
    s = html.escape(s).replace("\r", "").replace("\n", '<span class=nl>↵</span>').replace("\t", "→")
    return s


# ----------------------------------------------------------------------------
# one feature's items, shared by the report's cards and scripts/features.py's pages: each returns
# its HTML without a heading (the card and the page head and explain it their own way), or a note
# saying which tensors an older dump lacks

def missing_note(dump, section):
    names = dump.missing[section]
    return f"<p class=note>Not in this dump (it lacks {', '.join(names)}: a dump written before they existed).</p>"


def logit_tables(dump, d):
    """the tokens whose logits feature d's decoder direction raises most, and lowers most, side by side"""
    if dump.missing["logits"]:
        return missing_note(dump, "logits")
    t = dump.t

    def table(title, toks, vals):
        rows = "".join(f"<tr><td><code class=tokname title='token {int(k)}'>{dump.token(k)}</code></td><td class=num>{float(v):+.4g}</td></tr>"
                       for k, v in zip(toks, vals) if k >= 0)  # -1: a vocabulary smaller than the list
        return f"<table class=logits><tr><th>{title}</th><th>logit</th></tr>{rows}</table>"
    return ("<div class=cols>" + table("promoted", t["logit_top_tokens"][d], t["logit_top_values"][d])
            + table("suppressed", t["logit_bottom_tokens"][d], t["logit_bottom_values"][d]) + "</div>")


def hist_plot(dump, d, width=720, height=230):
    """feature d's histogram of nonzero activations"""
    if dump.missing["hist"]:
        return missing_note(dump, "hist")
    counts = [int(c) for c in dump.t["hist_counts"][d]]
    if not sum(counts):
        return "<p>No nonzero activation.</p>"
    return svg_log_histogram([float(e) for e in dump.t["hist_edges"]], counts, width, height)


def render_context(dump, d, p, value, acts, known, before=None):
    """the tokens around stream position p within its row, each shaded by the feature's activation
    on it (background alpha = activation / the feature's max), the activating token outlined.
    acts: the stored window (NaN outside the row), or None for a dump without it: then only the
    positions in known ({position: value}, the feature's examples) have a value. before: at most
    that many tokens before p (the report's --context), else the whole window"""
    T, fmax = dump.T, float(dump.max_act[d])
    first = int(dump.t["context_first"][0]) if acts is not None else OLD_FIRST
    W = len(acts) if acts is not None else OLD_WIDTH
    row_start = (p // T) * T
    lo, hi = max(p + first, row_start), min(p + first + W, row_start + T, dump.stream.total)
    if before is not None:
        lo = max(lo, p - before)
    toks = dump.stream.get(lo, hi)
    parts = ['<span class=edge title="row start">⟦</span>' if lo == row_start else '<span class=edge>…</span>']
    for q, tok in zip(range(lo, hi), toks):
        # as stored: F32 for the example's own value, F16 for the window
        a = np.float32(value) if q == p else (acts[q - p - first] if acts is not None else known.get(q))
        if a is not None and np.isnan(a):
            continue  # the dump says outside the row: trust it over T
        text = dump.token(tok)
        if a is None:
            parts.append(f'<span class=tok title="not stored">{text}</span>')
            continue
        alpha = min(max(float(a) / fmax, 0.0), 1.0) if fmax > 0 else 0.0
        cls = "tok act" if q == p else "tok"
        exact = np.format_float_positional(a, trim="-")  # the shortest decimal that reads back as the stored value
        parts.append(f'<span class="{cls}" style="background:rgba(255,140,0,{alpha:.3f})" title="{exact}">{text}</span>')
    parts.append('<span class=edge title="row end">⟧</span>' if hi == row_start + T else '<span class=edge>…</span>')
    return "".join(parts)


def examples_table(dump, d, values, positions, acts, known, before=None):
    rows = []
    # largest first (the band slots are stored in hash order), empty slots (-1) left out
    for j in sorted((j for j in range(len(positions)) if positions[j] >= 0), key=lambda j: (-values[j], positions[j])):
        v, p = values[j], positions[j]
        ctx = render_context(dump, d, int(p), float(v), acts[j] if acts is not None else None, known, before)
        rows.append(f"<tr class=ex><td class=num>{float(v):.4g}</td><td class=num>{int(p) // dump.T:,}:{int(p) % dump.T}</td>"
                    f"<td class=ctx>{ctx}</td></tr>")
    if not rows:
        return "<p class=note>No examples.</p>"
    return f"<table class=ctxs><tr><th>value</th><th>row:t</th><th>context</th></tr>{''.join(rows)}</table>"


def example_tables(dump, d, band_tag, before=None):
    """-> (feature d's top-K table, its band tables each under a band_tag heading), every context
    token shaded by the feature's activation"""
    t = dump.t
    acts = t["context_acts_top"][d] if not dump.missing["contexts"] else None
    note = "" if acts is not None else missing_note(dump, "contexts").replace("</p>", " Only the feature's stored examples are shaded.</p>")
    # without stored windows, the values a context can show are those of the feature's own examples
    known = {int(p): v for p, v in zip(dump.top_pos[d], dump.top_values[d]) if p >= 0}
    if not dump.missing["bands"]:
        known.update({int(p): v for p, v in zip(t["band_pos"][d].ravel(), t["band_values"][d].ravel()) if p >= 0})
    top = note + examples_table(dump, d, dump.top_values[d], dump.top_pos[d], acts, known, before)
    if dump.missing["bands"]:
        return top, missing_note(dump, "bands")
    bands = []
    bacts = t["context_acts_band"][d] if not dump.missing["band_contexts"] and acts is not None else None
    if bacts is None:
        bands.append(missing_note(dump, "band_contexts" if dump.missing["band_contexts"] else "contexts"))
    fracs, fmax = [float(f) for f in t["band_fracs"]], float(dump.max_act[d])
    for b in reversed(range(len(fracs) - 1)):  # highest first
        lo, hi = fracs[b], fracs[b + 1]
        bands.append(f"<{band_tag} class=band>({lo:g}, {hi:g}] of max: activations in ({lo * fmax:.4g}, {hi * fmax:.4g}]</{band_tag}>")
        bands.append(examples_table(dump, d, t["band_values"][d, b], t["band_pos"][d, b], bacts[b] if bacts is not None else None, known, before))
    return top, "".join(bands)


def ablation_table(dump, d):
    """the mean change in KL and CE with feature d alone zeroed, where ablation.safetensors covers it"""
    if not dump.ablation_n:
        return "<p class=note>Not computed (no ablation.safetensors in the dump).</p>"
    if d not in dump.ablation:
        return f"<p class=note>Not computed for this feature (ablation.safetensors covers {dump.ablation_n:,} features).</p>"
    dkl, dce = dump.ablation[d]
    return f"<table class=metrics><tr><th>ΔKL</th><th>ΔCE</th></tr><tr><td class=dkl>{fmt(dkl)}</td><td class=dce>{fmt(dce)}</td></tr></table>"


# ----------------------------------------------------------------------------
# the report's feature cards

def feature_card(dump, d, before):
    """feature d's items as its scripts/features.py page shows them, compact: a small histogram,
    contexts cut to `before` tokens before the activating one"""
    freq, fires = dump.freq[d], dump.fires
    count = f"{int(fires[d]):,} token{'s' if fires[d] != 1 else ''}, " if fires is not None else ""
    top, bands = example_tables(dump, d, "h5", before)
    return (f'<div class=feature id="f{d}"><h3>feature {d}</h3><p class=fmeta>fires on {count}{freq * 100:.3g}% '
            f"(log10 {math.log10(freq):.2f}); max {float(dump.max_act[d]):.4g}</p>"
            f"<div class=cols><div><h4>Logit effects</h4>{logit_tables(dump, d)}</div>"
            f"<div><h4>Activation histogram</h4>{hist_plot(dump, d, 360, 170)}</div>"
            f"<div><h4>Ablation</h4>{ablation_table(dump, d)}</div></div>"
            f"<h4>Top activations</h4>{top}<h4>Band examples</h4>{bands}</div>")


def section_features(dump, n_features, before):
    order = dump.orders[("freq", "desc")]  # most frequent first, ties by id so the page is the same on every run
    most = order[:n_features]
    rest = order[len(most):]
    least = rest[::-1][:n_features]  # rarest first, never repeating a feature shown above
    out = [f"<h2>Features</h2><p>Each card holds what the feature's page in scripts/features.py shows: the tokens whose logits "
           "its decoder direction raises and lowers most (<b>logit effects</b>); the <b>histogram</b> of its nonzero activations "
           "(log-spaced bins, the bars at the ends below and above them; hover a bar for its count); the mean change in KL and CE "
           "on the eval tokens with the feature alone zeroed (<b>ablation</b>, computed for the features that fire most on them); "
           f"its top-{dump.K} activations, and <b>band examples</b> from ranges of fractions of its max, highest first. Each example "
           f"shows up to {before} tokens before the activating one and those after it that the dump stores, within its row of "
           f"{dump.T} (⟦ ⟧ mark the row's ends, ↵ a newline): every token shaded by the feature's activation on it relative to its "
           "max, the activating token outlined; hover a token for its activation.</p>",
           f"<h2>The {len(most)} most frequent live features</h2>"]
    out += [feature_card(dump, int(d), before) for d in most]
    out.append(f"<h2>The {len(least)} least frequent live features</h2>")
    out += [feature_card(dump, int(d), before) for d in least]
    if not len(order):
        out.append("<p>No live features.</p>")
    return "".join(out)


CSS = """
body { font: 14px/1.45 -apple-system, 'Segoe UI', Helvetica, Arial, sans-serif; max-width: 1180px; margin: 24px auto; padding: 0 16px; color: #222; }
h1 { font-size: 22px; margin-bottom: 4px; } h2 { font-size: 18px; margin-top: 32px; border-bottom: 1px solid #ddd; }
h3 { font-size: 15px; margin: 18px 0 2px; } .fmeta { margin: 0 0 4px; color: #555; }
table { border-collapse: collapse; } td, th { padding: 2px 8px; border-bottom: 1px solid #eee; text-align: left; }
table.metrics td { text-align: right; font-variant-numeric: tabular-nums; } table.meta td:first-child { color: #555; }
td.num { text-align: right; white-space: nowrap; font-variant-numeric: tabular-nums; color: #444; }
td.ctx { font-family: Menlo, Consolas, 'DejaVu Sans Mono', monospace; font-size: 13px; white-space: pre-wrap; }
.tok { border-radius: 2px; } .tok.act { outline: 2px solid #c60; } .nl { color: #999; } .edge { color: #aaa; }
code.tokname { white-space: pre; background: #f2f2f2; border-radius: 2px; padding: 0 3px; font-size: 13px; }
.cols { display: flex; flex-wrap: wrap; gap: 40px; } .note { color: #777; } .flow { fill: #9a9a9a; }
.feature { margin-top: 28px; } .feature h4 { font-size: 13px; margin: 10px 0 2px; } h5.band { font-size: 12px; font-weight: normal; margin: 6px 0 2px; }
.plots { display: flex; flex-wrap: wrap; gap: 8px; } svg.plot { background: #fff; }
.ptitle { font-size: 12px; font-weight: 600; fill: #333; } .tick { font-size: 10px; fill: #555; }
.frame { fill: none; stroke: #bbb; } .grid { stroke: #eee; } .axis { stroke: #999; } .bar { fill: #4a78b5; }
"""


def main():
    ap = ArgParser(description="HTML report of an SAE run: training curves, eval, feature frequencies, feature cards")
    ap.add_argument("--log", required=True, help="the run's log.jsonl")
    ap.add_argument("--features", required=True, help="the --dump-features folder (features.safetensors, features.json)")
    ap.add_argument("--tokenizer", required=True, help="folder with GPT-2's encoder.json (or the file)")
    ap.add_argument("--out", help="HTML file to write [FEATURES/report.html]")
    ap.add_argument("--n-features", type=int, default=20, help="features shown in each of the two lists [20]")
    ap.add_argument("--context", type=int, default=12, help="tokens of context before the activating token, of the 19 the dump stores [12]")
    args = ap.parse_args()
    if args.n_features < 0:
        die(f"--n-features must be >= 0, got {args.n_features}")
    if args.context < 0:
        die(f"--context must be >= 0, got {args.context}")

    train, evals = read_log(args.log)
    dump = Dump(args.features, args.tokenizer)
    meta, n_tokens = dump.meta, dump.meta.get("n_tokens")

    title = "SAE report"
    if "layer" in meta or "mode" in meta:
        title += f": {meta.get('mode', '?')} SAE at blocks.{meta.get('layer', '?')}.hook_resid_pre, d_sae {dump.D:,}"
    info_keys = [("model", "model"), ("mode", "mode"), ("layer", "layer"), ("d_sae", "d_sae"), ("val", "--val"),
                 ("n_tokens", "tokens dumped"), ("seq_len", "seq_len"), ("topk", "top-K kept")]
    info = "".join(f"<tr><td>{html.escape(label)}</td><td>{html.escape(str(meta[k]))}</td></tr>" for k, label in info_keys if k in meta)
    info += f"<tr><td>log</td><td>{html.escape(args.log)}</td></tr><tr><td>features</td><td>{html.escape(args.features)}</td></tr>"
    page = ["<!DOCTYPE html><html lang=en><head><meta charset=utf-8>",
            f"<title>{html.escape(title)}</title><style>{CSS}</style></head><body>",
            f"<h1>{html.escape(title)}</h1><table class=meta>{info}</table>",
            section_training(train), section_eval(evals),
            section_frequency(meta, dump.freq, dump.fires, n_tokens if n_tokens is not None else "?"),
            section_features(dump, args.n_features, args.context),
            "</body></html>\n"]
    out = args.out or os.path.join(dump.folder, "report.html")
    tmp = out + ".tmp"
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write("".join(page))
        os.replace(tmp, out)
    except OSError as e:
        die(f"could not write '{out}': {e.strerror}")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
