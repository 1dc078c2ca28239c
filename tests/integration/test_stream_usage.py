"""A streamed answer that will be cached always knows its tokens: the gateway
asks the upstream for stream_options.include_usage, records the usage with
the entry, and gives a client that did not ask exactly the stream it would
have had without it."""
import json
import re

import requests

from conftest import user


def stream_raw(url, body, headers=None):
    r = requests.post(url, json=body, headers=headers or {}, stream=True, timeout=30)
    return r, r.content


def normalised(raw):
    """A stream with the parts that differ between two calls blanked out."""
    raw = re.sub(rb"chatcmpl-mock-\d+", b"chatcmpl-mock-N", raw)
    return re.sub(rb'"created":\d+', b'"created":0', raw)


def body_of(text, **extra):
    return {"model": "mock-1", "messages": user(text), "stream": True, **extra}


def cache_stats(gw):
    return requests.get(gw.url + "/v1/cache/stats", timeout=5).json()


def test_streamed_miss_without_include_usage_is_cached_with_its_tokens(gateway, upstream):
    q = "How many moons does Mars have?"
    r, raw = stream_raw(gateway.url + "/v1/chat/completions", body_of(q))
    assert r.status_code == 200 and r.headers["X-Semgate-Cache"] == "miss"
    assert raw.endswith(b"data: [DONE]\n\n")
    # the upstream was asked for the usage...
    sent = upstream.stats()["last_chat_request"]
    assert sent["stream_options"] == {"include_usage": True}
    # ...and the client got no trace of it: byte for byte what the upstream
    # sends a request without include_usage
    assert b"usage" not in raw
    _, direct = stream_raw(upstream.base + "/chat/completions", body_of(q))
    assert normalised(raw) == normalised(direct)
    # the hits report what the answer cost
    want = requests.post(upstream.base + "/chat/completions", json={
        "model": "mock-1", "messages": user(q)}, timeout=30).json()["usage"]
    assert want["total_tokens"] > 0
    hit = gateway.chat(user(q))
    assert hit.headers["X-Semgate-Cache"] == "hit-exact"
    assert int(hit.headers["X-Semgate-Tokens-Saved"]) == want["total_tokens"]
    assert hit.json()["usage"]["total_tokens"] == want["total_tokens"]
    r2, raw2 = stream_raw(gateway.url + "/v1/chat/completions", body_of(q))
    assert r2.headers["X-Semgate-Cache"] == "hit-exact"
    assert int(r2.headers["X-Semgate-Tokens-Saved"]) == want["total_tokens"]
    assert b"usage" not in raw2  # the replay has no usage chunk either
    st = cache_stats(gateway)
    assert st["tokens_saved"] == 2 * want["total_tokens"]


def test_with_include_usage_the_client_still_gets_the_usage(gateway, upstream):
    q = "How many moons does Jupiter have?"
    body = body_of(q, stream_options={"include_usage": True})
    r, raw = stream_raw(gateway.url + "/v1/chat/completions", body)
    assert r.headers["X-Semgate-Cache"] == "miss"
    _, direct = stream_raw(upstream.base + "/chat/completions", body)
    assert normalised(raw) == normalised(direct)
    assert b'"usage":null' in raw  # every chunk, as OpenAI does
    events = [json.loads(l[6:]) for l in raw.split(b"\n\n") if l.startswith(b"data: {")]
    total = events[-1]["usage"]["total_tokens"]
    assert events[-1]["choices"] == [] and total > 0
    r2, raw2 = stream_raw(gateway.url + "/v1/chat/completions", body)
    assert r2.headers["X-Semgate-Cache"] == "hit-exact"
    assert int(r2.headers["X-Semgate-Tokens-Saved"]) == total
    assert b'"total_tokens":%d' % total in raw2


def test_the_rest_of_the_body_goes_as_the_client_sent_it(gateway, upstream):
    # 2**53 + 1 does not survive a round trip through a double
    for opts, want in (('"stream_options":{"x_vendor":1},', {"x_vendor": 1, "include_usage": True}),
                       ('"stream_options":{"include_usage":false},', {"include_usage": True}),
                       ('"stream_options":null,', {"include_usage": True}),
                       ('', {"include_usage": True})):
        raw_body = ('{"model":"mock-1", "seed": 9007199254740993, %s"stream":true,'
                    '"messages":[{"role":"user","content":"Seeded %d"}]}' % (opts, len(opts)))
        r = requests.post(gateway.url + "/v1/chat/completions", data=raw_body, timeout=30)
        assert r.status_code == 200 and b"usage" not in r.content
        text = requests.get(upstream.url + "/stats", timeout=5).text
        assert '"seed": 9007199254740993' in text
        assert upstream.stats()["last_chat_request"]["stream_options"] == want
    # a member name with an escape cannot be found in the text: the body is
    # rendered from the tree instead, and still asks
    raw_body = ('{"model":"mock-1","stream":true,"us\\u0065r":"u1",'
                '"messages":[{"role":"user","content":"Escaped names"}]}')
    r = requests.post(gateway.url + "/v1/chat/completions", data=raw_body, timeout=30)
    assert r.status_code == 200 and b"usage" not in r.content
    sent = upstream.stats()["last_chat_request"]
    assert sent["stream_options"] == {"include_usage": True} and sent["user"] == "u1"


def test_nothing_is_asked_when_nothing_will_be_stored(gateway, upstream):
    body = body_of("Do not keep this")
    r, raw = stream_raw(gateway.url + "/v1/chat/completions", body,
                        headers={"Cache-Control": "no-store"})
    assert r.headers["X-Semgate-Cache"] == "bypass"
    assert "stream_options" not in upstream.stats()["last_chat_request"]
    assert b"usage" not in raw
