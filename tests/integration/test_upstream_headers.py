"""The upstream's pacing headers (Retry-After, x-ratelimit-*) reach the
client with every answer that carries the upstream's status, on the chat
and embeddings routes; no other upstream header does, and no value that
could break a header line or overflow is passed on."""
import requests

from conftest import user
from test_streaming import events, stream

RATELIMIT = {
    "retry-after": "7",
    "x-ratelimit-limit-requests": "60",
    "x-ratelimit-remaining-requests": "0",
    "x-ratelimit-reset-requests": "6.5s",
    "x-ratelimit-limit-tokens": "150000",
    "x-ratelimit-remaining-tokens": "149960",
    "x-ratelimit-reset-tokens": "16ms",
}


def upstream_headers(resp):
    """The Retry-After and x-ratelimit-* headers of a response, names lower case."""
    return {k.lower(): v for k, v in resp.headers.items()
            if k.lower() == "retry-after" or k.lower().startswith("x-ratelimit-")}


def embed(gw, inp, **extra):
    return requests.post(gw.url + "/v1/embeddings",
                         json={"model": "emb-1", "input": inp, **extra}, timeout=30)


def test_chat_429_passes_retry_after_and_ratelimit_headers(gateway, upstream):
    r = gateway.chat(user("too many [[ratelimit]]"))
    assert r.status_code == 429
    assert r.json()["error"]["code"] == "rate_limit_exceeded"
    assert upstream_headers(r) == RATELIMIT
    assert r.headers["Retry-After"] == "7"
    assert r.headers["X-Semgate-Cache"] == "miss"
    # never cached: the same question goes upstream again, and is refused again
    r = gateway.chat(user("too many [[ratelimit]]"))
    assert r.status_code == 429 and upstream_headers(r) == RATELIMIT
    assert upstream.stats()["chat_requests"] == 2


def test_streamed_chat_429_passes_the_headers_too(gateway, upstream):
    r = stream(gateway, "too many streams [[ratelimit]]")
    assert r.status_code == 429
    assert r.headers["Content-Type"].startswith("application/json")
    assert upstream_headers(r) == RATELIMIT


def test_other_relayed_errors_carry_them(gateway, upstream):
    upstream.control(response_headers={"Retry-After": "30",
                                       "x-ratelimit-remaining-tokens": "0"})
    r = gateway.chat(user("down [[fail:503]]"))
    assert r.status_code == 503
    assert upstream_headers(r) == {"retry-after": "30", "x-ratelimit-remaining-tokens": "0"}
    r = gateway.chat(user("bad request [[fail:400]]"))
    assert r.status_code == 400
    assert upstream_headers(r) == {"retry-after": "30", "x-ratelimit-remaining-tokens": "0"}


def test_successful_uncached_answers_carry_them_and_hits_do_not(gateway, upstream):
    upstream.control(response_headers={"x-ratelimit-remaining-requests": "59",
                                       "x-ratelimit-reset-requests": "1s"})
    want = {"x-ratelimit-remaining-requests": "59", "x-ratelimit-reset-requests": "1s"}
    r = gateway.chat(user("How tall is Everest?"))
    assert r.status_code == 200 and r.headers["X-Semgate-Cache"] == "miss"
    assert upstream_headers(r) == want
    r = gateway.chat(user("How tall is Everest?"))
    assert r.headers["X-Semgate-Cache"] == "hit-exact"
    assert upstream_headers(r) == {}  # the upstream was not asked
    r = stream(gateway, "How deep is the Mariana Trench?")
    assert r.status_code == 200 and r.headers["X-Semgate-Cache"] == "miss"
    assert upstream_headers(r) == want
    assert events(r)[-1][1] == "[DONE]"


def test_only_whitelisted_headers_with_clean_values_are_passed(gateway, upstream):
    upstream.control(response_headers={
        "Set-Cookie": "session=secret",
        "X-Request-Id": "req-1",
        "Server": "mock",
        "x-ratelimit-reset-tokens": "  5s\t",               # trimmed
        "X-RateLimit-Limit-Requests": "100",                  # any case; sent lower case
        "Retry-After": "1\rX-Injected: yes",                  # bare CR
        "x-ratelimit-limit-tokens": "caf\u00e9",              # not ASCII
        "x-ratelimit-remaining-tokens": "1\u0001",            # control byte
        "x-ratelimit-remaining-requests": "9" * 129,          # too long
        "x-ratelimit-reset_requests": "1s",                   # not a name of ours
    })
    for r in (gateway.chat(user("Who wrote Hamlet?")),
              gateway.chat(user("Who wrote Macbeth? [[fail:429]]"))):
        assert r.status_code in (200, 429)
        assert upstream_headers(r) == {"x-ratelimit-reset-tokens": "5s",
                                       "x-ratelimit-limit-requests": "100"}
        for name in ("Set-Cookie", "X-Request-Id", "X-Injected", "Server"):
            assert name not in r.headers
    assert gateway.alive()


def test_the_number_of_headers_passed_is_bounded(gateway, upstream):
    upstream.control(response_headers={f"x-ratelimit-n{i}": str(i) for i in range(40)})
    r = gateway.chat(user("Count the stars [[fail:429]]"))
    assert r.status_code == 429
    got = upstream_headers(r)
    assert len(got) == 16
    assert got == {f"x-ratelimit-n{i}": str(i) for i in range(16)}


def test_embeddings_errors_and_misses_carry_them(gateway, upstream):
    upstream.control(response_headers={"Retry-After": "3",
                                       "x-ratelimit-remaining-requests": "0"},
                     embed_mode="fail", embed_fail_status=429)
    want = {"retry-after": "3", "x-ratelimit-remaining-requests": "0"}
    # the cached path (uncached inputs go upstream) and the pass-through (a
    # field the cache does not know)
    for extra in ({}, {"x_unknown": 1}):
        r = embed(gateway, "hello headers", **extra)
        assert r.status_code == 429, r.text
        assert upstream_headers(r) == want
        assert "error" in r.json()
    upstream.control(embed_mode="ok", response_headers={"x-ratelimit-remaining-requests": "41"})
    r = embed(gateway, "hello headers")
    assert r.status_code == 200 and r.headers["X-Semgate-Cache"] == "miss"
    assert upstream_headers(r) == {"x-ratelimit-remaining-requests": "41"}
    r = embed(gateway, "hello headers", x_unknown=1)
    assert r.status_code == 200 and r.headers["X-Semgate-Cache"] == "bypass"
    assert upstream_headers(r) == {"x-ratelimit-remaining-requests": "41"}
    r = embed(gateway, "hello headers")
    assert r.headers["X-Semgate-Cache"] == "hit"
    assert upstream_headers(r) == {}
