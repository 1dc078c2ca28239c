"""The cache as a service (RAG sidecar): /v1/cache/lookup, /entries,
/entries/{id}, /invalidate, /top and /stats — success and error paths,
invalidation, the leaderboard, exact stats arithmetic, TTLs and the key
layout, and tenant isolation."""
import json
import math
import re
import time

import pytest
import requests

from conftest import user, wait_until
import keys as K

API = "/v1/cache"


def call(gw, method, path, body=None, raw=None, headers=None):
    kw = {"headers": dict(headers or {}), "timeout": 15}
    if raw is not None:
        kw["data"] = raw
        kw["headers"].setdefault("Content-Type", "application/json")
    elif body is not None:
        kw["json"] = body
    return requests.request(method, gw.url + path, **kw)


def store(gw, headers=None, **body):
    r = call(gw, "POST", API + "/entries", body, headers=headers)
    assert r.status_code == 201, r.text
    out = r.json()
    assert re.fullmatch(r"[0-9a-f]{32}", out["id"])
    return out["id"]


def lookup(gw, headers=None, **body):
    r = call(gw, "POST", API + "/lookup", body, headers=headers)
    assert r.status_code == 200, r.text
    return r.json()


def stats(gw, headers=None):
    r = call(gw, "GET", API + "/stats", headers=headers)
    assert r.status_code == 200, r.text
    return r.json()


def top(gw, limit=None, headers=None):
    r = call(gw, "GET", API + "/top" + (f"?limit={limit}" if limit is not None else ""),
             headers=headers)
    assert r.status_code == 200, r.text
    return r.json()["top"]


def assert_error(r, status):
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == {"error"}
    assert set(body["error"]) >= {"message", "type", "code"}
    assert body["error"]["message"]
    return body["error"]


def all_keys(rdb):
    return sorted(rdb.scan_iter(match="*", count=1000))


# ---- lookup and store ----

def test_store_then_exact_lookup_hits_without_an_embedding_call(gateway, upstream):
    eid = store(gateway, query="What is RAG?", answer="Retrieval-augmented generation.")
    assert upstream.stats()["embedding_requests"] == 1
    hit = lookup(gateway, query="What is RAG?")
    assert hit == {"hit": True, "id": eid, "similarity": 1.0, "match": "exact",
                   "query": "What is RAG?", "answer": "Retrieval-augmented generation.",
                   "metadata": None}
    assert upstream.stats()["embedding_requests"] == 1
    assert upstream.stats()["chat_requests"] == 0


def test_semantic_lookup_uses_the_threshold_and_reports_the_best_similarity(gateway, upstream):
    # the threshold alone (default 0.85); the verifier has its own tests
    off = {"X-Semgate-Verify": "off"}
    eid = store(gateway, query="How do I reset my password?", answer="Use the reset link.",
                metadata={"source": "faq.md", "chunk": 7})
    upstream.set_similarity("password reset please", "How do I reset my password?", 0.97)
    upstream.set_similarity("forgot pw", "How do I reset my password?", 0.80)
    hit = lookup(gateway, query="password reset please", headers=off)
    assert hit["hit"] is True and hit["match"] == "semantic" and hit["id"] == eid
    assert abs(hit["similarity"] - 0.97) < 1e-4
    assert hit["query"] == "How do I reset my password?"
    assert hit["answer"] == "Use the reset link."
    assert hit["metadata"] == {"source": "faq.md", "chunk": 7}
    miss = lookup(gateway, query="forgot pw", headers=off)
    assert miss["hit"] is False and abs(miss["best_similarity"] - 0.80) < 1e-4
    assert set(miss) == {"hit", "best_similarity"}
    hit = lookup(gateway, query="forgot pw", threshold=0.75, headers=off)
    assert hit["hit"] is True and hit["id"] == eid


def test_the_similarity_floor_bounds_what_a_miss_reports_never_what_hits(make_gateway, redis_db,
                                                                        upstream):
    off = {"X-Semgate-Verify": "off"}
    eid = store(make_gateway(), query="vector question", answer="an answer", vector=[1, 0, 0, 0])
    # similarities 0.5 and 0.55, both below the default floor of 0.6
    half, more = [0.5, math.sqrt(0.75), 0, 0], [0.55, math.sqrt(1 - 0.55 ** 2), 0, 0]
    for env, reported in (({}, None), ({"SEMGATE_SIMILARITY_FLOOR": "0.3"}, 0.5)):
        gw = make_gateway(env)
        miss = lookup(gw, query="q1", vector=half, headers=off)
        assert miss["hit"] is False
        if reported is None:
            assert miss["best_similarity"] is None
        else:
            assert abs(miss["best_similarity"] - reported) < 1e-4
        # a threshold below the floor still finds its hits
        hit = lookup(gw, query="q2", vector=more, threshold=0.52, headers=off)
        assert hit["hit"] is True and hit["id"] == eid and abs(hit["similarity"] - 0.55) < 1e-4
        gw.stop()


def test_lookup_in_an_empty_cache_has_no_best_similarity(gateway, upstream):
    assert lookup(gateway, query="anything at all") == {"hit": False, "best_similarity": None}


def test_namespace_and_scope_partition_the_cache(gateway, upstream):
    store(gateway, query="shared question", answer="for team a", namespace="team-a")
    store(gateway, query="shared question", answer="for user 1", scope="user:1")
    assert lookup(gateway, query="shared question", namespace="team-b")["hit"] is False
    assert lookup(gateway, query="shared question", scope="user:2")["hit"] is False
    assert lookup(gateway, query="shared question")["hit"] is False
    assert lookup(gateway, query="shared question", namespace="team-a")["answer"] == "for team a"
    assert lookup(gateway, query="shared question", scope="user:1")["answer"] == "for user 1"
    upstream.set_similarity("Shared question?", "shared question", 0.99)
    assert lookup(gateway, query="Shared question?", namespace="team-b")["hit"] is False
    assert lookup(gateway, query="Shared question?", namespace="team-a")["hit"] is True


def test_get_entry_returns_every_field_but_the_vector(gateway, upstream):
    meta = {"doc": "guide.pdf", "page": 12, "score": 0.123456789012345, "nested": {"a": [1, None]}}
    eid = store(gateway, query="What is semgate?", answer="A gateway.", namespace="docs",
                ttl=600, tags=["product", "faq", "product"], metadata=meta)
    r = call(gateway, "GET", f"{API}/entries/{eid}")
    assert r.status_code == 200, r.text
    e = r.json()
    assert e["id"] == eid and e["kind"] == "text"
    assert e["query"] == "What is semgate?" and e["answer"] == "A gateway."
    assert e["namespace"] == "docs" and re.fullmatch(r"[0-9a-f]{64}", e["scope"])
    assert e["tags"] == ["product", "faq"]
    assert e["metadata"] == meta
    assert e["hits"] == 0 and abs(e["created"] - time.time()) < 60
    assert 590 <= e["ttl_seconds"] <= 600
    assert e["dim"] == 384 and e["model"] == "text-embedding-3-small"
    assert "vector" not in e
    lookup(gateway, query="What is semgate?", namespace="docs")
    assert call(gateway, "GET", f"{API}/entries/{eid}").json()["hits"] == 1


def test_chat_entries_can_be_read_and_deleted_by_id(gateway, upstream, redis_db):
    r = gateway.chat(user("chat entry by id"))
    eid = r.headers["X-Semgate-Entry"]
    e = call(gateway, "GET", f"{API}/entries/{eid}").json()
    assert e["kind"] == "chat" and e["query"] == "chat entry by id"
    assert json.loads(e["answer"])["choices"][0]["message"]["content"] == "Mock answer: chat entry by id"
    assert call(gateway, "DELETE", f"{API}/entries/{eid}").status_code == 204
    assert gateway.chat(user("chat entry by id")).headers["X-Semgate-Cache"] == "miss"
    assert not redis_db.exists(K.entry("default", eid))


def test_unknown_and_malformed_entry_ids(gateway, upstream):
    assert_error(call(gateway, "GET", f"{API}/entries/0123456789abcdef0123456789abcdef"), 404)
    assert_error(call(gateway, "DELETE", f"{API}/entries/nope"), 404)
    assert_error(call(gateway, "GET", f"{API}/entries/a*b"), 400)
    assert_error(call(gateway, "DELETE", f"{API}/entries/" + "a" * 65), 400)
    assert_error(call(gateway, "GET", f"{API}/lookup"), 405)


def test_delete_removes_the_entry_its_exact_key_tags_and_leaderboard_row(gateway, upstream,
                                                                         redis_db):
    eid = store(gateway, query="delete me", answer="gone soon", tags=["t1", "t2"])
    keep = store(gateway, query="keep me", answer="stays", tags=["t1"])
    assert lookup(gateway, query="delete me")["hit"] is True
    assert K.zscore(redis_db, "default", eid) == 1
    assert call(gateway, "DELETE", f"{API}/entries/{eid}").status_code == 204
    assert_error(call(gateway, "GET", f"{API}/entries/{eid}"), 404)
    assert lookup(gateway, query="delete me")["hit"] is False
    upstream.set_similarity("delete me please", "delete me", 0.99)
    assert lookup(gateway, query="delete me please")["hit"] is False
    assert not redis_db.exists(K.entry("default", eid))
    assert K.zscore(redis_db, "default", eid) is None
    assert K.smembers(redis_db, "default", "t1") == {keep.encode()}
    assert redis_db.smembers(K.tag("default", "t1", keep)) == {keep.encode()}
    assert not redis_db.exists(*K.tag_keys("default", "t2"))
    xvals = [redis_db.get(k) for k in redis_db.scan_iter(match="sg:x:*")]
    assert len(xvals) == 1 and xvals[0].startswith(keep.encode() + b":text\n")
    assert_error(call(gateway, "DELETE", f"{API}/entries/{eid}"), 404)
    assert lookup(gateway, query="keep me")["hit"] is True


def test_storing_with_a_caller_vector_makes_no_embedding_call(gateway, upstream, redis_db):
    eid = store(gateway, query="vec question", answer="vec answer", vector=[1, 0, 0, 0])
    assert upstream.stats()["embedding_requests"] == 0
    h = redis_db.hgetall(K.entry("default", eid))
    assert h[b"model"] == b"external" and h[b"dim"] == b"4" and len(h[b"vector"]) == 16
    off = {"X-Semgate-Verify": "off"}  # the texts differ on purpose
    hit = lookup(gateway, query="another wording", vector=[0.9, 0.1, 0, 0], headers=off)
    assert hit["hit"] is True and hit["id"] == eid and hit["match"] == "semantic"
    assert abs(hit["similarity"] - 0.9 / math.sqrt(0.82)) < 1e-4
    # orthogonal: below SEMGATE_SIMILARITY_FLOOR (0.6), so nothing is reported
    miss = lookup(gateway, query="another wording", vector=[0, 1, 0, 0], headers=off)
    assert miss == {"hit": False, "best_similarity": None}
    miss = lookup(gateway, query="another wording", vector=[0.7, 0.7, 0.1, 0], headers=off)
    assert miss["hit"] is False and abs(miss["best_similarity"] - 0.7 / math.sqrt(0.99)) < 1e-4
    assert upstream.stats()["embedding_requests"] == 0
    # a text-only lookup uses the embedder's partition, never the caller's vectors
    upstream.set_similarity("another wording", "vec question", 0.999)
    assert lookup(gateway, query="another wording", headers=off)["hit"] is False
    # but the same question in the same scope is an exact hit whatever embedded it
    assert lookup(gateway, query="vec question")["id"] == eid


def test_vector_dimension_mismatch_is_400_and_changes_nothing(gateway, upstream, redis_db):
    store(gateway, query="three dims", answer="a", vector=[0.1, 0.2, 0.3])
    keys, st = all_keys(redis_db), K.stats(redis_db, "default")
    err = assert_error(call(gateway, "POST", API + "/entries",
                            {"query": "four dims", "answer": "b", "vector": [1, 2, 3, 4]}), 400)
    assert "dimension 4" in err["message"] and "3" in err["message"]
    err = assert_error(call(gateway, "POST", API + "/lookup",
                            {"query": "four dims", "vector": [1, 2, 3, 4]}), 400)
    assert "dimension" in err["message"]
    assert all_keys(redis_db) == keys and K.stats(redis_db, "default") == st
    # another scope is another partition: any dimension is fine there
    store(gateway, query="four dims", answer="b", vector=[1, 2, 3, 4], scope="other")


BAD_STORES = [
    ("bad json", '{"query": "q", "answer": }'),
    ("trailing bytes", '{"query": "q", "answer": "a"} x'),
    ("not an object", '["q", "a"]'),
    ("missing query", {"answer": "a"}),
    ("missing answer", {"query": "q"}),
    ("query not a string", {"query": 5, "answer": "a"}),
    ("blank query", {"query": "  ", "answer": "a"}),
    ("query too long", {"query": "x" * 65537, "answer": "a"}),
    ("answer not a string", {"query": "q", "answer": {"text": "a"}}),
    ("empty answer", {"query": "q", "answer": ""}),
    ("bad namespace", {"query": "q", "answer": "a", "namespace": "a b"}),
    ("empty namespace", {"query": "q", "answer": "a", "namespace": ""}),
    ("long namespace", {"query": "q", "answer": "a", "namespace": "n" * 129}),
    ("namespace not a string", {"query": "q", "answer": "a", "namespace": 7}),
    ("scope not a string", {"query": "q", "answer": "a", "scope": ["u1"]}),
    ("scope too long", {"query": "q", "answer": "a", "scope": "s" * 1025}),
    ("ttl zero", {"query": "q", "answer": "a", "ttl": 0}),
    ("ttl negative", {"query": "q", "answer": "a", "ttl": -5}),
    ("ttl fractional", {"query": "q", "answer": "a", "ttl": 1.5}),
    ("ttl string", {"query": "q", "answer": "a", "ttl": "60"}),
    ("ttl too long", {"query": "q", "answer": "a", "ttl": 31536001}),
    ("ttl bool", {"query": "q", "answer": "a", "ttl": True}),
    ("tags not an array", {"query": "q", "answer": "a", "tags": "faq"}),
    ("tag not a string", {"query": "q", "answer": "a", "tags": [1]}),
    ("bad tag", {"query": "q", "answer": "a", "tags": ["ok", "no/slash"]}),
    ("empty tag", {"query": "q", "answer": "a", "tags": [""]}),
    ("too many tags", {"query": "q", "answer": "a", "tags": [f"t{i}" for i in range(33)]}),
    ("metadata not an object", {"query": "q", "answer": "a", "metadata": [1, 2]}),
    ("metadata string", {"query": "q", "answer": "a", "metadata": "{}"}),
    ("metadata too big", {"query": "q", "answer": "a", "metadata": {"x": "y" * 17000}}),
    ("vector empty", {"query": "q", "answer": "a", "vector": []}),
    ("vector not an array", {"query": "q", "answer": "a", "vector": {"0": 1}}),
    ("vector with a string", {"query": "q", "answer": "a", "vector": [1, "2"]}),
    ("vector with null", {"query": "q", "answer": "a", "vector": [1, None]}),
    ("vector of zeros", {"query": "q", "answer": "a", "vector": [0, 0, 0]}),
    ("vector too long", {"query": "q", "answer": "a", "vector": [0.5] * 8193}),
    ("vector beyond float", {"query": "q", "answer": "a", "vector": [1e39, 1]}),
    ("unknown field", {"query": "q", "answer": "a", "namspace": "x"}),
    ("threshold on store", {"query": "q", "answer": "a", "threshold": 0.9}),
    ("duplicate field", '{"query": "q", "answer": "a", "answer": "b"}'),
]


@pytest.mark.parametrize("name,body", BAD_STORES, ids=[b[0] for b in BAD_STORES])
def test_bad_store_requests_are_400_and_store_nothing(gateway, upstream, redis_db, name, body):
    r = call(gateway, "POST", API + "/entries", **({"raw": body} if isinstance(body, str)
                                                  else {"body": body}))
    assert_error(r, 400)
    assert redis_db.dbsize() == 0
    assert upstream.stats()["embedding_requests"] == 0


BAD_LOOKUPS = [
    ("bad json", "{"),
    ("invalid utf-8", b'{"query": "\xff"}'),
    ("not an object", '"q"'),
    ("missing query", {"namespace": "x"}),
    ("query null", {"query": None}),
    ("query number", {"query": 1}),
    ("threshold zero", {"query": "q", "threshold": 0}),
    ("threshold above one", {"query": "q", "threshold": 1.5}),
    ("threshold string", {"query": "q", "threshold": "0.9"}),
    ("threshold negative", {"query": "q", "threshold": -0.5}),
    ("bad namespace", {"query": "q", "namespace": "a*b"}),
    ("vector empty", {"query": "q", "vector": []}),
    ("vector nested", {"query": "q", "vector": [[1.0]]}),
    ("answer on lookup", {"query": "q", "answer": "a"}),
    ("tags on lookup", {"query": "q", "tags": ["a"]}),
]


@pytest.mark.parametrize("name,body", BAD_LOOKUPS, ids=[b[0] for b in BAD_LOOKUPS])
def test_bad_lookups_are_400_and_count_nothing(gateway, upstream, redis_db, name, body):
    kw = {"raw": body} if isinstance(body, (str, bytes)) else {"body": body}
    assert_error(call(gateway, "POST", API + "/lookup", **kw), 400)
    assert redis_db.dbsize() == 0
    assert upstream.stats()["embedding_requests"] == 0


def test_a_body_over_the_limit_is_413(make_gateway, redis_db, upstream):
    g = make_gateway(SEMGATE_MAX_BODY_BYTES="4096")
    r = call(g, "POST", API + "/entries", {"query": "q", "answer": "a" * 5000})
    assert_error(r, 413)
    assert redis_db.dbsize() == 0


def test_sidecar_and_chat_entries_never_answer_each_other(gateway, upstream):
    q = "What is the boiling point of water?"
    store(gateway, query=q, answer="100 C at sea level.")
    r = gateway.chat(user(q))
    assert r.headers["X-Semgate-Cache"] == "miss"
    assert r.json()["choices"][0]["message"]["content"] == "Mock answer: " + q
    assert upstream.stats()["chat_requests"] == 1
    assert gateway.chat(user(q)).headers["X-Semgate-Cache"] == "hit-exact"
    hit = lookup(gateway, query=q)
    assert hit["answer"] == "100 C at sea level."
    q2 = "Only asked through chat"
    gateway.chat(user(q2))
    assert lookup(gateway, query=q2)["hit"] is False


def test_entries_expire_with_their_ttl(gateway, upstream, redis_db):
    eid = store(gateway, query="short lived", answer="soon gone", ttl=1, tags=["brief"])
    assert lookup(gateway, query="short lived")["hit"] is True
    upstream.set_similarity("short lived?", "short lived", 0.99)
    wait_until(lambda: not redis_db.exists(K.entry("default", eid)), timeout=5, what="expiry")
    assert lookup(gateway, query="short lived")["hit"] is False
    assert lookup(gateway, query="short lived?")["hit"] is False
    assert all(e["id"] != eid for e in top(gateway))


def test_tag_sets_keep_the_longest_ttl_of_their_members(gateway, upstream, redis_db):
    # a tag set per slot bucket: each lives as long as its longest member
    ttls = {}

    def check():
        want = {}
        for eid, ttl in ttls.items():
            k = K.tag("default", "shared", eid)
            want[k] = max(want.get(k, 0), ttl)
        for k, ttl in want.items():
            assert ttl - 10 <= redis_db.ttl(k) <= ttl, (k, ttl)

    ttls[store(gateway, query="long", answer="a", ttl=5000, tags=["shared"])] = 5000
    ttls[store(gateway, query="short", answer="b", ttl=100, tags=["shared"])] = 100
    check()
    ttls[store(gateway, query="longer", answer="c", ttl=9000, tags=["shared"])] = 9000
    check()


def test_redis_down_is_503_for_the_cache_api(gateway, upstream, redis_server):
    eid = store(gateway, query="before", answer="x")
    redis_server.stop()
    assert_error(call(gateway, "POST", API + "/lookup", {"query": "before"}), 503)
    assert_error(call(gateway, "POST", API + "/entries", {"query": "q", "answer": "a"}), 503)
    assert_error(call(gateway, "GET", f"{API}/entries/{eid}"), 503)
    assert_error(call(gateway, "GET", API + "/stats"), 503)
    assert_error(call(gateway, "GET", API + "/top"), 503)
    redis_server.start()
    wait_until(lambda: call(gateway, "GET", API + "/stats").status_code == 200,
               what="the cache API to recover")


# ---- invalidation ----

def test_invalidate_by_tag_namespace_and_both(gateway, upstream, redis_db):
    a1 = store(gateway, query="a1", answer="x", namespace="A", tags=["red"])
    a2 = store(gateway, query="a2", answer="x", namespace="A", tags=["blue"])
    b1 = store(gateway, query="b1", answer="x", namespace="B", tags=["red"])
    b2 = store(gateway, query="b2", answer="x", namespace="B", tags=["red", "blue"])
    n1 = store(gateway, query="n1", answer="x", tags=["red"])

    def alive(eid):
        return call(gateway, "GET", f"{API}/entries/{eid}").status_code == 200

    r = call(gateway, "POST", API + "/invalidate", {"namespace": "B", "tag": "red"})
    assert r.status_code == 200 and r.json() == {"deleted": 2}
    assert [alive(x) for x in (a1, a2, b1, b2, n1)] == [True, True, False, False, True]
    assert K.smembers(redis_db, "default", "red") == {a1.encode(), n1.encode()}
    assert K.smembers(redis_db, "default", "blue") == {a2.encode()}
    assert call(gateway, "POST", API + "/invalidate", {"tag": "red"}).json() == {"deleted": 2}
    assert not redis_db.exists(*K.tag_keys("default", "red"))
    assert call(gateway, "POST", API + "/invalidate", {"namespace": "A"}).json() == {"deleted": 1}
    assert [alive(x) for x in (a1, a2, b1, b2, n1)] == [False] * 5
    assert call(gateway, "POST", API + "/invalidate", {"tag": "red"}).json() == {"deleted": 0}
    assert not [k for k in all_keys(redis_db) if not K.is_kind(k, "stats")]


def test_invalidate_by_namespace_removes_chat_entries_and_their_exact_keys(gateway, upstream,
                                                                          redis_db):
    hdr = {"X-Semgate-Namespace": "support"}
    gateway.chat(user("chat one"), headers=hdr)
    gateway.chat(user("chat two"), headers=hdr)
    gateway.chat(user("chat other"))
    store(gateway, query="sidecar one", answer="x", namespace="support")
    assert gateway.chat(user("chat one"), headers=hdr).headers["X-Semgate-Cache"] == "hit-exact"
    r = call(gateway, "POST", API + "/invalidate", {"namespace": "support"})
    assert r.json() == {"deleted": 3}
    assert gateway.chat(user("chat one"), headers=hdr).headers["X-Semgate-Cache"] == "miss"
    upstream.set_similarity("Chat two?", "chat two", 0.99)
    assert gateway.chat(user("Chat two?"), headers=hdr).headers["X-Semgate-Cache"] == "miss"
    assert gateway.chat(user("chat other")).headers["X-Semgate-Cache"] == "hit-exact"
    assert lookup(gateway, query="sidecar one", namespace="support")["hit"] is False


@pytest.mark.parametrize("body", [
    {}, {"namespace": None, "tag": None}, {"tag": "a b"}, {"namespace": ""}, {"tag": 3},
    {"namespace": "ok", "query": "q"}, "[]", "{",
])
def test_bad_invalidate_requests_are_400_and_delete_nothing(gateway, upstream, redis_db, body):
    eid = store(gateway, query="survivor", answer="x", namespace="ok", tags=["a"])
    kw = {"raw": body} if isinstance(body, str) else {"body": body}
    assert_error(call(gateway, "POST", API + "/invalidate", **kw), 400)
    assert call(gateway, "GET", f"{API}/entries/{eid}").status_code == 200


def test_invalidating_many_entries_walks_every_scan_batch(gateway, upstream, redis_db):
    ids = [store(gateway, query=f"bulk {i}", answer="x", namespace="bulk", vector=[1, i + 1])
           for i in range(300)]
    store(gateway, query="not bulk", answer="x", namespace="other")
    r = call(gateway, "POST", API + "/invalidate", {"namespace": "bulk"})
    assert r.json() == {"deleted": 300}
    assert lookup(gateway, query="x", vector=[1, 5], namespace="bulk")["hit"] is False
    assert all(call(gateway, "GET", f"{API}/entries/{i}").status_code == 404 for i in ids[:5])


# ---- leaderboard ----

def test_top_orders_by_hits_and_drops_deleted_and_expired_entries(gateway, upstream, redis_db):
    a = store(gateway, query="question a", answer="x")
    b = store(gateway, query="question b", answer="x")
    c = store(gateway, query="question c", answer="x")
    for q, n in (("question a", 3), ("question b", 1), ("question c", 2)):
        for _ in range(n):
            assert lookup(gateway, query=q)["hit"] is True
    chat = gateway.chat(user("question d")).headers["X-Semgate-Entry"]
    for _ in range(4):
        assert gateway.chat(user("question d")).headers["X-Semgate-Cache"] == "hit-exact"
    rows = top(gateway)
    assert [(r["id"], r["hits"]) for r in rows] == [(chat, 4), (a, 3), (c, 2), (b, 1)]
    assert rows[1]["query"] == "question a" and rows[1]["kind"] == "text"
    assert rows[0]["query"] == "question d" and rows[0]["kind"] == "chat"
    assert [r["id"] for r in top(gateway, limit=2)] == [chat, a]
    assert 0 < redis_db.ttl(K.top("default", c)) <= 86400
    assert call(gateway, "DELETE", f"{API}/entries/{a}").status_code == 204
    assert [r["id"] for r in top(gateway)] == [chat, c, b]
    redis_db.delete(K.entry("default", c))  # as if it had expired
    assert [r["id"] for r in top(gateway)] == [chat, b]
    assert K.zscore(redis_db, "default", c) is None


def test_top_skips_stale_rows_and_still_fills_the_limit(gateway, upstream, redis_db):
    live = [store(gateway, query=f"live {i}", answer="x") for i in range(3)]
    for i, eid in enumerate(live):
        redis_db.zadd(K.top("default", eid), {eid: i + 1})
    for i in range(40):
        redis_db.zadd(K.top("default", f"{i:032x}"), {f"{i:032x}": 100 + i})
    assert [r["id"] for r in top(gateway, limit=3)] == live[::-1]
    assert K.zcard(redis_db, "top", "default") == 3


@pytest.mark.parametrize("qs", ["limit=0", "limit=101", "limit=abc", "limit=", "limit=5&limit=6",
                                "lmit=5", "limit=-1", "limit=1.5"])
def test_top_limit_must_be_1_to_100(gateway, upstream, qs):
    assert_error(requests.get(f"{gateway.url}{API}/top?{qs}", timeout=5), 400)


def test_top_accepts_the_bounds(gateway, upstream):
    assert top(gateway, limit=1) == [] and top(gateway, limit=100) == []


# ---- stats ----

def test_stats_count_exactly_what_happened(make_gateway, redis_db, upstream):
    g = make_gateway(SEMGATE_PRICE_PROMPT_PER_1K="0.5", SEMGATE_PRICE_COMPLETION_PER_1K="2")
    base = stats(g)
    assert {k: base[k] for k in ("lookups", "hits", "misses", "entries", "bytes")} == \
        {"lookups": 0, "hits": 0, "misses": 0, "entries": 0, "bytes": 0}
    # chat: one miss, two exact hits, one semantic hit; no-cache and n>1 are not lookups
    first = g.chat(user("How tall is Everest?"))
    usage = first.json()["usage"]
    g.chat(user("How tall is Everest?"))
    g.chat(user("How tall is Everest?"))
    upstream.set_similarity("how tall is everest", "How tall is Everest?", 0.98)
    assert g.chat(user("how tall is everest")).headers["X-Semgate-Cache"] == "hit-semantic"
    g.chat(user("How tall is Everest?"), headers={"Cache-Control": "no-cache"})
    g.chat(user("several"), n=2)
    # sidecar: one miss, one exact hit, one semantic hit, a bad request (not counted)
    assert lookup(g, query="What is K2?")["hit"] is False
    store(g, query="What is K2?", answer="A mountain.", metadata={"m": 1})
    assert lookup(g, query="What is K2?")["hit"] is True
    upstream.set_similarity("what's K2", "What is K2?", 0.97)
    assert lookup(g, query="what's K2")["match"] == "semantic"
    assert call(g, "POST", API + "/lookup", {"query": "x", "threshold": 2}).status_code == 400

    st = stats(g)
    assert st["lookups"] == 7
    assert st["hits_exact"] == 3 and st["hits_semantic"] == 2 and st["hits"] == 5
    assert st["misses"] == 2
    assert st["hit_rate"] == round(5 / 7, 6)
    assert st["tokens_saved_prompt"] == 3 * usage["prompt_tokens"]
    assert st["tokens_saved_completion"] == 3 * usage["completion_tokens"]
    assert st["tokens_saved"] == 3 * usage["total_tokens"]
    cost = 3 * usage["prompt_tokens"] / 1000 * 0.5 + 3 * usage["completion_tokens"] / 1000 * 2
    assert abs(st["estimated_cost_saved"] - cost) < 1e-6
    assert st["price_prompt_per_1k"] == 0.5 and st["price_completion_per_1k"] == 2
    # entries: the chat miss, the no-cache re-store, the sidecar entry
    keys = list(redis_db.scan_iter(match=K.pattern("e", "default")))
    assert st["entries"] == len(keys) == 3 and st["indexed_entries"] == 3
    size = sum(redis_db.hstrlen(k, f) for k in keys for f in ("query", "answer", "metadata", "vector"))
    assert st["bytes"] == size and st["vector_bytes"] == 3 * 384 * 4
    assert st["tenant"] == "default"
    assert all(redis_db.ttl(k) == -1 for k in redis_db.scan_iter(match=K.pattern("stats")))


# ---- layout ----

def test_every_key_has_a_ttl_except_stats_and_follows_the_layout(gateway, upstream, redis_db):
    store(gateway, query="layout 1", answer="x", tags=["t"], namespace="n", metadata={"a": 1})
    store(gateway, query="layout 2", answer="x", vector=[1, 2])
    lookup(gateway, query="layout 1", namespace="n")
    lookup(gateway, query="nothing")
    gateway.chat(user("layout chat"))
    gateway.chat(user("layout chat"))
    gateway.chat(user("layout conv"), headers={"X-Conversation-Id": "c1"})
    call(gateway, "POST", API + "/invalidate", {"tag": "nope"})
    top(gateway)
    stats(gateway)
    t = K.TAG_RE.encode()
    layout = re.compile(rb"sg:(chat:" + t + rb":default:[A-Za-z0-9._:-]+|x:" + t +
                        rb":default:[0-9a-f]{64}|e:" + t + rb":default:[0-9a-f]{32}|tag:" + t +
                        rb":default:[A-Za-z0-9._:-]+|(top|stats|rl|live|size):" + t +
                        rb":default|emb:" + t + rb":default:.+|ts:" + t + rb":default:[mh]:[0-9]+)")
    keys = all_keys(redis_db)
    assert {k.split(b":")[1] for k in keys} >= {b"chat", b"x", b"e", b"tag", b"top", b"stats"}
    for k in keys:
        assert layout.fullmatch(k), k
        if K.is_kind(k, "stats"):
            assert redis_db.ttl(k) == -1 and redis_db.type(k) == b"hash"
            assert all(re.fullmatch(rb"-?\d+", v) for v in redis_db.hvals(k))
        else:
            assert redis_db.ttl(k) > 0, k


# ---- tenants (SEMGATE_API_KEYS) ----

HA = {"Authorization": "Bearer k1"}
HB = {"Authorization": "Bearer k2"}


@pytest.fixture
def two_tenants(make_gateway, redis_db, upstream):
    return make_gateway(SEMGATE_API_KEYS="k1:a,k2:b")


def test_the_cache_api_needs_a_key_when_keys_are_set(two_tenants, upstream, redis_db):
    g = two_tenants
    for method, path, body in (("POST", "/lookup", {"query": "q"}),
                               ("POST", "/entries", {"query": "q", "answer": "a"}),
                               ("GET", "/entries/0123456789abcdef0123456789abcdef", None),
                               ("DELETE", "/entries/0123456789abcdef0123456789abcdef", None),
                               ("POST", "/invalidate", {"tag": "t"}),
                               ("GET", "/stats", None), ("GET", "/top", None)):
        assert_error(call(g, method, API + path, body), 401)
        assert_error(call(g, method, API + path, body, headers={"Authorization": "Bearer k3"}),
                     401)
    assert redis_db.dbsize() == 0


def test_tenant_b_cannot_see_hit_read_delete_or_invalidate_tenant_a(two_tenants, upstream,
                                                                   redis_db):
    g = two_tenants
    eid = store(g, headers=HA, query="a's secret question", answer="a's answer",
                namespace="shared", tags=["t"])
    chat_id = g.chat(user("a's chat question"), headers=HA).headers["X-Semgate-Entry"]
    vec_id = store(g, headers=HA, query="a's vector", answer="x", vector=[1, 0])
    assert lookup(g, headers=HA, query="a's secret question", namespace="shared")["hit"] is True
    before = stats(g, HA)
    keys_before = {k for k in all_keys(redis_db) if not K.is_kind(k, "stats")}

    # b asks the same questions: never a hit
    upstream.set_similarity("a's secret question?", "a's secret question", 0.999)
    assert lookup(g, headers=HB, query="a's secret question", namespace="shared")["hit"] is False
    assert lookup(g, headers=HB, query="a's secret question?", namespace="shared")["hit"] is False
    assert lookup(g, headers=HB, query="b's", vector=[1, 0])["hit"] is False
    assert g.chat(user("a's chat question"), headers=HB).headers["X-Semgate-Cache"] == "miss"
    # b cannot read or delete a's entries, by id or in bulk
    for i in (eid, chat_id, vec_id):
        assert_error(call(g, "GET", f"{API}/entries/{i}", headers=HB), 404)
        assert_error(call(g, "DELETE", f"{API}/entries/{i}", headers=HB), 404)
    assert call(g, "POST", API + "/invalidate", {"namespace": "shared"}, headers=HB).json() == \
        {"deleted": 0}
    assert call(g, "POST", API + "/invalidate", {"tag": "t"}, headers=HB).json() == {"deleted": 0}
    assert top(g, headers=HB) == []
    st_b = stats(g, HB)
    assert st_b["entries"] == 1 and st_b["tenant"] == "b"  # its own chat answer only

    # a's data and counters did not move
    assert keys_before <= {k for k in all_keys(redis_db) if not K.is_kind(k, "stats")}
    after = stats(g, HA)
    assert after == before
    assert call(g, "GET", f"{API}/entries/{eid}", headers=HA).json()["hits"] == 1
    assert lookup(g, headers=HA, query="a's secret question?", namespace="shared")["hit"] is True
    assert {r["id"] for r in top(g, headers=HA)} == {eid}
    assert all(k.split(b":")[3] in (b"a", b"b") for k in all_keys(redis_db))  # after the bucket tag
