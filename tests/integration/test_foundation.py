"""Foundation: the real binary proxies chat completions to the mock upstream,
answers every error in OpenAI's JSON shape, reports readiness from Redis and
survives malformed input."""
import json
import os
import random
import socket
import subprocess
import time

import pytest
import requests

from conftest import SEMGATE_BIN, SLOW, free_port, user, wait_until


def assert_error(resp, status, code=None):
    assert resp.status_code == status, resp.text
    assert resp.headers["Content-Type"].startswith("application/json")
    body = resp.json()
    assert set(body) == {"error"}
    err = body["error"]
    assert isinstance(err["message"], str) and err["message"]
    assert isinstance(err["type"], str) and err["type"]
    assert isinstance(err["code"], str)
    if code:
        assert err["code"] == code, err
    return err


def test_proxy_returns_upstream_answer_and_forwards_body(gateway, upstream):
    r = gateway.chat(user("What is the capital of France?"), temperature=0.2)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["object"] == "chat.completion"
    assert body["choices"][0]["message"]["content"] == "Mock answer: What is the capital of France?"
    assert body["usage"]["total_tokens"] > 0
    st = upstream.stats()
    assert st["chat_requests"] == 1
    sent = st["last_chat_request"]
    assert sent["model"] == "mock-1"
    assert sent["temperature"] == 0.2
    assert sent["messages"] == user("What is the capital of France?")


def test_upstream_error_status_is_passed_through(gateway, upstream):
    r = gateway.chat(user("please [[fail:429]]"))
    assert_error(r, 429)
    r = gateway.chat(user("please [[fail:500]]"))
    assert_error(r, 500)


def test_upstream_invalid_json_is_a_clean_502(gateway, upstream):
    r = gateway.chat(user("[[invalid_json]]"))
    assert_error(r, 502, "upstream_invalid_response")


def test_upstream_truncated_body_is_a_clean_502(gateway, upstream):
    r = gateway.chat(user("[[truncated]]"))
    assert_error(r, 502)


def test_unreachable_upstream_gives_502(make_gateway, redis_db):
    dead = free_port()
    g = make_gateway(SEMGATE_UPSTREAM_URL=f"http://127.0.0.1:{dead}/v1")
    assert_error(g.chat(user("hello")), 502, "upstream_unavailable")


def test_upstream_timeout_gives_504_within_the_timeout(make_gateway, redis_db, upstream):
    g = make_gateway(SEMGATE_UPSTREAM_TIMEOUT_MS=400)
    t0 = time.monotonic()
    r = g.chat(user("slow one [[hang]]"))
    took = time.monotonic() - t0
    assert_error(r, 504, "upstream_timeout")
    assert took < 5 * SLOW
    # the gateway still serves while another request hangs upstream
    assert g.chat(user("fine")).status_code == 200


@pytest.mark.parametrize("body,needle", [
    (b"", "empty body"),
    (b"{", "invalid JSON"),
    (b"[1,2]", "object"),
    (b'{"model":"m","messages":[{"role":"user","content":"x"}]} trailing', "after"),
    (b'{"messages":[{"role":"user","content":"x"}]}', "model"),
    (b'{"model":5,"messages":[{"role":"user","content":"x"}]}', "model"),
    (b'{"model":"m"}', "messages"),
    (b'{"model":"m","messages":[]}', "messages"),
    (b'{"model":"m","messages":"hi"}', "messages"),
    (b'{"model":"m","messages":[5]}', "messages[0]"),
    (b'{"model":"m","messages":[{"content":"x"}]}', "role"),
    (b'{"model":"m","messages":[{"role":"user","content":5}]}', "content"),
    (b'{"model":"m","messages":[{"role":"user","content":"x"}],"temperature":"hot"}', "temperature"),
    (b'{"model":"m","messages":[{"role":"user","content":"x"}],"n":0}', "n"),
    (b'{"model":"m","messages":[{"role":"user","content":"\xff\xfe"}]}', "UTF-8"),
    (b'{"model":"m","messages":[{"role":"user","content":"\\ud800"}]}', "JSON"),
    (b"[" * 1000 + b"]" * 1000, "nesting"),
    (b'{"model":"m",\x0c"messages":[{"role":"user","content":"x"}]}', "control character"),
])
def test_bad_chat_bodies_get_400_with_a_clear_message(gateway, upstream, body, needle):
    r = requests.post(gateway.url + "/v1/chat/completions", data=body,
                      headers={"Content-Type": "application/json"}, timeout=10)
    err = assert_error(r, 400)
    assert needle.lower() in err["message"].lower(), err
    assert upstream.stats()["chat_requests"] == 0


def test_unknown_route_is_404_and_wrong_method_is_405(gateway):
    assert_error(requests.get(gateway.url + "/v1/nope", timeout=5), 404, "not_found")
    r = requests.get(gateway.url + "/v1/chat/completions", timeout=5)
    assert_error(r, 405, "method_not_allowed")
    assert r.headers["Allow"] == "POST"
    assert_error(requests.delete(gateway.url + "/healthz", timeout=5), 405)


def test_body_over_the_limit_is_413(make_gateway, redis_db, upstream):
    g = make_gateway(SEMGATE_MAX_BODY_BYTES=4096)
    big = json.dumps({"model": "m", "messages": user("x" * 10000)})
    assert_error(requests.post(g.url + "/v1/chat/completions", data=big, timeout=10), 413)
    # chunked upload without a Content-Length is capped too
    def gen():
        for _ in range(10):
            yield b"x" * 1000
    assert_error(requests.post(g.url + "/v1/chat/completions", data=gen(), timeout=10), 413)
    assert upstream.stats()["chat_requests"] == 0
    assert g.chat(user("small")).status_code == 200


def test_readyz_follows_redis_down_and_back(gateway, redis_server):
    assert requests.get(gateway.url + "/readyz", timeout=5).status_code == 200
    redis_server.stop()
    wait_until(lambda: requests.get(gateway.url + "/readyz", timeout=5).status_code == 503,
               what="readyz 503")
    r = requests.get(gateway.url + "/readyz", timeout=5)
    assert_error(r, 503, "redis_unavailable")
    assert requests.get(gateway.url + "/healthz", timeout=5).status_code == 200
    redis_server.start()
    wait_until(lambda: all(requests.get(gateway.url + "/readyz", timeout=5).status_code == 200
                           for _ in range(8)), what="readyz 200 again")


def test_redis_auth_and_select_are_used(make_gateway, redis_db, redis_server, upstream):
    redis_server.set_password("s3cret-pw")
    try:
        bad = make_gateway(SEMGATE_REDIS_PASSWORD="wrong")
        assert requests.get(bad.url + "/readyz", timeout=5).status_code == 503
        good = make_gateway(SEMGATE_REDIS_PASSWORD="s3cret-pw", SEMGATE_REDIS_DB=3)
        assert requests.get(good.url + "/readyz", timeout=5).status_code == 200
        assert "s3cret-pw" not in good.logs() and "s3cret-pw" not in bad.logs()
    finally:
        redis_server.set_password("")


def test_client_key_passes_through_only_without_an_upstream_key(make_gateway, redis_db, upstream):
    g = make_gateway()
    g.chat(user("hi"), headers={"Authorization": "Bearer client-key-123"})
    assert upstream.stats()["last_authorization"] == "Bearer client-key-123"
    g2 = make_gateway(SEMGATE_UPSTREAM_API_KEY="gw-upstream-key")
    g2.chat(user("hi again"), headers={"Authorization": "Bearer client-key-123"})
    assert upstream.stats()["last_authorization"] == "Bearer gw-upstream-key"
    for gw in (g, g2):
        logs = gw.logs()
        assert "client-key-123" not in logs and "gw-upstream-key" not in logs


def test_access_log_has_one_json_line_per_request(gateway, upstream):
    gateway.chat(user("hello"), headers={"Authorization": "Bearer sk-secret-999"})
    requests.get(gateway.url + "/nope", timeout=5)
    # a line is written after its response: wait for both requests' lines
    # (the fixture's readiness polls of /healthz have lines of their own)
    lines = wait_until(lambda: [l for l in gateway.access_log() if l.get("msg") == "request"]
                       if {"/v1/chat/completions", "/nope"} <=
                       {l.get("path") for l in gateway.access_log()} else None,
                       what="access log")
    chat = [l for l in lines if l["path"] == "/v1/chat/completions"][0]
    assert chat["method"] == "POST" and chat["status"] == 200
    assert isinstance(chat["ms"], (int, float)) and chat["ms"] >= 0
    assert [l for l in lines if l["path"] == "/nope"][0]["status"] == 404
    assert "sk-secret-999" not in gateway.logs()


def test_process_survives_200_malformed_requests(gateway, upstream):
    rnd = random.Random(1234)
    good = json.dumps({"model": "m", "messages": user("hello there")}).encode()
    statuses = []
    for i in range(200):
        kind = i % 5
        if kind == 0:
            body = bytes(rnd.getrandbits(8) for _ in range(rnd.randint(1, 400)))
        elif kind == 1:
            body = good[:rnd.randint(1, len(good) - 1)]
        elif kind == 2:
            obj = {"model": rnd.choice([1, None, [], {}, "m"]),
                   "messages": rnd.choice([None, 3, "x", [None], [{"role": 1}],
                                           [{"role": "user", "content": {"a": 1}}]])}
            body = json.dumps(obj).encode()
        elif kind == 3:
            body = b'{"model":"m","messages":[' + b'{"role":"user","content":"' + b"a" * 5_000_000 + b'"}]}'
        else:
            body = bytes(rnd.choice(b'{}[]":,\\0123456789truefalsenull ') for _ in range(200))
        r = requests.post(gateway.url + "/v1/chat/completions", data=body, timeout=30)
        statuses.append(r.status_code)
        assert r.status_code in (400, 413), (i, r.status_code, r.text[:200])
        assert "error" in r.json()
    assert gateway.alive()
    assert upstream.stats()["chat_requests"] == 0
    assert gateway.chat(user("still fine?")).status_code == 200


def test_raw_garbage_on_the_socket_does_not_kill_the_gateway(gateway):
    for payload in (b"\x00\x01\x02garbage\r\n\r\n", b"GET / HTTP/9.9\r\n\r\n",
                    b"POST /v1/chat/completions HTTP/1.1\r\nContent-Length: -5\r\n\r\n",
                    b"POST /v1/chat/completions HTTP/1.1\r\nContent-Length: 99999999999999999999\r\n\r\n",
                    b"GET /" + b"a" * 100000 + b" HTTP/1.1\r\n\r\n"):
        with socket.create_connection(("127.0.0.1", gateway.port), timeout=5) as s:
            try:
                s.sendall(payload)
                s.shutdown(socket.SHUT_WR)
                s.recv(4096)
            except OSError:
                pass
    assert gateway.alive()
    assert requests.get(gateway.url + "/healthz", timeout=5).status_code == 200


def run_bin(*args, env=None):
    e = {k: v for k, v in os.environ.items() if not k.startswith("SEMGATE_")}
    e.update(env or {})
    return subprocess.run([SEMGATE_BIN, *args], env=e, capture_output=True, text=True, timeout=30)


def test_help_lists_every_option_with_its_variable_and_default():
    r = run_bin("--help")
    assert r.returncode == 0
    for var in ("SEMGATE_HOST", "SEMGATE_PORT", "SEMGATE_THREADS", "SEMGATE_REDIS_HOST",
                "SEMGATE_REDIS_PORT", "SEMGATE_REDIS_PASSWORD", "SEMGATE_REDIS_DB",
                "SEMGATE_REDIS_PREFIX", "SEMGATE_UPSTREAM_URL", "SEMGATE_UPSTREAM_API_KEY",
                "SEMGATE_UPSTREAM_TIMEOUT_MS", "SEMGATE_UPSTREAM_CONNECT_TIMEOUT_MS",
                "SEMGATE_MAX_BODY_BYTES", "SEMGATE_LOG_LEVEL"):
        assert var in r.stdout, var
    assert "default: 8080" in r.stdout
    v = run_bin("--version")
    assert v.returncode == 0 and v.stdout.startswith("semgate ")


@pytest.mark.parametrize("env,needle", [
    ({"SEMGATE_PORT": "99999"}, "SEMGATE_PORT"),
    ({"SEMGATE_PORT": "80x"}, "SEMGATE_PORT"),
    ({"SEMGATE_THREADS": "0"}, "SEMGATE_THREADS"),
    ({"SEMGATE_LOG_LEVEL": "loud"}, "SEMGATE_LOG_LEVEL"),
    ({"SEMGATE_UPSTREAM_URL": "ftp://x"}, "SEMGATE_UPSTREAM_URL"),
    ({"SEMGATE_REDIS_PREFIX": "a*b"}, "SEMGATE_REDIS_PREFIX"),
    ({"SEMGATE_SIMILARITY_FLOOR": "0"}, "SEMGATE_SIMILARITY_FLOOR"),
    ({"SEMGATE_SIMILARITY_FLOOR": "1.5"}, "SEMGATE_SIMILARITY_FLOOR"),
])
def test_invalid_configuration_is_refused_naming_the_option(env, needle):
    r = run_bin(env=env)
    assert r.returncode == 2
    assert needle in r.stderr


def test_invalid_flag_is_refused_naming_the_flag():
    r = run_bin("--redis-port", "0")
    assert r.returncode == 2 and "--redis-port" in r.stderr
    r = run_bin("--no-such-flag")
    assert r.returncode == 2 and "--no-such-flag" in r.stderr


def test_sigterm_exits_zero(make_gateway, redis_db):
    g = make_gateway()
    assert g.stop() == 0
