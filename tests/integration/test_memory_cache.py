"""SEMGATE_MEMORY_CACHE: which memory-mode turns use the cache. A later
turn's scope holds the conversation's whole history, so no other request can
share it; by default ("first") only a conversation's first turn is looked up
and stored, so Redis holds no entries that can never be hit."""
import requests

from conftest import user


def turns(gw, conv, texts):
    out = []
    for t in texts:
        r = gw.chat(user(t), headers={"X-Conversation-Id": conv})
        assert r.status_code == 200, r.text
        assert r.headers["X-Semgate-Memory"] == "stored"
        out.append(r.headers)
    return out


def entries(gw, redis_db):
    gw.settle()  # a miss's store is written behind its answer
    return len(redis_db.keys("sg:e:*"))


def test_default_caches_only_the_first_turn(gateway, upstream, redis_db):
    hs = turns(gateway, "mc1", ["What is Redis?", "And Valkey?", "Which is faster?"])
    assert [h["X-Semgate-Cache"] for h in hs] == ["miss", "bypass", "bypass"]
    assert entries(gateway, redis_db) == 1
    # the first turn is a question anyone may ask: a stateless request hits it
    r = gateway.chat(user("What is Redis?"))
    assert r.headers["X-Semgate-Cache"] == "hit-exact"
    # and a new conversation opening with it too
    h = turns(gateway, "mc2", ["What is Redis?"])[0]
    assert h["X-Semgate-Cache"] == "hit-exact"
    # later turns skipped the embedding call as well as the store
    assert upstream.stats()["embedding_requests"] == 1
    conv = requests.get(gateway.url + "/v1/conversations/mc1", timeout=5).json()
    assert len(conv["messages"]) == 6


def test_all_caches_every_turn(make_gateway, redis_db, upstream):
    g = make_gateway(SEMGATE_MEMORY_CACHE="all")
    hs = turns(g, "mc3", ["What is Redis?", "And Valkey?", "Which is faster?"])
    assert [h["X-Semgate-Cache"] for h in hs] == ["miss", "miss", "miss"]
    assert entries(g, redis_db) == 3


def test_off_never_caches_memory_mode(make_gateway, redis_db, upstream):
    g = make_gateway(SEMGATE_MEMORY_CACHE="off")
    hs = turns(g, "mc4", ["What is Redis?", "And Valkey?"])
    assert [h["X-Semgate-Cache"] for h in hs] == ["bypass", "bypass"]
    assert entries(g, redis_db) == 0
    # stateless requests still use the cache
    assert g.chat(user("What is Redis?")).headers["X-Semgate-Cache"] == "miss"
    assert entries(g, redis_db) == 1
