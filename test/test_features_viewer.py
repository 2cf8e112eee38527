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
"""
import importlib.util
import json
import os
import re
import shutil
import struct
import subprocess
import sys
import tempfile
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


class ServerTest(unittest.TestCase):
    """the server in a subprocess on a free port (--port 0: it prints the URL it took)"""

    @classmethod
    def setUpClass(cls):
        Fixture.build()
        cls.proc = subprocess.Popen([sys.executable, SCRIPT, "serve", Fixture.run, "--port", "0", "--tokenizer", Fixture.tok],
                                    stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        line = cls.proc.stdout.readline()
        m = re.search(r"at (http://127\.0\.0\.1:\d+/)", line)
        if not m:
            cls.proc.kill()
            raise AssertionError(f"the server printed no URL: {line!r}")
        cls.url = m.group(1)

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
            r = subprocess.run(["chromium", "--headless", "--disable-gpu", "--no-sandbox", "--dump-dom", self.url + path.lstrip("/")],
                               capture_output=True, text=True, timeout=120)
            self.assertIn("</html>", r.stdout, r.stderr[-2000:])
            return r.stdout

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


def tearDownModule():
    if Fixture.tmp:
        shutil.rmtree(Fixture.tmp, ignore_errors=True)


if __name__ == "__main__":
    unittest.main()
