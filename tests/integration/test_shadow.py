"""Shadow mode and GET /v1/cache/calibration: a would-be semantic hit goes
upstream anyway, the fresh answer is compared with the cached one (exact,
then by embedding similarity), the outcome is counted per similarity bucket
for the tenant and its namespace, and the calibration endpoint turns the
counts into precision per threshold and the lowest threshold meeting a
target. Bad input is a 400; tenants never see each other's counts."""
import requests

from conftest import user, wait_until

SH = {"X-Semgate-Shadow": "1"}
STORED = "How do I renew my passport?"
KEY_A = "sk-gw-shadow-a-0123456789abcdef"
KEY_B = "sk-gw-shadow-b-0123456789abcdef"


def ask(gw, text, headers=None, **kw):
    r = gw.chat(user(text), headers=headers, **kw)
    assert r.status_code == 200, r.text
    return r


def calibration(gw, query="", headers=None):
    r = requests.get(gw.url + "/v1/cache/calibration" + query, headers=headers or {},
                     timeout=10)
    assert r.status_code == 200, r.text
    return r.json()


def answer(q):
    return "Mock answer: " + q


def test_shadowed_hit_goes_upstream_and_is_compared(gateway, upstream):
    eid = ask(gateway, STORED).headers["X-Semgate-Entry"]
    agree_q = "how do i renew my passport"
    upstream.set_similarity(agree_q, STORED, 0.96)
    upstream.set_similarity(answer(agree_q), answer(STORED), 0.95)
    r = ask(gateway, agree_q, headers=SH)
    assert r.headers["X-Semgate-Cache"] == "miss"
    assert r.headers["X-Semgate-Shadow"] == f"entry={eid}; agree"
    assert r.json()["choices"][0]["message"]["content"] == answer(agree_q)  # the fresh one
    assert upstream.stats()["chat_requests"] == 2
    # the fresh answer was not stored: the same question still hits the entry
    r = ask(gateway, agree_q)
    assert r.headers["X-Semgate-Cache"] == "hit-semantic"
    assert r.headers["X-Semgate-Entry"] == eid
    # answers that are not alike disagree
    disagree_q = "How do I renew my passport ?"
    upstream.set_similarity(disagree_q, STORED, 0.91)
    r = ask(gateway, disagree_q, headers=SH)
    assert r.headers["X-Semgate-Shadow"] == f"entry={eid}; disagree"
    cal = calibration(gateway)
    assert cal["tenant"] == "default" and cal["namespace"] is None
    assert cal["samples"] == 2 and cal["agree"] == 1 and cal["target"] == 0.99
    assert cal["buckets"] == [{"similarity": 0.91, "would_hit": 1, "agree": 0},
                              {"similarity": 0.96, "would_hit": 1, "agree": 1}]
    assert cal["thresholds"] == [
        {"threshold": 0.91, "would_hit": 2, "agree": 1, "precision": 0.5},
        {"threshold": 0.96, "would_hit": 1, "agree": 1, "precision": 1}]
    assert cal["recommended_threshold"] == 0.96
    assert calibration(gateway, "?target=0.5")["recommended_threshold"] == 0.91
    m = requests.get(gateway.url + "/metrics", timeout=10).text
    assert 'semgate_shadow_total{outcome="agree"} 1' in m
    assert 'semgate_shadow_total{outcome="disagree"} 1' in m


def test_namespace_counts_and_the_answer_embeddings(gateway, upstream):
    ask(gateway, STORED, headers={"X-Semgate-Namespace": "n1"})
    q = "how do I renew my passport?"
    upstream.set_similarity(q, STORED, 0.97)
    before = upstream.stats()["embedding_requests"]
    r = ask(gateway, q, headers={**SH, "X-Semgate-Namespace": "n1"})
    assert r.headers["X-Semgate-Shadow"].endswith("; disagree")  # unlike answer texts
    # the question, then the two answers being compared
    assert upstream.stats()["embedding_requests"] == before + 3
    cal = calibration(gateway, "?namespace=n1")
    assert cal["namespace"] == "n1" and cal["samples"] == 1
    # the tenant-wide counts include the namespace's
    assert calibration(gateway)["samples"] == 1
    assert calibration(gateway, "?namespace=other")["samples"] == 0
    assert calibration(gateway, "?namespace=other")["recommended_threshold"] is None


def test_exact_hits_and_misses_are_never_shadowed(gateway, upstream):
    ask(gateway, STORED)
    r = ask(gateway, STORED, headers=SH)
    assert r.headers["X-Semgate-Cache"] == "hit-exact"
    assert "X-Semgate-Shadow" not in r.headers
    r = ask(gateway, "Something else entirely?", headers=SH)
    assert r.headers["X-Semgate-Cache"] == "miss" and "X-Semgate-Shadow" not in r.headers
    assert calibration(gateway)["samples"] == 0


def test_config_turns_shadow_on_and_the_header_off(make_gateway, redis_db, upstream):
    g = make_gateway(SEMGATE_SHADOW=1)
    ask(g, STORED)
    q = "how do i renew my passport"
    upstream.set_similarity(q, STORED, 0.96)
    r = ask(g, q)
    assert r.headers["X-Semgate-Cache"] == "miss" and "X-Semgate-Shadow" in r.headers
    r = ask(g, q, headers={"X-Semgate-Shadow": "0"})
    assert r.headers["X-Semgate-Cache"] == "hit-semantic"


def test_streamed_shadow_is_counted(gateway, upstream):
    ask(gateway, STORED)
    q = "how do i renew my passport"
    upstream.set_similarity(q, STORED, 0.96)
    r = gateway.chat(user(q), headers=SH, stream=True)
    assert r.status_code == 200
    assert r.headers["X-Semgate-Cache"] == "miss"
    assert "data: [DONE]" in r.text
    wait_until(lambda: calibration(gateway)["samples"] == 1, what="the streamed comparison")


def test_bad_shadow_header_and_calibration_parameters_are_400(gateway, upstream, redis_db):
    keys = set(redis_db.keys("*"))
    for v in ("yes", "2", "", "true"):
        r = gateway.chat(user("What is the boiling point of water?"),
                         headers={"X-Semgate-Shadow": v})
        assert r.status_code == 400 and "X-Semgate-Shadow" in r.json()["error"]["message"], v
    for q in ("?target=0", "?target=1.5", "?target=abc", "?target=nan", "?namespace=a/b",
              "?namespace=" + "x" * 200, "?limit=3", "?target=0.9&target=0.8",
              "?namespace=a&namespace=b"):
        r = requests.get(gateway.url + "/v1/cache/calibration" + q, timeout=10)
        assert r.status_code == 400, (q, r.text)
        assert r.json()["error"]["type"] == "invalid_request_error"
    assert set(redis_db.keys("*")) == keys
    assert upstream.stats()["chat_requests"] == 0


def test_calibration_is_tenant_scoped(make_gateway, redis_db, upstream):
    g = make_gateway(SEMGATE_API_KEYS=f"{KEY_A}:tenantA,{KEY_B}:tenantB")
    ha = {"Authorization": f"Bearer {KEY_A}"}
    hb = {"Authorization": f"Bearer {KEY_B}"}
    ask(g, STORED, headers=ha)
    q = "how do i renew my passport"
    upstream.set_similarity(q, STORED, 0.96)
    ask(g, q, headers={**ha, **SH})
    assert calibration(g, headers=ha)["samples"] == 1
    b = calibration(g, headers=hb)
    assert b["tenant"] == "tenantB" and b["samples"] == 0 and b["buckets"] == []
    r = requests.get(g.url + "/v1/cache/calibration", timeout=10)
    assert r.status_code == 401
