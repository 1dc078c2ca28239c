"""docs/grafana/semgate.json: valid JSON, a Grafana dashboard, and every
metric its queries name is one a running gateway's GET /metrics exposes
(so a renamed metric cannot leave a panel silently empty)."""
import json
import os
import re

import requests

from conftest import ROOT

DASHBOARD = os.path.join(ROOT, "docs", "grafana", "semgate.json")
METRIC = re.compile(r"\bsemgate_[a-z0-9_]+")


def exposed_names(text):
    """Every sample name /metrics can produce: each family from its # TYPE
    line, and a histogram's _bucket, _sum and _count."""
    names = set()
    for line in text.splitlines():
        m = re.match(r"# TYPE (\S+) (\S+)$", line)
        if m:
            name, kind = m.groups()
            names.add(name)
            if kind == "histogram":
                names.update(name + s for s in ("_bucket", "_sum", "_count"))
    return names


def queries(dash):
    for p in dash["panels"]:
        for t in p.get("targets", []):
            yield p["title"], t["expr"]
    for v in dash.get("templating", {}).get("list", []):
        q = v.get("query")
        if isinstance(q, dict):
            yield "variable " + v["name"], q["query"]


def test_grafana_dashboard_names_only_exposed_metrics(gateway):
    with open(DASHBOARD, encoding="utf-8") as f:
        dash = json.load(f)
    assert dash["title"] and dash["uid"] and isinstance(dash["panels"], list)
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    r = requests.get(gateway.url + "/metrics", timeout=5)
    assert r.status_code == 200
    exposed = exposed_names(r.text)
    used = set()
    for title, expr in queries(dash):
        names = METRIC.findall(expr)
        assert names, f"panel {title!r} queries no semgate metric: {expr}"
        for n in names:
            assert n in exposed, f"panel {title!r} uses {n}, which /metrics does not expose"
            used.add(n)
    # the families the issue asks for are on the board
    for must in ("semgate_cache_requests_total", "semgate_cache_lookups_total",
                 "semgate_verify_rejections_total", "semgate_tokens_saved_total",
                 "semgate_estimated_cost_saved_total",
                 "semgate_http_request_duration_seconds_bucket",
                 "semgate_upstream_duration_seconds_bucket"):
        assert must in used, must
