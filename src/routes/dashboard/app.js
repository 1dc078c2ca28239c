// semgate's operator dashboard: reads this gateway's /v1/cache/* API with
// the key typed in (kept in localStorage, sent as Bearer) and draws
// everything itself as SVG. Every value from the API is put in the page
// with textContent, never as HTML.
"use strict";
(function () {
  const KEY = "semgate.key", TENANT = "semgate.tenant";
  const SVG = "http://www.w3.org/2000/svg";
  const COLORS = { hits_exact: "var(--exact)", hits_semantic: "var(--semantic)",
                   misses: "var(--miss)", bypass: "var(--bypass)" };
  const $ = (id) => document.getElementById(id);
  let timer = null, busy = false;

  // a key may also arrive in the fragment (#key=...): it never reaches a
  // server log; it is moved to localStorage and the fragment cleared
  const m = /(?:^#|&)key=([^&]*)/.exec(location.hash);
  if (m) {
    localStorage.setItem(KEY, decodeURIComponent(m[1]));
    history.replaceState(null, "", location.pathname + location.search);
  }
  $("key").value = localStorage.getItem(KEY) || "";

  function headers() {
    const h = {}, k = localStorage.getItem(KEY), t = localStorage.getItem(TENANT);
    if (k) h.Authorization = "Bearer " + k;
    if (t && !$("tenantpick").hidden) h["X-Semgate-Tenant"] = t;
    return h;
  }

  async function api(path, method) {
    const r = await fetch(path, { method: method || "GET", headers: headers(), cache: "no-store" });
    if (r.status === 204) return null;
    let body = null;
    try { body = await r.json(); } catch (e) { body = null; }
    if (!r.ok) {
      const msg = body && body.error ? body.error.message : r.statusText;
      const err = new Error(r.status + ": " + msg);
      err.status = r.status;
      throw err;
    }
    return body;
  }

  const fmtInt = (n) => Number(n).toLocaleString("en-US");
  function fmtBytes(n) {
    const u = ["B", "KiB", "MiB", "GiB", "TiB"];
    let i = 0;
    while (n >= 1024 && i < u.length - 1) { n /= 1024; i++; }
    return (i ? n.toFixed(1) : String(n)) + " " + u[i];
  }
  const fmtPct = (r) => (r * 100).toFixed(1) + "%";
  const fmtCost = (c) => "$" + Number(c).toFixed(4);

  function el(tag, attrs, text) {
    const e = tag.startsWith("svg:") ? document.createElementNS(SVG, tag.slice(4))
                                     : document.createElement(tag);
    for (const k in attrs || {}) e.setAttribute(k, attrs[k]);
    if (text !== undefined) e.textContent = text;
    return e;
  }

  function showStats(st) {
    $("tenant").textContent = st.tenant;
    const f = { hit_rate: fmtPct, bytes: fmtBytes, estimated_cost_saved: fmtCost };
    for (const node of document.querySelectorAll("[data-stat]")) {
      const k = node.dataset.stat, v = st[k];
      node.textContent = v === undefined ? "–" : (f[k] || fmtInt)(v);
      node.dataset.value = String(v);  // the raw number, for tests and scripts
    }
  }

  function showTop(top) {
    const tb = $("top");
    tb.replaceChildren();
    if (!top.top.length) {
      const tr = el("tr");
      tr.appendChild(el("td", { colspan: "5", class: "empty" }, "no hits yet"));
      tb.appendChild(tr);
    }
    for (const row of top.top) {
      const tr = el("tr", { "data-id": row.id });
      tr.appendChild(el("td", { class: "q" }, row.query));
      tr.appendChild(el("td", {}, row.namespace || "–"));
      tr.appendChild(el("td", {}, row.kind));
      tr.appendChild(el("td", { class: "num hits" }, String(row.hits)));
      const td = el("td"), b = el("button", { type: "button", class: "invalidate" }, "Invalidate");
      b.addEventListener("click", async () => {
        if (!confirm("Delete this cached answer?\n\n" + row.query)) return;
        b.disabled = true;
        try { await api("/v1/cache/entries/" + encodeURIComponent(row.id), "DELETE"); }
        catch (e) { if (e.status !== 404) status(e.message); }
        refresh();
      });
      td.appendChild(b);
      tr.appendChild(td);
      tb.appendChild(tr);
    }
  }

  // a chart frame: returns {svg, x(i), y(v), w, h} over n points and max
  function frame(id, n, max, fmtY) {
    const c = $(id);
    const W = Math.max(200, Math.round(c.clientWidth || 600)), H = 180, L = 44, R = 10, T = 8, B = 22;
    const svg = el("svg:svg", { viewBox: `0 0 ${W} ${H}`, width: W, height: H });
    const x = (i) => L + (n <= 1 ? 0 : (i * (W - L - R)) / (n - 1));
    const y = (v) => T + (H - T - B) * (1 - (max > 0 ? v / max : 0));
    for (let k = 0; k <= 4; k++) {
      const v = (max * k) / 4;
      svg.appendChild(el("svg:line", { x1: L, x2: W - R, y1: y(v), y2: y(v), stroke: "#eceef2" }));
      svg.appendChild(el("svg:text", { x: L - 4, y: y(v) + 3, "text-anchor": "end" }, fmtY(v)));
    }
    c.replaceChildren(svg);
    return { svg, x, y, W, H, L, R, T, B };
  }

  function timeLabels(f, ts, span) {
    const n = ts.length, fmt = (t) => {
      const d = new Date(t * 1000);
      return span > 86400 ? d.toLocaleDateString("en-GB", { day: "2-digit", month: "short" }) + " " +
                            d.toTimeString().slice(0, 5)
                          : d.toTimeString().slice(0, 5);
    };
    for (let k = 0; k < 5 && n; k++) {
      const i = Math.round(((n - 1) * k) / 4);
      f.svg.appendChild(el("svg:text", { x: f.x(i), y: f.H - 6,
        "text-anchor": k === 0 ? "start" : k === 4 ? "end" : "middle" }, fmt(ts[i])));
    }
  }

  const niceInt = (v) => (v >= 1000 ? (v / 1000).toFixed(1) + "k" : String(Math.round(v * 10) / 10));

  function drawOutcomes(ts, span) {
    const keys = ["hits_exact", "hits_semantic", "misses", "bypass"], n = ts.t.length;
    let max = 0;
    for (let i = 0; i < n; i++) max = Math.max(max, keys.reduce((a, k) => a + ts[k][i], 0));
    const f = frame("chart-outcomes", n, Math.max(max, 1), niceInt);
    const bw = Math.max(1, (f.W - f.L - f.R) / Math.max(n, 1) - 1);
    for (let i = 0; i < n; i++) {
      let acc = 0;
      for (const k of keys) {
        const v = ts[k][i];
        if (!v) continue;
        const y0 = f.y(acc), y1 = f.y(acc + v);
        f.svg.appendChild(el("svg:rect", { x: f.x(i) - bw / 2, y: y1, width: bw, height: y0 - y1,
                                           fill: COLORS[k] }));
        acc += v;
      }
    }
    timeLabels(f, ts.t, span);
    const lg = $("legend-outcomes");
    lg.replaceChildren();
    for (const k of keys) {
      const s = el("span", { "data-total": k });
      const i = el("i");
      i.style.background = COLORS[k];
      s.appendChild(i);
      s.appendChild(document.createTextNode(k.replace("_", " ") + ": " + fmtInt(ts.totals[k])));
      lg.appendChild(s);
    }
  }

  function drawLine(id, ts, values, max, fmtY, color, span) {
    const f = frame(id, ts.t.length, max, fmtY);
    let d = "";
    values.forEach((v, i) => {
      if (v === null) return;
      d += (d && values[i - 1] !== null ? "L" : "M") + f.x(i).toFixed(1) + "," + f.y(v).toFixed(1);
    });
    if (d) f.svg.appendChild(el("svg:path", { d, fill: "none", stroke: color, "stroke-width": 2 }));
    // a point with no neighbour draws no line: mark it
    values.forEach((v, i) => {
      if (v !== null && (values[i - 1] ?? null) === null && (values[i + 1] ?? null) === null)
        f.svg.appendChild(el("svg:circle", { cx: f.x(i), cy: f.y(v), r: 3, fill: color }));
    });
    timeLabels(f, ts.t, span);
  }

  function drawSeries(ts, span) {
    drawOutcomes(ts, span);
    const rate = ts.t.map((_, i) => {
      const looked = ts.hits_exact[i] + ts.hits_semantic[i] + ts.misses[i];
      return looked ? (ts.hits_exact[i] + ts.hits_semantic[i]) / looked : null;
    });
    drawLine("chart-hitrate", ts, rate, 1, (v) => Math.round(v * 100) + "%", "var(--exact)", span);
    let acc = 0;
    const saved = ts.t.map((_, i) => (acc += ts.tokens_saved_prompt[i] + ts.tokens_saved_completion[i]));
    drawLine("chart-savings", ts, saved, Math.max(acc, 1), niceInt, "var(--semantic)", span);
    $("savings-total").textContent = "cumulative over the range: " +
      fmtInt(ts.totals.tokens_saved_prompt + ts.totals.tokens_saved_completion) +
      " tokens, " + fmtCost(ts.totals.cost_saved);
    const by = ts.totals.rejections_by_reason, reasons = Object.keys(by);
    const rmax = Math.max(1, ...reasons.map((r) => by[r]));
    const box = $("reasons");
    box.replaceChildren();
    for (const r of reasons) {
      const row = el("div", { class: "row", "data-reason": r });
      row.appendChild(el("span", {}, r));
      const track = el("div", { class: "track" }), bar = el("div", { class: "bar" });
      bar.style.width = ((100 * by[r]) / rmax).toFixed(1) + "%";
      if (!by[r]) bar.style.background = "transparent";
      track.appendChild(bar);
      row.appendChild(track);
      row.appendChild(el("span", { class: "n" }, fmtInt(by[r])));
      box.appendChild(row);
    }
    const kv = $("range-totals"), t = ts.totals;
    kv.replaceChildren();
    for (const [k, v] of [["requests", fmtInt(t.requests)], ["hit rate", fmtPct(t.hit_rate)],
                          ["hits exact", fmtInt(t.hits_exact)], ["hits semantic", fmtInt(t.hits_semantic)],
                          ["misses", fmtInt(t.misses)], ["bypassed", fmtInt(t.bypass)],
                          ["verifier rejections", fmtInt(t.rejections)],
                          ["tokens saved", fmtInt(t.tokens_saved_prompt + t.tokens_saved_completion)],
                          ["est. cost saved", fmtCost(t.cost_saved)]]) {
      const tr = el("tr");
      tr.appendChild(el("td", {}, k));
      tr.appendChild(el("td", {}, v));
      kv.appendChild(tr);
    }
  }

  // Prometheus histograms from /metrics: cumulative buckets per series
  const LATENCY = [
    ["chat completions", "semgate_http_request_duration_seconds", 'route="/v1/chat/completions"'],
    ["upstream LLM", "semgate_upstream_duration_seconds", ""],
    ["embedding", "semgate_embedding_duration_seconds", ""],
    ["vector search", "semgate_vector_search_duration_seconds", ""],
    ["Redis", "semgate_redis_duration_seconds", ""],
  ];

  function buckets(text, name, label) {
    const out = [];
    for (const line of text.split("\n")) {
      if (!line.startsWith(name + "_bucket{")) continue;
      const m = /le="([^"]+)"\}\s+(\S+)$/.exec(line);
      if (!m || (label && !line.includes(label))) continue;
      const le = m[1] === "+Inf" ? Infinity : Number(m[1]), n = Number(m[2]);
      const same = out.find((b) => b.le === le);  // several label sets: summed
      if (same) same.n += n; else out.push({ le, n });
    }
    return out.sort((a, b) => a.le - b.le);
  }

  // as PromQL's histogram_quantile: linear inside the bucket that holds q
  function quantile(q, bs) {
    const total = bs.length ? bs[bs.length - 1].n : 0;
    if (!total) return null;
    const rank = q * total;
    let prevLe = 0, prevN = 0;
    for (const b of bs) {
      if (b.n >= rank) {
        if (b.le === Infinity) return prevLe;
        return prevLe + (b.le - prevLe) * (b.n === prevN ? 0 : (rank - prevN) / (b.n - prevN));
      }
      prevLe = b.le;
      prevN = b.n;
    }
    return prevLe;
  }

  function fmtSec(s) {
    if (s === null) return "–";
    return s < 0.001 ? (s * 1e6).toFixed(0) + " µs" : s < 1 ? (s * 1000).toFixed(1) + " ms"
                                                         : s.toFixed(2) + " s";
  }

  function showLatency(text) {
    const tb = $("latency");
    tb.replaceChildren();
    for (const [title, name, label] of LATENCY) {
      const bs = buckets(text, name, label);
      const tr = el("tr", { "data-metric": name });
      tr.appendChild(el("td", {}, title));
      for (const q of [0.5, 0.95, 0.99]) {
        const v = quantile(q, bs);
        tr.appendChild(el("td", { class: "num", "data-q": String(q), "data-value": String(v) },
                          fmtSec(v)));
      }
      tr.appendChild(el("td", { class: "num" }, fmtInt(bs.length ? bs[bs.length - 1].n : 0)));
      tb.appendChild(tr);
    }
  }

  // this tenant's, over the range: the series' latency histograms (per
  // bucket counts, upper bounds in ms) made cumulative, in seconds
  function showTenantLatency(ts) {
    const tb = $("latency-tenant");
    tb.replaceChildren();
    const lat = (ts.totals || {}).latency_ms || {};
    for (const [title, kind] of [["your hits", "hit"], ["your upstream calls", "upstream"]]) {
      const h = lat[kind] || {};
      let cum = 0;
      const bs = Object.keys(h).map((k) => {
        cum += Number(h[k]);
        return { le: k === "inf" ? Infinity : Number(k) / 1000, n: cum };
      });
      const tr = el("tr", { "data-tenant-latency": kind });
      tr.appendChild(el("td", {}, title));
      for (const q of [0.5, 0.95, 0.99]) {
        const v = quantile(q, bs);
        tr.appendChild(el("td", { class: "num", "data-q": String(q), "data-value": String(v) },
                          v === null ? "–" : "≤ " + fmtSec(bucketTop(v, bs))));
      }
      tr.appendChild(el("td", { class: "num", "data-count": String(cum) }, fmtInt(cum)));
      tb.appendChild(tr);
    }
  }

  // the upper bound of the bucket a value falls in (the series' resolution)
  function bucketTop(v, bs) {
    for (const b of bs) if (v <= b.le) return b.le === Infinity ? v : b.le;
    return v;
  }

  function showCalibration(cal) {
    const th = cal.thresholds || [];
    const note = $("calibration-note");
    if (!th.length) {
      $("chart-calibration").replaceChildren(el("div", { class: "empty" },
        "no shadowed hits yet (SEMGATE_SHADOW=1 or X-Semgate-Shadow: 1)"));
      note.textContent = "";
      return;
    }
    // precision of every threshold at which a sample was seen, as a curve
    const f = frame("chart-calibration", th.length, 1, (v) => Math.round(v * 100) + "%");
    let d = "";
    th.forEach((t, i) => { d += (i ? "L" : "M") + f.x(i).toFixed(1) + "," + f.y(t.precision).toFixed(1); });
    f.svg.appendChild(el("svg:path", { d, fill: "none", stroke: "var(--exact)", "stroke-width": 2 }));
    th.forEach((t, i) => f.svg.appendChild(el("svg:circle", {
      cx: f.x(i), cy: f.y(t.precision), r: 2.5, fill: "var(--exact)",
      "data-threshold": String(t.threshold), "data-precision": String(t.precision),
      "data-would-hit": String(t.would_hit) })));
    for (const i of [0, th.length - 1])
      f.svg.appendChild(el("svg:text", { x: f.x(i), y: f.H - 6, "text-anchor": i ? "end" : "start" },
                           "threshold " + th[i].threshold.toFixed(2)));
    note.textContent = fmtInt(cal.samples) + " samples; lowest threshold with precision ≥ " +
      cal.target + ": " + (cal.recommended_threshold === null ? "none yet" : cal.recommended_threshold);
  }

  function status(msg) { $("status").textContent = msg || ""; }

  async function loadTenants() {
    // only an admin key may list tenants; anyone else gets 401/403/404
    try {
      const r = await api("/v1/admin/tenants");
      const sel = $("tenantsel"), cur = localStorage.getItem(TENANT) || r.tenants[0] || "";
      sel.replaceChildren();
      for (const t of r.tenants) sel.appendChild(el("option", { value: t }, t));
      sel.value = cur;
      localStorage.setItem(TENANT, sel.value);
      $("tenantpick").hidden = !r.tenants.length;
    } catch (e) {
      $("tenantpick").hidden = true;
    }
  }

  async function refresh() {
    if (busy) return;
    busy = true;
    const span = Number($("range").value), now = Math.floor(Date.now() / 1000);
    const step = span <= 3600 ? 60 : span <= 86400 ? 600 : 3600;
    const t0 = performance.now();
    try {
      // each part is drawn as soon as its answer is in: /stats scans the
      // tenant's entries and is the slow one with many of them
      await Promise.all([
        api("/v1/cache/stats").then(showStats),
        api("/v1/cache/top?limit=20").then(showTop),
        // 'to' is exclusive: now + 1 keeps this second's counts in
        api(`/v1/cache/timeseries?from=${now - span}&to=${now + 1}&step=${step}`)
          .then((ts) => { drawSeries(ts, span); showTenantLatency(ts); }),
        api("/v1/cache/calibration").then(showCalibration),
        fetch("/metrics", { cache: "no-store" }).then((r) => r.text()).then(showLatency)]);
      status("");
      const ms = Math.round(performance.now() - t0);
      $("updated").textContent = "Updated " + new Date().toTimeString().slice(0, 8) + " (" + ms + " ms).";
      document.body.dataset.loaded = String(Date.now());
      document.body.dataset.loadMs = String(ms);
    } catch (e) {
      status(e.status === 401 ? "401: enter a valid API key" : e.message);
      document.body.dataset.error = e.message;
    } finally {
      busy = false;
    }
  }

  $("keyform").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    localStorage.setItem(KEY, $("key").value.trim());
    await loadTenants();
    refresh();
  });
  $("tenantsel").addEventListener("change", () => {
    localStorage.setItem(TENANT, $("tenantsel").value);
    refresh();
  });
  $("range").addEventListener("change", refresh);
  loadTenants().then(refresh);
  timer = setInterval(refresh, 10000);
  void timer;
})();
