"""A miss's answer goes to its client before it is stored (src/cache/behind.c):
the store is written behind by a thread of its own, and until it is in
Redis the entry is answered from the gateway's memory exactly as it will
be from Redis (read-your-writes), so a repeat is never sent upstream again.
Redis's writes are held with CLIENT PAUSE ... WRITE (reads go on), which
keeps a store pending for as long as a test needs."""
import threading
import time

import requests

from conftest import SLOW, metric, on_masters, user, wait_until
import keys as K


def pause_writes(redis_db, ms):
    on_masters(redis_db, "CLIENT", "PAUSE", int(ms), "WRITE")


def unpause(redis_db):
    on_masters(redis_db, "CLIENT", "UNPAUSE")


def test_answer_before_store_and_repeats_served_from_the_pending_entry(
        make_gateway, redis_db, upstream):
    g = make_gateway(SEMGATE_REDIS_TIMEOUT_MS=20000)
    pause_writes(redis_db, 20000)
    try:
        r = g.chat(user("What is the boiling point of water?"))
        assert r.status_code == 200, r.text
        assert r.headers["X-Semgate-Cache"] == "miss"
        eid = r.headers["X-Semgate-Entry"]
        # answered while Redis could not have stored it
        assert not redis_db.exists(K.entry("default", eid))
        assert metric(g, "semgate_cache_stores_pending") == 1
        # the same question: an exact hit of that entry, from memory
        r2 = g.chat(user("What is the boiling point of water?"))
        assert r2.headers["X-Semgate-Cache"] == "hit-exact"
        assert r2.headers["X-Semgate-Entry"] == eid
        assert (r2.json()["choices"][0]["message"]["content"]
                == "Mock answer: What is the boiling point of water?")
        assert r2.json()["id"] != r.json()["id"]   # rendered fresh, like any hit
        # a paraphrase: a semantic hit of it, through the index row it
        # already has and the verifier like any stored entry
        upstream.set_similarity("what's the boiling point of water",
                                "What is the boiling point of water?", 0.97)
        r3 = g.chat(user("what's the boiling point of water"))
        assert r3.headers["X-Semgate-Cache"] == "hit-semantic", r3.headers
        assert r3.headers["X-Semgate-Entry"] == eid
        assert r3.headers["X-Semgate-Similarity"] == "0.970000"
        # ...and one the verifier refuses is refused as from Redis
        upstream.set_similarity("What is the boiling point of mercury?",
                                "What is the boiling point of water?", 0.97)
        r4 = g.chat(user("What is the boiling point of mercury?"))
        assert r4.headers["X-Semgate-Cache"] == "miss"
        assert r4.headers["X-Semgate-Verify"] == "rejected=content", r4.headers
        assert upstream.stats()["chat_requests"] == 2
        assert not redis_db.exists(K.entry("default", eid))
    finally:
        unpause(redis_db)
    g.settle()
    h = redis_db.hgetall(K.entry("default", eid))
    assert h[b"query"] == b"What is the boiling point of water?"
    assert int(h[b"hits"]) == 2          # the hits served meanwhile count on it
    assert metric(g, "semgate_cache_stores_pending") == 0
    assert metric(g, 'semgate_cache_stores_behind_total{result="stored"}') == 2
    st = requests.get(g.url + "/v1/cache/stats", timeout=10).json()
    assert st["hits_exact"] == 1 and st["hits_semantic"] == 1 and st["misses"] == 2, st


def test_cache_api_reads_wait_for_the_pending_store(make_gateway, redis_db):
    g = make_gateway(SEMGATE_REDIS_TIMEOUT_MS=20000)
    pause_writes(redis_db, 20000)
    got = {}
    try:
        eid = g.chat(user("pending until read")).headers["X-Semgate-Entry"]
        t = threading.Thread(target=lambda: got.update(
            r=requests.get(g.url + "/v1/cache/entries/" + eid, timeout=60)))
        t.start()
        time.sleep(0.3)
        assert "r" not in got                # waiting for the store, not answering 404
    finally:
        unpause(redis_db)
    t.join(30 * SLOW)
    assert got["r"].status_code == 200, got["r"].text
    assert got["r"].json()["query"] == "pending until read"


def test_concurrent_repeats_of_a_pending_answer_make_no_upstream_call(
        make_gateway, redis_db, upstream):
    g = make_gateway(SEMGATE_REDIS_TIMEOUT_MS=20000)
    pause_writes(redis_db, 20000)
    try:
        assert g.chat(user("asked by everyone")).headers["X-Semgate-Cache"] == "miss"
        out, lock = [], threading.Lock()

        def ask():
            r = requests.post(g.url + "/v1/chat/completions",
                              json={"model": "mock-1", "messages": user("asked by everyone")},
                              timeout=30 * SLOW)
            with lock:
                out.append((r.status_code, r.headers.get("X-Semgate-Cache")))
        threads = [threading.Thread(target=ask) for _ in range(16)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert out == [(200, "hit-exact")] * 16
        assert upstream.stats()["chat_requests"] == 1
    finally:
        unpause(redis_db)


def pile_stores(g, prefix, n):
    """With Redis's writes paused: one miss, whose store holds the writer in
    its first round trip, then n concurrent misses whose stores queue
    behind it. Returns the first response and {i: response}."""
    first = g.chat(user(f"the first of the {prefix} pile"))
    assert first.headers["X-Semgate-Cache"] == "miss"
    wait_until(lambda: metric(g, "semgate_cache_store_behind_batches_total") == 1,
               what="the first store to go out")
    out = {}

    def ask(i):
        out[i] = g.chat(user(f"{prefix} {i}"), timeout=30 * SLOW)

    ts = [threading.Thread(target=ask, args=(i,)) for i in range(n)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert all(r.status_code == 200 and r.headers["X-Semgate-Cache"] == "miss"
               for r in out.values())
    return first, out


def test_stores_queued_behind_a_slow_redis_go_in_one_round_trip(make_gateway, redis_db,
                                                                upstream):
    """The writer sends every store queued (up to 64, on a cluster those of
    one node) and then reads their replies: stores that piled up while
    Redis was slow cost one round trip together, not one each, and each
    lands under its own id."""
    g = make_gateway(SEMGATE_REDIS_TIMEOUT_MS=20000)
    pause_writes(redis_db, 20000)
    try:
        first, out = pile_stores(g, "piled question", 40)
        assert metric(g, "semgate_cache_stores_pending") == 41
    finally:
        unpause(redis_db)
    g.settle()
    assert metric(g, 'semgate_cache_stores_behind_total{result="stored"}') == 41
    # after the first, one pipeline per node (a cluster's 40 stores are
    # spread over every master)
    nodes = len(redis_db.get_primaries()) if hasattr(redis_db, "get_primaries") else 1
    assert metric(g, "semgate_cache_store_behind_batches_total") == 1 + nodes
    for i, r in out.items():
        h = redis_db.hgetall(K.entry("default", r.headers["X-Semgate-Entry"]))
        assert h[b"query"] == f"piled question {i}".encode()
    st = requests.get(g.url + "/v1/cache/stats", timeout=10).json()
    assert st["entries"] == 41 and st["misses"] == 41, st


def test_a_failed_store_is_counted_and_its_entry_is_gone(
        make_gateway, redis_server, redis_db, upstream):
    g = make_gateway(SEMGATE_REDIS_TIMEOUT_MS=20000)
    pause_writes(redis_db, 20000)
    r = g.chat(user("lost with its redis"))
    assert r.headers["X-Semgate-Cache"] == "miss"
    redis_server.stop()      # the store in flight fails with the connection
    try:
        wait_until(lambda: metric(g, 'semgate_cache_stores_behind_total{result="failed"}') == 1,
                   timeout=10 * SLOW, what="the store to fail")
        assert metric(g, "semgate_cache_stores_pending") == 0
        assert "answer not cached: entry " + r.headers["X-Semgate-Entry"] in g.logs()
    finally:
        redis_server.start()
    # not served from memory any more, and not in Redis: once the gateway
    # is back on Redis, the question is a miss again
    seen = []

    def back():
        seen.append(g.chat(user("lost with its redis")).headers["X-Semgate-Cache"])
        return seen[-1] != "bypass"
    wait_until(back, timeout=10 * SLOW, what="the gateway to reconnect")
    assert seen[-1] == "miss" and set(seen[:-1]) <= {"bypass"}, seen
    assert g.alive()


def test_a_stopping_gateway_writes_its_pending_stores(make_gateway, redis_db):
    g = make_gateway(SEMGATE_REDIS_TIMEOUT_MS=20000)
    pause_writes(redis_db, 20000)
    ids = [g.chat(user("queued at shutdown %d" % i)).headers["X-Semgate-Entry"]
           for i in range(3)]
    stopper = threading.Thread(target=g.stop)
    stopper.start()
    time.sleep(0.3)
    assert not any(redis_db.exists(K.entry("default", i)) for i in ids)
    unpause(redis_db)
    stopper.join(30 * SLOW)
    assert all(redis_db.exists(K.entry("default", i)) for i in ids)


def test_off_stores_before_answering(make_gateway, redis_db):
    g = make_gateway(SEMGATE_STORE_BEHIND=0)
    eid = g.chat(user("stored first")).headers["X-Semgate-Entry"]
    assert redis_db.exists(K.entry("default", eid))   # no settling needed
    assert metric(g, 'semgate_cache_stores_behind_total{result="stored"}') == 0
