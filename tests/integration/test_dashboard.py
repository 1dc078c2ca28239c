"""GET /dashboard in a real browser (Debian's chromium, headless): the page
is served from the binary with a policy that lets it call only the gateway,
and after known traffic the numbers and questions it shows are exactly
those of /v1/cache/stats and /v1/cache/top for the key's tenant, never
another tenant's; without a key it shows the 401; an admin key
(SEMGATE_ADMIN_KEYS) lists every tenant and reads any one, and nothing
else; the Invalidate button, clicked in a live browser driven over the
DevTools protocol, deletes the entry. Screenshots go to the build
directory."""
import base64
import html.parser
import os
import re
import shutil
import subprocess
import tempfile
import time

import pytest
import requests

from conftest import BUILD, SLOW, user, wait_until
import keys as K

KEYS = "key-alpha:alpha,key-beta:beta"
ADMIN = {"Authorization": "Bearer key-admin"}
A = {"Authorization": "Bearer key-alpha"}
B = {"Authorization": "Bearer key-beta"}
CHROMIUM = shutil.which("chromium")


class Dom(html.parser.HTMLParser):
    """The elements the test reads: data-stat values, top rows, status."""

    def __init__(self):
        super().__init__()
        self.stats, self.rows, self.body, self.by_id, self.options = {}, [], {}, {}, []
        self.latency, self.cur_metric = {}, None
        self.tenant_lat, self.cur_tlat = {}, None
        self.stack, self.status = [], ""
        self.cur_row = None

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "body":
            self.body = a
        if a.get("id"):
            self.by_id[a["id"]] = a
        if tag == "option" and self.stack and self.stack[-1] == "tenantsel":
            self.options.append(a.get("value"))
        if "data-stat" in a:
            self.stats[a["data-stat"]] = a.get("data-value")
        if tag == "tr" and "data-metric" in a:
            self.cur_metric = a["data-metric"]
        if tag == "tr" and "data-tenant-latency" in a:
            self.cur_tlat = a["data-tenant-latency"]
        if tag == "td" and "data-count" in a and self.cur_tlat:
            self.tenant_lat[self.cur_tlat] = int(a["data-count"])
        if tag == "td" and "data-q" in a and self.cur_metric:
            self.latency[(self.cur_metric, a["data-q"])] = a.get("data-value")
        if tag == "tr" and "data-id" in a:
            self.cur_row = {"id": a["data-id"], "cells": []}
            self.rows.append(self.cur_row)
        if tag == "td" and self.cur_row is not None:
            self.cur_row["cells"].append("")
        self.stack.append(a.get("id"))

    def handle_endtag(self, tag):
        if self.stack:
            self.stack.pop()
        if tag == "tr":
            self.cur_row = self.cur_metric = None

    def handle_data(self, data):
        if self.cur_row is not None and self.cur_row["cells"]:
            self.cur_row["cells"][-1] += data
        if self.stack and self.stack[-1] == "status":
            self.status += data


def chromium(url, *extra, budget_ms=8000, size="1280,1600"):
    assert CHROMIUM, "chromium is needed (scripts/deps installs it)"
    with tempfile.TemporaryDirectory(prefix="semgate-chromium-") as profile:
        t0 = time.monotonic()
        r = subprocess.run(
            [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
             "--disable-extensions", "--disable-background-networking", "--disable-sync",
             "--no-default-browser-check", "--disable-component-update",
             f"--user-data-dir={profile}", f"--virtual-time-budget={budget_ms}",
             f"--window-size={size}", *extra, url],
            capture_output=True, text=True, timeout=120 * SLOW)
        took = time.monotonic() - t0
    assert r.returncode == 0, r.stderr[-3000:]
    return r.stdout, took


def dump(url):
    out, took = chromium(url, "--dump-dom")
    d = Dom()
    d.feed(out)
    return d, out, took


def quantile(q, bs):
    """histogram_quantile over cumulative (le, count) buckets."""
    total = bs[-1][1]
    rank, prev_le, prev_n = q * total, 0.0, 0.0
    for le, n in bs:
        if n >= rank:
            if le == float("inf"):
                return prev_le
            return prev_le + (le - prev_le) * (0 if n == prev_n else (rank - prev_n) / (n - prev_n))
        prev_le, prev_n = le, n
    return prev_le


def traffic(g, upstream):
    """alpha: 10 exact lookups (4 misses, 6 hits), one semantic hit, one
    verifier refusal (a miss), one bypass; beta: 1 miss, 2 hits."""
    for q, n in (("How do I reset my password?", 4), ("What are your opening hours?", 3),
                 ("Where is my order <b>#42</b>?", 2), ("Do you ship abroad?", 1)):
        for _ in range(n):
            assert g.chat(user(q), headers=A).status_code == 200
    near = "how do I reset my password"
    upstream.set_similarity(near, "How do I reset my password?", 0.97)
    assert g.chat(user(near), headers=A).headers["X-Semgate-Cache"] == "hit-semantic"
    dated = "What are your opening hours on March 3?"
    upstream.set_similarity(dated, "What are your opening hours?", 0.97)
    assert g.chat(user(dated), headers=A).headers["X-Semgate-Verify"].startswith("rejected=")
    nostore = dict(A, **{"Cache-Control": "no-store"})
    assert g.chat(user("anything"), headers=nostore).headers["X-Semgate-Cache"] == "bypass"
    for _ in range(3):
        assert g.chat(user("beta's secret question"), headers=B).status_code == 200


@pytest.fixture
def dash_gateway(make_gateway, redis_db, upstream):
    g = make_gateway(SEMGATE_API_KEYS=KEYS, SEMGATE_ADMIN_KEYS="key-admin",
                     SEMGATE_PRICE_PROMPT_PER_1K="0.5",
                     SEMGATE_PRICE_COMPLETION_PER_1K="2")
    traffic(g, upstream)
    return g


def test_page_is_self_contained_and_calls_only_the_gateway(dash_gateway):
    r = requests.get(dash_gateway.url + "/dashboard", timeout=10)
    assert r.status_code == 200
    assert r.headers["Content-Type"].startswith("text/html")
    csp = r.headers["Content-Security-Policy"]
    assert "default-src 'none'" in csp and "connect-src 'self'" in csp
    assert "'unsafe-inline'" not in csp
    body = r.text
    assert "<script>" in body and "<style>" in body
    # nothing is loaded from anywhere: no src/href to another origin
    for needle in ("http://", "https://", "src=", "<link"):
        assert needle not in body.replace("http://www.w3.org/2000/svg", ""), needle


def test_browser_shows_exactly_stats_and_top_of_the_keys_tenant(dash_gateway):
    g = dash_gateway
    d, out, took = dump(g.url + "/dashboard#key=key-alpha")
    assert d.body.get("data-loaded"), (d.status, out[-2000:])
    print(f"\ndashboard: {took:.2f} s in the browser, start-up included")
    st = requests.get(g.url + "/v1/cache/stats", headers=A, timeout=10).json()
    top = requests.get(g.url + "/v1/cache/top?limit=20", headers=A, timeout=10).json()["top"]
    assert st["tenant"] == "alpha" and st["hits"] == 7 and st["misses"] == 5
    for k in ("hit_rate", "lookups", "hits_exact", "hits_semantic", "misses", "tokens_saved",
              "estimated_cost_saved", "entries", "bytes"):
        assert float(d.stats[k]) == pytest.approx(st[k]), k
    shown = [(r["id"], r["cells"][0], int(r["cells"][3])) for r in d.rows]
    assert shown == [(t["id"], t["query"], t["hits"]) for t in top]
    assert len(shown) == 3  # the question asked once was never hit
    assert [s[2] for s in shown] == [4, 2, 1]
    assert "Where is my order <b>#42</b>?" in [s[1] for s in shown]  # text, not markup
    assert "beta" not in out and "secret" not in out
    # latency percentiles as PromQL's histogram_quantile gives them from /metrics
    # (the upstream histogram: the page's own calls do not move it)
    m = requests.get(g.url + "/metrics", timeout=10).text
    name = "semgate_upstream_duration_seconds"
    bs = [(float("inf") if le == "+Inf" else float(le), float(n)) for le, n in
          re.findall(name + r'_bucket\{le="([^"]+)"\} (\S+)', m)]
    for q in ("0.5", "0.95", "0.99"):
        assert float(d.latency[(name, q)]) == pytest.approx(quantile(float(q), bs), rel=1e-9), q
    # the tenant's own latency rows count its series' histograms, not the gateway's
    now = int(time.time())
    ts = requests.get(g.url + f"/v1/cache/timeseries?from={now - 3600}&to={now + 60}&step=60",
                      headers=A, timeout=10).json()["totals"]["latency_ms"]
    assert d.tenant_lat == {"hit": sum(ts["hit"].values()),
                            "upstream": sum(ts["upstream"].values())}, d.tenant_lat
    assert d.tenant_lat["hit"] == 7  # alpha's 7 hits; beta's requests are not in it
    # a screenshot of the same page, for the README
    png = os.path.join(BUILD, "dashboard.png")
    if os.path.exists(png):
        os.unlink(png)
    chromium(g.url + "/dashboard#key=key-alpha", f"--screenshot={png}", "--hide-scrollbars",
             size="1280,1720")
    assert os.path.getsize(png) > 10000


def test_other_tenant_sees_only_its_own(dash_gateway):
    d, out, _ = dump(dash_gateway.url + "/dashboard#key=key-beta")
    assert d.body.get("data-loaded")
    assert d.stats["lookups"] == "3" and d.stats["hits_exact"] == "2"
    assert [r["cells"][0] for r in d.rows] == ["beta's secret question"]
    for q in ("reset my password", "opening hours", "ship abroad", "my order"):
        assert q not in out


def test_no_key_or_a_wrong_key_shows_401_and_no_numbers(dash_gateway):
    assert requests.get(dash_gateway.url + "/v1/cache/stats", timeout=10).status_code == 401
    for frag in ("", "#key=not-a-key"):
        d, out, _ = dump(dash_gateway.url + "/dashboard" + frag)
        assert "401" in d.status, d.status
        assert not d.body.get("data-loaded")
        assert all(v is None for v in d.stats.values())
        assert d.rows == []
        assert "reset my password" not in out


def test_admin_key_lists_tenants_and_reads_any_one(dash_gateway):
    g = dash_gateway
    get = lambda path, h: requests.get(g.url + path, headers=h, timeout=10)
    r = get("/v1/admin/tenants", ADMIN)
    assert r.status_code == 200 and r.json() == {"tenants": ["alpha", "beta"]}
    assert get("/v1/admin/tenants", A).status_code == 403
    assert get("/v1/admin/tenants", {}).status_code == 401
    for t, h in (("alpha", A), ("beta", B)):
        mine = get("/v1/cache/stats", h).json()
        via_admin = get("/v1/cache/stats", dict(ADMIN, **{"X-Semgate-Tenant": t})).json()
        assert via_admin["tenant"] == t
        assert {k: v for k, v in via_admin.items() if k != "bytes"} == \
            {k: v for k, v in mine.items() if k != "bytes"}
    # a tenant key cannot borrow the header
    assert get("/v1/cache/stats", dict(A, **{"X-Semgate-Tenant": "beta"})).json()["tenant"] == "alpha"
    for bad in (None, "", "no spaces", "*", "x" * 65):
        h = dict(ADMIN) if bad is None else dict(ADMIN, **{"X-Semgate-Tenant": bad})
        r = get("/v1/cache/stats", h)
        assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_tenant", bad
    r = requests.post(g.url + "/v1/chat/completions", headers=dict(ADMIN, **{"X-Semgate-Tenant": "alpha"}),
                      json={"model": "m", "messages": user("hi")}, timeout=10)
    assert r.status_code == 403 and r.json()["error"]["type"] == "permission_error"
    # the dashboard with the admin key offers every tenant and shows the first
    d, out, _ = dump(g.url + "/dashboard#key=key-admin")
    assert d.body.get("data-loaded"), d.status
    assert "hidden" not in d.by_id["tenantpick"]
    assert d.options == ["alpha", "beta"]
    st = get("/v1/cache/stats", A).json()
    assert float(d.stats["lookups"]) == st["lookups"]
    assert "reset my password" in out.lower()


def test_load_time_with_100k_entries_and_7_days_of_series(make_gateway, redis_db, upstream):
    """Measured, not asserted: the browser's time to load the page and its
    data, and each API call it makes, with 100,000 entries and 7 days of
    minute and hour hashes in the tenant's Redis."""
    now = int(time.time())
    p = redis_db.pipeline(transaction=False)
    for i in range(100_000):
        p.hset(K.entry("alpha", f"{i:032x}"), mapping={
            "query": f"question number {i}", "answer": "a" * 40, "namespace": "",
            "scope": "0" * 64, "kind": "text", "tags": "", "created": now, "hits": 0,
            "tokens": 0, "model": "", "dim": 0})
        p.expire(K.entry("alpha", f"{i:032x}"), 3600)
        if i % 5000 == 4999:
            p.execute()
    for m in range(now // 60 - 7 * 1440, now // 60 + 1):
        p.hset(K.series("alpha", False, m), mapping={"requests": 10, "hits_exact": 6, "misses": 4,
                                              "tokens_saved_prompt": 60})
        p.expire(K.series("alpha", False, m), 3600)
    for h in range(now // 3600 - 7 * 24, now // 3600 + 1):
        p.hset(K.series("alpha", True, h), mapping={"requests": 600, "hits_exact": 360,
                                              "misses": 240, "tokens_saved_prompt": 3600})
        p.expire(K.series("alpha", True, h), 3600)
    p.execute()
    g = make_gateway(SEMGATE_API_KEYS=KEYS)
    # entries written behind the gateway's back, as by an older version: the
    # first stats read rebuilds the O(1) accounting once (one SCAN); timed
    # apart, so the page's load below is the steady state operators see
    t0 = time.monotonic()
    assert requests.get(g.url + "/v1/cache/stats", headers=A, timeout=120).status_code == 200
    rebuild_ms = 1000 * (time.monotonic() - t0)
    d, out, took = dump(g.url + "/dashboard#key=key-alpha")
    assert d.body.get("data-loaded"), d.status
    assert d.stats["entries"] == "100000"
    # the page's own clock runs on virtual time under --virtual-time-budget,
    # so the real cost is measured here: the browser's whole run (start-up
    # included) and each call the page makes
    _, base = chromium("about:blank", "--dump-dom")
    calls = {}
    for path in ("/v1/cache/stats", "/v1/cache/top?limit=20",
                 f"/v1/cache/timeseries?from={now - 3600}&to={now}&step=60"):
        t0 = time.monotonic()
        assert requests.get(g.url + path, headers=A, timeout=30).status_code == 200
        calls[path.split("?")[0].rsplit("/", 1)[1]] = 1000 * (time.monotonic() - t0)
    print(f"\ndashboard with 100k entries: {took:.2f} s in the browser "
          f"(an empty page: {base:.2f} s; the one-time accounting rebuild before it: "
          f"{rebuild_ms:.0f} ms); its calls: " +
          ", ".join(f"{k} {v:.0f} ms" for k, v in calls.items()))
    # the week view reads the hour hashes: the page's request, timed here
    t0 = time.monotonic()
    r = requests.get(g.url + f"/v1/cache/timeseries?from={now - 604800}&to={now}&step=3600",
                     headers=A, timeout=30)
    assert r.status_code == 200 and r.json()["totals"]["requests"] >= 600 * 168
    t1 = time.monotonic()
    r = requests.get(g.url + f"/v1/cache/timeseries?from={now - 604800}&to={now}&step=600",
                     headers=A, timeout=30)
    assert r.status_code == 200 and r.json()["totals"]["requests"] >= 10 * 7 * 1440
    t2 = time.monotonic()
    print(f"7 days of series: {1000 * (t1 - t0):.0f} ms by hour, "
          f"{1000 * (t2 - t1):.0f} ms from 10080 minute hashes")


class Cdp:
    """Just enough of the DevTools protocol over a websocket (RFC 6455,
    stdlib only) to evaluate script in a page: headless Chromium started
    with a debugging port, driven like a user."""

    def __init__(self, url):
        import json
        import socket
        self.json = json
        self.profile = tempfile.mkdtemp(prefix="semgate-cdp-")
        self.proc = subprocess.Popen(
            [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
             "--disable-extensions", "--disable-background-networking", "--disable-sync",
             "--no-default-browser-check", "--disable-component-update",
             f"--user-data-dir={self.profile}", "--remote-debugging-port=0",
             "--window-size=1280,1340", url],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        port_file = os.path.join(self.profile, "DevToolsActivePort")
        port = int(wait_until(lambda: os.path.exists(port_file) and
                              open(port_file).read().split("\n")[0], what="devtools port"))
        pages = wait_until(lambda: [p for p in requests.get(
            f"http://127.0.0.1:{port}/json/list", timeout=5).json() if p["type"] == "page"],
            what="the page target")
        path = pages[0]["webSocketDebuggerUrl"].split(str(port), 1)[1]
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=30)
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall((f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
                           "Upgrade: websocket\r\nConnection: Upgrade\r\n"
                           f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n")
                          .encode())
        head = b""
        while b"\r\n\r\n" not in head:
            head += self.sock.recv(1)
        assert head.startswith(b"HTTP/1.1 101"), head
        self.next_id = 0

    def _send(self, text):
        data = text.encode()
        mask = os.urandom(4)
        n = len(data)
        hdr = bytes([0x81]) + (bytes([0x80 | n]) if n < 126 else
                               bytes([0x80 | 126]) + n.to_bytes(2, "big") if n < 65536 else
                               bytes([0x80 | 127]) + n.to_bytes(8, "big"))
        self.sock.sendall(hdr + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(data)))

    def _exact(self, n):
        buf = b""
        while len(buf) < n:
            chunk = self.sock.recv(n - len(buf))
            assert chunk, "devtools connection closed"
            buf += chunk
        return buf

    def _recv(self):
        msg = b""
        while True:
            b0, b1 = self._exact(2)
            n = b1 & 0x7F
            if n == 126:
                n = int.from_bytes(self._exact(2), "big")
            elif n == 127:
                n = int.from_bytes(self._exact(8), "big")
            msg += self._exact(n)
            if b0 & 0x80:
                return msg.decode()

    def eval(self, expr):
        self.next_id += 1
        self._send(self.json.dumps({"id": self.next_id, "method": "Runtime.evaluate",
                                    "params": {"expression": expr, "returnByValue": True,
                                               "awaitPromise": True}}))
        while True:
            m = self.json.loads(self._recv())
            if m.get("id") == self.next_id:
                assert "exceptionDetails" not in m["result"], m
                return m["result"]["result"].get("value")

    def close(self):
        self.sock.close()
        self.proc.kill()
        self.proc.wait()
        shutil.rmtree(self.profile, ignore_errors=True)


def test_invalidate_button_deletes_the_entry_in_a_live_browser(dash_gateway):
    g = dash_gateway
    top = requests.get(g.url + "/v1/cache/top", headers=A, timeout=10).json()["top"]
    victim = top[0]
    b = Cdp(g.url + "/dashboard#key=key-alpha")
    try:
        wait_until(lambda: b.eval("document.body.dataset.loaded || ''"), what="the page to load")
        print(f"\ndashboard in a live browser: data in {b.eval('document.body.dataset.loadMs')} ms")
        assert b.eval("[...document.querySelectorAll('#top tr[data-id]')].map(r => r.dataset.id)") \
            == [t["id"] for t in top]
        b.eval("window.confirm = () => true; document.querySelector("
               f"'#top tr[data-id=\"{victim['id']}\"] button.invalidate').click(); true")
        wait_until(lambda: b.eval(
            f"!document.querySelector('#top tr[data-id=\"{victim['id']}\"]')"),
            what="the row to go")
    finally:
        b.close()
    r = requests.get(g.url + "/v1/cache/entries/" + victim["id"], headers=A, timeout=10)
    assert r.status_code == 404
    after = requests.get(g.url + "/v1/cache/top", headers=A, timeout=10).json()["top"]
    assert [t["id"] for t in after] == [t["id"] for t in top[1:]]
    # the question is asked again: a miss, answered upstream, not the deleted answer
    assert g.chat(user(victim["query"]), headers=A).headers["X-Semgate-Cache"] == "miss"


class Circles(html.parser.HTMLParser):
    def __init__(self):
        super().__init__()
        self.points = []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "circle" and "data-threshold" in a:
            self.points.append({"threshold": float(a["data-threshold"]),
                                "precision": float(a["data-precision"]),
                                "would_hit": int(a["data-would-hit"])})


def test_calibration_curve_is_the_endpoints(make_gateway, redis_db, upstream):
    g = make_gateway(SEMGATE_API_KEYS=KEYS)
    stored = "How do I renew my passport?"
    shadow = dict(A, **{"X-Semgate-Shadow": "1"})
    assert g.chat(user(stored), headers=A).status_code == 200
    for q, sim, agree in (("how do i renew my passport", 0.96, 0.95),
                          ("How do I renew my passport ?", 0.91, 0.1)):
        upstream.set_similarity(q, stored, sim)
        upstream.set_similarity("Mock answer: " + q, "Mock answer: " + stored, agree)
        assert "X-Semgate-Shadow" in g.chat(user(q), headers=shadow).headers
    cal = requests.get(g.url + "/v1/cache/calibration", headers=A, timeout=10).json()
    assert cal["samples"] == 2
    d, out, _ = dump(g.url + "/dashboard#key=key-alpha")
    assert d.body.get("data-loaded"), d.status
    c = Circles()
    c.feed(out)
    assert c.points == [{k: t[k] for k in ("threshold", "precision", "would_hit")}
                        for t in cal["thresholds"]]
    # beta has no shadowed hits: its page shows none of alpha's
    d, out, _ = dump(g.url + "/dashboard#key=key-beta")
    c = Circles()
    c.feed(out)
    assert d.body.get("data-loaded") and c.points == []
