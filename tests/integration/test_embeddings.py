"""POST /v1/embeddings: OpenAI-compatible pass-through with an exact cache
per input string and tenant. Only uncached inputs go upstream, in one call;
vectors come back in the caller's order, as floats or base64."""
import base64
import hashlib
import json
import os
import struct
import subprocess

import pytest
import requests

from conftest import user, wait_until
import keys as K

MODEL = "text-embedding-test"


def embed(gw, inp, headers=None, **extra):
    body = {"model": MODEL, "input": inp, **extra}
    return requests.post(gw.url + "/v1/embeddings", json=body, headers=headers or {},
                         timeout=30)


def direct(upstream, inp, **extra):
    """What the upstream itself answers (the mock is deterministic)."""
    r = requests.post(upstream.base + "/embeddings", json={"model": MODEL, "input": inp, **extra},
                      timeout=30)
    r.raise_for_status()
    return r.json()


def vectors(resp):
    body = resp.json()
    assert body["object"] == "list"
    assert [d["index"] for d in body["data"]] == list(range(len(body["data"])))
    assert all(d["object"] == "embedding" for d in body["data"])
    return [d["embedding"] for d in body["data"]]


def f32(xs):
    """Round Python floats to float32, as the gateway stores them."""
    return list(struct.unpack(f"<{len(xs)}f", struct.pack(f"<{len(xs)}f", *xs)))


def close(a, b, tol=1e-6):
    return len(a) == len(b) and all(abs(x - y) <= tol for x, y in zip(a, b))


def test_single_input_miss_then_hit_same_vector(gateway, upstream):
    r1 = embed(gateway, "hello world")
    assert r1.status_code == 200, r1.text
    assert r1.headers["X-Semgate-Embeddings-Cached"] == "0"
    assert r1.headers["X-Semgate-Cache"] == "miss"
    b1 = r1.json()
    assert b1["model"] == MODEL
    assert b1["usage"]["prompt_tokens"] > 0
    assert b1["usage"]["total_tokens"] == b1["usage"]["prompt_tokens"]
    st = upstream.stats()
    assert st["embedding_requests"] == 1
    r2 = embed(gateway, "hello world")
    assert r2.status_code == 200
    assert r2.headers["X-Semgate-Embeddings-Cached"] == "1"
    assert r2.headers["X-Semgate-Cache"] == "hit"
    assert r2.json()["usage"] == {"prompt_tokens": 0, "total_tokens": 0}
    assert upstream.stats()["embedding_requests"] == 1
    assert vectors(r1) == vectors(r2)
    assert close(vectors(r1)[0], direct(upstream, "hello world")["data"][0]["embedding"])


def test_partial_batch_sends_only_uncached_inputs_once_and_keeps_order(gateway, upstream):
    assert embed(gateway, ["alpha", "beta"]).status_code == 200
    before = upstream.stats()["embedding_requests"]
    r = embed(gateway, ["gamma", "alpha", "delta", "beta", "gamma"])
    assert r.status_code == 200, r.text
    assert r.headers["X-Semgate-Embeddings-Cached"] == "2"
    assert r.headers["X-Semgate-Cache"] == "partial"
    st = upstream.stats()
    assert st["embedding_requests"] == before + 1
    sent = st["last_embedding_request"]
    assert sorted(sent["input"]) == ["delta", "gamma"]  # once each, cached ones not sent
    assert "encoding_format" not in sent
    v = vectors(r)
    assert len(v) == 5
    ref = direct(upstream, ["gamma", "alpha", "delta", "beta"])
    want = [d["embedding"] for d in ref["data"]]
    assert close(v[0], want[0]) and close(v[1], want[1]) and close(v[2], want[2])
    assert close(v[3], want[3]) and v[4] == v[0]
    # usage is what was sent upstream: gamma and delta only
    sent_usage = direct(upstream, ["gamma", "delta"])["usage"]
    assert r.json()["usage"]["prompt_tokens"] == sent_usage["prompt_tokens"]
    r = embed(gateway, ["beta", "delta", "alpha", "gamma"])
    assert r.headers["X-Semgate-Embeddings-Cached"] == "4"
    assert r.headers["X-Semgate-Cache"] == "hit"
    assert r.json()["usage"]["prompt_tokens"] == 0


def test_base64_encoding_is_float32_little_endian(gateway, upstream):
    r = embed(gateway, ["one", "two"], encoding_format="base64")
    assert r.status_code == 200, r.text
    v64 = vectors(r)
    assert all(isinstance(x, str) for x in v64)
    floats = vectors(embed(gateway, ["one", "two"]))  # a hit, as floats
    for s, f in zip(v64, floats):
        raw = base64.b64decode(s)
        assert len(raw) == 4 * len(f)
        # the float rendering round-trips float32 exactly
        assert list(struct.unpack(f"<{len(f)}f", raw)) == f32(f)
    # a base64 request served from the cache reads the same
    r2 = embed(gateway, ["one", "two"], encoding_format="base64")
    assert r2.headers["X-Semgate-Embeddings-Cached"] == "2"
    assert vectors(r2) == v64


def test_cache_layout_ttl_and_raw_float32(make_gateway, redis_db, upstream):
    g = make_gateway(SEMGATE_CACHE_TTL=120)
    v = vectors(embed(g, "layout check"))[0]
    sha = hashlib.sha256(b"layout check").hexdigest()
    key = K.emb("default", MODEL, sha)
    raw = redis_db.get(key)
    assert raw is not None, redis_db.keys("*")
    assert list(struct.unpack(f"<{len(v)}f", raw)) == f32(v)
    assert 0 < redis_db.ttl(key) <= 120


def test_dimensions_are_part_of_the_cache_key(gateway, upstream):
    a = vectors(embed(gateway, "dims", dimensions=8))[0]
    b = vectors(embed(gateway, "dims", dimensions=16))[0]
    assert len(a) == 8 and len(b) == 16
    r = embed(gateway, "dims", dimensions=8)
    assert r.headers["X-Semgate-Embeddings-Cached"] == "1"
    assert vectors(r)[0] == a
    assert embed(gateway, "dims").headers["X-Semgate-Embeddings-Cached"] == "0"


def test_models_do_not_share_entries(gateway, upstream):
    embed(gateway, "model scope")
    r = requests.post(gateway.url + "/v1/embeddings",
                      json={"model": "other-model", "input": "model scope"}, timeout=30)
    assert r.headers["X-Semgate-Embeddings-Cached"] == "0"


def test_tenants_do_not_share_embeddings(make_gateway, redis_db, upstream):
    g = make_gateway(SEMGATE_API_KEYS="sk-ea-1:ta,sk-eb-2:tb")
    ha = {"Authorization": "Bearer sk-ea-1"}
    hb = {"Authorization": "Bearer sk-eb-2"}
    assert embed(g, "tenant text", ha).headers["X-Semgate-Embeddings-Cached"] == "0"
    assert embed(g, "tenant text", ha).headers["X-Semgate-Embeddings-Cached"] == "1"
    assert embed(g, "tenant text", hb).headers["X-Semgate-Embeddings-Cached"] == "0"


@pytest.mark.parametrize("body,needle", [
    (b"{", "JSON"),
    (b"[]", "object"),
    (b'{"input":"x"}', "model"),
    (b'{"model":"","input":"x"}', "model"),
    (b'{"model":5,"input":"x"}', "model"),
    (b'{"model":"m"}', "input"),
    (b'{"model":"m","input":5}', "input"),
    (b'{"model":"m","input":null}', "input"),
    (b'{"model":"m","input":""}', "empty"),
    (b'{"model":"m","input":[]}', "input"),
    (b'{"model":"m","input":["a",""]}', "input[1]"),
    (b'{"model":"m","input":["a",5]}', "input[1]"),
    (b'{"model":"m","input":[[1,2],"a"]}', "input[1]"),
    (b'{"model":"m","input":[{"a":1}]}', "input"),
    (b'{"model":"m","input":"x","encoding_format":"hex"}', "encoding_format"),
    (b'{"model":"m","input":"x","encoding_format":5}', "encoding_format"),
    (b'{"model":"m","input":"x","dimensions":0}', "dimensions"),
    (b'{"model":"m","input":"x","dimensions":1.5}', "dimensions"),
    (b'{"model":"m","input":"x","user":5}', "user"),
    (b'{"model":"m","input":"x"} trailing', "after"),
    (b'{"model":"m","input":"\xff"}', "UTF-8"),
])
def test_bad_bodies_get_400_and_never_reach_upstream(gateway, upstream, redis_db, body, needle):
    r = requests.post(gateway.url + "/v1/embeddings", data=body, timeout=10)
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["type"] == "invalid_request_error"
    assert needle.lower() in err["message"].lower(), err
    assert upstream.stats()["embedding_requests"] == 0
    assert redis_db.keys("sg:emb:*") == []


def test_more_than_2048_inputs_is_400(gateway, upstream):
    r = embed(gateway, ["x"] * 2049)
    assert r.status_code == 400
    assert "2048" in r.json()["error"]["message"]
    assert upstream.stats()["embedding_requests"] == 0
    r = embed(gateway, [f"item {i}" for i in range(2048)])
    assert r.status_code == 200
    assert len(vectors(r)) == 2048


def test_token_array_input_is_passed_through_uncached(gateway, upstream, redis_db):
    r = embed(gateway, [1, 2, 3])
    # the mock serves strings only: its own 400 comes back unchanged
    assert upstream.stats()["last_embedding_request"]["input"] == [1, 2, 3]
    assert r.status_code == 400
    assert r.headers["X-Semgate-Cache"] == "bypass"
    embed(gateway, [[1, 2], [3]])
    assert upstream.stats()["last_embedding_request"]["input"] == [[1, 2], [3]]
    assert redis_db.keys("sg:emb:*") == []


def test_unknown_fields_pass_through_uncached(gateway, upstream, redis_db):
    r = embed(gateway, "x", some_future_option=True)
    assert upstream.stats()["last_embedding_request"]["some_future_option"] is True
    assert r.headers["X-Semgate-Cache"] == "bypass"
    assert redis_db.keys("sg:emb:*") == []


def test_upstream_error_is_relayed_and_nothing_cached(gateway, upstream, redis_db):
    upstream.control(embed_mode="fail")
    try:
        r = embed(gateway, ["e1", "e2"])
        assert r.status_code == 500
        assert "error" in r.json()
    finally:
        upstream.control(embed_mode="ok")
    assert redis_db.keys("sg:emb:*") == []
    r = embed(gateway, ["e1", "e2"])
    assert r.status_code == 200 and r.headers["X-Semgate-Embeddings-Cached"] == "0"


def test_unreachable_embedding_upstream_is_502(make_gateway, redis_db):
    from conftest import free_port
    dead = f"http://127.0.0.1:{free_port()}/v1"
    g = make_gateway(SEMGATE_EMBED_URL=dead)
    r = embed(g, "x")
    assert r.status_code == 502
    assert r.json()["error"]["code"] == "upstream_unavailable"


def test_goes_to_the_llm_upstream_when_no_embed_url(make_gateway, redis_db, upstream):
    g = make_gateway(SEMGATE_EMBED_URL="")
    r = embed(g, "via llm upstream")
    assert r.status_code == 200
    assert upstream.stats()["last_embedding_request"]["input"] == ["via llm upstream"]


def test_redis_down_passes_through_uncached(gateway, upstream, redis_server):
    redis_server.stop()
    r = embed(gateway, ["down1", "down2"])
    assert r.status_code == 200, r.text
    assert r.headers["X-Semgate-Cache"] == "bypass"
    assert len(vectors(r)) == 2
    assert upstream.stats()["last_embedding_request"]["input"] == ["down1", "down2"]
    redis_server.start()
    wait_until(lambda: embed(gateway, "after").headers["X-Semgate-Cache"] == "miss",
               what="the cache to be used again")


def test_official_openai_node_client_gets_the_same_vectors(make_gateway, redis_db, upstream,
                                                           openai_node):
    node_dir = openai_node
    g = make_gateway(SEMGATE_API_KEYS="sk-node-1:nodeTenant")
    script = (
        "import OpenAI from 'openai';"
        "const c = new OpenAI({baseURL: process.env.SEMGATE_URL + '/v1', apiKey: 'sk-node-1',"
        " maxRetries: 0});"
        "const a = await c.embeddings.create({model: process.env.MODEL, input: ['sdk one', 'sdk two']});"
        "const b = await c.embeddings.create({model: process.env.MODEL, input: ['sdk two', 'sdk one']});"
        "console.log(JSON.stringify({a: a.data.map(d => d.embedding),"
        " b: b.data.map(d => d.embedding), usage: [a.usage, b.usage]}));")
    r = subprocess.run(["node", "--input-type=module", "-e", script], cwd=node_dir,
                       env=dict(os.environ, SEMGATE_URL=g.url, MODEL=MODEL),
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    seen = json.loads(r.stdout.strip().splitlines()[-1])
    # the SDK asks for base64 and decodes it itself
    assert upstream.stats()["embedding_requests"] == 1
    want = [d["embedding"] for d in direct(upstream, ["sdk one", "sdk two"])["data"]]
    assert close(seen["a"][0], want[0]) and close(seen["a"][1], want[1])
    assert seen["b"] == [seen["a"][1], seen["a"][0]]
    assert seen["usage"][1]["prompt_tokens"] == 0
