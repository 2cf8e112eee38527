#!/usr/bin/env python3
"""
Any feature of a --dump-features folder on demand: a small local web server with an index of
the features and one page per feature, or that page alone as a file.

    scripts/features.py serve RUN [--port 8000] [--host 127.0.0.1] [--tokenizer data/gpt2]
    scripts/features.py page RUN ID --out FILE [--tokenizer data/gpt2]

RUN is the folder --dump-features wrote (features.safetensors, features.json; llmc/feature_dump.h)
or a run folder holding one at RUN/features. The contexts are decoded from the val shards that
features.json names, with report.py's readers.

  /                 the index: a feature id search, the live features sorted by firing frequency or
                    max activation (?sort=freq|max&order=desc|asc&page=K, 100 a page) and the dead
                    features' ids (&dead_page=K, 500 a page)
  /feature/ID       frequency, max activation, logit effects (top and bottom 10 tokens), the
                    histogram of nonzero activations, the top-K and band examples with every
                    context token shaded by the feature's activation (as SAE-Vis does), and the
                    ablation effect (ablation.safetensors), each section saying so when the dump
                    lacks its tensors (dumps written before they existed)

Pages are plain HTML with report.py's CSS and inline SVG: no scripts, nothing fetched. `page`
writes the same feature page with no links to the server, to share or test. Needs Python 3 and
numpy, as report.py does (Debian's /usr/bin/python3 has both). A bad RUN ends with one line
"error: ..." and exit code 1; once serving, a bad URL gets a 400 or 404 page, never a crash. Left
out: anything that needs the model (the dump holds every number shown), and authentication: it
binds to 127.0.0.1 unless --host says otherwise.
"""
import argparse
import html
import http.server
import math
import os
import re
import sys
import urllib.parse

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from report import CSS, TokenStream, die, display_text, fmt, nice_ticks, read_features, read_safetensors, read_tokenizer  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PAGE_SIZE, DEAD_PAGE_SIZE = 100, 500
OLD_FIRST, OLD_WIDTH = -19, 24  # the context window newer dumps store, shown for older ones too

# the tensors each section needs beyond the core ones report.py reads; a dump without them is older
SECTIONS = {
    "logits": ["logit_top_tokens", "logit_top_values", "logit_bottom_tokens", "logit_bottom_values"],
    "hist": ["hist_edges", "hist_counts"],
    "bands": ["band_fracs", "band_pos", "band_values"],
    "contexts": ["context_acts_top", "context_first"],
    "band_contexts": ["context_acts_band"],
}


# ----------------------------------------------------------------------------
# the dump, read once at start: every request only indexes these arrays

class Dump:
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

        # the index's orders: live features only, ties broken by id so every run lists the same
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
# page pieces

EXTRA_CSS = """
.tok { border-radius: 2px; } .tok.act { outline: 2px solid #c60; }
code.tokname { white-space: pre; background: #f2f2f2; border-radius: 2px; padding: 0 3px; font-size: 13px; }
.cols { display: flex; flex-wrap: wrap; gap: 40px; } .note { color: #777; } .flow { fill: #9a9a9a; }
nav { margin: 6px 0 12px; } nav a, .pager a { margin-right: 10px; } .cur { font-weight: 600; margin-right: 10px; }
.deadids a { display: inline-block; min-width: 3.5em; font-variant-numeric: tabular-nums; }
"""


def page(title, body):
    return (f"<!DOCTYPE html><html lang=en><head><meta charset=utf-8><title>{html.escape(title)}</title>"
            f"<style>{CSS}{EXTRA_CSS}</style></head><body>{body}</body></html>\n")


def missing_note(dump, section):
    names = dump.missing[section]
    return f"<p class=note>Not in this dump (it lacks {', '.join(names)}: a dump written before they existed).</p>"


def section_logits(dump, d):
    if dump.missing["logits"]:
        return "<h2>Logit effects</h2>" + missing_note(dump, "logits")
    t = dump.t

    def table(title, toks, vals):
        rows = "".join(f"<tr><td><code class=tokname title='token {int(k)}'>{dump.token(k)}</code></td><td class=num>{float(v):+.4g}</td></tr>"
                       for k, v in zip(toks, vals) if k >= 0)  # -1: a vocabulary smaller than the list
        return f"<table class=logits><tr><th>{title}</th><th>logit</th></tr>{rows}</table>"
    return ("<h2>Logit effects</h2><p>The feature's decoder direction read by the unembedding: the tokens whose logits it raises "
            "most and lowers most.</p><div class=cols>"
            + table("promoted", t["logit_top_tokens"][d], t["logit_top_values"][d])
            + table("suppressed", t["logit_bottom_tokens"][d], t["logit_bottom_values"][d]) + "</div>")


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


def section_hist(dump, d):
    if dump.missing["hist"]:
        return "<h2>Activation histogram</h2>" + missing_note(dump, "hist")
    edges = [float(e) for e in dump.t["hist_edges"]]
    counts = [int(c) for c in dump.t["hist_counts"][d]]
    if not sum(counts):
        return "<h2>Activation histogram</h2><p>No nonzero activation.</p>"
    return (f"<h2>Activation histogram</h2><p>Bars at the ends: below {edges[0]:.3g} and from {edges[-1]:.3g} up. "
            f"Hover a bar for its bin and count.</p>{svg_log_histogram(edges, counts)}")


def render_context(dump, d, p, value, acts, known):
    """the tokens around stream position p within its row, each shaded by the feature's activation
    on it (background alpha = activation / the feature's max), the activating token outlined.
    acts: the stored window (NaN outside the row), or None for a dump without it: then only the
    positions in known ({position: value}, the feature's examples) have a value"""
    T, fmax = dump.T, float(dump.max_act[d])
    first = int(dump.t["context_first"][0]) if acts is not None else OLD_FIRST
    W = len(acts) if acts is not None else OLD_WIDTH
    row_start = (p // T) * T
    lo, hi = max(p + first, row_start), min(p + first + W, row_start + T, dump.stream.total)
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


def examples_table(dump, d, values, positions, acts, known):
    rows = []
    # largest first (the band slots are stored in hash order), empty slots (-1) left out
    for j in sorted((j for j in range(len(positions)) if positions[j] >= 0), key=lambda j: (-values[j], positions[j])):
        v, p = values[j], positions[j]
        ctx = render_context(dump, d, int(p), float(v), acts[j] if acts is not None else None, known)
        rows.append(f"<tr class=ex><td class=num>{float(v):.4g}</td><td class=num>{int(p) // dump.T:,}:{int(p) % dump.T}</td>"
                    f"<td class=ctx>{ctx}</td></tr>")
    if not rows:
        return "<p class=note>No examples.</p>"
    return f"<table class=ctxs><tr><th>value</th><th>row:t</th><th>context</th></tr>{''.join(rows)}</table>"


def section_examples(dump, d):
    t = dump.t
    acts = t["context_acts_top"][d] if not dump.missing["contexts"] else None
    note = "" if acts is not None else missing_note(dump, "contexts").replace("</p>", " Only the feature's stored examples are shaded.</p>")
    # without stored windows, the values a context can show are those of the feature's own examples
    known = {int(p): v for p, v in zip(dump.top_pos[d], dump.top_values[d]) if p >= 0}
    if not dump.missing["bands"]:
        known.update({int(p): v for p, v in zip(t["band_pos"][d].ravel(), t["band_values"][d].ravel()) if p >= 0})
    out = [f"<h2>Top activations</h2><p>The {dump.K} largest activations of the dump, each in its row of {dump.T} tokens "
           "(⟦ ⟧ mark the row's ends, ↵ a newline): every token shaded by the feature's activation on it relative to its max, "
           f"the activating token outlined; hover a token for its activation.</p>{note}",
           examples_table(dump, d, dump.top_values[d], dump.top_pos[d], acts, known)]
    out.append("<h2>Band examples</h2>")
    if dump.missing["bands"]:
        out.append(missing_note(dump, "bands"))
        return "".join(out)
    fracs = [float(f) for f in t["band_fracs"]]
    bacts = t["context_acts_band"][d] if not dump.missing["band_contexts"] and acts is not None else None
    if bacts is None:
        out.append(missing_note(dump, "band_contexts" if dump.missing["band_contexts"] else "contexts"))
    out.append("<p>Examples from lower activations: each band is a range of fractions of the feature's max, highest first.</p>")
    fmax = float(dump.max_act[d])
    for b in reversed(range(len(fracs) - 1)):
        lo, hi = fracs[b], fracs[b + 1]
        out.append(f"<h3 class=band>({lo:g}, {hi:g}] of max: activations in ({lo * fmax:.4g}, {hi * fmax:.4g}]</h3>")
        out.append(examples_table(dump, d, t["band_values"][d, b], t["band_pos"][d, b], bacts[b] if bacts is not None else None, known))
    return "".join(out)


def section_ablation(dump, d):
    if not dump.ablation_n:
        return "<h2>Ablation</h2><p class=note>Not computed (no ablation.safetensors in the dump).</p>"
    if d not in dump.ablation:
        return f"<h2>Ablation</h2><p class=note>Not computed for this feature (ablation.safetensors covers {dump.ablation_n:,} features).</p>"
    dkl, dce = dump.ablation[d]
    return ("<h2>Ablation</h2><p>With this feature alone zeroed in the spliced model, the mean change over the ablation's tokens:</p>"
            f"<table class=metrics><tr><th>ΔKL</th><th>ΔCE</th></tr><tr><td class=dkl>{fmt(dkl)}</td><td class=dce>{fmt(dce)}</td></tr></table>")


def render_feature(dump, d, nav=True):
    """the page of feature d (0 <= d < D); nav adds links to the server's index and neighbours"""
    title = f"feature {d}"
    head = [f"<h1>{title}</h1>"]
    if nav:
        links = ['<a href="/">index</a>']
        if d > 0:
            links.append(f'<a href="/feature/{d - 1}">← {d - 1}</a>')
        if d + 1 < dump.D:
            links.append(f'<a href="/feature/{d + 1}">{d + 1} →</a>')
        head.append(f"<nav>{''.join(links)}</nav>")
    n_tokens = dump.meta.get("n_tokens")
    rows = []
    if dump.fires is not None:
        rows.append(("fires on", f"{fmt(int(dump.fires[d]))} of {fmt(n_tokens)} tokens"))
    rows.append(("frequency", f"{fmt(float(dump.freq[d]))} (log10 {math.log10(dump.freq[d]):.3f})" if dump.freq[d] > 0 else "0"))
    rows.append(("max activation", fmt(float(dump.max_act[d])) if dump.live[d] else "–"))
    src = f"{dump.meta.get('mode', '?')} SAE at {dump.meta.get('hook_name', '?')}, d_sae {dump.D:,}: {dump.folder}"
    head.append("<table class=meta>" + "".join(f"<tr><td>{k}</td><td class=stat>{v}</td></tr>" for k, v in rows)
                + f"<tr><td>dump</td><td>{html.escape(src)}</td></tr></table>")
    if not dump.live[d]:
        head.append(f"<p><b>Dead</b>: never fired on the {fmt(n_tokens)} dumped tokens, so it has no examples.</p>")
    body = "".join(head) + section_logits(dump, d) + section_hist(dump, d) + section_examples(dump, d) + section_ablation(dump, d)
    return page(f"{title} · SAE features", body)


def render_index(dump, sort="freq", order="desc", page_no=1, dead_page=1):
    """the index; page_no and dead_page are 1-based and must exist (parse_index checks)"""
    D, n_live = dump.D, len(dump.orders[("freq", "desc")])
    title = f"{dump.meta.get('mode', '?')} SAE at {dump.meta.get('hook_name', '?')}: {D:,} features"
    out = [f"<h1>{html.escape(title)}</h1>",
           f"<p>{html.escape(dump.folder)}: {fmt(dump.meta.get('n_tokens'))} val tokens dumped; {n_live:,} features fired, "
           f"<b>{len(dump.dead):,} dead</b>.</p>",
           f'<form action="/feature" method="get">feature id <input name=id type=number min=0 max={D - 1} required autofocus> '
           '<button type=submit>show</button></form>']

    def link(s, o, p, dp, text):
        q = urllib.parse.urlencode({"sort": s, "order": o, "page": p, "dead_page": dp})
        return f'<a href="/?{q}">{text}</a>'
    names = {"freq": "firing frequency", "max": "max activation"}
    sorts = []
    for s in ("freq", "max"):
        for o in ("desc", "asc"):
            text = f"{names[s]} {'↓' if o == 'desc' else '↑'}"
            sorts.append(f"<span class=cur>{text}</span>" if (s, o) == (sort, order) else link(s, o, 1, dead_page, text))
    out.append(f"<h2>Live features</h2><p class=pager>sort by: {''.join(sorts)}</p>")
    ids = dump.orders[(sort, order)]
    pages = max(1, math.ceil(len(ids) / PAGE_SIZE))
    first = (page_no - 1) * PAGE_SIZE
    rows = []
    for r, f in enumerate(ids[first:first + PAGE_SIZE], first + 1):
        fires = fmt(int(dump.fires[f])) if dump.fires is not None else "–"
        rows.append(f'<tr><td class=num>{r:,}</td><td class=num><a href="/feature/{f}">{f}</a></td><td class=num>{fires}</td>'
                    f"<td class=num>{fmt(float(dump.freq[f]))}</td><td class=num>{fmt(float(dump.max_act[f]))}</td></tr>")
    pager = []
    if page_no > 1:
        pager.append(link(sort, order, page_no - 1, dead_page, "← previous"))
    pager.append(f"<span class=cur>page {page_no} of {pages}</span>")
    if page_no < pages:
        pager.append(link(sort, order, page_no + 1, dead_page, "next →"))
    out.append(f"<p class=pager>{''.join(pager)}</p>")
    out.append("<table class=index><tr><th>rank</th><th>feature</th><th>fires</th><th>frequency</th><th>max activation</th></tr>"
               + "".join(rows) + "</table>" if rows else "<p>No feature fired.</p>")

    out.append(f"<h2>Dead features ({len(dump.dead):,})</h2>")
    dpages = max(1, math.ceil(len(dump.dead) / DEAD_PAGE_SIZE))
    dfirst = (dead_page - 1) * DEAD_PAGE_SIZE
    dead = dump.dead[dfirst:dfirst + DEAD_PAGE_SIZE]
    if len(dead):
        out.append("<p class=deadids>" + " ".join(f'<a href="/feature/{f}">{f}</a>' for f in dead) + "</p>")
        if dpages > 1:
            dpager = [link(sort, order, page_no, dead_page - 1, "← previous")] if dead_page > 1 else []
            dpager.append(f"<span class=cur>dead page {dead_page} of {dpages}</span>")
            if dead_page < dpages:
                dpager.append(link(sort, order, page_no, dead_page + 1, "next →"))
            out.append(f"<p class=pager>{''.join(dpager)}</p>")
    else:
        out.append("<p>None.</p>")
    return page("SAE features", "".join(out))


def error_page(code, message):
    reason = {400: "bad request", 404: "not found", 500: "server error"}[code]
    return page(f"{code} {reason}", f'<h1>{code}: {reason}</h1><p class=error>{html.escape(message)}</p><p><a href="/">index</a></p>')


# ----------------------------------------------------------------------------
# the server: every URL maps to (status, html) by route(), which never raises for any input

ID_RE = re.compile(r"[0-9]{1,15}")  # ASCII digits only: int() would also take "٣" or " 3"


def parse_id(dump, text):
    """-> (feature id, None) or (None, a 404 page)"""
    if not ID_RE.fullmatch(text):
        return None, error_page(404, f"No feature '{text}': ids are integers from 0 to {dump.D - 1}.")
    d = int(text)
    if d >= dump.D:
        return None, error_page(404, f"No feature {d}: this SAE has {dump.D:,} features, ids 0 to {dump.D - 1}.")
    return d, None


def route(dump, url):
    """-> (status, headers dict, body)"""
    parts = urllib.parse.urlsplit(url)
    path = urllib.parse.unquote(parts.path)
    query = urllib.parse.parse_qs(parts.query, keep_blank_values=True)
    if path == "/":
        def arg(name, default, allowed=None):
            v = query.get(name, [default])[-1]
            if allowed is None:
                if not ID_RE.fullmatch(v) or int(v) < 1:
                    return None, f"{name} must be a page number from 1, got '{v}'"
                return int(v), None
            return (v, None) if v in allowed else (None, f"{name} must be one of {', '.join(allowed)}, got '{v}'")
        args = [arg("sort", "freq", ("freq", "max")), arg("order", "desc", ("desc", "asc")), arg("page", "1"), arg("dead_page", "1")]
        bad = [e for _, e in args if e]
        if bad:
            return 400, {}, error_page(400, "; ".join(bad) + ".")
        sort, order, page_no, dead_page = (v for v, _ in args)
        pages = max(1, math.ceil(len(dump.orders[(sort, order)]) / PAGE_SIZE))
        dpages = max(1, math.ceil(len(dump.dead) / DEAD_PAGE_SIZE))
        if page_no > pages:
            return 404, {}, error_page(404, f"No page {page_no}: the live features fill {pages} page{'s' if pages > 1 else ''}.")
        if dead_page > dpages:
            return 404, {}, error_page(404, f"No dead page {dead_page}: the dead features fill {dpages} page{'s' if dpages > 1 else ''}.")
        return 200, {}, render_index(dump, sort, order, page_no, dead_page)
    if path == "/feature":  # the index's search form
        text = query.get("id", [""])[-1].strip()
        d, err = parse_id(dump, text)
        return (404, {}, err) if err else (302, {"Location": f"/feature/{d}"}, "")
    if path.startswith("/feature/"):
        d, err = parse_id(dump, path[len("/feature/"):])
        return (404, {}, err) if err else (200, {}, render_feature(dump, d))
    return 404, {}, error_page(404, f"No page at '{path}': the index is at /, a feature at /feature/ID.")


def make_handler(dump):
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            try:
                status, headers, body = route(dump, self.path)
            except Exception as e:  # a bug, not an input: say so on the page and keep serving
                status, headers, body = 500, {}, error_page(500, f"{type(e).__name__}: {e}")
            data = body.encode("utf-8")
            self.send_response(status)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(data)))
            for k, v in headers.items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(data)
    return Handler


# ----------------------------------------------------------------------------

def main():
    ap = argparse.ArgumentParser(description="Any SAE feature of a --dump-features folder on demand: a local server, or one page as a file")
    sub = ap.add_subparsers(dest="cmd", required=True)
    tok_help = "folder with GPT-2's encoder.json (or the file) [this repo's data/gpt2]"
    s = sub.add_parser("serve", help="serve the index and a page per feature")
    s.add_argument("run", help="the --dump-features folder, or a run folder with it at RUN/features")
    s.add_argument("--port", type=int, default=8000, help="port; 0 picks a free one [8000]")
    s.add_argument("--host", default="127.0.0.1", help="address to bind [127.0.0.1: this machine only]")
    s.add_argument("--tokenizer", default=os.path.join(ROOT, "data", "gpt2"), help=tok_help)
    p = sub.add_parser("page", help="write one feature's page as a self-contained HTML file")
    p.add_argument("run", help="the --dump-features folder, or a run folder with it at RUN/features")
    p.add_argument("id", help="feature id")
    p.add_argument("--out", required=True, help="HTML file to write")
    p.add_argument("--tokenizer", default=os.path.join(ROOT, "data", "gpt2"), help=tok_help)
    args = ap.parse_args()
    if not os.path.isdir(args.run):
        die(f"RUN '{args.run}' is not a folder (the --dump-features DIR of a run, or the run folder holding it at features/)")
    dump = Dump(args.run, args.tokenizer)

    if args.cmd == "page":
        if not ID_RE.fullmatch(args.id) or int(args.id) >= dump.D:
            die(f"no feature '{args.id}': ids are integers from 0 to {dump.D - 1}")
        out, tmp = args.out, args.out + ".tmp"
        try:
            with open(tmp, "w", encoding="utf-8") as f:
                f.write(render_feature(dump, int(args.id), nav=False))
            os.replace(tmp, out)
        except OSError as e:
            die(f"could not write '{out}': {e.strerror}")
        print(f"wrote {out}")
        return

    if not 0 <= args.port <= 65535:
        die(f"--port must be in 0..65535, got {args.port}")
    try:
        server = http.server.ThreadingHTTPServer((args.host, args.port), make_handler(dump))
    except OSError as e:
        die(f"could not listen on {args.host}:{args.port}: {e.strerror}")
    server.daemon_threads = True
    host, port = server.server_address[:2]
    print(f"serving {dump.D:,} features of {dump.folder} at http://{host}:{port}/ (Ctrl-C stops)", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    server.server_close()


if __name__ == "__main__":
    main()
