"""Several gateway processes on one Redis: entries stored, deleted or
invalidated through one become hits (or stop being hits) on the others
within a second, through {prefix}events, also across a Redis restart."""
import json
import threading
import time

import pytest
import requests

from conftest import SLOW, user, wait_until

API = "/v1/cache"


def post(gw, path, body):
    return requests.post(gw.url + API + path, json=body, timeout=10)


def store(gw, **body):
    r = post(gw, "/entries", body)
    assert r.status_code == 201, r.text
    return r.json()["id"]


def lookup(gw, **body):
    r = post(gw, "/lookup", body)
    assert r.status_code == 200, r.text
    return r.json()


def within_a_second(pred, what):
    wait_until(pred, timeout=1.0, interval=0.01, what=what)


@pytest.fixture
def pair(make_gateway, redis_db, upstream):
    return make_gateway(), make_gateway()


def test_an_entry_stored_through_one_gateway_is_a_semantic_hit_on_the_other(pair, upstream):
    a, b = pair
    upstream.set_similarity("What's the refund policy", "What is the refund policy?", 0.97)
    eid = store(a, query="What is the refund policy?", answer="30 days.")
    within_a_second(lambda: lookup(b, query="What's the refund policy")["hit"],
                    "gateway b to index the entry stored through a")
    hit = lookup(b, query="What's the refund policy")
    assert hit["id"] == eid and hit["match"] == "semantic"
    r = requests.delete(f"{b.url}{API}/entries/{eid}", timeout=5)
    assert r.status_code == 204
    within_a_second(lambda: not lookup(a, query="What's the refund policy")["hit"],
                    "gateway a to forget the entry deleted through b")


def test_chat_answers_and_invalidations_travel_between_gateways(pair, upstream):
    a, b = pair
    hdr = {"X-Semgate-Namespace": "travel"}
    r = a.chat(user("Best time to visit Japan?"), headers=hdr)
    assert r.headers["X-Semgate-Cache"] == "miss"
    a.settle()  # stored behind the answer: only then can b see it
    upstream.set_similarity("best time to visit japan", "Best time to visit Japan?", 0.98)
    within_a_second(lambda: b.chat(user("best time to visit japan"), headers=hdr)
                    .headers["X-Semgate-Cache"] == "hit-semantic",
                    "a chat answer cached by a to hit on b")
    assert upstream.stats()["chat_requests"] == 1
    r = post(b, "/invalidate", {"namespace": "travel"})
    assert r.json() == {"deleted": 1}
    upstream.set_similarity("Best time to visit Japan", "Best time to visit Japan?", 0.98)
    assert a.chat(user("Best time to visit Japan"), headers=hdr).headers["X-Semgate-Cache"] == "miss"


def test_events_name_the_entry_and_tenant(pair, upstream, redis_server):
    a, _ = pair
    sub = redis_server.client().pubsub()
    sub.subscribe("sg:events")
    wait_until(lambda: sub.get_message(timeout=0.1), what="subscription")
    eid = store(a, query="evented", answer="x", tags=["e"])
    requests.delete(f"{a.url}{API}/entries/{eid}", timeout=5)
    eid2 = store(a, query="evented 2", answer="x", tags=["e"])
    post(a, "/invalidate", {"tag": "e"})
    events = []

    def collect():
        m = sub.get_message(timeout=0.2)
        if m and m["type"] == "message":
            events.append(json.loads(m["data"]))
        return len(events) >= 4
    wait_until(collect, what="four events")
    sub.close()
    assert [(e["event"], e["id"]) for e in events] == [
        ("add", eid), ("delete", eid), ("add", eid2), ("flush", eid2)]
    assert all(e["tenant"] == "default" and len(e["origin"]) == 32 for e in events)
    assert events[0]["dim"] == 384 and events[0]["model"] == "text-embedding-3-small"
    assert len(set(e["origin"] for e in events)) == 1


def test_gateways_resynchronise_after_a_redis_restart(pair, upstream, redis_server):
    a, b = pair
    upstream.set_similarity("old question?", "old question", 0.99)
    upstream.set_similarity("new question?", "new question", 0.99)
    store(a, query="old question", answer="old")
    within_a_second(lambda: lookup(b, query="old question?")["hit"], "b to see the old entry")

    redis_server.stop()
    assert post(a, "/lookup", {"query": "old question?"}).status_code == 503
    redis_server.start()  # empty: the restart lost everything
    # a stores at once, likely before b's follower has reconnected: b must
    # catch up by resynchronising from Redis, not only from events
    wait_until(lambda: post(a, "/entries", {"query": "new question", "answer": "new"})
               .status_code == 201, what="a to store after the restart")
    wait_until(lambda: lookup(b, query="new question?")["hit"], timeout=5,
               what="b to find the entry stored during its outage")
    assert not lookup(b, query="old question?")["hit"]
    assert not lookup(a, query="old question?")["hit"]
    # and events flow again, both ways
    upstream.set_similarity("later question?", "later question", 0.99)
    store(b, query="later question", answer="later")
    within_a_second(lambda: lookup(a, query="later question?")["hit"], "a to follow b again")
    for g in (a, b):
        assert g.alive()
    assert "resynchronised" in b.logs()


def test_a_gateway_started_while_redis_is_down_follows_once_it_is_up(make_gateway, redis_db,
                                                                     upstream, redis_server):
    a = make_gateway()
    store(a, query="stored early", answer="x")
    redis_server.stop()
    b = make_gateway()
    redis_server.start()
    upstream.set_similarity("stored late?", "stored late", 0.99)
    wait_until(lambda: post(a, "/entries", {"query": "stored late", "answer": "y"})
               .status_code == 201, what="a to store")
    wait_until(lambda: lookup(b, query="stored late?")["hit"], timeout=5,
               what="b to rebuild once redis is up")


def test_concurrent_stores_on_both_gateways_all_become_hits_everywhere(pair, upstream):
    a, b = pair
    ids = {}

    def work(g, sign):
        for i in range(1, 21):
            ids[(sign, i)] = store(g, query=f"q {sign} {i}", answer="x", vector=[1, i, sign])
    ts = [threading.Thread(target=work, args=(g, s)) for g, s in ((a, 3), (b, -3))]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert len(set(ids.values())) == 40
    for g in (a, b):
        for (sign, i), eid in ids.items():
            # the stored question itself: the hit verifier compares texts
            wait_until(lambda: lookup(g, query=f"q {sign} {i}", vector=[1, i, sign],
                                      threshold=0.99999).get("id") == eid,
                       timeout=1.0, what="every entry on both gateways")


def test_shutdown_is_not_held_up_by_the_event_follower(make_gateway, redis_db, upstream):
    g = make_gateway()
    store(g, query="idle follower", answer="x")  # the follower is subscribed and idle
    t0 = time.monotonic()
    assert g.stop() == 0
    # the follower itself notices within ~100 ms; the bound leaves room for
    # the HTTP drain, and catches a follower stuck in a blocking read
    assert time.monotonic() - t0 < 5.0 * SLOW


def test_a_gateway_does_not_read_back_the_entries_it_stored(make_gateway, redis_db, upstream):
    g = make_gateway()
    other = make_gateway()
    redis_db.config_resetstat()
    for i in range(10):
        r = g.chat(user(f"stored here {i}"), headers={"X-Semgate-Namespace": f"own-{i}"})
        assert r.headers["X-Semgate-Cache"] == "miss"
    # the other gateway follows each add event with one HMGET of the vector;
    # the gateway that stored them already indexed them and reads nothing
    within_a_second(lambda: redis_db.info("commandstats").get("cmdstat_hmget", {})
                    .get("calls", 0) >= 10, "the other gateway's reads")
    time.sleep(0.3)
    assert redis_db.info("commandstats")["cmdstat_hmget"]["calls"] == 10
    r = other.chat(user("stored here 3"), headers={"X-Semgate-Namespace": "own-3"})
    assert r.headers["X-Semgate-Cache"] == "hit-exact"
