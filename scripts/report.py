#!/usr/bin/env python3
"""
One self-contained HTML page about a trained SAE: its training curves, its eval metrics, how
often its features fire, and the text that makes its most and least frequent live features
fire hardest.

    scripts/report.py --log RUN/log.jsonl --features DUMPDIR --tokenizer data/gpt2 \
        [--out DUMPDIR/report.html] [--n-features 20] [--context 12]

Reads
  --log        the trainer's JSON-lines log (SPEC §8): training lines and "eval": true lines
  --features   the folder --dump-features wrote (llmc/feature_dump.h): features.safetensors
               (frequency, top_values, top_pos, ...) and features.json (the val shards the
               positions index into, seq_len, and what was run)
  --tokenizer  a folder holding GPT-2's encoder.json (or the file itself), to decode tokens
Writes one HTML file with inline SVG and CSS: no scripts, nothing fetched when it is viewed.

Needs only Python 3 and numpy (Debian's /usr/bin/python3 has both). Every bad input ends with
one line "error: ..." and exit code 1. Left out: per-token activations beyond the stored
top-K (the dump keeps only those), and anything interactive.
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


# ----------------------------------------------------------------------------
# inputs

def read_log(path):
    """-> (training lines, eval lines), each a list of dicts sorted by step; when a step
    appears twice (a resumed run re-logs from its checkpoint) the later line wins."""
    if not os.path.isfile(path):
        die(f"--log '{path}' not found")
    train, evals = {}, {}
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            line = line.strip()
            if not line:
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                die(f"--log '{path}' line {lineno} is not JSON: {e.msg}")
            if not isinstance(obj, dict) or not isinstance(obj.get("step"), (int, float)):
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
    except json.JSONDecodeError as e:
        die(f"'{jpath}' is not JSON: {e.msg}")
    for key in ("val_shards", "seq_len"):
        if key not in meta:
            die(f"'{jpath}' lacks '{key}'")
    if not isinstance(meta["val_shards"], list) or not meta["val_shards"]:
        die(f"'{jpath}': 'val_shards' must be a non-empty list of paths")
    spath = os.path.join(folder, "features.safetensors")
    t, _ = read_safetensors(spath)
    for key in ("frequency", "top_values", "top_pos"):
        if key not in t:
            die(f"'{spath}' lacks tensor '{key}'")
    freq, vals, pos = t["frequency"].astype(np.float64), t["top_values"], t["top_pos"].astype(np.int64)
    if freq.ndim != 1 or vals.ndim != 2 or vals.shape != pos.shape or vals.shape[0] != freq.shape[0]:
        die(f"'{spath}': expected frequency (D), top_values (D,K), top_pos (D,K); got {freq.shape}, {vals.shape}, {pos.shape}")
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
    except json.JSONDecodeError as e:
        die(f"--tokenizer: '{epath}' is not JSON: {e.msg}")
    if not isinstance(encoder, dict) or not encoder:
        die(f"--tokenizer: '{epath}' is not a GPT-2 encoder.json (a map from token to id)")
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


def render_context(stream, table, pos, T, context, feature_hits, vmax):
    """the tokens around pos within its row (the SAE saw nothing before the row's start), the
    activating token highlighted with its value; other top-K hits of the feature in the window
    are shaded by their value"""
    row_start = (pos // T) * T
    lo, hi = max(row_start, pos - context), min(row_start + T, pos + 1 + max(2, context // 2), stream.total)
    toks = stream.get(lo, hi)

    def tok_bytes(t):
        return table[t] if 0 <= t < len(table) and table[t] is not None else f"<unk {t}>".encode()

    parts = ['<span class=edge title="row start">⟦</span>' if lo == row_start else '<span class=edge>…</span>']
    run = b""
    for p, t in zip(range(lo, hi), toks):
        v = feature_hits.get(p)
        if v is None:
            run += tok_bytes(int(t))
            continue
        parts.append(display_text(run))
        run = b""
        alpha = 0.25 + 0.75 * (v / vmax if vmax > 0 else 1.0)
        text = display_text(tok_bytes(int(t))) or "&nbsp;"
        if p == pos:
            parts.append(f'<mark style="background:rgba(255,140,0,{alpha:.2f})" title="token {int(t)} at position {p}: {v:.4g}">'
                         f'{text}</mark><span class=val>{v:.3g}</span>')
        else:
            parts.append(f'<span class=hit style="background:rgba(255,140,0,{alpha * 0.5:.2f})" title="also in the top-K: {v:.4g}">{text}</span>')
    parts.append(display_text(run))
    parts.append('<span class=edge title="row end">⟧</span>' if hi == row_start + T else '<span class=edge>…</span>')
    return "".join(parts)


def feature_card(d, freq, fires, vals, pos, stream, table, T, context):
    hits = {int(p): float(v) for v, p in zip(vals[d], pos[d]) if p >= 0}
    vmax = float(vals[d].max()) if len(vals[d]) else 0.0
    rows = []
    for v, p in zip(vals[d], pos[d]):
        if p < 0:
            continue
        ctx = render_context(stream, table, int(p), T, context, hits, vmax)
        rows.append(f"<tr><td class=num>{float(v):.4g}</td><td class=num>{int(p) // T:,}:{int(p) % T}</td><td class=ctx>{ctx}</td></tr>")
    count = f"{int(fires[d]):,} token{'s' if fires[d] != 1 else ''}, " if fires is not None else ""
    return (f'<div class=feature id="f{d}"><h3>feature {d}</h3><p class=fmeta>fires on {count}{freq[d] * 100:.3g}% '
            f"(log10 {math.log10(freq[d]):.2f}); max {vmax:.4g}</p>"
            f"<table class=ctxs><tr><th>value</th><th>row:t</th><th>context</th></tr>{''.join(rows)}</table></div>")


def section_features(meta, freq, fires, vals, pos, stream, table, n_features, context):
    T = int(meta["seq_len"])
    live = np.nonzero(fires > 0 if fires is not None else freq > 0)[0]
    # most frequent first; ties by feature id so the page is the same on every run
    order = live[np.lexsort((live, -freq[live]))]
    most = order[:n_features]
    rest = order[len(most):]
    least = rest[::-1][:n_features]  # rarest first, never repeating a feature shown above
    out = [f"<h2>Top activations</h2><p>Each row: the value, the row and offset in the val stream, and up to {context} tokens "
           f"before the activating token (highlighted, value beside it) and a few after, within its row of {T} "
           f"(⟦ ⟧ mark the row's ends; ↵ is a newline). Other top-{vals.shape[1]} hits of the same feature in the window are shaded.</p>",
           f"<h2>The {len(most)} most frequent live features</h2>"]
    out += [feature_card(int(d), freq, fires, vals, pos, stream, table, T, context) for d in most]
    out.append(f"<h2>The {len(least)} least frequent live features</h2>")
    out += [feature_card(int(d), freq, fires, vals, pos, stream, table, T, context) for d in least]
    if not len(live):
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
mark { color: #000; border-radius: 2px; padding: 0 1px; outline: 1px solid #c60; }
.hit { border-radius: 2px; } .val { font-size: 10px; color: #a40; vertical-align: super; margin: 0 3px 0 1px; }
.nl { color: #999; } .edge { color: #aaa; }
.plots { display: flex; flex-wrap: wrap; gap: 8px; } svg.plot { background: #fff; }
.ptitle { font-size: 12px; font-weight: 600; fill: #333; } .tick { font-size: 10px; fill: #555; }
.frame { fill: none; stroke: #bbb; } .grid { stroke: #eee; } .axis { stroke: #999; } .bar { fill: #4a78b5; }
"""


def main():
    ap = argparse.ArgumentParser(description="HTML report of an SAE run: training curves, eval, feature frequencies, top activations")
    ap.add_argument("--log", required=True, help="the run's log.jsonl")
    ap.add_argument("--features", required=True, help="the --dump-features folder (features.safetensors, features.json)")
    ap.add_argument("--tokenizer", required=True, help="folder with GPT-2's encoder.json (or the file)")
    ap.add_argument("--out", help="HTML file to write [FEATURES/report.html]")
    ap.add_argument("--n-features", type=int, default=20, help="features shown in each of the two lists [20]")
    ap.add_argument("--context", type=int, default=12, help="tokens of context before the activating token [12]")
    args = ap.parse_args()
    if args.n_features < 0:
        die(f"--n-features must be >= 0, got {args.n_features}")
    if args.context < 0:
        die(f"--context must be >= 0, got {args.context}")

    train, evals = read_log(args.log)
    meta, freq, vals, pos, fires = read_features(args.features)
    table = read_tokenizer(args.tokenizer)
    stream = TokenStream(meta["val_shards"], meta.get("cwd"), args.features)
    T = meta["seq_len"]
    if not isinstance(T, int) or T <= 0:
        die(f"features.json: seq_len must be a positive integer, got {T!r}")
    if pos.size and pos.max() >= stream.total:
        die(f"top_pos holds position {int(pos.max())} but the val shards hold {stream.total} tokens: "
            f"features.json does not match features.safetensors")
    n_tokens = meta.get("n_tokens")

    title = "SAE report"
    if "layer" in meta or "mode" in meta:
        title += f": {meta.get('mode', '?')} SAE at blocks.{meta.get('layer', '?')}.hook_resid_pre, d_sae {len(freq):,}"
    info_keys = [("model", "model"), ("mode", "mode"), ("layer", "layer"), ("d_sae", "d_sae"), ("val", "--val"),
                 ("n_tokens", "tokens dumped"), ("seq_len", "seq_len"), ("topk", "top-K kept")]
    info = "".join(f"<tr><td>{html.escape(label)}</td><td>{html.escape(str(meta[k]))}</td></tr>" for k, label in info_keys if k in meta)
    info += f"<tr><td>log</td><td>{html.escape(args.log)}</td></tr><tr><td>features</td><td>{html.escape(args.features)}</td></tr>"
    page = ["<!DOCTYPE html><html lang=en><head><meta charset=utf-8>",
            f"<title>{html.escape(title)}</title><style>{CSS}</style></head><body>",
            f"<h1>{html.escape(title)}</h1><table class=meta>{info}</table>",
            section_training(train), section_eval(evals),
            section_frequency(meta, freq, fires, n_tokens if n_tokens is not None else "?"),
            section_features(meta, freq, fires, vals, pos, stream, table, args.n_features, args.context),
            "</body></html>\n"]
    out = args.out or os.path.join(args.features, "report.html")
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
