"""Per-tenant rate limit: a sliding window in Redis shared by every gateway
process. N requests pass in a burst, the next gets 429 with Retry-After;
refused requests do not count; a Redis outage lets requests through."""
import threading
import time

import pytest
import requests

from conftest import SLOW, wait_until
import keys as K

KEY_A = "sk-rl-a-123456"
KEY_B = "sk-rl-b-654321"
KEYS = f"{KEY_A}:tenantA,{KEY_B}:tenantB"
HA = {"Authorization": f"Bearer {KEY_A}"}
HB = {"Authorization": f"Bearer {KEY_B}"}


def hit(gw, headers=None):
    """A cheap /v1 call: the conversation does not exist (404) unless limited."""
    return requests.get(gw.url + "/v1/conversations/none", headers=headers or {}, timeout=10)


def assert_limited(r, window):
    assert r.status_code == 429, r.text
    err = r.json()["error"]
    assert err["type"] == "rate_limit_exceeded" and err["code"] == "rate_limit_exceeded"
    assert err["message"]
    ra = r.headers["Retry-After"]
    assert ra.isdigit(), ra
    assert 1 <= int(ra) <= window
    return int(ra)


def test_burst_lets_exactly_n_through_then_429_with_retry_after(make_gateway, redis_db):
    g = make_gateway(SEMGATE_RATE_LIMIT="5/60s")
    codes = [hit(g).status_code for _ in range(5)]
    assert codes == [404] * 5
    r = hit(g)
    ra = assert_limited(r, 60)
    assert ra >= 50  # the oldest admitted request is seconds old, not a minute
    # chat completions and the other /v1 routes share the same window
    r = g.chat([{"role": "user", "content": "hi"}])
    assert_limited(r, 60)
    # the window lives in Redis under the tenant, with a TTL of the window
    assert redis_db.type(K.rate("default")) == b"zset"
    assert redis_db.zcard(K.rate("default")) == 5
    assert 0 < redis_db.pttl(K.rate("default")) <= 60000


def test_health_and_metrics_are_not_limited(make_gateway, redis_db):
    g = make_gateway(SEMGATE_RATE_LIMIT="1/60s")
    assert hit(g).status_code == 404
    assert hit(g).status_code == 429
    for _ in range(3):
        assert requests.get(g.url + "/healthz", timeout=5).status_code == 200
        assert requests.get(g.url + "/readyz", timeout=5).status_code == 200
        assert requests.get(g.url + "/metrics", timeout=5).status_code == 200


def test_limit_is_per_tenant(make_gateway, redis_db):
    g = make_gateway(SEMGATE_RATE_LIMIT="2/60s", SEMGATE_API_KEYS=KEYS)
    assert [hit(g, HA).status_code for _ in range(2)] == [404, 404]
    assert_limited(hit(g, HA), 60)
    assert [hit(g, HB).status_code for _ in range(2)] == [404, 404]
    assert_limited(hit(g, HB), 60)
    # unauthenticated calls are refused before they reach anyone's window
    assert hit(g).status_code == 401
    assert redis_db.zcard(K.rate("tenantA")) == 2 and redis_db.zcard(K.rate("tenantB")) == 2


def test_refused_requests_do_not_extend_the_window(make_gateway, redis_db):
    window = 3
    g = make_gateway(SEMGATE_RATE_LIMIT=f"2/{window}s")
    t0 = time.monotonic()
    assert [hit(g).status_code for _ in range(2)] == [404, 404]
    assert_limited(hit(g), window)
    # keep knocking: were refusals counted, the window would never drain
    wait_until(lambda: hit(g).status_code == 404, timeout=window + 3, interval=0.05,
               what="the window to drain while refused requests keep arriving")
    assert time.monotonic() - t0 >= window - 0.2
    assert redis_db.zcard(K.rate("default")) <= 2


def test_retry_after_is_honoured(make_gateway, redis_db):
    g = make_gateway(SEMGATE_RATE_LIMIT="1/3s")
    assert hit(g).status_code == 404
    ra = assert_limited(hit(g), 3)
    time.sleep(ra)  # what a client is told to do; correctness is checked below
    wait_until(lambda: hit(g).status_code == 404, timeout=2,
               what="a request to pass after Retry-After")


def test_two_gateway_processes_share_one_window(make_gateway, redis_db):
    n = 6
    g1 = make_gateway(SEMGATE_RATE_LIMIT=f"{n}/60s")
    g2 = make_gateway(SEMGATE_RATE_LIMIT=f"{n}/60s")
    codes = [hit(g1 if i % 2 else g2).status_code for i in range(2 * n)]
    assert codes.count(404) == n, codes
    assert codes[:n] == [404] * n
    assert codes.count(429) == n


def test_concurrent_burst_across_two_processes_admits_exactly_n(make_gateway, redis_db):
    n = 10
    g1 = make_gateway(SEMGATE_RATE_LIMIT=f"{n}/60s")
    g2 = make_gateway(SEMGATE_RATE_LIMIT=f"{n}/60s")
    results = []
    lock = threading.Lock()
    start = threading.Barrier(16)

    def worker(gw):
        s = requests.Session()
        start.wait(timeout=30 * SLOW)
        for _ in range(3):
            code = s.get(gw.url + "/v1/conversations/none", timeout=30).status_code
            with lock:
                results.append(code)

    threads = [threading.Thread(target=worker, args=(g1 if i % 2 else g2,))
               for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60 * SLOW)
    assert len(results) == 48
    assert results.count(404) == n, sorted(results)
    assert results.count(429) == 48 - n


def test_redis_down_lets_requests_through_and_counts_the_bypass(make_gateway, redis_db,
                                                                redis_server, upstream):
    g = make_gateway(SEMGATE_RATE_LIMIT="1/60s")
    assert hit(g).status_code == 404
    assert hit(g).status_code == 429
    redis_server.stop()
    # chat completions go upstream (cache bypassed) instead of being refused
    for i in range(3):
        r = g.chat([{"role": "user", "content": f"while redis is down {i}"}])
        assert r.status_code == 200, r.text
        assert r.headers["X-Semgate-Cache"] == "bypass"
    text = requests.get(g.url + "/metrics", timeout=5).text
    line = [l for l in text.splitlines() if l.startswith("semgate_rate_limiter_bypass_total ")]
    assert line and float(line[0].split()[1]) >= 3
    redis_server.start()
    # back to limiting once Redis answers again (a fresh, empty window)
    wait_until(lambda: hit(g).status_code == 429, timeout=10, what="limiting to resume")
