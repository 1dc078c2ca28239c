"""Hit quality end to end, through the running release gateway at its
defaults (see scripts/hitbench). For every labelled pair (a, b, y): a is
stored with POST /v1/cache/entries in a scope of its own, then b is looked
up in that scope four times: at the defaults with the verifier on and with
X-Semgate-Verify: off, and with threshold 0.01 in both modes, which gives
the similarity and the verifier's verdict for every global threshold.
Prints per file the served hits side by side, and writes a precision /
coverage plot by threshold (SVG) and a Markdown table. Reads the pair files
where they lie and writes none of their text."""
import csv
import http.client
import json
import os
import sys
import time

THRESHOLDS = [round(0.50 + 0.01 * i, 2) for i in range(50)]


class Gateway:
    def __init__(self, port):
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)

    def post(self, path, body, headers=None):
        h = {"Content-Type": "application/json", **(headers or {})}
        self.conn.request("POST", path, body=json.dumps(body), headers=h)
        r = self.conn.getresponse()
        data = r.read()
        if r.status not in (200, 201):
            raise SystemExit(f"{path}: {r.status} {data[:200]!r}")
        return json.loads(data)


def run_file(gw, path, tag):
    rows = []
    with open(path, newline="", encoding="utf-8") as f:
        for i, rec in enumerate(csv.DictReader(f)):
            scope = f"{tag}-{i}"
            gw.post("/v1/cache/entries", {"query": rec["a"], "answer": f"answer {i}",
                                          "scope": scope})
            on = gw.post("/v1/cache/lookup", {"query": rec["b"], "scope": scope})
            off = gw.post("/v1/cache/lookup", {"query": rec["b"], "scope": scope},
                          {"X-Semgate-Verify": "off"})
            low_on = gw.post("/v1/cache/lookup", {"query": rec["b"], "scope": scope,
                                                  "threshold": 0.01})
            low_off = gw.post("/v1/cache/lookup", {"query": rec["b"], "scope": scope,
                                                   "threshold": 0.01},
                              {"X-Semgate-Verify": "off"})
            sim = low_off.get("similarity", low_off.get("best_similarity")) or 0.0
            exact = low_off.get("match") == "exact"
            rows.append({"y": int(rec["y"]), "sim": 1.0 if exact else sim,
                         "passes": bool(low_on["hit"]), "on": bool(on["hit"]),
                         "off": bool(off["hit"])})
    return rows


def summary(rows, key):
    hits = [r for r in rows if r[key]]
    false = sum(1 for r in hits if r["y"] == 0)
    return len(hits), false


def curve(rows, verified):
    out = []
    n = len(rows)
    for t in THRESHOLDS:
        hits = [r for r in rows if r["sim"] >= t - 1e-9 and (r["passes"] or not verified)]
        false = sum(1 for r in hits if r["y"] == 0)
        out.append((t, len(hits), false, (len(hits) - false) / n if n else 0.0))
    return out


def best_coverage(c):
    ok = [(cov, t) for t, h, f, cov in c if h and (h - f) / h >= 0.99]
    return max(ok) if ok else (0.0, None)


def svg(curves, out):
    """Two panels, precision and coverage by threshold, one line per file
    and verifier mode (solid: strict, dashed: off)."""
    pw, ph, m, top = 380, 300, 50, 40
    n_leg = len(curves)
    w, h = 2 * pw + 3 * m, top + ph + m + 18 * n_leg + 20
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" '
             f'font-family="sans-serif" font-size="12">',
             f'<rect width="{w}" height="{h}" fill="white"/>']
    cov_max = max([cv for _, c in curves for _, _, _, cv in c] + [0.01])
    cov_max = min(1.0, (int(cov_max * 20) + 1) / 20)
    colors = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e"]
    files = []
    for name, _ in curves:
        f = name.rsplit(" ", 1)[0]
        if f not in files:
            files.append(f)
    for panel, (title, ymax) in enumerate((("precision of the hits served", 1.0),
                                           ("coverage (true hits / pairs)", cov_max))):
        x0 = m + panel * (pw + m)
        y0, y1, x1 = top + ph, top, x0 + pw

        def px(t, x0=x0, x1=x1):
            return x0 + (t - 0.5) / 0.5 * (x1 - x0)

        def py(v, y0=y0, y1=y1, ymax=ymax):
            return y0 - min(v, ymax) / ymax * (y0 - y1)
        parts.append(f'<text x="{(x0 + x1) / 2}" y="{top - 12}" text-anchor="middle">'
                     f'{title}</text>')
        for k in range(5):
            v = ymax * k / 4
            parts.append(f'<line x1="{x0}" y1="{py(v)}" x2="{x1}" y2="{py(v)}" stroke="#ddd"/>')
            parts.append(f'<text x="{x0 - 6}" y="{py(v) + 4}" text-anchor="end">'
                         f'{v:.2f}</text>')
        for t in (0.5, 0.6, 0.7, 0.8, 0.9, 1.0):
            parts.append(f'<text x="{px(t)}" y="{y0 + 16}" text-anchor="middle">{t:.1f}</text>')
        parts.append(f'<text x="{(x0 + x1) / 2}" y="{y0 + 32}" text-anchor="middle">'
                     f'threshold</text>')
        parts.append(f'<rect x="{x0}" y="{y1}" width="{pw}" height="{ph}" fill="none" '
                     f'stroke="black"/>')
        for name, c in curves:
            f, mode = name.rsplit(" ", 1)
            col = colors[files.index(f) % len(colors)]
            if panel == 0:
                pts = [(t, (hh - fl) / hh) for t, hh, fl, _ in c if hh]
            else:
                pts = [(t, cv) for t, _, _, cv in c]
            if not pts:
                continue
            d = " ".join(f"{px(t):.1f},{py(v):.1f}" for t, v in pts)
            dash = "" if mode == "strict" else ' stroke-dasharray="5,3"'
            parts.append(f'<polyline fill="none" stroke="{col}" stroke-width="1.5"{dash} '
                         f'points="{d}"/>')
    ly = top + ph + m + 4
    for name, _ in curves:
        f, mode = name.rsplit(" ", 1)
        col = colors[files.index(f) % len(colors)]
        dash = "" if mode == "strict" else ' stroke-dasharray="5,3"'
        parts.append(f'<line x1="{m}" y1="{ly - 4}" x2="{m + 30}" y2="{ly - 4}" stroke="{col}" '
                     f'stroke-width="1.5"{dash}/>')
        parts.append(f'<text x="{m + 38}" y="{ly}">{f}, verifier {mode}</text>')
        ly += 18
    parts.append("</svg>")
    with open(out, "w") as fh:
        fh.write("\n".join(parts) + "\n")


def main():
    port, outdir = int(sys.argv[1]), sys.argv[2]
    files = sys.argv[3:]
    gw = Gateway(port)
    md = ["| file | pairs | verifier | hits | false hits | true hits | precision | "
          "coverage | best coverage at >= 99 % precision (threshold) |",
          "|---|---|---|---|---|---|---|---|---|"]
    curves = []
    t0 = time.time()
    for k, path in enumerate(files):
        name = os.path.basename(path)
        rows = run_file(gw, path, f"f{k}")
        for key, verified, label in (("on", True, "strict (default)"),
                                     ("off", False, "off")):
            hits, false = summary(rows, key)
            c = curve(rows, verified)
            cov, t = best_coverage(c)
            curves.append((f"{name} {label.split()[0]}", c))  # "<file> strict|off"
            prec = f"{100.0 * (hits - false) / hits:.1f} %" if hits else "-"
            md.append(f"| {name} | {len(rows)} | {label} | {hits} | {false} | {hits - false} | "
                      f"{prec} | {100.0 * (hits - false) / len(rows):.2f} % | "
                      f"{100.0 * cov:.2f} % ({t if t is not None else '-'}) |")
    table = "\n".join(md)
    print(table)
    print(f"\n{sum(1 for _ in files)} files in {time.time() - t0:.1f} s; "
          f"coverage = true hits / pairs")
    svg(curves, os.path.join(outdir, "hitbench.svg"))
    with open(os.path.join(outdir, "hitbench.md"), "w") as f:
        f.write(table + "\n")
    print(f"wrote {outdir}/hitbench.md and {outdir}/hitbench.svg")


if __name__ == "__main__":
    main()
