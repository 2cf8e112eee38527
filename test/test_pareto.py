"""
Tests for scripts/pareto.py (the Pareto page of an SAE sweep: L0 and alive features against CE
increase, one series per mode and layer).

Run from the repo root:
    /usr/bin/python3 test/test_pareto.py -v
(not `-m unittest test/...`: "test" is also the standard library's package name)

The runs are written here with known contents, in the trainer's formats (cfg.json as
llmc/sae_io.h's sae_export writes it, log.jsonl with the keys of llmc/logger.h, values like a
real demo run's): a sweep of 9 SAEs in 4 (mode, layer) series, listed out of order in
sweep.json. The checks read the HTML as text: the points and λ labels of each series in both
plots, the table rows against the exact numbers of each log's last eval line, their order, the
links, and each bad input (one "error:" line naming the file, exit code 1, nothing written).
If ./train_gpt2_sae_cpu is built, two real runs of a few seconds each go through it too.
"""
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import unittest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PARETO = os.path.join(ROOT, "scripts", "pareto.py")
TRAINER = os.path.join(ROOT, "train_gpt2_sae_cpu")
sys.path.insert(0, os.path.join(ROOT, "scripts"))
import report  # noqa: E402  (its CSS and fmt, to compare the page against)

# name -> (mode, layer, λ, final eval's ce_increase, l0, alive); sweep.json lists them in this
# (unsorted) order
SWEEP = {
    "e2e_L2_lam1.5": ("e2e", 2, 1.5, 0.153214567, 46.8164062, 979),
    "local_L2_lam20": ("local", 2, 20, 2.63825967, 42.6816406, 868),
    "e2e_L2_lam5": ("e2e", 2, 5, 0.412398127, 18.2539062, 701),
    "local_L2_lam2": ("local", 2, 2, 1.0435371, 136.527344, 986),
    "e2e+ds_L2_lam1.5": ("e2e+ds", 2, 1.5, 0.198765432, 51.0253906, 990),
    "e2e_L1_lam5": ("e2e", 1, 5, 0.301177216, 22.4570312, 744),
    "local_L2_lam6": ("local", 2, 6, 1.73415542, 73.1015625, 942),
    "e2e_L2_lam0.5": ("e2e", 2, 0.5, 0.0873520374, 112.669922, 1012),
    "e2e_L1_lam1.5": ("e2e", 1, 1.5, 0.102938475, 64.0332031, 1001),
}
# the table's order (mode local, e2e, e2e+ds; then layer; then λ) and each series' λs in order
ORDER = ["local_L2_lam2", "local_L2_lam6", "local_L2_lam20", "e2e_L1_lam1.5", "e2e_L1_lam5", "e2e_L2_lam0.5",
         "e2e_L2_lam1.5", "e2e_L2_lam5", "e2e+ds_L2_lam1.5"]
SERIES = {"local · layer 2": ["2", "6", "20"], "e2e · layer 1": ["1.5", "5"], "e2e · layer 2": ["0.5", "1.5", "5"],
          "e2e+ds · layer 2": ["1.5"]}


def cfg_json(mode, layer, lam, d_sae=1024):
    """cfg.json as sae_export writes it (the demo model, defaults of train_config.h)"""
    return {"d_in": 128, "d_sae": d_sae, "dtype": "float32", "device": "cpu", "architecture": "standard",
            "apply_b_dec_to_input": False, "normalize_activations": "none",
            "metadata": {"sae_lens_version": "6.0.0", "sae_lens_training_version": "6.0.0", "model_name": "tinyshakespeare-gpt2-4L128",
                         "hook_name": f"blocks.{layer}.hook_resid_pre", "hook_layer": layer, "context_size": 64, "prepend_bos": False,
                         "model_from_pretrained_kwargs": {"center_writing_weights": True, "center_unembed": False, "fold_ln": False,
                                                          "fold_value_biases": False}},
            "training": {"engine": "sae.c", "mode": mode, "sparsity_coeff": lam, "kl_coeff": 0.5 if mode == "e2e+ds" else 1,
                         "mse_coeff": 1, "ds_coeff": 2.5, "lr": 0.003, "batch": 4, "seq_len": 64, "grad_accum": 2, "samples": 96,
                         "steps_done": 12, "seed": 0}}


def eval_line(step, ce_increase, l0, alive):
    return {"eval": True, "step": step, "tokens": 512, "ce_clean": 4.92647895, "ce_spliced": 4.92647895 + ce_increase,
            "ce_increase": ce_increase, "kl": 1.1 * ce_increase, "l0": l0, "explained_variance": 0.297996547, "top1_agree": 0.361328125,
            "mse": 1.75685299, "alive": alive, "dead": 1024 - alive, "ds_mse": [2.42656919]}


def log_lines(ce_increase, l0, alive, evals=True):
    """an eval at the start, 12 updates with one in between, a final eval; that final step is
    logged twice (a resumed run re-logs from its checkpoint) with the later line the true one"""
    lines = [eval_line(0, 3.12116883, 517.21875, 1024)] if evals else []
    for s in range(1, 13):
        lines.append({"step": s, "lr": 0.003, "loss": 30.0 / s, "kl": 3.0 / s, "sparsity": 0.5, "mse": None, "ds_mse": None, "l0": 500.0 / s,
                      "grad_norm": 2.5, "tokens_per_s": 900.0})
        if evals and s == 6:
            lines.append(eval_line(6, 2.0, 300.0, 1024))
    if evals:
        lines.append(eval_line(12, 9.0, 999.0, 1))  # overwritten by the next line, as read_log does
        lines.append(eval_line(12, ce_increase, l0, alive))
    return lines


def write_run(folder, mode, layer, lam, ce_increase, l0, alive, evals=True):
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "cfg.json"), "w") as f:
        json.dump(cfg_json(mode, layer, lam), f, indent=2)
    with open(os.path.join(folder, "log.jsonl"), "w") as f:
        f.write("".join(json.dumps(l) + "\n" for l in log_lines(ce_increase, l0, alive, evals)))


def write_sweep(folder, names):
    with open(os.path.join(folder, "sweep.json"), "w") as f:
        json.dump({"saes": [{"name": n, "mode": SWEEP[n][0] if n in SWEEP else "?"} for n in names]}, f)


def run_pareto(args):
    return subprocess.run([sys.executable, PARETO] + args, capture_output=True, text=True)


def series_groups(svg):
    """{series label: its group's SVG text} for one plot"""
    return dict(re.findall(r'<g class="series" data-series="([^"]*)">(.*?)</g>', svg, re.S))


def table_row(page, name):
    rows = re.findall(r"<tr>.*?</tr>", page[page.index("<table class=metrics>"):], re.S)
    hits = [r for r in rows if f">{name}</a></td>" in r]
    assert len(hits) == 1, f"{len(hits)} table rows for {name}"
    return hits[0]


class ParetoTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.mkdtemp(prefix="test_pareto_")
        cls.sweep = os.path.join(cls.tmp, "sweep")
        for name, (mode, layer, lam, ce, l0, alive) in SWEEP.items():
            write_run(os.path.join(cls.sweep, name), mode, layer, lam, ce, l0, alive)
        write_sweep(cls.sweep, list(SWEEP))
        # one run with its report next to it, one with it in its features folder (scripts/demo.sh's and README's places)
        open(os.path.join(cls.sweep, "e2e_L2_lam1.5", "report.html"), "w").close()
        os.makedirs(os.path.join(cls.sweep, "local_L2_lam6", "features"))
        open(os.path.join(cls.sweep, "local_L2_lam6", "features", "report.html"), "w").close()
        r = run_pareto([cls.sweep])  # default --out: SWEEP/pareto.html
        if r.returncode != 0:
            raise AssertionError(f"pareto.py failed: {r.stderr}")
        cls.out = os.path.join(cls.sweep, "pareto.html")
        with open(cls.out, encoding="utf-8") as f:
            cls.html = f.read()
        cls.svgs = re.findall(r"<svg.*?</svg>", cls.html, re.S)

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.tmp, ignore_errors=True)

    def test_two_plots_with_a_series_per_mode_and_layer(self):
        self.assertEqual(len(self.svgs), 2)
        self.assertIn("<title>L0 against CE increase</title>", self.svgs[0])
        self.assertIn("<title>Alive features against CE increase</title>", self.svgs[1])
        for svg in self.svgs:
            groups = series_groups(svg)
            self.assertEqual(list(groups), list(SERIES))  # local, e2e, e2e+ds; layers ascending
            colors = set()
            for label, lams in SERIES.items():
                g = groups[label]
                self.assertEqual(g.count("<circle"), len(lams), label)
                self.assertEqual(g.count("<polyline"), 1, label)
                # each point labelled by its λ, in order of λ along the line
                self.assertEqual(re.findall(r'class="lam"[^>]*>([^<]*)</text>', g), lams, label)
                colors.add(re.search(r'<polyline [^>]*stroke="([^"]+)"', g).group(1))
                self.assertIn(f'class="tick">{label}</text>', svg)  # the legend
            self.assertEqual(len(colors), len(SERIES))

    def test_points_where_the_logs_put_them(self):
        # e2e at layer 1: two points joined in λ order; x from L0 (first plot) or alive (second), y the CE increase.
        # The polyline's points are the circles' centres, so a point's place on the line shows its data's order.
        for svg, col in zip(self.svgs, (4, 5)):
            g = series_groups(svg)["e2e · layer 1"]
            centres = re.findall(r'<circle cx="([\d.]+)" cy="([\d.]+)"', g)
            line = re.search(r'<polyline points="([^"]+)"', g).group(1).split()
            self.assertEqual(line, [f"{x},{y}" for x, y in centres])
            a, b = (SWEEP["e2e_L1_lam1.5"], SWEEP["e2e_L1_lam5"])
            (xa, ya), (xb, yb) = [(float(x), float(y)) for x, y in centres]
            self.assertEqual(xa > xb, a[col] > b[col])  # more features at the smaller λ
            self.assertEqual(ya > yb, a[3] < b[3])      # the SVG's y grows downwards
        # each point's tooltip names its SAE and links to its page
        self.assertIn("<title>e2e_L1_lam5: λ 5, L0 (active features per token) 22.46, CE increase 0.3012</title>", self.svgs[0])
        self.assertIn('<a href="e2e_L1_lam5/"><circle', self.svgs[0])

    def test_table_rows_carry_the_final_evals(self):
        table = self.html[self.html.index("<table class=metrics>"):]
        for header in ("SAE", "mode", "layer", "d_sae", "λ", "KL coeff", "MSE coeff", "ds coeff", "step", "CE increase", "KL",
                       "L0", "alive", "expl. var.", "MSE"):
            self.assertIn(f"<th>{header}</th>", table)
        self.assertEqual(table[:table.index("</table>")].count("<tr>"), 1 + len(SWEEP))
        for name, (mode, layer, lam, ce, l0, alive) in SWEEP.items():
            row = table_row(self.html, name)
            # the exact logged value on hover, report.py's fmt as the text; the final step's later line
            self.assertIn(f'<td title="{ce}">{report.fmt(ce)}</td>', row)
            self.assertIn(f'<td title="{l0}">{report.fmt(l0)}</td>', row)
            self.assertIn(f'<td title="{alive}">{report.fmt(alive)}</td>', row)
            self.assertIn(f"<td class=name>{mode}</td>", row)
            self.assertIn('<td title="12">12</td>', row)  # the step of the last eval
            self.assertNotIn(">999<", row)
        # coefficients as the mode uses them: MSE for local, KL for e2e, KL and ds for e2e+ds
        self.assertRegex(table_row(self.html, "local_L2_lam6"), r'<td title="6">6</td><td>–</td><td title="1">1</td><td>–</td>')
        self.assertRegex(table_row(self.html, "e2e_L2_lam5"), r'<td title="5">5</td><td title="1">1</td><td>–</td><td>–</td>')
        self.assertRegex(table_row(self.html, "e2e+ds_L2_lam1.5"), r'<td title="1.5">1.5</td><td title="0.5">0.5</td><td>–</td><td title="2.5">2.5</td>')

    def test_table_order_mode_layer_lambda(self):
        at = [self.html.index(f">{name}</a></td>") for name in ORDER]
        self.assertEqual(at, sorted(at))

    def test_links_to_each_run(self):
        self.assertIn('<a href="e2e_L2_lam1.5/report.html">e2e_L2_lam1.5</a>', self.html)
        self.assertIn('<a href="local_L2_lam6/features/report.html">local_L2_lam6</a>', self.html)
        self.assertIn('<a href="e2e+ds_L2_lam1.5/">e2e+ds_L2_lam1.5</a>', self.html)  # no page: its folder
        self.assertIn('<a href="local_L2_lam20/">local_L2_lam20</a>', self.html)

    def test_self_contained_with_the_report_look(self):
        for banned in ("http://", "https://", "<script", "<link", "src="):
            self.assertNotIn(banned, self.html)
        self.assertIn(report.CSS, self.html)

    def test_several_runs_and_out_elsewhere(self):
        # the sweep and a loose run folder; the sweep's member given again is listed once
        loose = os.path.join(self.tmp, "loose", "local_L3_lam6")
        write_run(loose, "local", 3, 6, 2.25, 80.5, 950)
        pages = os.path.join(self.tmp, "pages")
        os.makedirs(pages, exist_ok=True)
        out = os.path.join(pages, "all.html")
        r = run_pareto([self.sweep, loose, os.path.join(self.sweep, "e2e_L1_lam5"), "--out", out])
        self.assertEqual(r.returncode, 0, r.stderr)
        with open(out, encoding="utf-8") as f:
            page = f.read()
        self.assertEqual(page[page.index("<table class=metrics>"):].count("<tr>"), 1 + len(SWEEP) + 1)
        # names carry their sweep's folder when several RUNs are given; links are relative to the page
        self.assertIn('<a href="../sweep/e2e_L2_lam1.5/report.html">sweep/e2e_L2_lam1.5</a>', page)
        self.assertIn('<a href="../loose/local_L3_lam6/">local_L3_lam6</a>', page)
        self.assertIn('<td title="2.25">2.25</td>', table_row(page, "local_L3_lam6"))
        self.assertEqual(series_groups(re.findall(r"<svg.*?</svg>", page, re.S)[0])["local · layer 3"].count("<circle"), 1)

    def expect_error(self, args, fragment, out):
        r = run_pareto(args + ["--out", out] if out else args)
        self.assertEqual(r.returncode, 1, r.stdout + r.stderr)
        lines = r.stderr.strip().splitlines()
        self.assertEqual(len(lines), 1, r.stderr)
        self.assertTrue(lines[0].startswith("error: "), lines[0])
        self.assertIn(fragment, lines[0])
        if out:
            self.assertFalse(os.path.exists(out), "an output file was written")
            self.assertFalse(os.path.exists(out + ".tmp"), "a temporary file was left")

    def test_bad_inputs(self):
        out = os.path.join(self.tmp, "bad.html")
        bad = os.path.join(self.tmp, "bad")
        # neither a sweep nor a run folder; not there at all
        os.makedirs(os.path.join(bad, "empty"))
        self.expect_error([os.path.join(bad, "empty")], "empty' is neither a sweep folder (sweep.json) nor a run folder", out)
        self.expect_error([os.path.join(bad, "nope")], "nope' not found", out)
        # a run whose log has no eval line, alone and in a sweep
        write_run(os.path.join(bad, "noeval"), "e2e", 2, 1.5, 0, 0, 0, evals=False)
        self.expect_error([os.path.join(bad, "noeval")], os.path.join(bad, "noeval", "log.jsonl") + "' has no eval line", out)
        sw = os.path.join(bad, "sweep_noeval")
        os.makedirs(sw)
        shutil.copytree(os.path.join(bad, "noeval"), os.path.join(sw, "e2e_L2_lam1.5"))
        shutil.copytree(os.path.join(self.sweep, "e2e_L2_lam5"), os.path.join(sw, "e2e_L2_lam5"))
        write_sweep(sw, ["e2e_L2_lam5", "e2e_L2_lam1.5"])
        self.expect_error([sw], os.path.join(sw, "e2e_L2_lam1.5", "log.jsonl") + "' has no eval line", None)
        self.assertFalse(os.path.exists(os.path.join(sw, "pareto.html")))
        # sweep.json: not JSON, no "saes", an entry without a name, a name whose folder is missing
        sj = os.path.join(sw, "sweep.json")
        for text, fragment in [('{"saes": [', "sweep.json' is not valid JSON"),
                               ('{"runs": []}', 'sweep.json\' must be an object with a non-empty "saes" array'),
                               ('[{"name": "e2e_L2_lam5"}]', 'sweep.json\' must be an object with a non-empty "saes" array'),
                               ('{"saes": [{"mode": "e2e"}]}', "sweep.json': saes[0] must be an object whose \"name\""),
                               ('{"saes": [{"name": "e2e_L2_lam5"}, {"name": "gone"}]}', "sweep.json' lists 'gone' but")]:
            with open(sj, "w") as f:
                f.write(text)
            self.expect_error([sw], fragment, out)
        self.assertFalse(os.path.exists(os.path.join(sw, "pareto.html")))
        # a log line that is not JSON; a cfg.json without the trainer's training object
        broken = os.path.join(bad, "broken_log")
        shutil.copytree(os.path.join(self.sweep, "e2e_L2_lam5"), broken)
        with open(os.path.join(broken, "log.jsonl"), "a") as f:
            f.write('{"step": 13, "loss"\n')
        self.expect_error([broken], "log.jsonl' line 17 is not JSON", out)
        foreign = os.path.join(bad, "foreign_cfg")
        shutil.copytree(os.path.join(self.sweep, "e2e_L2_lam5"), foreign)
        with open(os.path.join(foreign, "cfg.json"), "w") as f:
            json.dump({"d_in": 128, "d_sae": 1024, "metadata": {"hook_layer": 2}}, f)
        self.expect_error([foreign], "cfg.json' lacks the 'metadata' and 'training' objects", out)
        # --out: required for a run folder or several RUNs; its folder must exist
        self.expect_error([os.path.join(self.sweep, "e2e_L2_lam5")], "--out FILE is required", None)
        self.expect_error([self.sweep, os.path.join(self.sweep, "e2e_L2_lam5")], "--out FILE is required", None)
        self.expect_error([self.sweep], "not found", os.path.join(self.tmp, "no_such_dir", "p.html"))

    def test_bad_arguments(self):
        # argparse's errors too are one line and exit 1; --help still prints the usage and exits 0
        self.expect_error([], "pareto.py: the following arguments are required: RUN", None)
        out = os.path.join(self.tmp, "args.html")
        self.expect_error([self.sweep, "--bogus"], "pareto.py: unrecognized arguments: --bogus", out)
        r = run_pareto(["--help"])
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("usage: pareto.py", r.stdout)

    @unittest.skipUnless(os.access(TRAINER, os.X_OK), "./train_gpt2_sae_cpu not built (make train_gpt2_sae_cpu)")
    def test_real_runs(self):
        # two runs of one update each on the demo model (a few seconds): the page shows what their logs say
        sweep = os.path.join(self.tmp, "real")
        runs = {"e2e_lam1.5": ["--mode", "e2e", "--sparsity-coeff", "1.5"], "local_lam6": ["--mode", "local", "--sparsity-coeff", "6"]}
        for name, flags in runs.items():
            r = subprocess.run([TRAINER, "--out", os.path.join(sweep, name), "--samples", "8", "--eval-every", "8", "--eval-samples", "4",
                                "--dict-size", "256", "--warmup-samples", "0"] + flags, capture_output=True, text=True, cwd=ROOT, timeout=120)
            self.assertEqual(r.returncode, 0, r.stdout[-2000:] + r.stderr)
        with open(os.path.join(sweep, "sweep.json"), "w") as f:
            json.dump({"saes": [{"name": n} for n in runs]}, f)
        r = run_pareto([sweep])
        self.assertEqual(r.returncode, 0, r.stderr)
        with open(os.path.join(sweep, "pareto.html"), encoding="utf-8") as f:
            page = f.read()
        groups = series_groups(re.findall(r"<svg.*?</svg>", page, re.S)[0])
        self.assertEqual({k: v.count("<circle") for k, v in groups.items()}, {"local · layer 2": 1, "e2e · layer 2": 1})
        for name in runs:
            with open(os.path.join(sweep, name, "log.jsonl")) as f:
                last = [json.loads(l) for l in f if '"eval": true' in l][-1]
            row = table_row(page, name)
            for key in ("ce_increase", "l0", "alive", "kl", "explained_variance"):
                self.assertIn(f'<td title="{json.dumps(last[key])}">{report.fmt(last[key])}</td>', row)
            self.assertIn('<td title="256">256</td>', row)  # d_sae from cfg.json


if __name__ == "__main__":
    unittest.main()
