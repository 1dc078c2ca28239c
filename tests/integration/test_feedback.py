"""POST /v1/cache/feedback: a "wrong" verdict keeps an entry from ever
answering that question again and raises the entry's own threshold above
that question's similarity; a "wrong" for the entry's own question, or the
third "wrong", deletes it; "right" is counted. Bad input is a 400 that
changes nothing; another tenant's entry is a 404."""
import requests

from conftest import user
import keys as K

FB = "/v1/cache/feedback"
KEY_A = "sk-gw-feedback-a-0123456789abcdef"
KEY_B = "sk-gw-feedback-b-0123456789abcdef"
HA = {"Authorization": f"Bearer {KEY_A}"}
HB = {"Authorization": f"Bearer {KEY_B}"}


def ask(gw, text, headers=None):
    r = gw.chat(user(text), headers=headers)
    assert r.status_code == 200, r.text
    return r


def feedback(gw, headers=None, **body):
    return requests.post(gw.url + FB, json=body, headers=headers or {}, timeout=15)


def ok(gw, headers=None, **body):
    r = feedback(gw, headers=headers, **body)
    assert r.status_code == 200, r.text
    return r.json()


STORED = "How do I renew my passport?"


def lookup(gw, **body):
    r = requests.post(gw.url + "/v1/cache/lookup", json=body, timeout=15)
    assert r.status_code == 200, r.text
    return r.json()


def test_wrong_refuses_that_question_and_raises_the_entry_threshold(gateway, upstream):
    # sidecar entries: lookups store nothing, so every verdict below is this entry's
    r = requests.post(gateway.url + "/v1/cache/entries", timeout=15,
                      json={"query": STORED, "answer": "Fill in form DS-82."})
    assert r.status_code == 201, r.text
    eid = r.json()["id"]
    asked = "how do i renew my passport"
    upstream.set_similarity(asked, STORED, 0.95)
    hit = lookup(gateway, query=asked)
    assert hit["hit"] is True and hit["id"] == eid
    out = ok(gateway, id=eid, query=asked, verdict="wrong")
    assert out["id"] == eid and out["verdict"] == "wrong"
    assert out["wrong"] == 1 and out["right"] == 0 and out["deleted"] is False
    assert 0.95 <= out["threshold"] < 0.9501
    # the same question, whatever its case and spacing, is never answered by it again
    upstream.set_similarity("How  do I renew my PASSPORT", STORED, 0.99)
    miss = lookup(gateway, query="How  do I renew my PASSPORT")
    assert miss["hit"] is False
    assert miss["verify"] == {"rejected": "feedback", "candidate": eid}
    # even with the verifier off
    upstream.set_similarity(asked, STORED, 0.95)
    r = requests.post(gateway.url + "/v1/cache/lookup", json={"query": asked}, timeout=15,
                      headers={"X-Semgate-Verify": "off"})
    assert r.json()["hit"] is False
    # a question further than the refused one is refused by the raised threshold
    farther = "how do I renew my passport?"
    upstream.set_similarity(farther, STORED, 0.93)
    miss = lookup(gateway, query=farther)
    assert miss["hit"] is False and miss["verify"]["rejected"] == "feedback"
    # a closer one is still served
    closer = "How do I renew my passport ?"
    upstream.set_similarity(closer, STORED, 0.97)
    hit = lookup(gateway, query=closer)
    assert hit["hit"] is True and hit["id"] == eid
    m = requests.get(gateway.url + "/metrics", timeout=10).text
    assert 'semgate_feedback_total{verdict="wrong"} 1' in m


def test_right_is_counted_and_changes_nothing_served(gateway, upstream):
    eid = ask(gateway, STORED).headers["X-Semgate-Entry"]
    out = ok(gateway, id=eid, query="how do I renew my passport", verdict="right")
    assert out == {"id": eid, "verdict": "right", "wrong": 0, "right": 1, "deleted": False,
                   "threshold": None}
    assert ask(gateway, STORED).headers["X-Semgate-Cache"] == "hit-exact"


def test_wrong_for_its_own_question_deletes_the_entry(gateway, upstream, redis_db):
    eid = ask(gateway, STORED).headers["X-Semgate-Entry"]
    out = ok(gateway, id=eid, query="  how do i RENEW my passport?  ", verdict="wrong")
    assert out["deleted"] is True
    assert not redis_db.exists(K.entry("default", eid))
    assert requests.get(gateway.url + f"/v1/cache/entries/{eid}", timeout=5).status_code == 404
    r = ask(gateway, STORED)
    assert r.headers["X-Semgate-Cache"] == "miss"
    assert upstream.stats()["chat_requests"] == 2


def test_third_wrong_deletes_the_entry(gateway, upstream, redis_db):
    eid = ask(gateway, STORED).headers["X-Semgate-Entry"]
    for n, q in enumerate(["renew passport online?", "renew passport by mail?",
                           "renew passport abroad?"], start=1):
        out = ok(gateway, id=eid, query=q, verdict="wrong")
        assert out["wrong"] == n and out["deleted"] is (n == 3)
    assert not redis_db.exists(K.entry("default", eid))
    r = feedback(gateway, id=eid, query="renew passport online?", verdict="wrong")
    assert r.status_code == 404 and r.json()["error"]["code"] == "entry_not_found"


def test_bad_input_is_400_and_changes_nothing(gateway, upstream, redis_db):
    eid = ask(gateway, STORED).headers["X-Semgate-Entry"]
    gateway.settle()  # its store is written behind the answer
    key = K.entry("default", eid)
    before = redis_db.hgetall(key)
    bad = [
        {"id": eid, "query": "q"},                                   # no verdict
        {"id": eid, "verdict": "wrong"},                             # no query
        {"query": "q", "verdict": "wrong"},                          # no id
        {"id": eid, "query": "q", "verdict": "WRONG"},
        {"id": eid, "query": "q", "verdict": True},
        {"id": eid, "query": 7, "verdict": "wrong"},
        {"id": eid, "query": "   ", "verdict": "wrong"},
        {"id": "../etc", "query": "q", "verdict": "wrong"},
        {"id": ["x"], "query": "q", "verdict": "wrong"},
        {"id": eid, "query": "q", "verdict": "wrong", "threshold": 0.5},
        {"id": eid, "query": "x" * 70000, "verdict": "wrong"},
    ]
    for body in bad:
        r = feedback(gateway, **body)
        assert r.status_code == 400, (body, r.text)
        assert r.json()["error"]["type"] == "invalid_request_error"
    for raw in (b"not json", b"[1]", b'{"id":"a","id":"b","query":"q","verdict":"right"}'):
        r = requests.post(gateway.url + FB, data=raw, timeout=5,
                          headers={"Content-Type": "application/json"})
        assert r.status_code == 400, (raw, r.text)
    assert redis_db.hgetall(key) == before
    r = feedback(gateway, id="0" * 32, query="q", verdict="wrong")
    assert r.status_code == 404


def test_feedback_is_tenant_scoped(make_gateway, redis_db, upstream):
    g = make_gateway(SEMGATE_API_KEYS=f"{KEY_A}:tenantA,{KEY_B}:tenantB")
    eid = ask(g, STORED, headers=HA).headers["X-Semgate-Entry"]
    g.settle(HA)
    before = redis_db.hgetall(K.entry("tenantA", eid))
    assert before
    r = feedback(g, headers=HB, id=eid, query=STORED, verdict="wrong")
    assert r.status_code == 404
    assert redis_db.hgetall(K.entry("tenantA", eid)) == before
    assert feedback(g, id=eid, query=STORED, verdict="wrong").status_code == 401
    out = ok(g, headers=HA, id=eid, query="renew passport?", verdict="wrong")
    assert out["wrong"] == 1
