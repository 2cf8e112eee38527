#!/usr/bin/env python3
"""
Any feature of a --dump-features folder on demand: a small local web server with an index of
the features and one page per feature, or that page alone as a file.

    scripts/features.py serve RUN [--port 8000] [--host 127.0.0.1] [--tokenizer data/gpt2]
    scripts/features.py page RUN ID --out FILE [--tokenizer data/gpt2]

RUN is the folder --dump-features wrote (features.safetensors, features.json; llmc/feature_dump.h)
or a run folder holding one at RUN/features. The contexts are decoded from the val shards that
features.json names. The dump's reader (Dump) and the renderers of a feature's items live in
report.py, whose feature cards show the same items; this file adds the pages, the index and the
server.

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
import html
import http.server
import math
import os
import re
import sys
import urllib.parse

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from report import CSS, ArgParser, Dump, ablation_table, die, example_tables, fmt, hist_plot, logit_tables  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PAGE_SIZE, DEAD_PAGE_SIZE = 100, 500


# ----------------------------------------------------------------------------
# page pieces

EXTRA_CSS = """
nav { margin: 6px 0 12px; } nav a, .pager a { margin-right: 10px; } .cur { font-weight: 600; margin-right: 10px; }
.deadids a { display: inline-block; min-width: 3.5em; font-variant-numeric: tabular-nums; }
"""


def page(title, body):
    return (f"<!DOCTYPE html><html lang=en><head><meta charset=utf-8><title>{html.escape(title)}</title>"
            f"<style>{CSS}{EXTRA_CSS}</style></head><body>{body}</body></html>\n")


def section_logits(dump, d):
    intro = "" if dump.missing["logits"] else ("<p>The feature's decoder direction read by the unembedding: the tokens whose "
                                               "logits it raises most and lowers most.</p>")
    return "<h2>Logit effects</h2>" + intro + logit_tables(dump, d)


def section_hist(dump, d):
    intro = ""
    if not dump.missing["hist"] and dump.t["hist_counts"][d].any():
        edges = dump.t["hist_edges"]
        intro = f"<p>Bars at the ends: below {edges[0]:.3g} and from {edges[-1]:.3g} up. Hover a bar for its bin and count.</p>"
    return "<h2>Activation histogram</h2>" + intro + hist_plot(dump, d)


def section_examples(dump, d):
    top, bands = example_tables(dump, d, "h3")
    intro = "" if dump.missing["bands"] else ("<p>Examples from lower activations: each band is a range of fractions of the "
                                              "feature's max, highest first.</p>")
    return (f"<h2>Top activations</h2><p>The {dump.K} largest activations of the dump, each in its row of {dump.T} tokens "
            "(⟦ ⟧ mark the row's ends, ↵ a newline): every token shaded by the feature's activation on it relative to its max, "
            f"the activating token outlined; hover a token for its activation.</p>{top}<h2>Band examples</h2>{intro}{bands}")


def section_ablation(dump, d):
    intro = ("<p>With this feature alone zeroed in the spliced model, the mean change over the ablation's tokens:</p>"
             if d in dump.ablation else "")
    return "<h2>Ablation</h2>" + intro + ablation_table(dump, d)


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
    ap = ArgParser(description="Any SAE feature of a --dump-features folder on demand: a local server, or one page as a file")
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
