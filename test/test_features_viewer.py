"""
Tests for scripts/features.py (the feature viewer: a local server, or one feature page as a file).

Run from the repo root with Debian's python (numpy):
    /usr/bin/python3 test/test_features_viewer.py -v

A synthetic dump is written here with known contents, in the format llmc/feature_dump.h writes:
a 15-token encoder.json, one val shard of 4 rows of T = 16 tokens, and an activation matrix
ACTS (64 tokens, 5 features) from which every tensor is derived the way the dump defines it
(top-K by value then position, bands of the max, the log-spaced histogram with under/overflow,
24-token context windows with NaN outside the row), plus hand-written logit effects and an
ablation.safetensors. A second folder holds only the tensors of older dumps.

The renderer is checked on its HTML text (no browser needed); the server over HTTP for its
status codes on good and bad URLs; and, when Debian's chromium is installed, the pages as
chromium renders them (--dump-dom): the logit tokens, the histogram's bars, the example
contexts, a context token's colour, the 404 page. Without chromium those tests skip.

RealDumpTest does the same on a real dump (issue 15's "done when"): when ./train_gpt2_sae_cpu is
built, it trains an SAE for a few steps on the bundled demo model with --dump-features, then
checks in chromium that the viewer's pages of features across the range, and report.py's
cards, show every item the dump holds for them. It skips without the trainer or chromium.
"""
import html
import importlib.util
import json
import os
import random
import re
import shutil
import struct
import subprocess
import sys
import tempfile
import time
import unittest
import urllib.error
import urllib.request

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "scripts", "features.py")

spec = importlib.util.spec_from_file_location("features", SCRIPT)
features = importlib.util.module_from_spec(spec)
spec.loader.exec_module(features)

# token id -> its spelling in encoder.json (Ġ is a space, Ċ a newline, "Ã©" the two bytes of é)
VOCAB = ["Hello", "Ġworld", "Ċ", "<", "script", ">", "Ġ&", "Ã©", "Ġthe", "Ġcat", "Ġsat", "<|endoftext|>", "Ġon", "Ġmat", "."]
T = 16
ROWS = [
    [0, 1, 8, 9, 10, 12, 8, 13, 14, 2, 0, 1, 8, 9, 10, 14],     # Hello world the cat sat on the mat.\n Hello world the cat sat.
    [3, 4, 5, 6, 7, 8, 9, 10, 12, 8, 13, 14, 8, 9, 10, 14],     # <script> &é the cat sat on the mat. the cat sat.
    [8, 9, 10, 12, 8, 13, 14, 2, 8, 9, 10, 12, 8, 13, 14, 11],  # ... <|endoftext|>
    [0] * 16,
]
N, D, K, E, W, FIRST = 64, 5, 3, 5, 24, -19
FRACS = [0.0, 0.25, 0.5, 0.75]
# feature 0 dead; 1 on " cat" and around it (max 4 at position 13), values in many histogram bins,
# one under 1e-4; 2 fires once (0.875, its max: in no band); 3 on "." and " mat"; 4 once, at 2000
# (the histogram's overflow). Frequencies tie (1 with 3, 2 with 4): ties list by id.
HITS = {
    1: {3: 2.0, 12: 1.0, 13: 4.0, 14: 0.7, 22: 1.5, 29: 3.0, 33: 0.5, 41: 0.25, 47: 5e-4, 50: 5e-5},
    2: {40: 0.875},
    3: {8: 0.5, 15: 0.625, 27: 0.75, 31: 0.8125, 38: 0.9375, 46: 1.0, 7: 0.125, 26: 0.125, 37: 0.125, 45: 0.125},
    4: {48: 2000.0},
}
ACTS = np.zeros((N, D), dtype=np.float32)
for d, hits in HITS.items():
    for p, v in hits.items():
        ACTS[p, d] = v
# feature 1's logit effects, by hand; the other features' follow a pattern
LOGIT_TOP_1 = ([9, 10, 13, 8, 12, 0, 1, 2, 3, 4], [2.5, 2.0, 1.5, 1.25, 1.0, 0.75, 0.5, 0.25, 0.125, 0.0625])
LOGIT_BOTTOM_1 = ([3, 5, 7, 11, 14, 6, 4, 2, 1, 0], [-3.0, -2.5, -2.0, -1.5, -1.0, -0.75, -0.5, -0.25, -0.125, -0.0625])
ABLATION = {1: (0.125, 0.25), 3: (0.0625, -0.03125)}


def write_safetensors(path, tensors, metadata=None):
    """the layout llmc/safetensors.h writes: u64 header length, JSON header padded to 8, data"""
    names = {np.dtype(np.float32): "F32", np.dtype(np.int64): "I64", np.dtype(np.float16): "F16"}
    header, blobs, off = {"__metadata__": metadata or {}}, [], 0
    for name, arr in tensors.items():
        b = arr.tobytes()
        header[name] = {"dtype": names[arr.dtype], "shape": list(arr.shape), "data_offsets": [off, off + len(b)]}
        blobs.append(b)
        off += len(b)
    h = json.dumps(header).encode()
    h += b" " * (-len(h) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h + b"".join(blobs))


def write_shard(path, tokens):
    header = np.zeros(256, dtype="<i4")  # llmc/dataloader.h: magic, version, token count, then uint16 tokens
    header[:3] = [20240520, 1, len(tokens)]
    with open(path, "wb") as f:
        f.write(header.tobytes() + np.asarray(tokens, dtype="<u2").tobytes())


def window(p, d):
    """feature d's activations on tokens p+FIRST .. p+FIRST+W-1, NaN outside p's row"""
    out = np.full(W, np.nan, dtype=np.float16)
    for i in range(W):
        q = p + FIRST + i
        if q // T == p // T and 0 <= q < N:
            out[i] = ACTS[q, d]
    return out


def dump_tensors():
    """every tensor of a new-format features.safetensors, from ACTS"""
    fires = (ACTS > 0).sum(0).astype(np.int64)
    top_values, top_pos = np.zeros((D, K), np.float32), np.full((D, K), -1, np.int64)
    band_values, band_pos = np.zeros((D, 3, E), np.float32), np.full((D, 3, E), -1, np.int64)
    edges = (10.0 ** (np.arange(57) / 8 - 4)).astype(np.float32)
    hist = np.zeros((D, 58), np.int64)
    ctx_top = np.full((D, K, W), np.nan, np.float16)
    ctx_band = np.full((D, 3, E, W), np.nan, np.float16)
    for d in range(D):
        col = ACTS[:, d]
        fired = [p for p in range(N) if col[p] > 0]
        for k, p in enumerate(sorted(fired, key=lambda p: (-col[p], p))[:K]):
            top_values[d, k], top_pos[d, k], ctx_top[d, k] = col[p], p, window(p, d)
        vmax = col.max()
        for b in range(3):  # band b: (FRACS[b], FRACS[b+1]] of the max, the first E in stream order, stored
            # reversed (the dump stores them in hash order: the page sorts them by value)
            members = [p for p in fired if FRACS[b] * vmax < col[p] <= FRACS[b + 1] * vmax][:E][::-1]
            for j, p in enumerate(members):
                band_values[d, b, j], band_pos[d, b, j], ctx_band[d, b, j] = col[p], p, window(p, d)
        for p in fired:  # [underflow, 56 bins, overflow]
            hist[d, 0 if col[p] < edges[0] else 57 if col[p] >= edges[-1] else np.searchsorted(edges, col[p], "right")] += 1
    top_tok, top_val = np.zeros((D, 10), np.int64), np.zeros((D, 10), np.float32)
    bot_tok, bot_val = np.zeros((D, 10), np.int64), np.zeros((D, 10), np.float32)
    for d in range(D):
        top_tok[d], top_val[d] = [(d + i) % len(VOCAB) for i in range(10)], [1.0 - 0.0625 * i for i in range(10)]
        bot_tok[d], bot_val[d] = [(d + 5 + i) % len(VOCAB) for i in range(10)], [-1.0 + 0.0625 * i for i in range(10)]
    bot_tok[2, 9], bot_val[2, 9] = -1, np.nan  # a vocabulary smaller than 10 leaves -1, NaN
    top_tok[1], top_val[1] = LOGIT_TOP_1
    bot_tok[1], bot_val[1] = LOGIT_BOTTOM_1
    freq = (fires / N).astype(np.float32)
    return {"frequency": freq, "log10_frequency": np.log10(freq.astype(np.float64) + 1e-10).astype(np.float32),
            "top_values": top_values, "top_pos": top_pos, "fire_count": fires,
            "logit_top_tokens": top_tok, "logit_top_values": top_val, "logit_bottom_tokens": bot_tok, "logit_bottom_values": bot_val,
            "hist_edges": edges, "hist_counts": hist,
            "band_fracs": np.array(FRACS, np.float32), "band_pos": band_pos, "band_values": band_values,
            "context_acts_top": ctx_top, "context_acts_band": ctx_band, "context_first": np.array([FIRST], np.int64)}


OLD_TENSORS = ["frequency", "log10_frequency", "top_values", "top_pos", "fire_count"]


def write_dump(folder, shard, old=False, ablation=True):
    os.makedirs(folder, exist_ok=True)
    t = dump_tensors()
    if old:
        t = {k: t[k] for k in OLD_TENSORS}
    write_safetensors(os.path.join(folder, "features.safetensors"), t, {"tokens": str(N), "d_sae": str(D), "topk": str(K)})
    with open(os.path.join(folder, "features.json"), "w") as f:
        json.dump({"val": shard, "cwd": ROOT, "val_shards": [shard], "seq_len": T, "n_tokens": N, "d_sae": D, "topk": K,
                   "layer": 2, "hook_name": "blocks.2.hook_resid_pre", "model": "tiny/model.safetensors", "mode": "e2e"}, f)
    if ablation:
        ids = sorted(ABLATION)
        write_safetensors(os.path.join(folder, "ablation.safetensors"),
                          {"features": np.array(ids, np.int64), "d_kl": np.array([ABLATION[i][0] for i in ids], np.float32),
                           "d_ce": np.array([ABLATION[i][1] for i in ids], np.float32)})


class Fixture:
    """the temp folder: tokenizer, shard, a new dump inside a run folder (RUN/features), an old dump"""
    tmp = None

    @classmethod
    def build(cls):
        if cls.tmp:
            return
        cls.tmp = tempfile.mkdtemp(prefix="test_features_viewer_")
        cls.tok = os.path.join(cls.tmp, "tok")
        os.makedirs(cls.tok)
        with open(os.path.join(cls.tok, "encoder.json"), "w", encoding="utf-8") as f:
            json.dump({t: i for i, t in enumerate(VOCAB)}, f, ensure_ascii=False)
        cls.shard = os.path.join(cls.tmp, "val_000.bin")
        write_shard(cls.shard, [t for r in ROWS for t in r])
        cls.run = os.path.join(cls.tmp, "run")
        write_dump(os.path.join(cls.run, "features"), cls.shard)
        cls.old = os.path.join(cls.tmp, "old")
        write_dump(cls.old, cls.shard, old=True, ablation=False)


def section(html_text, title):
    """the HTML from <h2>title</h2> to the next <h2>"""
    start = html_text.index(f"<h2>{title}</h2>")
    end = html_text.find("<h2>", start + 1)
    return html_text[start:end if end >= 0 else len(html_text)]


class RendererTest(unittest.TestCase):
    """the page renderer called directly, its HTML read as text"""

    @classmethod
    def setUpClass(cls):
        Fixture.build()
        cls.dump = features.Dump(Fixture.run, Fixture.tok)
        cls.f1 = features.render_feature(cls.dump, 1, nav=False)

    def test_run_folder_resolves_to_its_features(self):
        self.assertEqual(self.dump.folder, os.path.join(Fixture.run, "features"))
        self.assertEqual((self.dump.D, self.dump.K, self.dump.T), (D, K, T))

    def test_stats(self):
        self.assertIn("<td class=stat>10 of 64 tokens</td>", self.f1)
        self.assertIn("<td class=stat>0.1562 (log10 -0.806)</td>", self.f1)  # 10/64
        self.assertIn("<tr><td>max activation</td><td class=stat>4</td></tr>", self.f1)

    def test_logit_effects(self):
        s = section(self.f1, "Logit effects")
        promoted, suppressed = s.split("<table class=logits>")[1:]
        names = lambda part: re.findall(r"<code class=tokname title='token (\d+)'>(.*?)</code></td><td class=num>([^<]*)<", part)
        self.assertEqual(names(promoted)[:3], [("9", " cat", "+2.5"), ("10", " sat", "+2"), ("13", " mat", "+1.5")])
        self.assertEqual(len(names(promoted)), 10)
        # most negative first; "<" and the two-byte é come out escaped and decoded
        self.assertEqual(names(suppressed)[:3], [("3", "&lt;", "-3"), ("5", "&gt;", "-2.5"), ("7", "é", "-2")])
        self.assertEqual(names(suppressed)[-1], ("0", "Hello", "-0.0625"))
        f2 = section(features.render_feature(self.dump, 2), "Logit effects")
        self.assertEqual(f2.count("<code class=tokname"), 19)  # the -1 entry left out

    def test_histogram(self):
        s = section(self.f1, "Activation histogram")
        # feature 1's 10 values fall in 9 distinct bins and the underflow (5e-5 < 1e-4)
        self.assertEqual(len(re.findall(r'class="bar(?: flow)?"', s)), 10)
        self.assertEqual(s.count('class="bar flow"'), 1)
        self.assertIn("<title>&lt; 0.0001: 1</title>", s)
        self.assertIn("<title>[1, 1.33): 1</title>", s)  # 1.0 sits on an edge: the bin it opens
        self.assertIn("nonzero activations (10)", s)
        # decade labels 1e-4 .. 1e3
        self.assertEqual(re.findall(r">1e(-?\d)</text>", s), ["-4", "-3", "-2", "-1", "0", "1", "2", "3"])
        # feature 4's 2000 is the overflow bar
        f4 = section(features.render_feature(self.dump, 4), "Activation histogram")
        self.assertIn('class="bar flow"><title>≥ 1e+03: 1</title>', f4)

    def test_top_examples(self):
        s = section(self.f1, "Top activations")
        self.assertEqual(s.count("<tr class=ex>"), 3)
        rows = re.findall(r"<tr class=ex><td class=num>([^<]*)</td><td class=num>([^<]*)</td>", s)
        self.assertEqual(rows, [("4", "0:13"), ("3", "1:13"), ("2", "0:3")])
        first = s[s.index("<tr class=ex>"):s.index("</tr>", s.index("<tr class=ex>"))]
        # the window t -6..17 covers all of row 0 (16 tokens), so both row ends are marked
        self.assertEqual(first.count('<span class="tok'), 16)
        self.assertIn('<span class=edge title="row start">⟦</span>', first)
        self.assertIn('<span class=edge title="row end">⟧</span>', first)
        # every token shaded by activation / max 4: " the" at t 12 (1.0) at 0.25, the outlined " cat" at 1,
        # " sat" at t 14 (0.7) at 0.175, " cat" at t 3 (2.0) at 0.5, a token that did not fire at 0
        self.assertIn('<span class="tok" style="background:rgba(255,140,0,0.250)" title="1"> the</span>'
                      '<span class="tok act" style="background:rgba(255,140,0,1.000)" title="4"> cat</span>'
                      '<span class="tok" style="background:rgba(255,140,0,0.175)" title="0.7"> sat</span>', first)
        self.assertIn('<span class="tok" style="background:rgba(255,140,0,0.500)" title="2"> cat</span>', first)
        self.assertIn('<span class="tok" style="background:rgba(255,140,0,0.000)" title="0">Hello</span>', first)

    def test_window_cut_by_the_stored_nan(self):
        # example 2 (t 3): the window reaches t 7 only (p + 4), so the context ends with "…", not the row end
        s = section(self.f1, "Top activations")
        third = s.split("<tr class=ex>")[3]
        self.assertEqual(third.count('<span class="tok'), 8)  # t 0..7
        self.assertTrue(third.split("</td>")[2].endswith("<span class=edge>…</span>"))

    def test_band_examples(self):
        s = section(self.f1, "Band examples")
        bands = re.findall(r"<h3 class=band>(.*?)</h3>", s)
        self.assertEqual(bands, ["(0.5, 0.75] of max: activations in (2, 3]", "(0.25, 0.5] of max: activations in (1, 2]",
                                 "(0, 0.25] of max: activations in (0, 1]"])
        per_band = [re.findall(r"<tr class=ex><td class=num>([^<]*)</td>", part) for part in s.split("<h3 class=band>")[1:]]
        # largest first within a band; E = 5, so the lowest band leaves out 5e-5
        self.assertEqual(per_band, [["3"], ["2", "1.5"], ["1", "0.7", "0.5", "0.25", "0.0005"]])
        self.assertIn('<span class="tok act" style="background:rgba(255,140,0,0.375)" title="1.5"> cat</span>', s)
        # feature 2's only firing is its max, in no band
        f2 = section(features.render_feature(self.dump, 2), "Band examples")
        self.assertEqual(f2.count("No examples."), 3)

    def test_ablation(self):
        s = section(self.f1, "Ablation")
        self.assertIn("<td class=dkl>0.125</td><td class=dce>0.25</td>", s)
        f3 = section(features.render_feature(self.dump, 3), "Ablation")
        self.assertIn("<td class=dkl>0.0625</td><td class=dce>-0.0312</td>", f3)
        f2 = section(features.render_feature(self.dump, 2), "Ablation")
        self.assertIn("Not computed for this feature (ablation.safetensors covers 2 features).", f2)

    def test_dead_feature(self):
        f0 = features.render_feature(self.dump, 0)
        self.assertIn("<b>Dead</b>: never fired on the 64 dumped tokens", f0)
        self.assertEqual(f0.count("<tr class=ex>"), 0)
        self.assertIn("No nonzero activation.", f0)
        self.assertIn("<table class=logits>", f0)  # its decoder direction still has logit effects

    def test_self_contained_file_page(self):
        for bad in ("http://", "https://", "<script", "<link", "src=", 'href="/'):
            self.assertNotIn(bad, self.f1)
        served = features.render_feature(self.dump, 1, nav=True)
        self.assertIn('<a href="/">index</a><a href="/feature/0">← 0</a><a href="/feature/2">2 →</a>', served)

    def test_old_dump(self):
        old = features.Dump(Fixture.old, Fixture.tok)
        f1 = features.render_feature(old, 1)
        for sec, names in (("Logit effects", "logit_top_tokens"), ("Activation histogram", "hist_edges, hist_counts"),
                           ("Band examples", "band_fracs, band_pos, band_values")):
            self.assertIn(f"Not in this dump (it lacks {names}", section(f1, sec))
        top = section(f1, "Top activations")
        self.assertIn("it lacks context_acts_top, context_first", top)
        self.assertEqual(top.count("<tr class=ex>"), 3)
        # without stored windows: the feature's other top-K hit in the window (" cat" at t 3) is shaded, the rest not stored
        first = top.split("<tr class=ex>")[1]
        self.assertIn('<span class="tok act" style="background:rgba(255,140,0,1.000)" title="4"> cat</span>', first)
        self.assertIn('<span class="tok" style="background:rgba(255,140,0,0.500)" title="2"> cat</span>', first)
        self.assertIn('<span class=tok title="not stored"> the</span>', first)
        self.assertIn("Not computed (no ablation.safetensors in the dump).", section(f1, "Ablation"))

    def test_index_orders_and_dead(self):
        def ids(h):
            return [int(x) for x in re.findall(r'<td class=num><a href="/feature/(\d+)">', h)]
        self.assertEqual(ids(features.render_index(self.dump)), [1, 3, 2, 4])  # frequency, ties by id
        self.assertEqual(ids(features.render_index(self.dump, "freq", "asc")), [2, 4, 1, 3])
        self.assertEqual(ids(features.render_index(self.dump, "max")), [4, 1, 3, 2])
        self.assertEqual(ids(features.render_index(self.dump, "max", "asc")), [2, 3, 1, 4])
        h = features.render_index(self.dump)
        self.assertIn('<p class=deadids><a href="/feature/0">0</a></p>', h)
        self.assertIn("<h2>Dead features (1)</h2>", h)
        self.assertIn('<form action="/feature" method="get">', h)

    def test_index_paging(self):
        size = features.PAGE_SIZE
        features.PAGE_SIZE = 3
        try:
            status, _, p2 = features.route(self.dump, "/?sort=freq&page=2")
            self.assertEqual(status, 200)
            self.assertIn('<td class=num>4</td><td class=num><a href="/feature/4">4</a>', p2)  # rank 4 on page 2
            self.assertIn("page 2 of 2", p2)
            self.assertEqual(features.route(self.dump, "/?page=3")[0], 404)
        finally:
            features.PAGE_SIZE = size

    def test_routes(self):
        cases = {"/": 200, "/feature/1": 200, "/feature/0004": 200, "/feature/5": 404, "/feature/-1": 404, "/feature/abc": 404,
                 "/feature/1.0": 404, "/feature/%D9%A3": 404, "/feature/": 404, "/feature/1/x": 404, "/nope": 404,
                 "/?page=0": 400, "/?page=x": 400, "/?sort=id": 400, "/?order=up": 400, "/?page=2": 404, "/?dead_page=2": 404,
                 "/feature?id=3": 302, "/feature?id=+3+": 302, "/feature?id=77": 404, "/feature?id=": 404,
                 "/feature/99999999999999999999999": 404, "/%00": 404, "/feature/%3Cscript%3E": 404}
        for url, want in cases.items():
            status, headers, body = features.route(self.dump, url)
            self.assertEqual(status, want, url)
            self.assertNotIn("<script", body, url)
        self.assertEqual(features.route(self.dump, "/feature?id=3")[1], {"Location": "/feature/3"})
        self.assertIn("No feature 5: this SAE has 5 features, ids 0 to 4.", features.route(self.dump, "/feature/5")[2])
        self.assertIn("No feature &#x27;abc&#x27;", features.route(self.dump, "/feature/abc")[2])


class CliTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        Fixture.build()

    def run_script(self, *args):
        return subprocess.run([sys.executable, SCRIPT, *args], capture_output=True, text=True, timeout=120)

    def test_page_command(self):
        out = os.path.join(Fixture.tmp, "feature1.html")
        r = self.run_script("page", Fixture.run, "1", "--out", out, "--tokenizer", Fixture.tok)
        self.assertEqual(r.returncode, 0, r.stderr)
        with open(out, encoding="utf-8") as f:
            text = f.read()
        self.assertEqual(text, features.render_feature(features.Dump(Fixture.run, Fixture.tok), 1, nav=False))

    def test_errors(self):
        out = os.path.join(Fixture.tmp, "bad.html")
        for args, fragment in ((("page", Fixture.run, "5"), "no feature '5': ids are integers from 0 to 4"),
                               (("page", Fixture.run, "x"), "no feature 'x'"),
                               (("page", os.path.join(Fixture.tmp, "nope"), "1"), "is not a folder"),
                               (("page", Fixture.tok, "1"), "features.json' not found")):
            r = self.run_script(*args, "--out", out, "--tokenizer", Fixture.tok)
            self.assertEqual(r.returncode, 1, r.stderr)
            lines = r.stderr.strip().splitlines()
            self.assertEqual(len(lines), 1, r.stderr)
            self.assertTrue(lines[0].startswith("error: ") and fragment in lines[0], lines[0])
        self.assertFalse(os.path.exists(out))
        # a new tensor with the wrong shape is refused at start
        bad = os.path.join(Fixture.tmp, "bad_shape")
        write_dump(bad, Fixture.shard)
        t = dump_tensors()
        t["hist_counts"] = t["hist_counts"][:, :10].copy()
        write_safetensors(os.path.join(bad, "features.safetensors"), t)
        r = self.run_script("page", bad, "1", "--out", out, "--tokenizer", Fixture.tok)
        self.assertEqual(r.returncode, 1)
        self.assertIn("tensor 'hist_counts' has shape [5, 10], expected [5, 58]", r.stderr)

    def expect_error(self, args, fragment):
        r = self.run_script(*args)
        self.assertEqual(r.returncode, 1, r.stdout + r.stderr)
        lines = r.stderr.strip().splitlines()
        self.assertEqual(len(lines), 1, r.stderr)
        self.assertTrue(lines[0].startswith("error: ") and fragment in lines[0], lines[0])

    def test_wrong_files(self):
        # features.json or the tokenizer replaced by a binary file, a model's config.json as the tokenizer
        out = os.path.join(Fixture.tmp, "wrong.html")
        binary = os.path.join(Fixture.tmp, "model.safetensors")
        with open(binary, "wb") as f:
            f.write(struct.pack("<Q", 200) + b'{"wte": {"dtype": "F32"}}' + bytes(range(128, 256)))
        config = os.path.join(Fixture.tmp, "config.json")
        with open(config, "w") as f:
            json.dump({"n_layer": 4, "n_head": 4, "model_type": "gpt2"}, f)
        self.expect_error(("page", Fixture.run, "1", "--out", out, "--tokenizer", binary), f"--tokenizer: '{binary}' is not JSON")
        self.expect_error(("page", Fixture.run, "1", "--out", out, "--tokenizer", config),
                          f"--tokenizer: '{config}' is not a GPT-2 encoder.json")
        d = os.path.join(Fixture.tmp, "binary_json")
        write_dump(d, Fixture.shard)
        shutil.copy(binary, os.path.join(d, "features.json"))
        self.expect_error(("page", d, "1", "--out", out, "--tokenizer", Fixture.tok), f"'{d}/features.json' is not JSON")
        self.assertFalse(os.path.exists(out))

    def test_bad_arguments(self):
        # argparse's errors too are one line and exit 1; --help still prints the usage and exits 0
        out = os.path.join(Fixture.tmp, "args.html")
        self.expect_error((), "features.py: the following arguments are required: cmd")
        self.expect_error(("frob",), "features.py: argument cmd: invalid choice: 'frob'")
        self.expect_error(("page", Fixture.run, "1"), "features.py page: the following arguments are required: --out")
        self.expect_error(("serve", Fixture.run, "--port", "x"), "features.py serve: argument --port: invalid int value: 'x'")
        self.expect_error(("page", Fixture.run, "1", "--out", out, "--bogus"), "features.py: unrecognized arguments: --bogus")
        self.assertFalse(os.path.exists(out))
        for args in (("--help",), ("page", "--help")):
            r = self.run_script(*args)
            self.assertEqual(r.returncode, 0, r.stderr)
            self.assertIn("usage: features.py", r.stdout)


def serve(run, *args):
    """features.py serve RUN on a free port (--port 0: it prints the URL it took) -> (process, url)"""
    proc = subprocess.Popen([sys.executable, SCRIPT, "serve", run, "--port", "0", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    line = proc.stdout.readline()
    m = re.search(r"at (http://127\.0\.0\.1:\d+/)", line)
    if not m:
        proc.kill()
        raise AssertionError(f"the server printed no URL: {line!r}")
    return proc, m.group(1)


def chromium_dom(url):
    """the page as headless chromium rendered it (its DOM: attributes quoted, entities as it writes them)"""
    r = subprocess.run(["chromium", "--headless", "--disable-gpu", "--no-sandbox", "--dump-dom", url],
                       capture_output=True, text=True, timeout=120)
    if "</html>" not in r.stdout:
        raise AssertionError(f"chromium rendered no page for {url}: {r.stderr[-2000:]}")
    return r.stdout


class ServerTest(unittest.TestCase):
    """the server in a subprocess on a free port"""

    @classmethod
    def setUpClass(cls):
        Fixture.build()
        cls.proc, cls.url = serve(Fixture.run, "--tokenizer", Fixture.tok)

    @classmethod
    def tearDownClass(cls):
        cls.proc.terminate()
        cls.proc.wait(timeout=10)

    def get(self, path):
        try:
            with urllib.request.urlopen(self.url + path.lstrip("/"), timeout=30) as r:
                return r.status, r.read().decode("utf-8")
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode("utf-8")

    def test_http(self):
        self.assertEqual(self.get("/")[0], 200)
        status, body = self.get("/feature?id=1")  # the search form: redirected to the page
        self.assertEqual(status, 200)
        self.assertIn("<h1>feature 1</h1>", body)
        for path in ("/feature/5", "/feature/abc", "/feature/%FF", "/x/../../etc/passwd", "/?page=99", "/" + "9" * 5000):
            status, _ = self.get(path)
            self.assertIn(status, (400, 404, 414), path)
        self.assertEqual(self.get("/feature/2")[0], 200)  # still serving
        self.assertIsNone(self.proc.poll())

    @unittest.skipUnless(shutil.which("chromium"), "chromium not installed (apt-get install chromium): no rendered-page check")
    def test_rendered_pages(self):
        def dom(path):
            return chromium_dom(self.url + path.lstrip("/"))

        index = dom("/?sort=max")
        self.assertEqual(re.findall(r'<td class="num"><a href="/feature/(\d+)">', index), ["4", "1", "3", "2"])
        page = dom("/feature/1")
        # chromium's DOM: attributes quoted, the style as written
        self.assertEqual(re.findall(r"<code class=\"tokname\" title=\"token \d+\">(.*?)</code>", page)[:3], [" cat", " sat", " mat"])
        self.assertIn("&lt;</code></td><td class=\"num\">-3</td>", page)
        self.assertEqual(len(re.findall(r'<rect [^>]*class="bar(?: flow)?"', page)), 10)
        self.assertEqual(page.count('<tr class="ex">'), 3 + 8)  # top-K, then 1 + 2 + 5 band examples
        self.assertIn('<span class="tok" style="background:rgba(255,140,0,0.250)" title="1"> the</span>'
                      '<span class="tok act" style="background:rgba(255,140,0,1.000)" title="4"> cat</span>', page)
        self.assertIn('<td class="dkl">0.125</td>', page)
        missing = dom("/feature/7")
        self.assertIn("<h1>404: not found</h1>", missing)
        self.assertIn("No feature 7: this SAE has 5 features, ids 0 to 4.", missing)

    @unittest.skipUnless(shutil.which("chromium"), "chromium not installed (apt-get install chromium): no screenshot check")
    def test_screenshot(self):
        png = os.path.join(ROOT, "build", "test_out", "features_test.png")
        os.makedirs(os.path.dirname(png), exist_ok=True)
        if os.path.exists(png):
            os.remove(png)
        subprocess.run(["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--window-size=1200,1800",
                        f"--screenshot={png}", self.url + "feature/1"], capture_output=True, timeout=120)
        self.assertTrue(os.path.isfile(png), "chromium wrote no screenshot")
        with open(png, "rb") as f:
            head = f.read(24)
        self.assertEqual(head[:8], b"\x89PNG\r\n\x1a\n")
        self.assertEqual(struct.unpack(">II", head[16:24]), (1200, 1800))
        self.assertGreater(os.path.getsize(png), 20000)  # a blank page compresses to a few KB


# ----------------------------------------------------------------------------
# issue 15's "done when", on a real dump: an SAE trained briefly on the bundled demo model

TRAINER = os.path.join(ROOT, "train_gpt2_sae_cpu")
DEMO = "models/tinyshakespeare-gpt2-4L128"
ENCODER = os.path.join(ROOT, "data", "gpt2", "encoder.json")


def read_safetensors(path):
    """this test's own reader (the oracle should not be the code it checks): {name: array}"""
    with open(path, "rb") as f:
        raw = f.read()
    n = struct.unpack("<Q", raw[:8])[0]
    header = json.loads(raw[8:8 + n])
    header.pop("__metadata__", None)
    dtypes = {"F32": np.float32, "F16": np.float16, "I64": np.int64}
    return {name: np.frombuffer(raw[8 + n + e["data_offsets"][0]:8 + n + e["data_offsets"][1]], dtypes[e["dtype"]]).reshape(e["shape"])
            for name, e in header.items()}


def gpt2_token_bytes():
    """token id -> its bytes, from encoder.json with GPT-2's byte-to-unicode map undone"""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs, n = bs[:], 0
    for b in range(256):  # the other bytes map to 256, 257, ... in order
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    unicode_to_byte = {chr(c): b for b, c in zip(bs, cs)}
    with open(ENCODER, encoding="utf-8") as f:
        encoder = json.load(f)
    return {i: bytes(unicode_to_byte[ch] for ch in tok) if all(ch in unicode_to_byte for ch in tok) else tok.encode()
            for tok, i in encoder.items()}


def shown(b):
    """a token's bytes as the page shows them, in DOM text: ↵ for a newline, → for a tab, a no-break space if empty"""
    return b.decode("utf-8", errors="replace").replace("\r", "").replace("\t", "→") or "\xa0"


def dom_text(fragment):
    """the text a DOM fragment shows, the newline mark read back as a newline"""
    return html.unescape(re.sub(r"<[^>]+>", "", fragment.replace('<span class="nl">↵</span>', "\n")))


def close(text, want):
    """a number as the page prints it ("+0.4301", "0.0034", "-1.25e-05") is the stored one rounded at its last digit"""
    text = text.replace(",", "")
    mantissa, _, exponent = text.partition("e")
    last_digit = 10.0 ** (int(exponent or 0) - len(mantissa.partition(".")[2]))
    return abs(float(text) - float(want)) <= 0.5 * last_digit * (1 + 1e-9)


LOGIT_ROW = re.compile(r'<code class="tokname" title="token (\d+)">(.*?)</code></td><td class="num">([^<]*)</td>')
BAR = re.compile(r'<rect [^>]*class="bar(?: flow)?"><title>([^<]*): ([\d,]+)</title></rect>')
# a context token: its class, background alpha, activation on hover, and text (the newline mark the only markup inside)
TOK = re.compile(r'<span class="(tok(?: act)?)" style="background:rgba\(255,140,0,([0-9.]+)\)" title="([^"]*)">'
                 r'((?:<span class="nl">↵</span>|[^<])*)</span>')
EX_ROW = re.compile(r'<tr class="ex"><td class="num">([^<]*)</td><td class="num">([^<]*)</td><td class="ctx">(.*?)</td></tr>')


@unittest.skipUnless(os.access(TRAINER, os.X_OK), "./train_gpt2_sae_cpu is not built (make train_gpt2_sae_cpu): no real-dump test")
@unittest.skipUnless(shutil.which("chromium"), "chromium not installed (apt-get install chromium): no real-dump test")
class RealDumpTest(unittest.TestCase):
    """Trains an SAE for a few steps on the bundled demo model with --dump-features (about 30 s on 2
    cores: the steps, 8192 dumped tokens, the ablation over 4 eval rows), serves the run with
    features.py and renders the index and feature pages in headless chromium: a frequent, a rare, a
    random, the last and (if any) a dead feature, and one each that ablation.safetensors covers and
    does not. Each live page must show the 10 promoted and 10 suppressed logit tokens of the dump
    (decoded here from encoder.json), one histogram bar per nonzero bin with its count, as many
    top-K and band examples as top_pos and band_pos hold, each context token coloured with its
    stored activation, and the ablation effect where covered. report.py's cards on the same run are
    checked for the same items. The demo presets are spelled out as flags: without --model, a clone
    holding GPT-2 small (the starter pack, the trainer's default --model) would train that instead."""

    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.mkdtemp(prefix="test_features_real_")
        cls.run_dir = os.path.join(cls.tmp, "run")
        feats = os.path.join(cls.run_dir, "features")
        t0 = time.time()
        r = subprocess.run([TRAINER, "--model", f"{DEMO}/model.safetensors", "--train", f"{DEMO}/tinyshakespeare_train.bin",
                            "--val", f"{DEMO}/tinyshakespeare_val.bin", "--layer", "2", "--dict-size", "1024", "--batch", "4",
                            "--seq-len", "64", "--grad-accum", "2", "--samples", "2400", "--warmup-samples", "80",
                            "--max-steps", "20", "--eval-every", "0", "--eval-samples", "4", "--out", cls.run_dir,
                            "--dump-features", feats, "--dump-tokens", "8192"],
                           cwd=ROOT, capture_output=True, text=True, timeout=600)
        if r.returncode != 0:
            shutil.rmtree(cls.tmp, ignore_errors=True)
            raise AssertionError(f"the trainer failed: {r.stdout[-2000:]}{r.stderr[-2000:]}")
        cls.train_s = time.time() - t0
        cls.t = read_safetensors(os.path.join(feats, "features.safetensors"))
        ab = read_safetensors(os.path.join(feats, "ablation.safetensors"))
        cls.ablation = {int(f): (k, c) for f, k, c in zip(ab["features"], ab["d_kl"], ab["d_ce"])}
        cls.tokens = gpt2_token_bytes()
        with open(os.path.join(feats, "features.json")) as f:
            meta = json.load(f)
        cls.T = meta["seq_len"]
        cls.stream = np.concatenate([np.fromfile(os.path.join(ROOT, p), dtype="<u2", offset=1024) for p in meta["val_shards"]])
        cls.proc, cls.url = serve(cls.run_dir)
        sys.stderr.write(f"\n  real dump: trained and dumped in {cls.train_s:.1f} s; "
                         f"{int((cls.t['fire_count'] > 0).sum())} of {len(cls.t['fire_count'])} features fired ... ")

    @classmethod
    def tearDownClass(cls):
        cls.proc.terminate()
        cls.proc.wait(timeout=10)
        shutil.rmtree(cls.tmp, ignore_errors=True)

    def chosen(self):
        """{feature id: why}: across the range, and both sides of the ablation"""
        fires = self.t["fire_count"]
        D = len(fires)
        live = np.nonzero(fires > 0)[0]
        by_freq = live[np.lexsort((live, -fires[live]))]
        ids = {int(by_freq[0]): "most frequent", int(by_freq[-1]): "rarest", random.randrange(D): "random", D - 1: "last"}
        dead = np.nonzero(fires == 0)[0]
        if len(dead):
            ids[int(dead[0])] = "dead"
        if not any(d in self.ablation for d in ids):
            ids[min(self.ablation)] = "ablated"
        if all(d in self.ablation or fires[d] == 0 for d in ids):
            ids[int(next(d for d in live if d not in self.ablation))] = "not ablated"
        return ids

    def check_logits(self, part, d):
        """the 10 promoted then the 10 suppressed tokens of the dump, decoded, with their values"""
        rows = LOGIT_ROW.findall(part)
        self.assertEqual(len(rows), 20)
        for side, got in (("top", rows[:10]), ("bottom", rows[10:])):
            toks, vals = self.t[f"logit_{side}_tokens"][d], self.t[f"logit_{side}_values"][d]
            self.assertEqual([int(i) for i, _, _ in got], [int(k) for k in toks])
            self.assertEqual([html.unescape(text.replace('<span class="nl">↵</span>', "\n")) for _, text, _ in got],
                             [shown(self.tokens[int(k)]) for k in toks])
            for (_, _, v), want in zip(got, vals):
                self.assertTrue(close(v, want), f"logit {v} != {want}")

    def check_hist(self, part, d):
        """a bar per nonzero bin, in bin order, with the bin's count"""
        counts, edges = self.t["hist_counts"][d], self.t["hist_edges"]
        labels = [f"< {edges[0]:.3g}"] + [f"[{lo:.3g}, {hi:.3g})" for lo, hi in zip(edges[:-1], edges[1:])] + [f"≥ {edges[-1]:.3g}"]
        want = [(labels[i], int(c)) for i, c in enumerate(counts) if c > 0]
        self.assertEqual([(html.unescape(label), int(c.replace(",", ""))) for label, c in BAR.findall(part)], want)

    def check_rows(self, part, d, values, positions, acts=None):
        """one row per stored example of feature d, largest first; every context token coloured, with the
        stored activation on hover (when acts, the stored windows, are given: exactly those, token by token)"""
        fmax = float(self.t["top_values"][d, 0])
        stored = sorted((j for j in range(len(positions)) if positions[j] >= 0), key=lambda j: (-values[j], positions[j]))
        rows = EX_ROW.findall(part)
        self.assertEqual(len(rows), len(stored))
        first = int(self.t["context_first"][0])
        for (v, where, ctx), j in zip(rows, stored):
            p = int(positions[j])
            self.assertTrue(close(v, values[j]))
            self.assertEqual(where, f"{p // self.T:,}:{p % self.T}")
            toks = TOK.findall(ctx)
            self.assertEqual(len(toks), ctx.count('<span class="tok'))  # every token coloured: none "not stored"
            act = [t for t in toks if t[0] == "tok act"]
            self.assertEqual(len(act), 1)
            self.assertEqual(act[0][1], f"{min(max(float(values[j]) / fmax, 0.0), 1.0):.3f}")
            self.assertEqual(act[0][2], np.format_float_positional(np.float32(values[j]), trim="-"))
            self.assertEqual(dom_text(act[0][3]), shown(self.tokens[int(self.stream[p])]))
            if acts is not None:
                want = [(np.format_float_positional(np.float32(values[j]) if p + first + i == p else a, trim="-"),
                         shown(self.tokens[int(self.stream[p + first + i])])) for i, a in enumerate(acts[j]) if not np.isnan(a)]
                self.assertEqual([(title, dom_text(text)) for _, _, title, text in toks], want)

    def check_feature_page(self, d, page):
        t = self.t
        self.check_logits(section(page, "Logit effects"), d)
        if t["fire_count"][d] == 0:
            self.assertIn("<b>Dead</b>: never fired", page)
            self.assertEqual(page.count('<tr class="ex">'), 0)
            self.assertIn("No nonzero activation.", section(page, "Activation histogram"))
        else:
            self.check_hist(section(page, "Activation histogram"), d)
            self.check_rows(section(page, "Top activations"), d, t["top_values"][d], t["top_pos"][d], t["context_acts_top"][d])
            bands = section(page, "Band examples").split('<h3 class="band">')[1:]
            self.assertEqual(len(bands), 3)
            for b, part in zip((2, 1, 0), bands):  # highest band first
                self.check_rows(part, d, t["band_values"][d, b], t["band_pos"][d, b], t["context_acts_band"][d, b])
        ablation = section(page, "Ablation")
        if d in self.ablation:
            m = re.search(r'<td class="dkl">([^<]*)</td><td class="dce">([^<]*)</td>', ablation)
            self.assertIsNotNone(m, ablation)
            self.assertTrue(close(m.group(1), self.ablation[d][0]) and close(m.group(2), self.ablation[d][1]), m.group(0))
        else:
            self.assertIn(f"Not computed for this feature (ablation.safetensors covers {len(self.ablation)} features).", ablation)

    def test_index_and_feature_pages(self):
        fires = self.t["fire_count"]
        live = np.nonzero(fires > 0)[0]
        index = chromium_dom(self.url)
        self.assertIn(f"{len(live):,} features fired, <b>{len(fires) - len(live):,} dead</b>", index)
        by_freq = live[np.lexsort((live, -fires[live]))]
        self.assertEqual([int(x) for x in re.findall(r'<td class="num"><a href="/feature/(\d+)">', index)], [int(d) for d in by_freq[:100]])
        chosen = self.chosen()
        for d, why in sorted(chosen.items()):
            with self.subTest(feature=d, why=why):
                self.check_feature_page(d, chromium_dom(f"{self.url}feature/{d}"))
        sys.stderr.write(f"pages of features {', '.join(f'{d} ({why})' for d, why in sorted(chosen.items()))} ... ")

    def test_report_cards(self):
        out = os.path.join(self.tmp, "report.html")
        r = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "report.py"), "--log", os.path.join(self.run_dir, "log.jsonl"),
                            "--features", os.path.join(self.run_dir, "features"), "--tokenizer", os.path.join(ROOT, "data", "gpt2"),
                            "--out", out], capture_output=True, text=True, timeout=120)
        self.assertEqual(r.returncode, 0, r.stderr)
        page = chromium_dom("file://" + out)
        self.assertNotIn("Not in this dump", page)
        cards = re.findall(r'<div class="feature" id="f(\d+)">(.*?)(?=<div class="feature"|<h2>|</body>)', page, re.S)
        self.assertEqual(len(cards), 40)  # the 20 most and 20 least frequent live features
        t, covered = self.t, 0
        for d, card in ((int(d), card) for d, card in cards):
            with self.subTest(feature=d):
                parts = dict(re.findall(r"<h4>([^<]*)</h4>(.*?)(?=<h4>|$)", card, re.S))
                self.check_logits(parts["Logit effects"], d)
                self.check_hist(parts["Activation histogram"], d)
                # contexts cut to --context 12 before the example: every token still coloured, the stored
                # windows are checked token by token on the pages above
                self.check_rows(parts["Top activations"], d, t["top_values"][d], t["top_pos"][d])
                bands = parts["Band examples"].split('<h5 class="band">')[1:]
                self.assertEqual(len(bands), 3)
                for b, part in zip((2, 1, 0), bands):
                    self.check_rows(part, d, t["band_values"][d, b], t["band_pos"][d, b])
                if d in self.ablation:
                    covered += 1
                    m = re.search(r'<td class="dkl">([^<]*)</td><td class="dce">([^<]*)</td>', parts["Ablation"])
                    self.assertTrue(m and close(m.group(1), self.ablation[d][0]) and close(m.group(2), self.ablation[d][1]))
                else:
                    self.assertIn("Not computed for this feature", parts["Ablation"])
        # the ablation covers the features that fire most on the eval rows: the most frequent cards among them
        self.assertGreater(covered, 0)
        sys.stderr.write(f"report: 40 cards, {covered} with the ablation effect ... ")


def tearDownModule():
    if Fixture.tmp:
        shutil.rmtree(Fixture.tmp, ignore_errors=True)


if __name__ == "__main__":
    unittest.main()
