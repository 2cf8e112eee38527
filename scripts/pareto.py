#!/usr/bin/env python3
"""
The Pareto page of an SAE sweep, as in the e2e SAE paper (Braun et al. 2024): SAEs trained in
modes local, e2e and e2e+ds at several layers and sparsity coefficients λ, compared by L0 and by
alive features against the CE increase of splicing them into the model.

    scripts/pareto.py RUN [RUN ...] [--out FILE]

Each RUN is a sweep folder (sweep.json, whose "saes" array lists objects with at least "name";
SAE NAME's run is RUN/NAME/) or one run folder (what the trainer's --out wrote: cfg.json and
log.jsonl). Each SAE is shown by its final eval: the eval line of its log with the highest step.
--out defaults to RUN/pareto.html for a single sweep folder and is required otherwise.

Writes one HTML file with inline SVG and report.py's CSS: no scripts, nothing fetched when it is
viewed. Each SAE links to its own page, NAME/report.html (or NAME/features/report.html, where
scripts/demo.sh and README put it) if there is one, else to its folder.

Needs Python 3 and numpy, as report.py does (Debian's /usr/bin/python3 has both). Every bad input ends with one line "error: ..." and exit code 1, and
nothing written. Left out: training curves and features (report.py's page per run), and
anything interactive.
"""
import html
import json
import math
import os
import sys
import urllib.parse


def die(msg):
    print(f"error: {msg}", file=sys.stderr)
    sys.exit(1)


# report.py's CSS, colours and number helpers, so the two pages look alike
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from report import COLORS, CSS, ArgParser, fmt, nice_ticks  # noqa: E402

# more series than report.py's six colours: then four more, then the same ones dashed
PALETTE = COLORS + ["#e377c2", "#17becf", "#bcbd22", "#7f7f7f"]
MODE_ORDER = {"local": 0, "e2e": 1, "e2e+ds": 2}
# the coefficients each mode trains with besides λ (train_config.h); the others are ignored
MODE_COEFFS = {"local": ["mse_coeff"], "e2e": ["kl_coeff"], "e2e+ds": ["kl_coeff", "ds_coeff"]}


def num(v):
    """a finite number from JSON, else None (null, a string, a bool)"""
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        return None
    return v


# ----------------------------------------------------------------------------
# inputs

def read_json(path):
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except OSError as e:
        die(f"could not read '{path}': {e.strerror}")
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        die(f"'{path}' is not valid JSON: {getattr(e, 'msg', e)}")


def final_eval(path):
    """the eval line with the highest step; when a step appears twice (a resumed run re-logs
    from its checkpoint) the later line wins, as in report.py"""
    if not os.path.isfile(path):
        die(f"'{path}' not found")
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except OSError as e:
        die(f"could not read '{path}': {e.strerror}")
    except UnicodeDecodeError:
        die(f"'{path}' is not UTF-8 text (a JSON-lines log)")
    evals = {}
    for lineno, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            die(f"'{path}' line {lineno} is not JSON: {e.msg}")
        if not isinstance(obj, dict) or num(obj.get("step")) is None:
            die(f"'{path}' line {lineno} has no numeric 'step'")
        if obj.get("eval"):
            evals[int(obj["step"])] = obj
    if not evals:
        die(f"'{path}' has no eval line (\"eval\": true): the run stopped before its first eval")
    return evals[max(evals)]


def read_run(folder, name):
    """one SAE: its settings from cfg.json (the trainer's SAELens export) and its final eval"""
    cfg_path = os.path.join(folder, "cfg.json")
    if not os.path.isfile(cfg_path):
        die(f"'{cfg_path}' not found: '{folder}' is not a run folder (the trainer's --out)")
    cfg = read_json(cfg_path)
    meta = cfg.get("metadata") if isinstance(cfg, dict) else None
    training = cfg.get("training") if isinstance(cfg, dict) else None
    if not isinstance(meta, dict) or not isinstance(training, dict):
        die(f"'{cfg_path}' lacks the 'metadata' and 'training' objects the sae.c trainers write")
    mode, lam, layer, d_sae = training.get("mode"), num(training.get("sparsity_coeff")), meta.get("hook_layer"), cfg.get("d_sae")
    if not isinstance(mode, str) or not mode:
        die(f"'{cfg_path}': training.mode must be a non-empty string, got {mode!r}")
    if lam is None:
        die(f"'{cfg_path}': training.sparsity_coeff must be a number, got {training.get('sparsity_coeff')!r}")
    if not isinstance(layer, int) or isinstance(layer, bool):
        die(f"'{cfg_path}': metadata.hook_layer must be an integer, got {layer!r}")
    if not isinstance(d_sae, int) or isinstance(d_sae, bool):
        die(f"'{cfg_path}': d_sae must be an integer, got {d_sae!r}")
    sae = {"name": name, "mode": mode, "layer": layer, "d_sae": d_sae, "sparsity_coeff": lam,
           "model": meta.get("model_name"), "eval": final_eval(os.path.join(folder, "log.jsonl"))}
    for key in ("kl_coeff", "mse_coeff", "ds_coeff"):
        sae[key] = num(training.get(key)) if key in MODE_COEFFS.get(mode, [key]) else None
    page = next((p for p in (os.path.join(folder, "report.html"), os.path.join(folder, "features", "report.html"))
                 if os.path.isfile(p)), None)
    sae["page"] = page or folder
    return sae


def read_sweep(folder):
    """-> [(name, run folder)] in sweep.json's order"""
    path = os.path.join(folder, "sweep.json")
    sweep = read_json(path)
    saes = sweep.get("saes") if isinstance(sweep, dict) else None
    if not isinstance(saes, list) or not saes:
        die(f"'{path}' must be an object with a non-empty \"saes\" array")
    out = []
    for i, entry in enumerate(saes):
        name = entry.get("name") if isinstance(entry, dict) else None
        if not isinstance(name, str) or not name.strip() or os.path.isabs(name):
            die(f"'{path}': saes[{i}] must be an object whose \"name\" is a folder name relative to the sweep, got {entry!r}")
        run = os.path.join(folder, name)
        if not os.path.isdir(run):
            die(f"'{path}' lists '{name}' but '{run}' is not a folder")
        out.append((name, run))
    return out


def collect(runs):
    """every SAE the RUN arguments name, each once (a run given both alone and in its sweep)"""
    saes, seen = [], set()
    for run in runs:
        if os.path.isfile(os.path.join(run, "sweep.json")):
            members = read_sweep(run)
            if len(runs) > 1:  # two sweeps may both hold a "local_l6": tell them apart by their sweep
                members = [(os.path.join(os.path.basename(os.path.normpath(run)), n), p) for n, p in members]
        elif os.path.isfile(os.path.join(run, "cfg.json")) and os.path.isfile(os.path.join(run, "log.jsonl")):
            members = [(os.path.basename(os.path.normpath(run)) or run, run)]
        elif not os.path.isdir(run):
            die(f"'{run}' not found")
        else:
            die(f"'{run}' is neither a sweep folder (sweep.json) nor a run folder (cfg.json and log.jsonl)")
        for name, folder in members:
            if os.path.realpath(folder) not in seen:
                seen.add(os.path.realpath(folder))
                saes.append(read_run(folder, name))
    saes.sort(key=lambda s: (MODE_ORDER.get(s["mode"], len(MODE_ORDER)), s["mode"], s["layer"], s["sparsity_coeff"], s["name"]))
    return saes


# ----------------------------------------------------------------------------
# the plots

def axis(values):
    """(lo, hi, ticks): round ticks that cover every value"""
    lo, hi = min(values), max(values)
    if hi == lo:
        lo, hi = lo - (abs(lo) * 0.1 or 1), hi + (abs(hi) * 0.1 or 1)
    ticks = nice_ticks(lo, hi)
    if ticks[-1] < hi:  # nice_ticks may stop one step short of hi
        ticks.append(round(ticks[-1] + ticks[1] - ticks[0], 12))
    return ticks[0], ticks[-1], ticks


def svg_pareto(title, series, xkey, xlabel, width=570, height=380):  # two fit side by side
    """series: [(label, SAEs in λ order)]; each SAE a point at (its final eval's xkey, CE
    increase), labelled with its λ and linking to its page; a series' points joined by a line.
    An SAE whose eval lacks either value is left out (the table still shows it)."""
    pts = [(label, [(num(s["eval"].get(xkey)), num(s["eval"].get("ce_increase")), s) for s in saes]) for label, saes in series]
    pts = [(label, [(x, y, s) for x, y, s in p if x is not None and y is not None]) for label, p in pts]
    if not any(p for _, p in pts):
        return f"<p>No SAE's final eval has both {html.escape(xlabel)} and the CE increase.</p>"
    x0, x1, xticks = axis([x for _, p in pts for x, _, _ in p])
    y0, y1, yticks = axis([y for _, p in pts for _, y, _ in p])
    ml, mr, mt, mb = 60, 150, 26, 36  # the legend sits in the right margin
    pw, ph = width - ml - mr, height - mt - mb
    sx = lambda x: ml + (x - x0) / (x1 - x0) * pw
    sy = lambda y: mt + ph - (y - y0) / (y1 - y0) * ph
    out = [f'<svg class="plot" width="{width}" height="{height}" viewBox="0 0 {width} {height}" role="img">',
           f'<title>{html.escape(title)}</title>',
           f'<text x="{ml}" y="16" class="ptitle">{html.escape(title)}</text>',
           f'<rect x="{ml}" y="{mt}" width="{pw}" height="{ph}" class="frame"/>']
    for t in yticks:
        out.append(f'<line x1="{ml}" x2="{ml + pw}" y1="{sy(t):.1f}" y2="{sy(t):.1f}" class="grid"/>'
                   f'<text x="{ml - 4}" y="{sy(t) + 3:.1f}" class="tick" text-anchor="end">{fmt(t, 3)}</text>')
    for t in xticks:
        out.append(f'<line x1="{sx(t):.1f}" x2="{sx(t):.1f}" y1="{mt}" y2="{mt + ph}" class="grid"/>'
                   f'<text x="{sx(t):.1f}" y="{mt + ph + 14}" class="tick" text-anchor="middle">{fmt(t, 3)}</text>')
    out.append(f'<text x="{ml + pw / 2}" y="{height - 4}" class="tick" text-anchor="middle">{html.escape(xlabel)}</text>'
               f'<text transform="translate(12 {mt + ph / 2}) rotate(-90)" class="tick" text-anchor="middle">CE increase (nats)</text>')
    legend_y = mt + 8
    for i, (label, p) in enumerate(pts):
        if not p:
            continue
        color = PALETTE[i % len(PALETTE)]
        dash = ' stroke-dasharray="5 3"' if i >= len(PALETTE) else ""
        out.append(f'<g class="series" data-series="{html.escape(label)}">')
        path = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y, _ in p)
        out.append(f'<polyline points="{path}" fill="none" stroke="{color}" stroke-width="1.5"{dash}/>')
        for x, y, s in p:
            tip = f"{s['name']}: λ {fmt(s['sparsity_coeff'])}, {xlabel} {fmt(x)}, CE increase {fmt(y)}"
            out.append(f'<a href="{html.escape(s["href"])}"><circle cx="{sx(x):.1f}" cy="{sy(y):.1f}" r="3" fill="{color}">'
                       f'<title>{html.escape(tip)}</title></circle></a>'
                       f'<text x="{sx(x) + 4:.1f}" y="{sy(y) - 4:.1f}" class="lam" style="fill:{color}">{fmt(s["sparsity_coeff"])}</text>')
        out.append("</g>")
        lx = ml + pw + 12
        out.append(f'<line x1="{lx}" x2="{lx + 18}" y1="{legend_y}" y2="{legend_y}" stroke="{color}" stroke-width="1.5"{dash}/>'
                   f'<circle cx="{lx + 9}" cy="{legend_y}" r="3" fill="{color}"/>'
                   f'<text x="{lx + 24}" y="{legend_y + 3}" class="tick">{html.escape(label)}</text>')
        legend_y += 15
    out.append(f'<text x="{ml + pw + 12}" y="{legend_y + 6}" class="tick">labels: λ</text></svg>')
    return "".join(out)


# ----------------------------------------------------------------------------
# the table and the page

SETTING_COLUMNS = [("mode", "mode"), ("layer", "layer"), ("d_sae", "d_sae"), ("sparsity_coeff", "λ"),
                   ("kl_coeff", "KL coeff"), ("mse_coeff", "MSE coeff"), ("ds_coeff", "ds coeff")]
EVAL_COLUMNS = [("step", "step"), ("tokens", "eval tokens"), ("ce_clean", "CE clean"), ("ce_spliced", "CE spliced"),
                ("ce_increase", "CE increase"), ("kl", "KL"), ("l0", "L0"), ("alive", "alive"), ("dead", "dead"),
                ("explained_variance", "expl. var."), ("top1_agree", "top-1 agree"), ("mse", "MSE"), ("ds_mse", "ds MSE")]


def cell(v):
    """the value to 4 digits, the exact logged number on hover; a list (ds_mse per layer) joined"""
    if isinstance(v, list):
        return f'<td title="{html.escape(json.dumps(v))}">{", ".join(fmt(x) for x in v)}</td>'
    if isinstance(v, str):
        return f"<td class=name>{html.escape(v)}</td>"
    if num(v) is None:
        return "<td>–</td>"
    return f'<td title="{json.dumps(v)}">{fmt(v)}</td>'


def section_table(saes):
    def shown(v):
        return num(v) is not None or (isinstance(v, list) and len(v) > 0) or isinstance(v, str)

    settings = [(k, t) for k, t in SETTING_COLUMNS if any(shown(s[k]) for s in saes)]
    evals = [(k, t) for k, t in EVAL_COLUMNS if any(shown(s["eval"].get(k)) for s in saes)]
    head = "<th>SAE</th>" + "".join(f"<th>{html.escape(t)}</th>" for _, t in settings + evals)
    rows = []
    for s in saes:
        link = f'<td class=name><a href="{html.escape(s["href"])}">{html.escape(s["name"])}</a></td>'
        rows.append(f'<tr>{link}{"".join(cell(s[k]) for k, _ in settings)}{"".join(cell(s["eval"].get(k)) for k, _ in evals)}</tr>')
    return (f"<h2>Final evals</h2><p>Sorted by mode, layer and λ. Hover a number for the value the log holds; "
            f"– is a value the log or the mode does not have.</p>"
            f"<div class=wide><table class=metrics><tr>{head}</tr>{''.join(rows)}</table></div>")


def page(runs, saes):
    series = {}
    for s in saes:  # saes are sorted by mode, layer, λ: each series comes out in λ order
        series.setdefault(f"{s['mode']} · layer {s['layer']}", []).append(s)
    series = list(series.items())
    title = f"SAE sweep: {len(saes)} SAE{'s' if len(saes) != 1 else ''}, {len(series)} (mode, layer) series"
    models = sorted({str(s["model"]) for s in saes})
    tokens = sorted({s["eval"]["tokens"] for s in saes if num(s["eval"].get("tokens")) is not None})
    info = (f"<tr><td>runs</td><td>{html.escape(' '.join(runs))}</td></tr>"
            f"<tr><td>model</td><td>{html.escape(', '.join(models))}</td></tr>"
            f"<tr><td>eval tokens</td><td>{', '.join(fmt(t) for t in tokens) or '–'}</td></tr>")
    warn = ""
    if len(models) > 1 or len(tokens) > 1:
        warn = "<p><b>These SAEs were evaluated on different models or numbers of tokens: their CE increases are not comparable.</b></p>"
    plots = [svg_pareto("L0 against CE increase", series, "l0", "L0 (active features per token)"),
             svg_pareto("Alive features against CE increase", series, "alive", "alive features (fired on the eval rows)")]
    css = CSS + ".lam { font-size: 9px; } table.metrics td.name { text-align: left; } .wide { overflow-x: auto; }\n"
    return "".join([
        "<!DOCTYPE html><html lang=en><head><meta charset=utf-8>",
        f"<title>{html.escape(title)}</title><style>{css}</style></head><body>",
        f"<h1>{html.escape(title)}</h1><table class=meta>{info}</table>{warn}",
        "<h2>Pareto frontiers</h2><p>Each point is an SAE's final eval (the last eval line of its log.jsonl), labelled with its λ "
        "(the sparsity coefficient) and linking to its page; the points of one mode and layer are joined in order of λ. "
        "In the L0 plot lower and further left is better: fewer active features per token for the same CE increase; "
        "the alive plot shows how many of its d_sae features each SAE still uses. λ is not comparable across modes (README).</p>",
        f"<div class=plots>{''.join(plots)}</div>",
        section_table(saes),
        "</body></html>\n"])


def main():
    ap = ArgParser(description="Pareto page of an SAE sweep: L0 and alive features against CE increase")
    ap.add_argument("runs", nargs="+", metavar="RUN", help="a sweep folder (sweep.json) or a run folder (cfg.json, log.jsonl)")
    ap.add_argument("--out", help="HTML file to write [RUN/pareto.html for a single sweep folder]")
    args = ap.parse_args()

    saes = collect(args.runs)
    out = args.out
    if out is None:
        if len(args.runs) != 1 or not os.path.isfile(os.path.join(args.runs[0], "sweep.json")):
            die("--out FILE is required unless the only RUN is a sweep folder")
        out = os.path.join(args.runs[0], "pareto.html")
    out_dir = os.path.dirname(os.path.abspath(out))
    if not os.path.isdir(out_dir):
        die(f"--out '{out}': folder '{out_dir}' not found")
    for s in saes:  # links relative to the page, so the sweep folder can be moved or served as a whole
        rel = os.path.relpath(os.path.abspath(s["page"]), out_dir).replace(os.sep, "/")
        s["href"] = urllib.parse.quote(rel, safe="/+") + ("/" if os.path.isdir(s["page"]) else "")

    tmp = out + ".tmp"
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(page(args.runs, saes))
        os.replace(tmp, out)
    except OSError as e:
        if os.path.exists(tmp):
            os.remove(tmp)
        die(f"could not write '{out}': {e.strerror}")
    print(f"wrote {out} ({len(saes)} SAEs)")


if __name__ == "__main__":
    main()
