"""Reliability under injected faults, with real processes: Redis stopped,
paused or sleeping under load; the upstream hanging or answering garbage;
the embedding API down or slow; clients that vanish mid-request; kill -9 of
the gateway; hostile input; and graceful shutdown. Whatever happens, the
gateway answers (or closes cleanly), never hangs past its timeouts, keeps
whole conversation turns only and writes no Redis key outside the layout."""
import json
import re
import signal
import socket
import subprocess
import threading
import time

import pytest
import redis as redis_lib
import requests

from conftest import SANITIZED, SLOW, free_port, user, wait_until
import keys as K

# DESIGN.md's key layout with the default prefix; tenants are
# [A-Za-z0-9._-]{1,64} ("default" in open mode).
T = r"[A-Za-z0-9._-]{1,64}"
B = K.TAG_RE  # the slot bucket's hash tag
LAYOUT = [re.compile(p) for p in (
    rf"^sg:chat:{B}:{T}:[A-Za-z0-9._:-]{{1,128}}$",
    rf"^sg:x:{B}:{T}:[0-9a-f]{{64}}$",
    rf"^sg:e:{B}:{T}:[A-Za-z0-9._:-]{{1,64}}$",
    rf"^sg:tag:{B}:{T}:[A-Za-z0-9._:-]{{1,128}}$",
    rf"^sg:(top|rl|stats|live|size):{B}:{T}$",
    rf"^sg:ts:{B}:{T}:[mh]:[0-9]{{1,12}}$",
    rf"^sg:emb:{B}:{T}:[^\s*?\[\]]+:[0-9a-f]{{64}}$",
    r"^sg:layout$",  # the old layout's cache has been moved (store/legacy.c)
)]


def assert_layout(r):
    keys = [k.decode("utf-8", "replace") for k in r.scan_iter(count=1000)]
    bad = [k for k in keys if not any(p.match(k) for p in LAYOUT)]
    assert not bad, f"keys outside the documented layout: {bad[:10]}"
    return keys


def assert_whole_turns(r, key):
    """A conversation holds whole turns: user, its answer, user, its answer..."""
    msgs = [json.loads(m) for m in r.lrange(key, 0, -1)]
    assert len(msgs) % 2 == 0, f"{key}: odd length {len(msgs)}"
    for q, a in zip(msgs[0::2], msgs[1::2]):
        assert q["role"] == "user" and a["role"] == "assistant", (q, a)
        assert a["content"] == "Mock answer: " + q["content"], (q, a)
    return len(msgs)


def is_json_error(resp, status=None):
    if status is not None:
        assert resp.status_code == status, resp.text
    assert resp.headers["Content-Type"].startswith("application/json")
    err = resp.json()["error"]
    assert err["message"] and err["type"] and isinstance(err["code"], str)
    return err


def raw_exchange(port, data, timeout=5.0):
    """Send raw bytes; return whatever comes back until the server closes
    or goes quiet (b"" when it just closed)."""
    out = b""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        try:
            s.sendall(data)
            s.shutdown(socket.SHUT_WR)
        except OSError:
            pass
        try:
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    break
                out += chunk
        except (socket.timeout, ConnectionResetError):
            pass
    return out


def status_of(raw):
    m = re.match(rb"HTTP/1\.[01] (\d{3})", raw)
    return int(m.group(1)) if m else None


class Load:
    """Client threads sending requests until stopped; every result is
    recorded with the phase current when the request started, written
    "start>end" when the phase changed while it was in flight (its outcome
    depends on which side of the change the gateway looked at Redis)."""

    def __init__(self, fn, threads):
        self.fn = fn
        self.phase = "before"
        self.results = []
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._run, args=(i,), daemon=True)
                        for i in range(threads)]

    def _run(self, i):
        n = 0
        while not self.stop.is_set():
            n += 1
            phase = self.phase
            t0 = time.monotonic()
            try:
                kind, r = self.fn(i, n)
                if self.phase != phase:
                    phase = f"{phase}>{self.phase}"
                rec = (phase, kind, r.status_code, r.headers.get("X-Semgate-Cache"), None)
            except Exception as exc:  # noqa: BLE001 - recorded, asserted on below
                rec = (phase, "?", None, None, repr(exc))
            with self.lock:
                self.results.append(rec + (time.monotonic() - t0,))

    def __enter__(self):
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        for t in self.threads:
            t.join(timeout=30 * SLOW)

    def count(self):
        with self.lock:
            return len(self.results)

    def run_for(self, seconds):
        """Let the load run on for a while (not a wait for a condition)."""
        n0 = self.count()
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            time.sleep(0.05)
        wait_until(lambda: self.count() > n0, what="load to make progress")


# ---- Redis faults ----

def test_redis_stopped_under_load_bypasses_then_hits_resume(make_gateway, redis_server,
                                                            redis_db, upstream):
    g = make_gateway(SEMGATE_REDIS_TIMEOUT_MS=300)
    q = user("What does the outage question say?")
    assert g.chat(q).headers["X-Semgate-Cache"] == "miss"
    assert g.chat(q).headers["X-Semgate-Cache"] == "hit-exact"

    def one(i, n):
        if n % 3 == 0:
            return "memory", g.chat(user(f"turn {n} of {i}"), timeout=15 * SLOW,
                                    headers={"X-Conversation-Id": f"outage-{i}"})
        return "plain", g.chat(q, timeout=15 * SLOW)

    with Load(one, 8) as load:
        load.run_for(0.6)
        redis_server.stop()
        load.phase = "down"
        load.run_for(1.5)
        load.phase = "restart"
        redis_server.start()
        up = time.monotonic()
        # the data died with that Redis: one miss stores the answer again
        wait_until(lambda: g.chat(q).headers["X-Semgate-Cache"] == "hit-exact",
                   timeout=2.0, interval=0.05, what="hits after Redis came back")
        back_after = time.monotonic() - up
        load.phase = "after"
        load.run_for(0.3)

    assert g.alive()
    res = load.results
    errors = [r for r in res if r[4]]
    assert not errors, errors[:5]
    assert back_after <= 2.0 * SLOW
    down = [r for r in res if r[0] == "down"]
    plain_down = [r for r in down if r[1] == "plain"]
    mem_down = [r for r in down if r[1] == "memory"]
    assert plain_down and mem_down
    assert all(r[2] == 200 and r[3] == "bypass" for r in plain_down), plain_down[:5]
    assert all(r[2] == 503 for r in mem_down), mem_down[:5]
    assert all(r[2] == 200 for r in res if r[1] == "plain")
    assert all(r[2] in (200, 503) for r in res if r[1] == "memory")
    assert any(r[2] == 200 for r in res if r[0] == "after" and r[1] == "memory")
    # nothing waited on the dead Redis longer than its timeout allows
    slowest = max(r[5] for r in res)
    print(f"redis outage: {len(res)} requests, {len(plain_down)} bypassed and "
          f"{len(mem_down)} memory-mode 503s while down, slowest {slowest:.3f} s, "
          f"hits back {back_after:.3f} s after Redis")
    assert slowest < (0.3 + 2.0) * SLOW, slowest
    for i in range(8):
        key = K.chat("default", f"outage-{i}").encode()
        if redis_db.exists(key):
            assert_whole_turns(redis_db, key)
    assert_layout(redis_db)


@pytest.fixture
def debug_redis(tmpdir_session):
    """A Redis of its own that allows DEBUG SLEEP."""
    port = free_port()
    proc = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
         "--appendonly", "no", "--dir", tmpdir_session, "--enable-debug-command", "yes"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    c = redis_lib.Redis(host="127.0.0.1", port=port, socket_timeout=10)
    wait_until(c.ping, what="debug redis")
    yield port, c
    proc.kill()
    proc.wait()


def test_slow_redis_is_bypassed_within_the_redis_timeout(make_gateway, debug_redis, upstream):
    port, rc = debug_redis
    g = make_gateway(SEMGATE_REDIS_PORT=port, SEMGATE_REDIS_TIMEOUT_MS=300)
    q = user("Is the slow Redis bypassed?")
    g.chat(q)
    assert g.chat(q).headers["X-Semgate-Cache"] == "hit-exact"

    def one(i, n):
        if n % 4 == 0:
            return "memory", g.chat(user(f"slow {n}"), timeout=15 * SLOW,
                                    headers={"X-Conversation-Id": f"slow-{i}"})
        if n % 4 == 1:  # never asked before: needs Redis for its lookup
            return "fresh", g.chat(user(f"fresh {i} {n} {time.monotonic()}"),
                                   timeout=15 * SLOW)
        return "plain", g.chat(q, timeout=15 * SLOW)

    pausers = []

    def stall(*cmd):
        c = redis_lib.Redis(host="127.0.0.1", port=port, socket_timeout=10)
        t = threading.Thread(target=c.execute_command, args=cmd, daemon=True)
        t.start()
        pausers.append(t)

    figures = {}
    for name, cmd, secs in (("client pause 3000", ("CLIENT", "PAUSE", "3000"), 3.0),
                            ("debug sleep 2", ("DEBUG", "SLEEP", "2"), 2.0)):
        with Load(one, 4) as load:
            stall(*cmd)
            time.sleep(0.05)  # let the stall begin before measuring
            load.phase = "stalled"
            load.run_for(secs - 0.8)
            load.phase = "done"
        stalled = [r for r in load.results if r[0].split(">")[0] == "stalled"]
        assert stalled and not [r for r in load.results if r[4]]
        lat = sorted(r[5] for r in stalled)
        figures[name] = (len(stalled), lat[len(lat) // 2], lat[-1])
        # every request gave up on Redis after ~300 ms instead of waiting
        # out the stall: plain ones went upstream, memory ones got 503
        assert lat[-1] < (0.3 + 0.9) * SLOW, (name, lat[-5:])
        assert all(r[2] == 200 and r[3] in ("bypass", "hit-exact")
                   for r in stalled if r[1] == "plain")
        # a question answered just before is served from the hot copy
        # (nothing can change it while Redis is stalled); new ones bypass
        assert all(r[2] == 200 and r[3] == "bypass" for r in stalled if r[1] == "fresh")
        assert any(r[1] == "fresh" for r in stalled)
        assert all(r[2] in (200, 503) for r in stalled if r[1] == "memory")
        wait_until(lambda: g.chat(q).headers["X-Semgate-Cache"] == "hit-exact",
                   timeout=3.0, what=f"hits after {name}")
    for t in pausers:
        t.join(timeout=10)
    print("slow redis (requests, median s, max s):", figures)
    for i in range(4):
        key = K.chat("default", f"slow-{i}").encode()
        if rc.exists(key):
            assert_whole_turns(rc, key)


# ---- upstream and embedding faults ----

def test_hanging_upstream_gives_504_while_others_are_served(make_gateway, redis_db, upstream):
    g = make_gateway(SEMGATE_UPSTREAM_TIMEOUT_MS=1500)
    q = user("a question cached before the hang")
    g.chat(q)
    assert g.chat(q).headers["X-Semgate-Cache"] == "hit-exact"
    out = {}

    def hang(name, **extra):
        t0 = time.monotonic()
        r = g.chat(user(f"stuck {name} [[hang]]"), timeout=30 * SLOW, **extra)
        out[name] = (r, time.monotonic() - t0)

    threads = [threading.Thread(target=hang, args=("plain",)),
               threading.Thread(target=hang, args=("stream",), kwargs={"stream": True})]
    for t in threads:
        t.start()
    wait_until(lambda: upstream.stats()["chat_requests"] >= 3, what="hangs to reach upstream")
    for _ in range(5):
        t0 = time.monotonic()
        assert requests.get(g.url + "/healthz", timeout=5).status_code == 200
        r = g.chat(q, timeout=5)
        assert r.headers["X-Semgate-Cache"] == "hit-exact"
        assert time.monotonic() - t0 < 0.5 * SLOW
    assert all(t.is_alive() for t in threads), "the hang ended before the checks"
    for t in threads:
        t.join(timeout=30 * SLOW)
    for name in ("plain", "stream"):
        r, took = out[name]
        assert is_json_error(r, 504)["code"] == "upstream_timeout"
        assert 1.4 < took < 1.5 + 2.0 * SLOW, (name, took)
    assert_layout(redis_db)


@pytest.mark.parametrize("marker,status", [
    ("[[invalid_json]]", 502), ("[[truncated]]", 502), ("[[fail:500]]", 500)])
def test_bad_upstream_answer_is_a_clean_error_and_nothing_is_kept(gateway, upstream, redis_db,
                                                                  marker, status):
    cid = {"X-Conversation-Id": "bad-upstream"}
    for attempt in range(2):
        r = gateway.chat(user(f"broken {marker}"), headers=cid)
        is_json_error(r, status)
        # streamed: once the stream has begun the error comes in-band
        # streamed: once the stream has begun, an error can only come in-band
        r = gateway.chat(user(f"broken stream {marker}"), headers=cid, stream=True)
        if r.status_code == 200:
            assert r.headers["Content-Type"].startswith("text/event-stream")
            assert r.headers["X-Semgate-Cache"] == "miss"
        else:
            is_json_error(r, status)
    # nothing was cached (each call went upstream) and nothing appended
    assert upstream.stats()["chat_requests"] == 4
    assert redis_db.keys("sg:x:*") == [] and redis_db.keys("sg:e:*") == []
    assert not redis_db.exists(K.chat("default", "bad-upstream"))
    assert requests.get(gateway.url + "/v1/conversations/bad-upstream",
                        timeout=5).status_code == 404


def test_embedding_api_down_or_slow_means_a_miss_not_a_failure(make_gateway, redis_db,
                                                               upstream):
    g = make_gateway(SEMGATE_EMBED_TIMEOUT_MS=300)
    try:
        upstream.control(embed_mode="fail")
        r = g.chat(user("embeddings are down"))
        assert r.status_code == 200 and r.headers["X-Semgate-Cache"] == "miss"
        # the exact cache needs no embedding
        r = g.chat(user("embeddings are down"))
        assert r.headers["X-Semgate-Cache"] == "hit-exact"

        upstream.control(embed_mode="ok", embed_latency_ms=3000)
        t0 = time.monotonic()
        r = g.chat(user("embeddings are slow"))
        took = time.monotonic() - t0
        assert r.status_code == 200 and r.headers["X-Semgate-Cache"] == "miss"
        assert took < (0.3 + 1.0) * SLOW, took
        # and a streamed request too
        r = g.chat(user("embeddings are slow, streamed"), stream=True)
        assert r.status_code == 200 and "data: [DONE]" in r.text
    finally:
        upstream.control(embed_mode="ok", embed_latency_ms=0)


# ---- clients that go away ----

def test_clients_vanishing_mid_body_or_mid_stream_leave_no_stuck_worker(make_gateway, redis_db,
                                                                        upstream):
    g = make_gateway(SEMGATE_THREADS=4)
    head = (b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n"
            b"Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n")
    for _ in range(6):  # more than the workers
        s = socket.create_connection(("127.0.0.1", g.port), timeout=5)
        s.sendall(head + b'{"model":"mock-1","messages":[{"role":"user",')
        s.close()

    upstream.control(stream_chunk_delay_ms=100)
    words = " ".join(f"word{i}" for i in range(30))
    body = json.dumps({"model": "mock-1", "stream": True,
                       "messages": user("vanish " + words)}).encode()
    for i in range(6):
        s = socket.create_connection(("127.0.0.1", g.port), timeout=10 * SLOW)
        s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n"
                  b"Content-Type: application/json\r\nX-Conversation-Id: gone-%d\r\n"
                  b"Content-Length: %d\r\n\r\n" % (i, len(body)) + body)
        got = b""
        while b"data:" not in got:
            chunk = s.recv(4096)
            assert chunk, "stream closed before its first event"
            got += chunk
        s.close()
    upstream.control(stream_chunk_delay_ms=0)

    # all four workers are free again: four slow requests run side by side
    lat = 0.6 * SLOW

    def four_in_parallel():
        t0 = time.monotonic()
        ths = [threading.Thread(target=g.chat, args=(user(f"par {i} [[latency:{int(lat * 1000)}]]"),))
               for i in range(4)]
        for t in ths:
            t.start()
        for t in ths:
            t.join()
        return time.monotonic() - t0 < 1.8 * lat

    wait_until(four_in_parallel, timeout=5, interval=0.1, what="four free workers")
    # a stream cut by its client stores nothing: no half turn
    for i in range(6):
        assert not redis_db.exists(K.chat("default", f"gone-{i}"))
    assert g.alive()


# ---- kill -9 ----

def test_kill_9_under_memory_load_keeps_whole_turns_and_rebuilds_the_index(make_gateway,
                                                                          redis_db, upstream):
    g = make_gateway(SEMGATE_HISTORY_MAX=1000)
    seed = "What is the capital of Portugal?"
    assert g.chat(user(seed)).headers["X-Semgate-Cache"] == "miss"
    wait_until(lambda: redis_db.keys("sg:e:*"), what="the entry to be stored")

    def one(i, n):
        return "memory", g.chat(user(f"k9 {i} turn {n}"), timeout=10 * SLOW,
                                headers={"X-Conversation-Id": f"k9-{i}"})

    with Load(one, 6) as load:
        wait_until(lambda: sum(1 for r in load.results if r[2] == 200) >= 18,
                   what="turns in flight")
        g.proc.kill()
        g.proc.wait()
    total = 0
    for i in range(6):
        total += assert_whole_turns(redis_db, K.chat("default", f"k9-{i}").encode())
    assert total >= 36

    g.start()  # same port, same Redis
    upstream.set_similarity("What is the capital of Portugal, please?", seed, 0.99)
    r = g.chat(user("What is the capital of Portugal, please?"))
    assert r.headers["X-Semgate-Cache"] == "hit-semantic", r.headers
    assert_layout(redis_db)


# ---- hostile input ----

def test_hostile_input_gets_4xx_or_a_clean_close_and_no_stray_keys(make_gateway, redis_db,
                                                                   upstream):
    g = make_gateway(SEMGATE_MAX_BODY_BYTES=65536)
    url = g.url + "/v1/chat/completions"
    hdr = {"Content-Type": "application/json"}

    # oversized headers: one huge value, then very many
    for extra in (b"X-Big: " + b"a" * 200000 + b"\r\n",
                  b"".join(b"X-H%d: v\r\n" % i for i in range(500))):
        raw = raw_exchange(g.port, b"GET /healthz HTTP/1.1\r\nHost: x\r\n" + extra + b"\r\n")
        st = status_of(raw)
        assert st is None or 400 <= st < 500, raw[:200]
    # oversized bodies: declared, and chunked without a length
    is_json_error(requests.post(url, data=b"x" * 70000, headers=hdr, timeout=10), 413)
    is_json_error(requests.post(url, data=iter([b"[" * 40000, b"1" * 40000]), headers=hdr,
                                timeout=10), 413)
    # deep nesting, invalid UTF-8, NUL escapes, NUL bytes
    for body in (b"[" * 30000 + b"]" * 30000,
                 b'{"model":"m","messages":' + b"[" * 70 + b"]" * 70 + b"}",
                 b'{"model":"m","messages":[{"role":"user","content":"\xff\xfe"}]}',
                 b'{"model":"m","messages":[{"role":"user","content":"\xed\xa0\x80"}]}',
                 b'{"model":"m","messages":[{"role":"user","content":"\\ud800"}]}',
                 b'{"model":"m","messages":[{"role":"user","content":"a\\u0000b"}]}',
                 b'{"model":"m","messages":[{"role":"user","content":"a\x00b"}]}',
                 b'{"model":"m\\u0000x","messages":[{"role":"user","content":"hi"}]}'):
        r = requests.post(url, data=body, headers=hdr, timeout=10)
        is_json_error(r, 400)
    r = requests.post(g.url + "/v1/conversations/nul/messages", timeout=10,
                      data=b'{"messages":[{"role":"user","content":"x\\u0000y"}]}')
    is_json_error(r, 400)
    assert upstream.stats()["chat_requests"] == 0

    # ids with globs, wrong characters or too long: 400 everywhere
    for cid in ("a*b", "[ab]", "a%2Ab", "a%3Fb", "a%00b", "%2A", "x" * 129, "a\\b",
                "caf%C3%A9", "a%0D%0AX-Evil:%201"):
        for method, path in (("GET", f"/v1/conversations/{cid}"),
                             ("DELETE", f"/v1/conversations/{cid}"),
                             ("POST", f"/v1/conversations/{cid}/messages")):
            raw = raw_exchange(g.port, (f"{method} {path} HTTP/1.1\r\nHost: x\r\n"
                                        "Content-Type: application/json\r\nContent-Length: 2"
                                        "\r\n\r\n{}").encode())
            assert status_of(raw) == 400, (method, path, raw[:300])
    for cid in ("a*b", "a?b", "[ab]", "a b", "x" * 129, "a\\b", "a/b", "caf\u00e9", "%2A"):
        r = g.chat(user("hi"), headers={"X-Conversation-Id": cid})
        is_json_error(r, 400)
        r = g.chat(user("hi"), headers={"X-Semgate-Namespace": cid})
        is_json_error(r, 400)
    # ':' runs are allowed by the id pattern and stay inside the layout
    assert g.chat(user("colons"), headers={"X-Conversation-Id": "::a::"}).status_code == 200

    # CR/LF smuggled into header values: never echoed as a header of ours
    body = json.dumps({"model": "mock-1", "messages": user("inject")}).encode()
    for name in (b"X-Conversation-Id", b"X-Semgate-Namespace", b"X-Semgate-Threshold",
                 b"X-Semgate-TTL", b"Cache-Control"):
        for sep in (b"\r", b"\n", b"\r\n "):
            req = (b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n"
                   b"Content-Type: application/json\r\n" + name + b": abc" + sep +
                   b"X-Evil: 1\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
            raw = raw_exchange(g.port, req)
            head = raw.split(b"\r\n\r\n", 1)[0]
            assert not re.search(rb"(?im)^x-evil", head), head
            st = status_of(raw)
            assert st is None or st in (200, 400), raw[:300]
    assert g.alive()
    keys = assert_layout(redis_db)
    assert any(k == K.chat("default", "::a::") for k in keys)


def test_slow_loris_clients_do_not_block_others_and_are_cut(make_gateway, redis_db, upstream):
    g = make_gateway(SEMGATE_REQUEST_TIMEOUT_MS=1500, SEMGATE_THREADS=8)
    cut = {}
    sent = [0] * 4

    def loris(i):
        s = socket.create_connection(("127.0.0.1", g.port), timeout=10 * SLOW)
        t0 = time.monotonic()
        data = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Pad: " + b"a" * 1000
        try:
            for b in data:
                s.sendall(bytes([b]))
                sent[i] += 1
                time.sleep(0.1)
                s.setblocking(False)
                try:
                    if s.recv(4096) == b"":
                        break
                except BlockingIOError:
                    pass
                finally:
                    s.setblocking(True)
        except OSError:
            pass
        cut[i] = time.monotonic() - t0
        s.close()

    ths = [threading.Thread(target=loris, args=(i,), daemon=True) for i in range(4)]
    for t in ths:
        t.start()
    wait_until(lambda: min(sent) >= 3, what="the slow clients to hold their workers")
    for _ in range(10):
        t0 = time.monotonic()
        assert requests.get(g.url + "/healthz", timeout=5).status_code == 200
        assert g.chat(user("served while lorises crawl"), timeout=5).status_code == 200
        assert time.monotonic() - t0 < 0.5 * SLOW
    for t in ths:
        t.join(timeout=20 * SLOW)
    assert len(cut) == 4
    # each was cut at the request timeout, long before its 100 s of bytes
    assert all(1.2 < c < 1.5 + 2.0 * SLOW for c in cut.values()), cut
    assert g.alive()


# ---- graceful shutdown ----

def test_sigterm_lets_a_stream_finish_and_refuses_new_connections(make_gateway, redis_db,
                                                                  upstream):
    g = make_gateway(SEMGATE_SHUTDOWN_GRACE_MS=10000)
    upstream.control(stream_chunk_delay_ms=120)
    question = "tell me " + " ".join(f"w{i}" for i in range(14))
    first = threading.Event()
    got = {}

    def stream():
        r = requests.post(g.url + "/v1/chat/completions", stream=True, timeout=30 * SLOW,
                          json={"model": "mock-1", "stream": True, "messages": user(question)})
        lines = []
        for line in r.iter_lines():
            if line.startswith(b"data:"):
                first.set()
                lines.append(line)
        got["status"] = r.status_code
        got["lines"] = lines

    t = threading.Thread(target=stream)
    t.start()
    assert first.wait(10 * SLOW)
    g.proc.send_signal(signal.SIGTERM)

    def refused():
        try:
            socket.create_connection(("127.0.0.1", g.port), timeout=1).close()
            return False
        except ConnectionRefusedError:
            return True

    wait_until(refused, timeout=1.0, what="new connections to be refused")
    assert t.is_alive(), "the stream ended before the check"
    t.join(timeout=30 * SLOW)
    upstream.control(stream_chunk_delay_ms=0)
    assert got["status"] == 200
    assert got["lines"][-1] == b"data: [DONE]"
    text = ""
    for line in got["lines"]:
        if line.startswith(b"data: {"):
            for ch in json.loads(line[6:])["choices"]:
                text += ch["delta"].get("content") or ""
    assert text == "Mock answer: " + question
    assert g.proc.wait(timeout=15 * SLOW) == 0
    # the finished stream was stored before the process left
    assert len(redis_db.keys("sg:x:*")) == 1
    assert "requests in flight finished" in g.logs()


def test_sigterm_grace_deadline_cuts_a_hanging_request(make_gateway, redis_db, upstream):
    g = make_gateway(SEMGATE_SHUTDOWN_GRACE_MS=500, SEMGATE_UPSTREAM_TIMEOUT_MS=60000)
    out = {}

    def hang():
        try:
            out["r"] = g.chat(user("never answered [[hang]]"), timeout=30 * SLOW)
        except requests.RequestException as exc:
            out["exc"] = exc

    t = threading.Thread(target=hang)
    t.start()
    wait_until(lambda: upstream.stats()["chat_requests"] >= 1, what="the hang to start")
    t0 = time.monotonic()
    g.proc.send_signal(signal.SIGTERM)
    assert g.proc.wait(timeout=15 * SLOW) == 0
    took = time.monotonic() - t0
    t.join(timeout=10 * SLOW)
    # grace, then libcurl's progress callback notices within about a second
    assert took < (0.5 + 1.5) * SLOW + 0.5, took
    assert "r" in out or "exc" in out
    if "r" in out:
        assert out["r"].status_code >= 500
    assert "cutting them" in g.logs()


def test_a_crash_leaves_its_stack_in_the_log(make_gateway, redis_db, upstream):
    """A gateway that dies of a fatal signal says so in its log, with the
    stack, and dies of that signal (a core dump where they are on).
    Sanitizer builds keep the sanitizer's own report instead."""
    g = make_gateway()
    assert g.chat(user("before the crash")).status_code == 200
    g.proc.send_signal(signal.SIGSEGV)
    rc = g.proc.wait(timeout=15 * SLOW)
    log = g.logs()
    if SANITIZED:
        assert rc != 0 and "AddressSanitizer" in log, (rc, log[-2000:])
    else:
        assert rc == -signal.SIGSEGV, rc
        trace = log[log.index("semgate: fatal signal 11\n"):].splitlines()[1:]
        # frames of the binary, named where the symbol is exported
        assert any("semgate(" in f for f in trace), trace
    g.start()  # the fixture stops a live one
    assert g.chat(user("after the crash")).status_code == 200
