"""GET /v1/cache/timeseries: per-tenant, per-minute counters written behind
by the accounting path, exact after known traffic, summing to
/v1/cache/stats; minute and hour hashes with their TTLs; bad queries are
400s that change nothing; every tenant sees only its own series."""
import re
import time

import pytest
import requests

from conftest import user
import keys as K

API = "/v1/cache"
STORED = "What was the price of gold on March 3, 2021?"
ASKED = "What was the price of gold on March 4, 2021?"


def series(gw, headers=None, **params):
    r = requests.get(gw.url + API + "/timeseries", params=params, headers=headers or {},
                     timeout=15)
    assert r.status_code == 200, r.text
    return r.json()


def ask(gw, text, headers=None):
    r = gw.chat(user(text), headers=headers)
    assert r.status_code == 200, r.text
    return r


def traffic(gw, upstream, headers=None):
    """2 misses, 2 exact hits, 1 semantic hit, 1 verifier refusal (a miss),
    1 bypass: 7 requests. Returns the usage of the first answer."""
    usage = ask(gw, STORED, headers).json()["usage"]              # miss
    assert ask(gw, STORED, headers).headers["X-Semgate-Cache"] == "hit-exact"
    assert ask(gw, STORED, headers).headers["X-Semgate-Cache"] == "hit-exact"
    near = "what was the price of gold on march 3, 2021"
    upstream.set_similarity(near, STORED, 0.99)
    assert ask(gw, near, headers).headers["X-Semgate-Cache"] == "hit-semantic"
    upstream.set_similarity(ASKED, STORED, 0.99)
    r = ask(gw, ASKED, headers)                                    # miss, refused
    assert r.headers["X-Semgate-Verify"] == "rejected=number"
    h = dict(headers or {}, **{"Cache-Control": "no-store"})
    assert ask(gw, "anything at all", h).headers["X-Semgate-Cache"] == "bypass"
    return usage


def test_exact_counts_after_known_traffic_and_they_sum_to_stats(make_gateway, redis_db, upstream):
    g = make_gateway(SEMGATE_PRICE_PROMPT_PER_1K="0.5", SEMGATE_PRICE_COMPLETION_PER_1K="2")
    t0 = int(time.time())
    usage = traffic(g, upstream)
    t1 = int(time.time())
    s = series(g, **{"from": t0 - 120, "to": t1 + 60, "step": 60})
    assert s["tenant"] == "default" and s["step"] == 60 and s["resolution"] == "minute"
    assert s["from"] % 60 == 0 and s["to"] == s["from"] + 60 * s["points"]
    assert len(s["t"]) == s["points"] == len(s["requests"])
    assert s["t"] == [s["from"] + 60 * i for i in range(s["points"])]
    tot = s["totals"]
    assert tot["requests"] == 6
    assert tot["hits_exact"] == 2 and tot["hits_semantic"] == 1
    assert tot["misses"] == 2 and tot["bypass"] == 1
    assert tot["rejections"] == 1 and tot["rejections_by_reason"]["number"] == 1
    assert all(v == 0 for k, v in tot["rejections_by_reason"].items() if k != "number")
    # every hit saved what the first answer cost
    assert tot["tokens_saved_prompt"] == 3 * usage["prompt_tokens"]
    assert tot["tokens_saved_completion"] == 3 * usage["completion_tokens"]
    cost = 3 * usage["prompt_tokens"] / 1000 * 0.5 + 3 * usage["completion_tokens"] / 1000 * 2
    assert abs(tot["cost_saved"] - cost) < 1e-6
    assert tot["hit_rate"] == round(3 / 5, 6)
    # latency histograms: the 3 hits' answers and the 3 upstream calls
    # (2 misses and the bypass), each in one bucket
    assert sum(tot["latency_ms"]["hit"].values()) == 3
    assert sum(tot["latency_ms"]["upstream"].values()) == 3
    assert list(tot["latency_ms"]["hit"]) == ["1", "5", "25", "100", "500", "2500", "inf"]
    assert sum(sum(col) for col in s["latency_ms"]["hit"].values()) == 3
    assert tot["hits_coalesced"] == 0 and sum(s["hits_coalesced"]) == 0
    # the columns add up to the totals, and everything is in the minutes of the traffic
    for k in ("requests", "hits_exact", "misses", "tokens_saved_prompt"):
        assert sum(s[k]) == tot[k]
    busy = [s["t"][i] for i, n in enumerate(s["requests"]) if n]
    assert busy and all(t0 - 60 < t <= t1 for t in busy)
    # the series and the stats count the same lookups
    st = requests.get(g.url + API + "/stats", timeout=10).json()
    assert st["lookups"] == tot["hits_exact"] + tot["hits_semantic"] + tot["misses"]
    assert st["hits_exact"] == tot["hits_exact"] and st["misses"] == tot["misses"]
    assert st["tokens_saved_prompt"] == tot["tokens_saved_prompt"]


def test_minute_and_hour_hashes_with_their_ttls(make_gateway, redis_db, upstream):
    g = make_gateway(SEMGATE_SERIES_MINUTES_TTL="7200", SEMGATE_SERIES_HOURS_TTL="86400")
    ask(g, "one question")
    ask(g, "one question")
    requests.get(g.url + API + "/stats", timeout=10)  # lets the counts reach Redis
    keys = sorted(k.decode() for k in redis_db.scan_iter("sg:ts:*"))
    minutes = [k for k in keys if re.match(K.regex("ts", "default", "m:[0-9]+"), k)]
    hours = [k for k in keys if re.match(K.regex("ts", "default", "h:[0-9]+"), k)]
    assert len(minutes) in (1, 2) and len(hours) in (1, 2), keys
    for k in minutes:
        assert 0 < redis_db.ttl(k) <= 7200
    for k in hours:
        assert 7200 < redis_db.ttl(k) <= 86400
    h = {f.decode(): int(v) for f, v in redis_db.hgetall(hours[0]).items()}
    if len(hours) == 1:
        assert h["requests"] == 2 and h["misses"] == 1 and h["hits_exact"] == 1
    # a step of whole hours reads the hour hashes
    now = int(time.time())
    s = series(g, **{"from": now - 7200, "to": now + 1, "step": 3600})
    assert s["resolution"] == "hour" and s["from"] % 3600 == 0
    assert s["totals"]["requests"] == 2 and s["totals"]["hits_exact"] == 1


def test_defaults_are_the_last_hour_by_minute(gateway):
    s = series(gateway)
    assert s["step"] == 60 and s["points"] in (60, 61)
    assert s["totals"]["requests"] == 0


@pytest.mark.parametrize("query", [
    "step=59", "step=90", "step=0", "step=-60", "step=abc", "step=", "step=2678460",
    "from=100&to=100", "from=200&to=100", "from=-5", "to=1e9", "from=1.5",
    "from=0&to=100000000&step=60",          # too many points
    "from=0&to=8640000&step=3600",          # 2400 points
    "from=0&to=1300000&step=900",           # 1445 points
    "from=0&to=2592000&step=1800",          # 1440 points but 43200 minutes read
    "limit=3", "from=1&from=2", "step=60&step=60", "x", "&&from", "from=99999999999999",
])
def test_bad_queries_are_400_and_change_nothing(gateway, redis_db, query):
    before = sorted(redis_db.scan_iter("*"))
    r = requests.get(gateway.url + API + "/timeseries?" + query, timeout=10)
    assert r.status_code == 400, (query, r.text)
    err = r.json()["error"]
    assert err["type"] == "invalid_request_error" and err["message"]
    assert sorted(redis_db.scan_iter("*")) == before
    assert gateway.alive()


def test_a_tenant_sees_only_its_own_series(make_gateway, redis_db, upstream):
    g = make_gateway(SEMGATE_API_KEYS="ka:alpha,kb:beta")
    a = {"Authorization": "Bearer ka"}
    b = {"Authorization": "Bearer kb"}
    ask(g, "alpha's question", a)
    ask(g, "alpha's question", a)
    ask(g, "alpha's question", a)
    ask(g, "beta's question", b)
    sa = series(g, a)
    sb = series(g, b)
    assert sa["tenant"] == "alpha" and sb["tenant"] == "beta"
    assert sa["totals"]["requests"] == 3 and sa["totals"]["hits_exact"] == 2
    assert sb["totals"]["requests"] == 1 and sb["totals"]["hits_exact"] == 0
    r = requests.get(g.url + API + "/timeseries", timeout=10)
    assert r.status_code == 401
    r = requests.get(g.url + API + "/timeseries", headers={"Authorization": "Bearer nope"},
                     timeout=10)
    assert r.status_code == 401
