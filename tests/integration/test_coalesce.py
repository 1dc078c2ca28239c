"""Single-flight for misses: concurrent misses for the same question, or
for questions the first one's answer would answer (similar enough and
passed by the hit verifier), in one partition, make one upstream call;
the followers get the leader's answer as X-Semgate-Cache: hit-coalesced,
streamed when they asked for a stream. A leader's failure, or a wait past
SEMGATE_COALESCE_WAIT_MS, sends followers upstream themselves."""
import threading

import requests

from conftest import user


def burst(gw, texts, headers=None, stream=False):
    """Send every text at once; returns the responses in order."""
    out = [None] * len(texts)
    go = threading.Event()

    def one(i, t):
        go.wait()
        out[i] = gw.chat(user(t), headers=headers, timeout=60,
                         **({"stream": True} if stream else {}))
    ts = [threading.Thread(target=one, args=(i, t)) for i, t in enumerate(texts)]
    for t in ts:
        t.start()
    go.set()
    for t in ts:
        t.join()
    return out


Q = "What is the tallest mountain in Africa?"


def test_identical_burst_makes_one_upstream_call(gateway, upstream):
    # long enough for 32 client threads to have sent theirs on a loaded machine
    upstream.control(latency_ms=2500)
    rs = burst(gateway, [Q] * 32)
    assert all(r.status_code == 200 for r in rs)
    outcomes = [r.headers["X-Semgate-Cache"] for r in rs]
    assert outcomes.count("miss") == 1, outcomes
    assert set(outcomes) <= {"miss", "hit-coalesced", "hit-exact"}
    assert outcomes.count("hit-coalesced") >= 1
    assert upstream.stats()["chat_requests"] == 1
    answers = {r.json()["choices"][0]["message"]["content"] for r in rs}
    assert answers == {"Mock answer: " + Q}
    leader = next(r for r in rs if r.headers["X-Semgate-Cache"] == "miss")
    coalesced = [r for r in rs if r.headers["X-Semgate-Cache"] == "hit-coalesced"]
    assert all(r.headers["X-Semgate-Entry"] == leader.headers["X-Semgate-Entry"]
               for r in coalesced)
    m = requests.get(gateway.url + "/metrics", timeout=10).text
    assert f'semgate_cache_requests_total{{outcome="hit-coalesced"}} {len(coalesced)}' in m
    # and in the tenant's series, among its hits
    tot = requests.get(gateway.url + "/v1/cache/timeseries", timeout=10).json()["totals"]
    assert tot["hits_coalesced"] == len(coalesced)
    assert tot["hits_exact"] == 31 and tot["misses"] == 1
    # each request is one lookup in the stats: a follower is a hit, not a miss too
    st = requests.get(gateway.url + "/v1/cache/stats", timeout=10).json()
    assert st["lookups"] == 32 and st["misses"] == 1 and st["hits_exact"] == 31


def test_similar_questions_wait_for_the_first(gateway, upstream):
    other = "what is the tallest mountain in africa"
    upstream.set_similarity(other, Q, 0.97)
    upstream.control(latency_ms=800)
    rs = burst(gateway, [Q] + [other] * 3)
    # whichever arrived first led; the others were answered by it
    assert upstream.stats()["chat_requests"] == 1, [r.headers.get("X-Semgate-Cache") for r in rs]
    assert sorted(r.headers["X-Semgate-Cache"] for r in rs).count("miss") == 1


def test_questions_the_verifier_refuses_do_not_wait(gateway, upstream):
    other = "What is the tallest mountain in Asia?"
    upstream.set_similarity(other, Q, 0.99)
    upstream.control(latency_ms=500)
    rs = burst(gateway, [Q, other])
    assert [r.headers["X-Semgate-Cache"] for r in rs] == ["miss", "miss"]
    assert upstream.stats()["chat_requests"] == 2


def test_streaming_followers_get_the_answer_as_a_stream(gateway, upstream):
    upstream.control(latency_ms=800)
    rs = burst(gateway, [Q] * 4, stream=True)
    assert upstream.stats()["chat_requests"] == 1
    for r in rs:
        assert r.status_code == 200 and "data: [DONE]" in r.text
    assert any(r.headers["X-Semgate-Cache"] == "hit-coalesced" for r in rs)
    assert all("Mock" in r.text for r in rs)


def test_leader_failure_releases_the_followers(gateway, upstream):
    upstream.control(latency_ms=500, mode="fail", fail_status=503)
    rs = burst(gateway, [Q] * 4)
    assert all(r.status_code == 503 for r in rs), [r.status_code for r in rs]
    # nobody was answered by a failed leader: each tried itself
    assert upstream.stats()["chat_requests"] == 4
    upstream.control(latency_ms=0, mode="ok")
    assert gateway.chat(user(Q)).headers["X-Semgate-Cache"] == "miss"


def test_wait_is_bounded_and_can_be_turned_off(make_gateway, redis_db, upstream):
    g = make_gateway(SEMGATE_COALESCE_WAIT_MS=100)
    upstream.control(latency_ms=1500)
    rs = burst(g, [Q] * 3)
    assert all(r.status_code == 200 for r in rs)
    assert upstream.stats()["chat_requests"] == 3  # the followers gave up waiting
    g.stop()
    upstream.reset()
    redis_db.flushall()
    g = make_gateway(SEMGATE_COALESCE_WAIT_MS=0)
    upstream.control(latency_ms=500)
    rs = burst(g, [Q] * 3)
    assert upstream.stats()["chat_requests"] == 3
