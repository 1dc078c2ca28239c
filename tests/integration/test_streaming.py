"""Streaming: SSE relayed as it arrives, assembled, cached and replayed."""
import json
import socket
import threading
import time

import pytest
import requests

from conftest import SLOW, user, wait_until
import keys as K


def stream(gw, text, headers=None, usage=False, timeout=60, **kw):
    body = {"model": "mock-1", "messages": user(text), "stream": True, **kw}
    if usage:
        body["stream_options"] = {"include_usage": True}
    return requests.post(gw.url + "/v1/chat/completions", json=body, headers=headers or {},
                         stream=True, timeout=timeout)


def events(resp):
    """(arrival time, data) for each SSE event of a streamed response."""
    out = []
    buf = b""
    for piece in resp.iter_content(chunk_size=None):
        buf += piece
        while b"\n\n" in buf:
            ev, buf = buf.split(b"\n\n", 1)
            data = b"\n".join(l[6:] if l.startswith(b"data: ") else l[5:]
                              for l in ev.split(b"\n") if l.startswith(b"data:"))
            out.append((time.monotonic(), data.decode()))
    return out


def text_of(evs):
    parts = []
    for _, d in evs:
        if d == "[DONE]":
            continue
        obj = json.loads(d)
        for ch in obj.get("choices", []):
            parts.append(ch.get("delta", {}).get("content") or "")
    return "".join(parts)


def test_chunks_are_relayed_as_they_arrive(gateway, upstream):
    upstream.control(stream_chunk_delay_ms=200)
    t0 = time.monotonic()
    r = stream(gateway, "one two three four five six seven eight")
    assert r.status_code == 200
    assert r.headers["Content-Type"].startswith("text/event-stream")
    evs = events(r)
    content_times = [t for t, d in evs if d != "[DONE]" and
                     any(c.get("delta", {}).get("content") for c in json.loads(d)["choices"])]
    first, last = content_times[0] - t0, content_times[-1] - t0
    # 10 content chunks 200 ms apart: the first must be seen long before the last is sent
    assert last >= 1.6
    assert first < last - 1.0, (first, last)
    assert evs[-1][1] == "[DONE]"
    assert text_of(evs) == "Mock answer: one two three four five six seven eight"


def test_stream_miss_then_hit_and_cross_mode_hits(gateway, upstream):
    r = stream(gateway, "stream me", usage=True)
    assert r.headers["X-Semgate-Cache"] == "miss"
    first = events(r)
    usage_chunks = [json.loads(d) for _, d in first if d != "[DONE]" and "usage" in json.loads(d)]
    assert usage_chunks and usage_chunks[-1]["usage"]["total_tokens"] > 0
    r2 = stream(gateway, "stream me", usage=True)
    assert r2.headers["X-Semgate-Cache"] == "hit-exact"
    assert int(r2.headers["X-Semgate-Tokens-Saved"]) == usage_chunks[-1]["usage"]["total_tokens"]
    second = events(r2)
    assert text_of(second) == text_of(first) == "Mock answer: stream me"
    assert second[-1][1] == "[DONE]"
    assert sum(1 for _, d in second if d != "[DONE]" and json.loads(d)["choices"]) >= 3
    assert upstream.stats()["chat_requests"] == 1
    # a non-streaming request hits the answer cached from the stream
    r3 = gateway.chat(user("stream me"))
    assert r3.headers["X-Semgate-Cache"] == "hit-exact"
    assert r3.json()["choices"][0]["message"]["content"] == "Mock answer: stream me"
    # and a stream hits an answer cached from a non-streaming call
    gateway.chat(user("plain first"))
    r4 = stream(gateway, "plain first")
    assert r4.headers["X-Semgate-Cache"] == "hit-exact"
    evs = events(r4)
    assert text_of(evs) == "Mock answer: plain first"
    assert not any("usage" in json.loads(d) for _, d in evs if d != "[DONE]")
    assert upstream.stats()["chat_requests"] == 2


def test_semantic_hit_on_a_stream(gateway, upstream):
    events(stream(gateway, "What is SSE?"))
    upstream.set_similarity("what's SSE", "What is SSE?", 0.98)
    r = stream(gateway, "what's SSE")
    assert r.headers["X-Semgate-Cache"] == "hit-semantic"
    assert float(r.headers["X-Semgate-Similarity"]) > 0.97
    assert text_of(events(r)) == "Mock answer: What is SSE?"


def test_broken_stream_stores_nothing_and_appends_nothing(gateway, upstream, redis_db):
    r = stream(gateway, "please [[break]] now", headers={"X-Conversation-Id": "brk"})
    assert r.status_code == 200
    evs = events(r)
    assert not evs or evs[-1][1] != "[DONE]"
    assert not redis_db.keys("sg:e:*") and not redis_db.keys("sg:x:*")
    assert redis_db.llen(K.chat("default", "brk")) == 0
    r = stream(gateway, "please [[break]] now")
    assert r.headers["X-Semgate-Cache"] == "miss"
    events(r)


def test_upstream_error_before_first_byte_is_json(gateway, upstream):
    r = stream(gateway, "nope [[fail:429]]")
    assert r.status_code == 429
    assert r.headers["Content-Type"].startswith("application/json")
    assert "error" in r.json()


def test_memory_mode_stream_appends_after_completion(gateway, upstream):
    events(stream(gateway, "remember this stream", headers={"X-Conversation-Id": "sm"}))
    conv = requests.get(gateway.url + "/v1/conversations/sm", timeout=5).json()
    assert [m["content"] for m in conv["messages"]] == [
        "remember this stream", "Mock answer: remember this stream"]
    events(stream(gateway, "and then?", headers={"X-Conversation-Id": "sm"}))
    assert len(upstream.stats()["last_chat_request"]["messages"]) == 3


def test_client_disconnect_frees_the_worker_and_stores_nothing(make_gateway, redis_db, upstream):
    g = make_gateway(SEMGATE_THREADS=4)
    upstream.control(stream_chunk_delay_ms=300)
    words = " ".join(f"w{i}" for i in range(40))   # ~12 s of stream
    socks = []
    for i in range(4):
        s = socket.create_connection(("127.0.0.1", g.port), timeout=10)
        body = json.dumps({"model": "m", "stream": True,
                           "messages": user(f"{i} {words}")}).encode()
        s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                  b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
        assert b"200 OK" in s.recv(4096)
        socks.append(s)
    for s in socks:
        s.close()
    t0 = time.monotonic()
    r = requests.get(g.url + "/healthz", timeout=10 * SLOW)
    assert r.status_code == 200
    assert time.monotonic() - t0 < 5 * SLOW
    assert not redis_db.keys("sg:x:*")


def test_new_client_is_served_quickly_while_many_streams_are_open(make_gateway, redis_db, upstream):
    g = make_gateway(SEMGATE_THREADS=256)
    upstream.control(stream_chunk_delay_ms=100)
    n = 60
    started = threading.Barrier(n + 1, timeout=60)
    done = []

    def slow_stream(i):
        r = stream(g, f"slow {i} " + " ".join("x" for _ in range(30)))
        it = r.iter_content(chunk_size=None)
        next(it)
        started.wait()
        for _ in it:
            pass
        done.append(i)

    threads = [threading.Thread(target=slow_stream, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    started.wait()
    t0 = time.monotonic()
    assert requests.get(g.url + "/healthz", timeout=10).status_code == 200
    r = g.chat(user("a quick question while streams run"))
    took = time.monotonic() - t0
    assert r.status_code == 200
    assert took < 1.0 * SLOW, took
    for t in threads:
        t.join(timeout=60)
    assert len(done) == n
