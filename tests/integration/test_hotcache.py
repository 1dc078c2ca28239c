"""The hot exact cache (src/cache/hotcache.c): repeated questions are answered
from process memory without a Redis round trip, and every change of the
exact key anywhere (another gateway, a direct DEL, FLUSHDB, expiry) takes
the copy away; this process's own deletes and stores at once."""
import json
import re
import time

import requests

from conftest import SLOW, metric, user, wait_until


def gets(redis_db):
    return redis_db.info("commandstats").get("cmdstat_get", {}).get("calls", 0)


def outcome(gw, text, **kw):
    r = gw.chat(user(text), **kw)
    assert r.status_code == 200, r.text
    if r.headers["X-Semgate-Cache"] == "miss":
        # the store is written behind the answer (behind.h); these tests
        # are about copies of what Redis holds, so let it get there
        gw.settle()
    return r.headers["X-Semgate-Cache"], r.headers.get("X-Semgate-Entry"), r



def test_repeated_question_is_served_from_memory_without_redis(gateway, redis_db, upstream):
    assert outcome(gateway, "hot one")[0] == "miss"
    assert outcome(gateway, "hot one")[0] == "hit-exact"      # read from Redis, kept
    assert metric(gateway, "semgate_hot_cache_keys") == 1
    before_gets, before_hits = gets(redis_db), metric(gateway, "semgate_hot_cache_hits_total")
    bodies = set()
    for _ in range(5):
        cache, eid, r = outcome(gateway, "hot one")
        assert cache == "hit-exact"
        bodies.add(r.json()["id"])
        assert r.json()["choices"][0]["message"]["content"] == "Mock answer: hot one"
    assert gets(redis_db) == before_gets                       # no Redis lookup at all
    assert metric(gateway, "semgate_hot_cache_hits_total") == before_hits + 5
    assert len(bodies) == 5                                    # still a fresh id each time
    assert upstream.stats()["chat_requests"] == 1
    # and the hits are still counted on the entry
    st = requests.get(gateway.url + "/v1/cache/stats", timeout=10).json()
    assert st["hits_exact"] == 6


def tokens_saved(gw, kind):
    m = re.search(r'^semgate_tokens_saved_total\{kind="%s"\} (\S+)$' % kind,
                  requests.get(gw.url + "/metrics", timeout=10).text, re.M)
    assert m, "semgate_tokens_saved_total{kind=%s} not in /metrics" % kind
    return float(m.group(1))


def without_fresh(body):
    d = dict(body)
    assert isinstance(d.pop("id"), str) and isinstance(d.pop("created"), int)
    return d


def test_a_hit_from_the_copy_says_and_counts_what_a_hit_from_redis_does(gateway, upstream):
    """A hot copy keeps what its answer holds (its usage, whether the fresh
    id goes in place), so a hit from it sends the stored bytes without
    parsing them: the same answer, headers and counts as a hit read from
    Redis, streamed and memory-mode hits included."""
    _, _, miss = outcome(gateway, "what the copy knows")
    usage = miss.json()["usage"]
    assert usage["prompt_tokens"] > 0 and usage["completion_tokens"] > 0
    seen = []
    for _ in range(3):          # the first is read from Redis, then the copy
        p0, c0 = tokens_saved(gateway, "prompt"), tokens_saved(gateway, "completion")
        cache, _, r = outcome(gateway, "what the copy knows")
        assert cache == "hit-exact"
        assert r.headers["X-Semgate-Tokens-Saved"] == str(usage["total_tokens"])
        assert r.headers["X-Semgate-Similarity"] == "1.000000"
        assert tokens_saved(gateway, "prompt") == p0 + usage["prompt_tokens"]
        assert tokens_saved(gateway, "completion") == c0 + usage["completion_tokens"]
        seen.append(r.json())
    assert metric(gateway, "semgate_hot_cache_hits_total") >= 2
    assert len({b["id"] for b in seen}) == 3
    assert all(b["id"].startswith("chatcmpl-sg") for b in seen)
    stored = without_fresh(miss.json())
    assert all(without_fresh(b) == stored for b in seen)
    # the tenant's counts: every hit's usage, from the copy or not
    st = requests.get(gateway.url + "/v1/cache/stats", timeout=10).json()
    assert st["hits_exact"] == 3
    assert st["tokens_saved_prompt"] == 3 * usage["prompt_tokens"]
    assert st["tokens_saved_completion"] == 3 * usage["completion_tokens"]
    # a streamed hit and a memory-mode hit of the same copy still read the
    # answer itself: the events, and the turn kept in memory
    s = gateway.chat(user("what the copy knows"), stream=True)
    assert s.status_code == 200 and s.headers["X-Semgate-Cache"] == "hit-exact"
    assert "Mock answer: what the copy knows" in "".join(
        json.loads(l[6:])["choices"][0]["delta"].get("content", "")
        for l in s.text.splitlines() if l.startswith("data: {"))
    m = gateway.chat(user("what the copy knows"), headers={"X-Conversation-Id": "hot-conv"})
    assert m.status_code == 200 and m.headers["X-Semgate-Cache"] == "hit-exact"
    hist = requests.get(gateway.url + "/v1/conversations/hot-conv", timeout=10)
    assert hist.status_code == 200, hist.text
    assert hist.json()["messages"] == [
        {"role": "user", "content": "what the copy knows"},
        {"role": "assistant", "content": "Mock answer: what the copy knows"}]
    assert upstream.stats()["chat_requests"] == 1


def test_a_direct_delete_in_redis_takes_the_copy_away(gateway, redis_db, upstream):
    outcome(gateway, "delete me behind its back")
    outcome(gateway, "delete me behind its back")
    for k in redis_db.keys("sg:x:*"):
        redis_db.delete(k)
    wait_until(lambda: metric(gateway, "semgate_hot_cache_keys") == 0, timeout=2 * SLOW,
               what="the invalidation")
    # the entry hash is still there: found again by its vector, not by key
    assert outcome(gateway, "delete me behind its back")[0] == "hit-semantic"


def test_flushdb_takes_every_copy_away(gateway, redis_db):
    for t in ("flush a", "flush b"):
        outcome(gateway, t)
        outcome(gateway, t)
    assert metric(gateway, "semgate_hot_cache_keys") == 2
    redis_db.flushdb()
    wait_until(lambda: metric(gateway, "semgate_hot_cache_keys") == 0, timeout=2 * SLOW)
    assert outcome(gateway, "flush a")[0] == "miss"


def test_a_copy_never_outlives_the_entry_ttl(gateway):
    ttl = {"X-Semgate-TTL": "1"}
    outcome(gateway, "short lived", headers=ttl)
    assert outcome(gateway, "short lived", headers=ttl)[0] == "hit-exact"
    assert outcome(gateway, "short lived", headers=ttl)[0] == "hit-exact"
    time.sleep(1.2)
    assert outcome(gateway, "short lived", headers=ttl)[0] == "miss"


def test_own_delete_and_own_newer_answer_are_seen_at_once(gateway):
    _, eid, _ = outcome(gateway, "mine")
    outcome(gateway, "mine")
    assert requests.delete(gateway.url + "/v1/cache/entries/" + eid,
                           timeout=10).status_code == 204
    assert outcome(gateway, "mine")[0] == "miss"               # no waiting
    outcome(gateway, "mine")                                   # hot again
    _, newer, _ = outcome(gateway, "mine", headers={"Cache-Control": "no-cache"})
    cache, served, _ = outcome(gateway, "mine")
    assert cache == "hit-exact" and served == newer


def test_another_gateways_changes_reach_the_copy(make_gateway, redis_db, upstream):
    a, b = make_gateway(), make_gateway()
    _, first, _ = outcome(a, "shared question")
    outcome(a, "shared question")                              # hot on a
    _, newer, _ = outcome(b, "shared question", headers={"Cache-Control": "no-cache"})
    wait_until(lambda: outcome(a, "shared question")[1] == newer, timeout=1.0 * SLOW,
               what="a to serve b's newer answer")
    assert requests.delete(b.url + "/v1/cache/entries/" + newer,
                           timeout=10).status_code == 204
    # (the first entry is still there: a answers with it, semantically)
    wait_until(lambda: outcome(a, "shared question")[1] != newer, timeout=1.0 * SLOW,
               what="a to drop the deleted entry")


def test_redis_going_away_empties_the_copy(make_gateway, redis_server, redis_db, upstream):
    g = make_gateway()
    outcome(g, "before it goes")
    outcome(g, "before it goes")
    assert metric(g, "semgate_hot_cache_keys") == 1
    redis_server.stop()
    try:
        wait_until(lambda: metric(g, "semgate_hot_cache_keys") == 0, timeout=2 * SLOW,
                   what="the copy to go with the subscriber")
        assert outcome(g, "before it goes")[0] == "bypass"
    finally:
        redis_server.start()
    # back: the data died with that Redis; a miss stores it again, then hot
    wait_until(lambda: outcome(g, "before it goes")[0] == "hit-exact", timeout=5 * SLOW)


def test_zero_entries_turns_it_off(make_gateway, redis_db):
    g = make_gateway(SEMGATE_HOT_CACHE_ENTRIES=0)
    outcome(g, "cold")
    before = gets(redis_db)
    for _ in range(3):
        assert outcome(g, "cold")[0] == "hit-exact"
    assert gets(redis_db) == before + 3
    assert metric(g, "semgate_hot_cache_hits_total") == 0


def test_invalidations_do_not_wait_behind_a_backlog_of_entry_events(make_gateway, redis_db,
                                                                    redis_server):
    g = make_gateway()
    outcome(g, "behind the backlog")
    outcome(g, "behind the backlog")
    assert metric(g, "semgate_hot_cache_keys") == 1
    # another gateway's adds: each costs this one a Redis read of the entry
    p = redis_server.any_node().pipeline(transaction=False)  # PUBLISH reaches every node
    for i in range(20000):
        p.publish("sg:events", json.dumps({
            "event": "add", "id": "%032x" % (i + 1), "tenant": "default",
            "origin": "f" * 32, "scope": "0" * 64, "model": "local-hash-v1", "dim": 384}))
    p.execute()
    t0 = time.monotonic()
    for k in redis_db.keys("sg:x:*"):
        redis_db.delete(k)
    wait_until(lambda: metric(g, "semgate_hot_cache_keys") == 0, timeout=10 * SLOW,
               interval=0.005, what="the invalidation")
    took = time.monotonic() - t0
    # 20,000 reads take seconds; the invalidation is applied before them
    assert took < 0.5 * SLOW, took
