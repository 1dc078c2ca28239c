"""A lookup with the built-in local embedder sends the exact key's GET, then
embeds and searches while Redis answers (src/cache/cache.c,
exact_then_search): what it answers must be what the exact-first lookup
answered, with one search and one Redis round trip per lookup."""
from conftest import metric, user, wait_until

CC_NO_CACHE = {"Cache-Control": "no-cache"}


def local_gateway(make_gateway, **env):
    # no hot copies: every exact lookup is the Redis GET that runs ahead
    return make_gateway(SEMGATE_EMBED_URL="", SEMGATE_HOT_CACHE_ENTRIES=0, **env)


def ask(gw, text, headers=None):
    r = gw.chat(user(text), headers=headers)
    assert r.status_code == 200, r.text
    if r.headers["X-Semgate-Cache"] == "miss":
        gw.settle()
    return r.headers["X-Semgate-Cache"], r.headers.get("X-Semgate-Entry"), r


def searches(gw):
    return metric(gw, "semgate_vector_search_duration_seconds_count")


def test_the_exact_key_wins_over_the_neighbour_searched_meanwhile(make_gateway, redis_db,
                                                                 upstream):
    g = local_gateway(make_gateway)
    outcome, first, _ = ask(g, "What is the capital of France?")
    assert outcome == "miss"
    # the same vector under another exact key, stored past the lookup
    outcome, second, _ = ask(g, "what is the capital of france", headers=CC_NO_CACHE)
    assert outcome == "miss" and second != first
    # both are in the index with one vector: the search ahead finds either,
    # and the exact key of each question must still say which is its own
    for _ in range(3):
        assert ask(g, "What is the capital of France?")[:2] == ("hit-exact", first)
        assert ask(g, "what is the capital of france")[:2] == ("hit-exact", second)
    outcome, eid, r = ask(g, "WHAT is the capital of France")
    assert outcome == "hit-semantic" and eid in (first, second)
    assert float(r.headers["X-Semgate-Similarity"]) >= 0.95
    assert upstream.stats()["chat_requests"] == 2


def test_a_miss_costs_one_search_and_one_round_trip(make_gateway, redis_db, upstream):
    g = local_gateway(make_gateway)
    ask(g, "seed question about penguins")
    # questions far from each other: no candidate reaches the threshold
    fresh = ["Which river flows through Vienna?", "How do I bake sourdough bread?",
             "What does a capacitor store?", "When did the Berlin wall fall?",
             "Why is the sky blue at noon?"]
    for q in fresh:
        s0 = searches(g)
        gets0 = redis_db.info("commandstats").get("cmdstat_get", {}).get("calls", 0)
        outcome, _, _ = ask(g, q)
        assert outcome == "miss"
        assert searches(g) == s0 + 1
        gets1 = redis_db.info("commandstats").get("cmdstat_get", {}).get("calls", 0)
        assert gets1 == gets0 + 1
    assert upstream.stats()["chat_requests"] == 6


def test_a_row_found_ahead_whose_entry_is_gone_is_dropped_and_searched_again(
        make_gateway, redis_db, upstream):
    g = local_gateway(make_gateway)
    outcome, eid, _ = ask(g, "How tall is the Eiffel Tower?")
    assert outcome == "miss"
    # the entry goes behind the gateway's back: its row stays in the index
    for k in redis_db.keys("sg:e:*") + redis_db.keys("sg:x:*"):
        redis_db.delete(k)
    s0 = searches(g)
    outcome, _, _ = ask(g, "how tall is the eiffel tower")
    # the search ahead found the row, the entry was gone: the row is
    # forgotten and the partition searched once more, in vain
    assert outcome == "miss"
    assert searches(g) == s0 + 2
    assert upstream.stats()["chat_requests"] == 2
    # the new answer is the one found from now on
    outcome, again, _ = ask(g, "How tall is the Eiffel Tower")
    assert outcome == "hit-semantic" and again != eid


def test_redis_gone_during_the_lookup_bypasses(make_gateway, redis_db, redis_server, upstream):
    g = local_gateway(make_gateway)
    assert ask(g, "asked while Redis is up")[0] == "miss"
    redis_server.stop()
    try:
        wait_until(lambda: g.chat(user("asked while Redis is down")).headers.get(
            "X-Semgate-Cache") == "bypass", what="a bypass with Redis down")
        r = g.chat(user("asked while Redis is up"))
        assert r.status_code == 200 and r.headers["X-Semgate-Cache"] == "bypass"
    finally:
        redis_server.start()
    wait_until(lambda: g.chat(user("asked while Redis is up")).headers.get(
        "X-Semgate-Cache") in ("miss", "hit-semantic", "hit-exact"), what="Redis back")
