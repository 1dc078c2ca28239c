"""Hit and miss accounting written behind the answer (src/cache/tally.c): every
lookup is counted exactly once, the cache API never reads counts older
than the answers already sent, a stopping gateway writes what is queued,
and Redis going away drops counts without stalling anyone."""
import threading
import time

import requests

from conftest import SLOW, on_masters, user, wait_until
import keys as K


def metric(gw, name):
    for line in requests.get(gw.url + "/metrics", timeout=10).text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(name + " not in /metrics")


def hammer(gw, texts, per_thread, threads=8):
    outcomes, errors = [], []
    lock = threading.Lock()

    def run(i):
        s = requests.Session()
        for n in range(per_thread):
            t = texts[(i + n) % len(texts)]
            try:
                r = s.post(gw.url + "/v1/chat/completions",
                           json={"model": "mock-1", "messages": user(t)}, timeout=30 * SLOW)
                with lock:
                    outcomes.append((t, r.status_code, r.headers.get("X-Semgate-Cache")))
            except requests.RequestException as exc:
                with lock:
                    errors.append(exc)

    ts = [threading.Thread(target=run, args=(i,)) for i in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert not errors, errors[:3]
    return outcomes


def test_concurrent_hits_are_each_counted_once_and_visible_to_the_cache_api(gateway,
                                                                             redis_db):
    texts = ["tally question %d" % i for i in range(4)]
    ids = {}
    for t in texts:
        r = gateway.chat(user(t))
        assert r.headers["X-Semgate-Cache"] == "miss"
        ids[t] = r.headers["X-Semgate-Entry"]
    batches_before = metric(gateway, "semgate_cache_accounting_batches_total")
    out = hammer(gateway, texts, per_thread=25)
    assert all(code == 200 and cache == "hit-exact" for _, code, cache in out), out[:5]
    # no wait: the cache API settles the queue before it reads
    st = requests.get(gateway.url + "/v1/cache/stats", timeout=10).json()
    assert st["hits_exact"] == 200 and st["misses"] == 4 and st["lookups"] == 204, st
    top = requests.get(gateway.url + "/v1/cache/top?limit=10", timeout=10).json()
    got = {e["id"]: e["hits"] for e in top["top"]}
    want = {ids[t]: sum(1 for x, _, _ in out if x == t) for t in texts}
    assert got == want, (got, want)
    for t in texts:
        e = requests.get(gateway.url + "/v1/cache/entries/" + ids[t], timeout=10).json()
        assert e["hits"] == want[ids[t]]
        assert int(redis_db.hget(K.entry("default", ids[t]), "hits")) == want[ids[t]]
    # written in batches: never more transactions than lookups
    batches = metric(gateway, "semgate_cache_accounting_batches_total") - batches_before
    assert 1 <= batches <= 200
    assert metric(gateway, "semgate_cache_accounting_dropped_total") == 0


def test_counting_misses_never_waits_for_the_stores_written_behind(gateway, redis_db):
    # a batch of counts waited for every queued store before it was written:
    # under load the ring of counts filled meanwhile and held every request
    waits = metric(gateway, "semgate_cache_accounting_store_waits_total")
    batches = metric(gateway, "semgate_cache_accounting_batches_total")
    texts = ["never seen question %d about %s" % (i, "xyz" * i) for i in range(40)]
    out = hammer(gateway, texts, per_thread=1, threads=40)  # each text once
    assert all(code == 200 and cache == "miss" for _, code, cache in out), out[:5]
    st = requests.get(gateway.url + "/v1/cache/stats", timeout=10).json()
    assert st["lookups"] == 40, st
    assert metric(gateway, "semgate_cache_accounting_batches_total") > batches
    assert metric(gateway, "semgate_cache_accounting_store_waits_total") == waits
    # hits on entries Redis has by now do not wait either, and are counted
    gateway.settle()
    r = gateway.chat(user(texts[0]))
    assert r.headers["X-Semgate-Cache"] == "hit-exact"
    eid = r.headers["X-Semgate-Entry"]
    assert requests.get(gateway.url + "/v1/cache/entries/" + eid, timeout=10).json()["hits"] == 1
    assert metric(gateway, "semgate_cache_accounting_store_waits_total") == waits


def test_a_stopping_gateway_writes_the_queued_counts(make_gateway, redis_db):
    g = make_gateway()
    r = g.chat(user("count me on the way out"))
    eid = r.headers["X-Semgate-Entry"]
    for _ in range(20):
        assert g.chat(user("count me on the way out")).headers["X-Semgate-Cache"] == "hit-exact"
    g.stop()  # SIGTERM right after the last answer; exit status checked by stop()
    assert redis_db.hget(K.entry("default", eid), "hits") == b"20"
    st = K.stats(redis_db, "default")
    assert st[b"hits_exact"] == 20 and st[b"misses"] == 1 and st[b"lookups"] == 21
    assert K.zscore(redis_db, "default", eid) == 20


def test_deleting_an_entry_right_after_hits_leaves_no_leaderboard_ghost(gateway, redis_db):
    eid = gateway.chat(user("ghost check")).headers["X-Semgate-Entry"]
    for _ in range(5):
        gateway.chat(user("ghost check"))
    r = requests.delete(gateway.url + "/v1/cache/entries/" + eid, timeout=10)
    assert r.status_code == 204, r.text
    time.sleep(0.2)  # anything still queued would land now
    assert K.zscore(redis_db, "default", eid) is None
    assert not redis_db.exists(K.entry("default", eid))


def test_the_cache_api_waits_for_counts_held_up_in_redis(make_gateway, redis_db):
    g = make_gateway(SEMGATE_REDIS_TIMEOUT_MS=3000)
    q = user("held up count")
    eid = g.chat(q).headers["X-Semgate-Entry"]
    # writes wait in Redis for 400 ms; reads (the exact GET) go on
    on_masters(redis_db, "CLIENT", "PAUSE", 400, "WRITE")
    t0 = time.monotonic()
    for _ in range(3):
        assert g.chat(q).headers["X-Semgate-Cache"] == "hit-exact"
    answered = time.monotonic() - t0
    st = requests.get(g.url + "/v1/cache/stats", timeout=10).json()
    waited = time.monotonic() - t0
    # the hits were answered while their counts were stuck; the stats call
    # waited for them instead of reading stale numbers
    assert st["hits_exact"] == 3 and st["lookups"] == 4, st
    assert answered < 0.35 or SLOW > 1, answered
    assert waited >= 0.3, waited
    assert requests.get(g.url + "/v1/cache/entries/" + eid, timeout=10).json()["hits"] == 3


def test_counts_refused_by_redis_are_dropped_and_counted_without_stalling_hits(
        make_gateway, redis_db):
    g = make_gateway(SEMGATE_REDIS_TIMEOUT_MS=200)
    q = user("dropped while paused")
    eid = g.chat(q).headers["X-Semgate-Entry"]
    assert metric(g, "semgate_cache_accounting_dropped_total") == 0
    assert requests.get(g.url + "/v1/cache/stats", timeout=10).json()["misses"] == 1
    on_masters(redis_db, "CLIENT", "PAUSE", 1500, "WRITE")
    t0 = time.monotonic()
    for _ in range(5):
        assert g.chat(q).headers["X-Semgate-Cache"] == "hit-exact"
    assert time.monotonic() - t0 < 1.2 * SLOW  # hits never wait for their counts
    wait_until(lambda: metric(g, "semgate_cache_accounting_dropped_total") >= 1,
               timeout=5 * SLOW, what="a dropped batch")
    time.sleep(1.6)  # the pause is over
    dropped = metric(g, "semgate_cache_accounting_dropped_total")
    assert g.chat(q).headers["X-Semgate-Cache"] == "hit-exact"
    st = requests.get(g.url + "/v1/cache/stats", timeout=10).json()
    # every hit is either counted or dropped, never both, never twice
    assert st["hits_exact"] + dropped == 6 and st["lookups"] + dropped == 7, (st, dropped)
    assert int(redis_db.hget(K.entry("default", eid), "hits") or 0) == st["hits_exact"]
    assert metric(g, "semgate_cache_accounting_dropped_total") == dropped
    assert g.alive()


# Redis 7's key permissions are an allow-list of glob patterns: every key
# may be read, and read and written (one pattern must grant both to a
# command such as HINCRBY) unless it is tenant tb's stats hash
# (sg:stats:{tag}:tb).
ALL_BUT_TB_STATS = ["%R~*", "~[^s]*", "~s[^g]*", "~sg[^:]*", "~sg:[^s]*", "~sg:s[^t]*",
                    "~sg:st[^a]*", "~sg:sta[^t]*", "~sg:stat[^s]*", "~sg:stats[^:]*",
                    "~sg:stats:*:[^t]*", "~sg:stats:*:t[^b]*", "~sg:stats:*:tb?*"]


def test_a_refused_tenant_block_drops_only_that_tenants_requests(make_gateway, redis_db):
    g = make_gateway(SEMGATE_API_KEYS="ka:ta,kb:tb")
    ha, hb = {"Authorization": "Bearer ka"}, {"Authorization": "Bearer kb"}
    for h in (ha, hb):
        assert g.chat(user("tenant block"), headers=h).headers["X-Semgate-Cache"] == "miss"
        assert g.chat(user("tenant block"), headers=h).headers["X-Semgate-Cache"] == "hit-exact"
    g.settle(ha)
    g.settle(hb)
    before = requests.get(g.url + "/v1/cache/stats", headers=ha, timeout=10).json()
    assert before["hits_exact"] == 1 and before["lookups"] == 2, before
    on_masters(redis_db, "ACL", "SETUSER", "default", "resetkeys", *ALL_BUT_TB_STATS)
    try:
        # writes held for a moment: the first count's batch waits in Redis
        # while the others queue, so the next batch likely carries both
        # tenants (the checks hold however they are batched). Not scaled by
        # SLOW: a pause past the Redis timeout (500 ms) would fail the batch
        on_masters(redis_db, "CLIENT", "PAUSE", "200", "WRITE")
        for h in (ha, hb, ha, hb, ha):
            assert g.chat(user("tenant block"), headers=h).headers["X-Semgate-Cache"] == \
                "hit-exact"
        g.settle(ha)   # the cache API settles the accounting queue first
        st = requests.get(g.url + "/v1/cache/stats", headers=ha, timeout=10).json()
        # tenant ta's three hits are counted; tb's two are the only drops
        assert st["hits_exact"] == 4 and st["lookups"] == 5, st
        assert metric(g, "semgate_cache_accounting_dropped_total") == 2
        tb_hits = sum(int(redis_db.hget(k, "hits_exact") or 0)
                      for k in K.tenant_keys("stats", "tb"))
        assert tb_hits == 1, tb_hits   # its hit from before the refusal only
    finally:
        on_masters(redis_db, "ACL", "SETUSER", "default", "resetkeys", "~*")
    # the connection is in step: both tenants count again
    for h in (ha, hb):
        assert g.chat(user("tenant block"), headers=h).headers["X-Semgate-Cache"] == "hit-exact"
    st_a = requests.get(g.url + "/v1/cache/stats", headers=ha, timeout=10).json()
    st_b = requests.get(g.url + "/v1/cache/stats", headers=hb, timeout=10).json()
    assert st_a["hits_exact"] == 5 and st_b["hits_exact"] == 2, (st_a, st_b)
    assert metric(g, "semgate_cache_accounting_dropped_total") == 2
    assert g.alive()


def test_a_block_redis_refuses_leaves_the_others_counted_and_not_dropped(
        make_gateway, redis_db):
    g = make_gateway()
    q = user("one block refused")
    eid = g.chat(q).headers["X-Semgate-Entry"]
    assert requests.get(g.url + "/v1/cache/stats", timeout=10).json()["misses"] == 1
    # ZINCRBY (the leaderboard, in every entry's block) is refused when it is
    # queued: that block aborts; the tenant's counters, in their own block of
    # the same write, still count, and the requests are not reported dropped
    on_masters(redis_db, "ACL", "SETUSER", "default", "-zincrby")
    try:
        for _ in range(4):
            assert g.chat(q).headers["X-Semgate-Cache"] == "hit-exact"
        st = requests.get(g.url + "/v1/cache/stats", timeout=10).json()
        assert st["hits_exact"] == 4 and st["lookups"] == 5, st
        assert metric(g, "semgate_cache_accounting_dropped_total") == 0
        assert int(redis_db.hget(K.entry("default", eid), "hits") or 0) == 0
        wait_until(lambda: "some entry hits are not" in g.logs(), timeout=5 * SLOW,
                   what="the refused block logged")
    finally:
        on_masters(redis_db, "ACL", "SETUSER", "default", "+zincrby")
    # the replies of the blocks after the refused one were read: the next
    # write finds the connection in step
    assert g.chat(q).headers["X-Semgate-Cache"] == "hit-exact"
    st = requests.get(g.url + "/v1/cache/stats", timeout=10).json()
    assert st["hits_exact"] == 5 and st["lookups"] == 6, st
    assert int(redis_db.hget(K.entry("default", eid), "hits")) == 1
    assert metric(g, "semgate_cache_accounting_dropped_total") == 0
    assert "written again" in g.logs()
    assert g.alive()
