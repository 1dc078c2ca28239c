"""Semantic cache: exact and embedding-based hits in front of the LLM,
scoping, what is (not) cached, TTLs, restart and Redis failure."""
import json
import time

import pytest
import requests

from conftest import user, wait_until
import keys as K


def ask(gw, text, headers=None, **kw):
    r = gw.chat(user(text), headers=headers, **kw)
    assert r.status_code == 200, r.text
    return r


def test_exact_hit_makes_no_upstream_or_embedding_call(gateway, upstream):
    r1 = ask(gateway, "What is the capital of France?")
    assert r1.headers["X-Semgate-Cache"] == "miss"
    entry = r1.headers["X-Semgate-Entry"]
    st = upstream.stats()
    assert st["chat_requests"] == 1 and st["embedding_requests"] == 1
    r2 = ask(gateway, "What is the capital of France?")
    assert r2.headers["X-Semgate-Cache"] == "hit-exact"
    assert r2.headers["X-Semgate-Entry"] == entry
    st = upstream.stats()
    assert st["chat_requests"] == 1 and st["embedding_requests"] == 1
    b1, b2 = r1.json(), r2.json()
    assert b2["choices"] == b1["choices"]
    assert b2["id"] != b1["id"]
    assert int(r2.headers["X-Semgate-Tokens-Saved"]) == b1["usage"]["total_tokens"]


def test_key_order_and_whitespace_do_not_change_the_exact_key(gateway, upstream):
    ask(gateway, "order test", temperature=0.5, top_p=0.9)
    raw = ('{ "top_p": 0.9, "messages": [ {"content": "order test", "role": "user"} ],'
           '  "temperature": 0.5, "model": "mock-1" }')
    r = requests.post(gateway.url + "/v1/chat/completions", data=raw, timeout=10)
    assert r.headers["X-Semgate-Cache"] == "hit-exact"


def test_paraphrase_hits_at_097_not_at_080_unless_threshold_lowered(gateway, upstream):
    # the threshold alone (default 0.85): the verifier is off here and has
    # its own tests in test_verify.py
    off = {"X-Semgate-Verify": "off"}
    ask(gateway, "How do I reset my password?")
    upstream.set_similarity("how can I reset my password", "How do I reset my password?", 0.97)
    upstream.set_similarity("password reset how", "How do I reset my password?", 0.80)
    r = ask(gateway, "how can I reset my password", headers=off)
    assert r.headers["X-Semgate-Cache"] == "hit-semantic"
    assert abs(float(r.headers["X-Semgate-Similarity"]) - 0.97) < 1e-4
    assert r.json()["choices"][0]["message"]["content"] == "Mock answer: How do I reset my password?"
    assert upstream.stats()["chat_requests"] == 1
    r = ask(gateway, "password reset how", headers=off)
    assert r.headers["X-Semgate-Cache"] == "miss"
    assert abs(float(r.headers["X-Semgate-Similarity"]) - 0.80) < 1e-4
    assert upstream.stats()["chat_requests"] == 2
    # now the 0.80 paraphrase is itself cached; a fresh one at 0.78 with a lower threshold
    upstream.set_similarity("pw reset?", "How do I reset my password?", 0.78)
    r = ask(gateway, "pw reset?", headers={"X-Semgate-Threshold": "0.75", **off})
    assert r.headers["X-Semgate-Cache"] == "hit-semantic"


@pytest.mark.parametrize("variant", [
    {"model": "mock-2"},
    {"temperature": 0.9},
    {"max_tokens": 50},
    {"seed": 7},
    {"system": "You are a pirate."},
    {"context": True},
])
def test_different_scope_never_hits(gateway, upstream, variant):
    q = "Tell me about the moon."
    ask(gateway, q, temperature=0.1)
    upstream.set_similarity(q + " ", q, 0.999)
    msgs = user(q)
    body = {"model": "mock-1", "temperature": 0.1}
    if "system" in variant:
        msgs = [{"role": "system", "content": variant["system"]}] + msgs
    elif "context" in variant:
        msgs = [{"role": "user", "content": "earlier"},
                {"role": "assistant", "content": "earlier answer"}] + msgs
    else:
        body.update(variant)
    body["messages"] = msgs
    r = requests.post(gateway.url + "/v1/chat/completions", json=body, timeout=10)
    assert r.status_code == 200
    assert r.headers["X-Semgate-Cache"] == "miss"
    assert upstream.stats()["chat_requests"] == 2


def test_namespaces_do_not_share_answers(gateway, upstream):
    ask(gateway, "shared question", headers={"X-Semgate-Namespace": "team-a"})
    r = ask(gateway, "shared question", headers={"X-Semgate-Namespace": "team-b"})
    assert r.headers["X-Semgate-Cache"] == "miss"
    r = ask(gateway, "shared question", headers={"X-Semgate-Namespace": "team-a"})
    assert r.headers["X-Semgate-Cache"] == "hit-exact"


def test_errors_n_gt_1_and_tool_calls_are_not_cached(gateway, upstream, redis_db):
    for _ in range(2):
        assert gateway.chat(user("boom [[fail:500]]")).status_code == 500
    assert upstream.stats()["chat_requests"] == 2
    for _ in range(2):
        r = ask(gateway, "several please", n=2)
        assert r.headers["X-Semgate-Cache"] == "bypass"
    tools = [{"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}}]
    for _ in range(2):
        r = ask(gateway, "call it [[tool]]", tools=tools)
        assert r.json()["choices"][0]["finish_reason"] == "tool_calls"
        assert r.headers["X-Semgate-Cache"] == "miss"
    assert upstream.stats()["chat_requests"] == 6
    assert not redis_db.keys("sg:e:*") and not redis_db.keys("sg:x:*")


def test_tools_requests_use_the_exact_cache_only(gateway, upstream):
    tools = [{"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}}]
    ask(gateway, "weather in Paris", tools=tools)
    assert upstream.stats()["embedding_requests"] == 0
    r = ask(gateway, "weather in Paris", tools=tools)
    assert r.headers["X-Semgate-Cache"] == "hit-exact"
    upstream.set_similarity("weather in paris", "weather in Paris", 0.999)
    r = ask(gateway, "weather in paris", tools=tools)
    assert r.headers["X-Semgate-Cache"] == "miss"


def test_every_key_has_a_ttl_and_x_semgate_ttl_sets_it(gateway, upstream, redis_db):
    ask(gateway, "ttl default")
    ask(gateway, "ttl custom", headers={"X-Semgate-TTL": "600"})
    gateway.settle()  # the stores are written behind the answers
    keys = redis_db.keys("sg:*")
    assert keys
    for k in keys:
        if K.is_kind(k, "stats"):
            continue  # the per-tenant counters: integers only, no TTL by design
        assert redis_db.ttl(k) > 0, k
    custom = [k for k in redis_db.keys("sg:e:*") if redis_db.hget(k, "query") == b"ttl custom"][0]
    assert 590 <= redis_db.ttl(custom) <= 600
    default = [k for k in redis_db.keys("sg:e:*") if redis_db.hget(k, "query") == b"ttl default"][0]
    assert redis_db.ttl(default) > 86000


def test_entry_hash_holds_the_documented_fields(gateway, upstream, redis_db):
    r = ask(gateway, "field check", headers={"X-Semgate-Namespace": "docs"})
    gateway.settle()
    key = K.entry("default", r.headers['X-Semgate-Entry']).encode()
    h = redis_db.hgetall(key)
    for f in (b"query", b"answer", b"scope", b"namespace", b"vector", b"dim", b"model",
              b"created", b"hits"):
        assert f in h, f
    assert h[b"query"] == b"field check" and h[b"namespace"] == b"docs"
    assert int(h[b"dim"]) == 384 and len(h[b"vector"]) == 384 * 4
    assert json.loads(h[b"answer"])["choices"][0]["message"]["content"] == "Mock answer: field check"
    ask(gateway, "field check", headers={"X-Semgate-Namespace": "docs"})
    # hits are counted behind the answer (tally.h): they reach Redis promptly
    wait_until(lambda: redis_db.hget(key, "hits") == b"1", timeout=5)


def test_cache_control_no_cache_and_no_store(gateway, upstream, redis_db):
    ask(gateway, "cc question")
    r = ask(gateway, "cc question", headers={"Cache-Control": "no-cache"})
    assert r.headers["X-Semgate-Cache"] == "miss"
    assert upstream.stats()["chat_requests"] == 2
    r = ask(gateway, "fresh one", headers={"Cache-Control": "no-store"})
    assert r.headers["X-Semgate-Cache"] == "bypass"
    assert not [k for k in redis_db.keys("sg:e:*") if redis_db.hget(k, "query") == b"fresh one"]
    r = ask(gateway, "fresh one")
    assert r.headers["X-Semgate-Cache"] == "miss"


@pytest.mark.parametrize("name,value", [
    ("X-Semgate-Threshold", "0"), ("X-Semgate-Threshold", "1.5"), ("X-Semgate-Threshold", "abc"),
    ("X-Semgate-Threshold", "nan"), ("X-Semgate-TTL", "0"), ("X-Semgate-TTL", "10s"),
    ("X-Semgate-Namespace", "a*b"), ("X-Semgate-Namespace", "a b"),
])
def test_bad_cache_headers_are_400(gateway, upstream, redis_db, name, value):
    r = gateway.chat(user("header check"), headers={name: value})
    assert r.status_code == 400
    assert upstream.stats()["chat_requests"] == 0
    assert redis_db.dbsize() == 0


def test_restart_keeps_semantic_hits(make_gateway, redis_db, upstream):
    g = make_gateway()
    ask(g, "Where is the Eiffel Tower?")
    g.stop()
    upstream.set_similarity("where's the eiffel tower", "Where is the Eiffel Tower?", 0.98)
    g2 = make_gateway()
    r = ask(g2, "where's the eiffel tower")
    assert r.headers["X-Semgate-Cache"] == "hit-semantic"
    assert upstream.stats()["chat_requests"] == 1


def test_entry_gone_from_redis_is_a_miss(gateway, upstream, redis_db):
    r = ask(gateway, "ephemeral")
    gateway.settle()
    redis_db.delete(K.entry("default", r.headers['X-Semgate-Entry']))
    for k in redis_db.keys("sg:x:*"):
        redis_db.delete(k)
    upstream.set_similarity("Ephemeral", "ephemeral", 0.99)
    r = ask(gateway, "Ephemeral")
    assert r.headers["X-Semgate-Cache"] == "miss"
    assert upstream.stats()["chat_requests"] == 2


def test_redis_down_bypasses_the_cache_and_recovers(gateway, upstream, redis_server):
    ask(gateway, "before outage")
    gateway.settle()  # stored: the outage below is not a pending store's
    redis_server.stop()
    r = ask(gateway, "before outage")
    assert r.headers["X-Semgate-Cache"] == "bypass"
    assert upstream.stats()["chat_requests"] == 2
    redis_server.start()
    ask(gateway, "after outage")
    wait_until(lambda: gateway.chat(user("after outage")).headers.get("X-Semgate-Cache") == "hit-exact",
               what="hits to resume")


def test_embedding_failure_falls_back_to_exact_cache(gateway, upstream):
    upstream.control(embed_mode="fail")
    r = ask(gateway, "no vectors today")
    assert r.headers["X-Semgate-Cache"] == "miss"
    r = ask(gateway, "no vectors today")
    assert r.headers["X-Semgate-Cache"] == "hit-exact"
    upstream.set_similarity("No vectors today", "no vectors today", 0.99)
    r = ask(gateway, "No vectors today")
    assert r.headers["X-Semgate-Cache"] == "miss"


def test_memory_mode_hit_still_appends_the_turn(gateway, upstream, redis_db):
    ask(gateway, "first question ever")
    r = gateway.chat(user("first question ever"), headers={"X-Conversation-Id": "mh"})
    assert r.headers["X-Semgate-Cache"] == "hit-exact"
    assert r.headers["X-Semgate-Memory"] == "stored"
    conv = requests.get(gateway.url + "/v1/conversations/mh", timeout=5).json()
    assert [m["content"] for m in conv["messages"]] == [
        "first question ever", "Mock answer: first question ever"]


def test_local_embedder_hits_on_case_and_punctuation_changes(make_gateway, redis_db, upstream):
    g = make_gateway(SEMGATE_EMBED_URL="")
    ask(g, "What is the capital of France?")
    r = ask(g, "what is the capital of france")
    assert r.headers["X-Semgate-Cache"] == "hit-semantic"
    r = ask(g, "How many legs does a spider have?")
    assert r.headers["X-Semgate-Cache"] == "miss"
    assert upstream.stats()["embedding_requests"] == 0


def test_bypassed_requests_report_no_similarity(gateway, upstream):
    for headers, kw in (({"Cache-Control": "no-store"}, {}), ({}, {"n": 2})):
        r = ask(gateway, "bypass me", headers=headers, **kw)
        assert r.headers["X-Semgate-Cache"] == "bypass"
        assert "X-Semgate-Similarity" not in r.headers


def test_null_parameters_share_the_cache_with_absent_ones(gateway, upstream):
    ask(gateway, "null params")
    r = ask(gateway, "null params", temperature=None, seed=None)
    assert r.headers["X-Semgate-Cache"] == "hit-exact"
