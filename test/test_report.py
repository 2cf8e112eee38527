"""
Tests for scripts/report.py (the HTML report of a run and its --dump-features folder).

Run from the repo root with Debian's python (numpy):
    /usr/bin/python3 test/test_report.py -v
(not `-m unittest test/...`: "test" is also the standard library's package name)

Everything the report reads is written here with known contents: a 12-token encoder.json
(with tokens that need HTML escaping, a newline and a two-byte UTF-8 character), one val shard
of 4 rows of T = 8 tokens, an older dump (only the five tensors --dump-features wrote before
the logit effects, histogram, bands and context activations) with its features.json, and a
small log.jsonl with training and eval lines. A second dump, with every tensor of
llmc/feature_dump.h and an ablation.safetensors, is test/test_features_viewer.py's synthetic
one: each tensor derived from a known activation matrix (test/test_feature_dump.cpp checks the
trainer's side). The checks read the HTML as text: on the older dump, the decoded contexts with
the activating token outlined and its value, the row edges, and a note in each card for what
the dump lacks; on the full one, each card's logit effects, histogram bars, top and band
examples with every context token shaded by its activation, and ablation effect, exactly; the
eval table, the SVG plots, the dead count, and that nothing is fetched from a network. Bad
inputs must give one "error:" line and exit code 1. If Debian's chromium is installed, the page
is also rendered to build/test_out/report_test.png (skipped without it). DevToolsTest checks the
same of the dev tools that read these files with report.py's reader (dev/compare_runs.py,
dev/compare_features.py) and of dev/make_random_gpt2.py's flags.
"""
import json
import os
import re
import shutil
import struct
import subprocess
import sys
import tempfile
import unittest

import numpy as np

import test_features_viewer as viewer  # its synthetic full dump (this folder is on sys.path: the script's own)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REPORT = os.path.join(ROOT, "scripts", "report.py")
COMPARE_RUNS = os.path.join(ROOT, "dev", "compare_runs.py")
COMPARE_FEATURES = os.path.join(ROOT, "dev", "compare_features.py")
MAKE_RANDOM_GPT2 = os.path.join(ROOT, "dev", "make_random_gpt2.py")

# token id -> its spelling in encoder.json (GPT-2's byte-to-unicode map: Ġ is a space, Ċ a newline,
# "Ã©" the two bytes of é)
VOCAB = ["Hello", "Ġworld", "Ċ", "<", "script", ">", "Ġ&", "Ã©", "Ġthe", "Ġcat", "Ġsat", "<|endoftext|>"]
T = 8
ROWS = [
    [0, 1, 8, 9, 10, 2, 0, 1],    # Hello world the cat sat \n Hello world
    [3, 4, 5, 6, 7, 8, 9, 10],    # <script> &é the cat sat
    [8, 9, 10, 2, 8, 9, 10, 11],  # the cat sat \n the cat sat <|endoftext|>
    [0, 0, 0, 0, 0, 0, 0, 0],
]
D, K = 4, 3
# feature 0 dead; 1 the most frequent (ties at 1.25 keep the earlier position first); 2 the
# rarest, one firing; 3 in between
FIRE_COUNT = [0, 16, 1, 5]
TOP_VALUES = [[0, 0, 0], [2.5, 1.25, 1.25], [0.875, 0, 0], [3.0, 0.5, 0.25]]
TOP_POS = [[-1, -1, -1], [9, 3, 20], [13, -1, -1], [4, 6, 17]]


def write_safetensors(path, tensors, metadata):
    """the layout llmc/safetensors.h writes: u64 header length, JSON header padded to 8, data"""
    header, blobs, off = {"__metadata__": metadata}, [], 0
    for name, arr in tensors:
        dtype = {np.dtype(np.float32): "F32", np.dtype(np.int64): "I64"}[arr.dtype]
        b = arr.tobytes()
        header[name] = {"dtype": dtype, "shape": list(arr.shape), "data_offsets": [off, off + len(b)]}
        blobs.append(b)
        off += len(b)
    h = json.dumps(header).encode()
    h += b" " * (-len(h) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h + b"".join(blobs))


def write_shard(path, tokens):
    header = np.zeros(256, dtype="<i4")
    header[:3] = [20240520, 1, len(tokens)]
    with open(path, "wb") as f:
        f.write(header.tobytes() + np.asarray(tokens, dtype="<u2").tobytes())


def log_lines():
    lines = [{"eval": True, "step": 0, "tokens": 32, "ce_clean": 3.25, "ce_spliced": 4.5, "ce_increase": 1.25, "kl": 1.5,
              "l0": 40.5, "explained_variance": -0.5, "top1_agree": 0.25, "mse": 0.5, "alive": 4, "dead": 0}]
    for s in range(1, 21):
        lines.append({"step": s, "lr": 1e-3 * min(1.0, s / 5), "loss": 2.0 / s, "kl": 1.0 / s, "sparsity": 0.1 + 0.01 * s,
                      "mse": 0.3, "ds_mse": None, "l0": 40.0 - s, "grad_norm": 0.5, "tokens_per_s": 1000.0,
                      **({"alive_train": 3} if s % 10 == 0 else {})})
    lines.append({"eval": True, "step": 20, "tokens": 32, "ce_clean": 3.25, "ce_spliced": 3.3125, "ce_increase": 0.0625,
                  "kl": 0.0375, "l0": 12.5, "explained_variance": 0.875, "top1_agree": 0.75, "mse": 0.125, "alive": 3,
                  "dead": 1, "alive_train": 3})
    return lines


def card(html_text, d):
    """feature d's card: from its id to the next card or the page's end"""
    start = html_text.index(f'id="f{d}"')
    end = html_text.find("<div class=feature", start + 1)
    return html_text[start:end if end >= 0 else len(html_text)]


class ReportTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.mkdtemp(prefix="test_report_")
        cls.tok = os.path.join(cls.tmp, "tok")
        os.makedirs(cls.tok)
        with open(os.path.join(cls.tok, "encoder.json"), "w", encoding="utf-8") as f:
            json.dump({t: i for i, t in enumerate(VOCAB)}, f, ensure_ascii=False)
        cls.shard = os.path.join(cls.tmp, "val_000.bin")
        write_shard(cls.shard, [t for r in ROWS for t in r])
        cls.features = os.path.join(cls.tmp, "dump")
        cls.write_features(cls.features, [cls.shard])
        cls.log = os.path.join(cls.tmp, "log.jsonl")
        with open(cls.log, "w") as f:
            f.write("".join(json.dumps(l) + "\n" for l in log_lines()))
        cls.out = os.path.join(cls.tmp, "report.html")
        r = cls.run_report(["--out", cls.out])
        if r.returncode != 0:
            raise AssertionError(f"report.py failed: {r.stderr}")
        with open(cls.out, encoding="utf-8") as f:
            cls.html = f.read()

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.tmp, ignore_errors=True)

    @classmethod
    def write_features(cls, folder, shards, top_pos=TOP_POS, cwd=None, freq=None):
        os.makedirs(folder, exist_ok=True)
        n = len(ROWS) * T
        fires = np.array(FIRE_COUNT, dtype=np.int64)
        freq = (fires / n).astype(np.float32) if freq is None else np.array(freq, dtype=np.float32)
        write_safetensors(os.path.join(folder, "features.safetensors"),
                          [("frequency", freq), ("log10_frequency", np.log10(freq.astype(np.float64) + 1e-10).astype(np.float32)),
                           ("top_values", np.array(TOP_VALUES, dtype=np.float32)), ("top_pos", np.array(top_pos, dtype=np.int64)),
                           ("fire_count", fires)],
                          {"tokens": str(n), "d_sae": str(D), "topk": str(K)})
        with open(os.path.join(folder, "features.json"), "w") as f:
            json.dump({"val": os.path.join(cls.tmp, "val_*.bin"), "cwd": cwd or ROOT, "val_shards": shards, "seq_len": T, "n_tokens": n, "d_sae": D,
                       "topk": K, "layer": 2, "hook_name": "blocks.2.hook_resid_pre", "model": "tiny/model.safetensors",
                       "mode": "e2e"}, f)

    @classmethod
    def run_report(cls, extra, log=None, features=None, tokenizer=None):
        cmd = [sys.executable, REPORT, "--log", log or cls.log, "--features", features or cls.features,
               "--tokenizer", tokenizer or cls.tok, "--context", "6", "--n-features", "1"] + extra
        return subprocess.run(cmd, capture_output=True, text=True)

    def feature_block(self, d):
        return card(self.html, d)

    def test_contexts_decoded_and_highlighted(self):
        # feature 1's top hit: row 1, t 1 ("script"), preceded by "<" from the row start, then the 4 tokens
        # after it that newer dumps store (é decoded from two bytes) and "…": the row goes on. HTML escaped;
        # an older dump has no activations around the example, so only its own token is shaded
        f1 = self.feature_block(1)
        self.assertIn('<tr class=ex><td class=num>2.5</td><td class=num>1:1</td><td class=ctx><span class=edge title="row start">⟦</span>'
                      '<span class=tok title="not stored">&lt;</span>'
                      '<span class="tok act" style="background:rgba(255,140,0,1.000)" title="2.5">script</span>'
                      '<span class=tok title="not stored">&gt;</span><span class=tok title="not stored"> &amp;</span>'
                      '<span class=tok title="not stored">é</span><span class=tok title="not stored"> the</span>'
                      '<span class=edge>…</span></td></tr>', f1)
        # the two tied 1.25 hits, the earlier position (3) listed first, each shaded at 1.25 / 2.5
        self.assertLess(f1.index("0:3"), f1.index("2:4"))
        self.assertIn('<span class="tok act" style="background:rgba(255,140,0,0.500)" title="1.25"> cat</span>', f1)
        # the newline is shown as a mark; position 20's context reaches its row's end (⟧)
        self.assertIn('<span class=tok title="not stored"><span class=nl>↵</span></span>'
                      '<span class="tok act" style="background:rgba(255,140,0,0.500)" title="1.25"> the</span>', f1)
        self.assertIn('<span class=tok title="not stored">&lt;|endoftext|&gt;</span><span class=edge title="row end">⟧</span>', f1)
        self.assertNotIn("<script", self.html)

    def test_older_dump_says_what_it_lacks(self):
        for d in (1, 2):
            card = self.feature_block(d)
            for names in ("logit_top_tokens, logit_top_values, logit_bottom_tokens, logit_bottom_values", "hist_edges, hist_counts",
                          "context_acts_top, context_first", "band_fracs, band_pos, band_values"):
                self.assertIn(f"Not in this dump (it lacks {names}: a dump written before they existed).", card)
            self.assertIn("Only the feature's stored examples are shaded.", card)
            self.assertIn("<h4>Ablation</h4><p class=note>Not computed (no ablation.safetensors in the dump).</p>", card)

    def test_most_and_least_frequent_live_features(self):
        self.assertIn("The 1 most frequent live features", self.html)
        self.assertIn('id="f1"', self.html)  # most frequent (16 of 32 tokens)
        self.assertIn('id="f2"', self.html)  # rarest live (1 of 32)
        self.assertNotIn('id="f0"', self.html)  # dead: never shown
        self.assertNotIn('id="f3"', self.html)  # neither extreme with --n-features 1
        f2 = self.feature_block(2)
        self.assertIn("fires on 1 token, 3.12% (log10 -1.51); max 0.875", f2)
        self.assertIn('<span class="tok act" style="background:rgba(255,140,0,1.000)" title="0.875"> the</span>', f2)
        self.assertEqual(f2.count("<tr class=ex>"), 1)  # empty slots (-1) are not rows

    def test_eval_table_and_plots(self):
        table = self.html[self.html.index("<table class=metrics>"):]
        table = table[:table.index("</table>")]
        for header in ("CE clean", "CE spliced", "CE increase", "KL", "L0", "expl. var.", "top-1 agree", "alive", "dead"):
            self.assertIn(f"<th>{header}</th>", table)
        for cell in ("3.25", "3.312", "0.0625", "0.0375", "12.5", "0.875", "0.75", "40.5", "-0.5"):
            self.assertIn(f"<td>{cell}</td>", table)
        self.assertEqual(table.count("<tr>"), 3)  # header + 2 evals
        # training curves for each non-null term, none for ds_mse (null throughout)
        for title in ("loss (weighted total)", "KL (unweighted)", "sparsity L1/d_in (unweighted)", "MSE (unweighted)", "L0",
                      "learning rate", "alive features (training window)", "CE increase (spliced − clean)", "L0 (eval)"):
            self.assertIn(f"<title>{title}</title>", self.html)
        self.assertNotIn("downstream MSE", self.html)
        self.assertGreaterEqual(self.html.count("<svg"), 11)
        self.assertIn("<polyline", self.html)

    def test_frequency_histogram_and_dead(self):
        self.assertIn("<b>1 dead</b>", self.html)
        self.assertIn("log10 firing frequency of the 3 live features", self.html)
        self.assertEqual(self.html.count('class="bar"'), 3)  # 3 live features in 3 different bins

    def test_self_contained(self):
        self.assertNotIn("http://", self.html)
        self.assertNotIn("https://", self.html)
        self.assertNotIn("<script", self.html)
        self.assertNotIn("<link", self.html)
        self.assertNotIn("src=", self.html)

    def test_default_output_in_the_features_folder(self):
        r = self.run_report([])
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertTrue(os.path.isfile(os.path.join(self.features, "report.html")))

    def test_relative_shard_paths(self):
        # features.json lists shards as the trainer opened them; relative ones resolve against its cwd
        d = os.path.join(self.tmp, "dump_relative")
        self.write_features(d, ["val_000.bin"], cwd=self.tmp)
        out = os.path.join(self.tmp, "relative.html")
        r = self.run_report(["--out", out], features=d)
        self.assertEqual(r.returncode, 0, r.stderr)
        with open(out, encoding="utf-8") as f:
            self.assertIn('title="2.5">script</span>', f.read())

    def expect_error(self, r, fragment):
        self.assertEqual(r.returncode, 1, r.stdout + r.stderr)
        lines = r.stderr.strip().splitlines()
        self.assertEqual(len(lines), 1, r.stderr)
        self.assertTrue(lines[0].startswith("error: "), lines[0])
        self.assertIn(fragment, lines[0])

    def test_bad_inputs(self):
        out = ["--out", os.path.join(self.tmp, "bad.html")]
        self.expect_error(self.run_report(out, log=os.path.join(self.tmp, "nope.jsonl")), "nope.jsonl' not found")
        bad_log = os.path.join(self.tmp, "bad.jsonl")
        with open(bad_log, "w") as f:
            f.write('{"step": 1, "loss": 1}\n{"step": 2, "loss"\n')
        self.expect_error(self.run_report(out, log=bad_log), "line 2 is not JSON")
        self.expect_error(self.run_report(out, features=os.path.join(self.tmp, "nodump")), "is not a folder")
        self.expect_error(self.run_report(out, tokenizer=self.tmp), "encoder.json' not found")
        # a shard that is not an llm.c shard, a missing shard, positions past the data, a truncated tensor file
        junk = os.path.join(self.tmp, "junk.bin")
        with open(junk, "wb") as f:
            f.write(b"\0" * 2000)
        d = os.path.join(self.tmp, "dump_junk")
        self.write_features(d, [junk])
        self.expect_error(self.run_report(out, features=d), "is not an llm.c token shard")
        d = os.path.join(self.tmp, "dump_missing")
        self.write_features(d, [os.path.join(self.tmp, "gone.bin")])
        self.expect_error(self.run_report(out, features=d), "gone.bin' (listed in features.json) not found")
        d = os.path.join(self.tmp, "dump_past")
        self.write_features(d, [self.shard], top_pos=[[-1, -1, -1], [9, 3, 20], [99, -1, -1], [4, 6, 17]])
        self.expect_error(self.run_report(out, features=d), "position 99")
        d = os.path.join(self.tmp, "dump_trunc")
        self.write_features(d, [self.shard])
        p = os.path.join(d, "features.safetensors")
        with open(p, "rb") as f:
            raw = f.read()
        with open(p, "wb") as f:
            f.write(raw[:-8])
        self.expect_error(self.run_report(out, features=d), "truncated")
        self.assertFalse(os.path.exists(os.path.join(self.tmp, "bad.html")))

    def test_wrong_files(self):
        # a binary file (the start of a safetensors file) given as the log, features.json or the tokenizer;
        # a JSON file that is not an encoder (a model's config.json); a NaN frequency: each named in one line
        out = ["--out", os.path.join(self.tmp, "wrong.html")]
        binary = os.path.join(self.tmp, "model.safetensors")
        with open(binary, "wb") as f:
            f.write(struct.pack("<Q", 200) + b'{"wte": {"dtype": "F32"}}' + bytes(range(128, 256)))
        self.expect_error(self.run_report(out, log=binary), f"--log '{binary}' is not a text file")
        self.expect_error(self.run_report(out, tokenizer=binary), f"--tokenizer: '{binary}' is not JSON")
        config = os.path.join(self.tmp, "config.json")
        with open(config, "w") as f:
            json.dump({"n_layer": 4, "n_head": 4, "model_type": "gpt2"}, f)
        self.expect_error(self.run_report(out, tokenizer=config), f"--tokenizer: '{config}' is not a GPT-2 encoder.json")
        d = os.path.join(self.tmp, "dump_binary_json")
        self.write_features(d, [self.shard])
        shutil.copy(binary, os.path.join(d, "features.json"))
        self.expect_error(self.run_report(out, features=d), f"'{d}/features.json' is not JSON")
        d = os.path.join(self.tmp, "dump_nan")
        self.write_features(d, [self.shard], freq=[0, 0.5, float("nan"), 0.15625])
        self.expect_error(self.run_report(out, features=d), "features.safetensors': 'frequency' must hold fractions in [0, 1], found nan")
        self.assertFalse(os.path.exists(os.path.join(self.tmp, "wrong.html")))

    def test_bad_arguments(self):
        # argparse's errors too are one line and exit 1; --help still prints the usage and exits 0
        out = ["--out", os.path.join(self.tmp, "args.html")]
        self.expect_error(self.run_report(out + ["--context", "1.5"]), "report.py: argument --context: invalid int value: '1.5'")
        self.expect_error(self.run_report(out + ["--bogus"]), "report.py: unrecognized arguments: --bogus")
        self.expect_error(subprocess.run([sys.executable, REPORT, "--log", self.log], capture_output=True, text=True),
                          "the following arguments are required: --features, --tokenizer")
        self.assertFalse(os.path.exists(os.path.join(self.tmp, "args.html")))
        r = subprocess.run([sys.executable, REPORT, "--help"], capture_output=True, text=True)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("usage: report.py", r.stdout)

    @unittest.skipUnless(shutil.which("chromium"), "chromium not installed (apt-get install chromium): no screenshot check")
    def test_screenshot(self):
        png = os.path.join(ROOT, "build", "test_out", "report_test.png")
        os.makedirs(os.path.dirname(png), exist_ok=True)
        if os.path.exists(png):
            os.remove(png)
        subprocess.run(["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--window-size=1200,2400",
                        f"--screenshot={png}", "file://" + self.out], capture_output=True, timeout=120)
        self.assertTrue(os.path.isfile(png), "chromium wrote no screenshot")
        with open(png, "rb") as f:
            head = f.read(24)
        self.assertEqual(head[:8], b"\x89PNG\r\n\x1a\n")
        self.assertEqual(struct.unpack(">II", head[16:24]), (1200, 2400))
        self.assertGreater(os.path.getsize(png), 20000)  # a blank page compresses to a few KB


class CardsTest(unittest.TestCase):
    """the cards of a dump with every tensor (test_features_viewer.py's: features 1 and 3 fire most, 2 and 4
    once each; ablation.safetensors covers 1 and 3), with --n-features 2 --context 6"""

    @classmethod
    def setUpClass(cls):
        viewer.Fixture.build()
        log = os.path.join(viewer.Fixture.tmp, "log.jsonl")
        with open(log, "w") as f:
            f.write("".join(json.dumps(l) + "\n" for l in log_lines()))
        out = os.path.join(viewer.Fixture.tmp, "report.html")
        # the run folder: the report finds its dump at RUN/features, as the viewer does
        r = subprocess.run([sys.executable, REPORT, "--log", log, "--features", viewer.Fixture.run, "--tokenizer", viewer.Fixture.tok,
                            "--out", out, "--context", "6", "--n-features", "2"], capture_output=True, text=True)
        if r.returncode != 0:
            raise AssertionError(f"report.py failed: {r.stderr}")
        with open(out, encoding="utf-8") as f:
            cls.html = f.read()

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(viewer.Fixture.tmp, ignore_errors=True)
        viewer.Fixture.tmp = None

    def part(self, d, title):
        """an item of feature d's card: from <h4>title</h4> to the next <h4> or the card's end"""
        c = card(self.html, d)
        start = c.index(f"<h4>{title}</h4>")
        end = c.find("<h4>", start + 1)
        return c[start:end if end >= 0 else len(c)]

    def test_chosen_features(self):
        # frequency ties list by id; the least frequent rarest first: 4 and 2 tie, so reversed, 4 first
        ids = [int(x) for x in re.findall(r'<div class=feature id="f(\d+)">', self.html)]
        self.assertEqual(ids, [1, 3, 4, 2])
        self.assertIn("<h3>feature 1</h3><p class=fmeta>fires on 10 tokens, 15.6% (log10 -0.81); max 4</p>", card(self.html, 1))

    def test_logit_effects(self):
        promoted, suppressed = self.part(1, "Logit effects").split("<table class=logits>")[1:]
        row = r"<code class=tokname title='token (\d+)'>(.*?)</code></td><td class=num>([^<]*)<"
        nl = "<span class=nl>↵</span>"
        self.assertEqual(re.findall(row, promoted),
                         [("9", " cat", "+2.5"), ("10", " sat", "+2"), ("13", " mat", "+1.5"), ("8", " the", "+1.25"), ("12", " on", "+1"),
                          ("0", "Hello", "+0.75"), ("1", " world", "+0.5"), ("2", nl, "+0.25"), ("3", "&lt;", "+0.125"),
                          ("4", "script", "+0.0625")])
        self.assertEqual(re.findall(row, suppressed),
                         [("3", "&lt;", "-3"), ("5", "&gt;", "-2.5"), ("7", "é", "-2"), ("11", "&lt;|endoftext|&gt;", "-1.5"),
                          ("14", ".", "-1"), ("6", " &amp;", "-0.75"), ("4", "script", "-0.5"), ("2", nl, "-0.25"),
                          ("1", " world", "-0.125"), ("0", "Hello", "-0.0625")])
        self.assertEqual(self.part(2, "Logit effects").count("<code class=tokname"), 19)  # the -1 entry left out

    def test_histogram(self):
        h1 = self.part(1, "Activation histogram")
        self.assertIn('<svg class="plot hist" width="360" height="170"', h1)  # the card's small one
        # feature 1's 10 values: 9 bins and the underflow (5e-5 < 1e-4)
        self.assertEqual(re.findall(r'class="bar(?: flow)?"><title>([^<]*)</title>', h1),
                         ["&lt; 0.0001: 1", "[0.000422, 0.000562): 1", "[0.237, 0.316): 1", "[0.422, 0.562): 1", "[0.562, 0.75): 1",
                          "[1, 1.33): 1", "[1.33, 1.78): 1", "[1.78, 2.37): 1", "[2.37, 3.16): 1", "[3.16, 4.22): 1"])
        self.assertIn('class="bar flow"><title>≥ 1e+03: 1</title>', self.part(4, "Activation histogram"))  # 2000: the overflow

    def test_top_examples_every_token_shaded(self):
        top = self.part(1, "Top activations")
        self.assertEqual(re.findall(r"<tr class=ex><td class=num>([^<]*)</td><td class=num>([^<]*)</td>", top),
                         [("4", "0:13"), ("3", "1:13"), ("2", "0:3")])
        # --context 6: t 7..12 before the activating " cat" at t 13 ("…": the row starts earlier), the stored
        # tokens after it to the row's end; each shaded by activation / max 4 with its value on hover
        tok = '<span class="tok" style="background:rgba(255,140,0,{})" title="{}">{}</span>'
        zero = lambda text: tok.format("0.000", "0", text)
        self.assertIn("<td class=ctx><span class=edge>…</span>" + zero(" mat") + zero(".") + zero("<span class=nl>↵</span>")
                      + zero("Hello") + zero(" world") + tok.format("0.250", "1", " the")
                      + '<span class="tok act" style="background:rgba(255,140,0,1.000)" title="4"> cat</span>'
                      + tok.format("0.175", "0.7", " sat") + zero(".") + '<span class=edge title="row end">⟧</span></td>', top)

    def test_band_examples(self):
        bands = self.part(1, "Band examples")
        self.assertEqual(re.findall(r"<h5 class=band>(.*?)</h5>", bands),
                         ["(0.5, 0.75] of max: activations in (2, 3]", "(0.25, 0.5] of max: activations in (1, 2]",
                          "(0, 0.25] of max: activations in (0, 1]"])
        per_band = [re.findall(r"<tr class=ex><td class=num>([^<]*)</td>", b) for b in bands.split("<h5 class=band>")[1:]]
        self.assertEqual(per_band, [["3"], ["2", "1.5"], ["1", "0.7", "0.5", "0.25", "0.0005"]])
        # 0.0005 at the row's last token: outlined, shaded ~0; the 0.25 four tokens before it shaded too
        self.assertIn('<span class="tok" style="background:rgba(255,140,0,0.062)" title="0.25"> cat</span>', bands)
        self.assertIn('<span class="tok act" style="background:rgba(255,140,0,0.000)" title="0.0005">&lt;|endoftext|&gt;</span>', bands)
        # feature 4's only firing is its max, in no band
        self.assertEqual(self.part(4, "Band examples").count("<p class=note>No examples.</p>"), 3)

    def test_ablation(self):
        self.assertIn("<td class=dkl>0.125</td><td class=dce>0.25</td>", self.part(1, "Ablation"))
        self.assertIn("<td class=dkl>0.0625</td><td class=dce>-0.0312</td>", self.part(3, "Ablation"))
        for d in (2, 4):
            self.assertIn("Not computed for this feature (ablation.safetensors covers 2 features).", self.part(d, "Ablation"))

    def test_nothing_missing_and_self_contained(self):
        self.assertNotIn("Not in this dump", self.html)
        for bad in ("http://", "https://", "<script", "<link", "src=", "href="):
            self.assertNotIn(bad, self.html)


class DevToolsTest(unittest.TestCase):
    """dev/compare_runs.py and dev/compare_features.py on two copies of one run and of one dump (they agree,
    so exit 0), then bad folders and bad --tol; dev/make_random_gpt2.py's flags out of the loaders' ranges"""

    @classmethod
    def setUpClass(cls):
        viewer.Fixture.build()
        cls.tmp = tempfile.mkdtemp(prefix="test_dev_tools_")
        cls.run_dir = os.path.join(cls.tmp, "run")
        os.makedirs(cls.run_dir)
        with open(os.path.join(cls.run_dir, "log.jsonl"), "w") as f:
            f.write("".join(json.dumps(l) + "\n" for l in log_lines()))
        rng = np.random.default_rng(0)
        write_safetensors(os.path.join(cls.run_dir, "sae_weights.safetensors"),
                          [(k, rng.standard_normal(shape).astype(np.float32))
                           for k, shape in (("W_enc", (4, 8)), ("b_enc", (8,)), ("W_dec", (8, 4)), ("b_dec", (4,)))], {})
        cls.dump = os.path.join(viewer.Fixture.run, "features")

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.tmp, ignore_errors=True)
        shutil.rmtree(viewer.Fixture.tmp, ignore_errors=True)
        viewer.Fixture.tmp = None

    def run_tool(self, script, *args):
        return subprocess.run([sys.executable, script, *args], capture_output=True, text=True, timeout=120)

    def expect_error(self, r, fragment):
        self.assertEqual(r.returncode, 1, r.stdout + r.stderr)
        lines = r.stderr.strip().splitlines()
        self.assertEqual(len(lines), 1, r.stderr)
        self.assertTrue(lines[0].startswith("error: ") and fragment in lines[0], lines[0])

    def test_compare_runs(self):
        r = self.run_tool(COMPARE_RUNS, self.run_dir, self.run_dir)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("worst 0.000e+00 (tol 0.0001): OK", r.stdout)
        nope = os.path.join(self.tmp, "nope")
        self.expect_error(self.run_tool(COMPARE_RUNS, nope, self.run_dir), f"'{nope}' is not a folder")
        for tol in ("-1", "nan", "inf"):
            self.expect_error(self.run_tool(COMPARE_RUNS, self.run_dir, self.run_dir, "--tol", tol), "--tol must be a finite number >= 0")
        self.expect_error(self.run_tool(COMPARE_RUNS, self.run_dir, self.run_dir, "--tol", "x"), "argument --tol: invalid float value: 'x'")
        self.expect_error(self.run_tool(COMPARE_RUNS, self.run_dir), "the following arguments are required: b")
        empty = os.path.join(self.tmp, "empty_run")
        os.makedirs(empty, exist_ok=True)
        self.expect_error(self.run_tool(COMPARE_RUNS, empty, self.run_dir), f"'{empty}/log.jsonl' not found")

    def test_compare_features(self):
        r = self.run_tool(COMPARE_FEATURES, self.dump, self.dump)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("OK (tol 0.0001)", r.stdout)
        nope = os.path.join(self.tmp, "nope")
        self.expect_error(self.run_tool(COMPARE_FEATURES, self.dump, nope), f"'{nope}' is not a folder")
        self.expect_error(self.run_tool(COMPARE_FEATURES, self.tmp, self.dump), f"'{self.tmp}/features.safetensors' not found")
        for tol in ("-1", "nan"):
            self.expect_error(self.run_tool(COMPARE_FEATURES, self.dump, self.dump, "--tol", tol), "--tol must be a finite number >= 0")

    def test_make_random_gpt2_flags(self):
        out = os.path.join(self.tmp, "model")
        for args, fragment in ((["--n-layer", "-1"], "--n-layer must be in 1..4096, got -1"),
                               (["--vocab", "70000"], "--vocab must be in 1..65536, got 70000"),
                               (["--n-head", "5", "--d-model", "16"], "--d-model 16 must be divisible by --n-head 5"),
                               (["--n-head", "0"], "--n-head must be in 1..65536, got 0"),
                               (["--n-layer", "1.5"], "argument --n-layer: invalid int value: '1.5'")):
            self.expect_error(self.run_tool(MAKE_RANDOM_GPT2, "--out", out, *args), fragment)
            self.assertFalse(os.path.exists(out), args)


if __name__ == "__main__":
    unittest.main()
