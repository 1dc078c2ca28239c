"""The HTTP wire format the gateway writes itself (status line, headers and
body in one write; chunked streams framed by the gateway): checked byte by
byte over raw sockets, including keep-alive, HTTP/1.0, HEAD and the JSON
access-log line."""
import email.utils
import json
import socket

from conftest import user, wait_until


def read_head(f):
    status = f.readline()
    assert status.endswith(b"\r\n"), status
    headers = {}
    while True:
        line = f.readline()
        assert line.endswith(b"\r\n"), line
        if line == b"\r\n":
            break
        name, _, value = line[:-2].decode("latin-1").partition(":")
        assert name and name == name.strip(), line
        headers[name.lower()] = value.strip()
    return status[:-2].decode("latin-1"), headers


def read_response(f, head=False):
    status, h = read_head(f)
    if head:
        return status, h, b""
    if h.get("transfer-encoding") == "chunked":
        body = b""
        while True:
            size_line = f.readline()
            assert size_line.endswith(b"\r\n"), size_line
            n = int(size_line[:-2], 16)
            chunk = f.read(n + 2)
            assert chunk.endswith(b"\r\n"), chunk[-10:]
            if n == 0:
                return status, h, body
            body += chunk[:-2]
    return status, h, f.read(int(h["content-length"]))


def connect(gateway):
    s = socket.create_connection(("127.0.0.1", gateway.port), timeout=10)
    return s, s.makefile("rb")


def post_bytes(path, body, version="1.1", extra=""):
    data = json.dumps(body).encode()
    return (f"POST {path} HTTP/{version}\r\nHost: x\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(data)}\r\n{extra}\r\n").encode() + data


def test_keep_alive_serves_many_requests_on_one_connection(gateway):
    s, f = connect(gateway)
    with s:
        for i in range(5):
            s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            status, h, body = read_response(f)
            assert status == "HTTP/1.1 200 OK"
            assert h["connection"] == "keep-alive"
            assert h["cache-control"] == "no-store"
            assert h["content-type"] == "application/json"
            assert int(h["content-length"]) == len(body)
            assert email.utils.parsedate_to_datetime(h["date"]) is not None
            assert json.loads(body)["status"] == "ok"
        # a chat completion and its extra headers on the same connection
        s.sendall(post_bytes("/v1/chat/completions",
                             {"model": "m", "messages": user("wire check")}))
        status, h, body = read_response(f)
        assert status == "HTTP/1.1 200 OK", body
        assert h["x-semgate-cache"] == "miss"
        assert json.loads(body)["object"] == "chat.completion"
        s.sendall(post_bytes("/v1/chat/completions",
                             {"model": "m", "messages": user("wire check")}))
        status, h, body = read_response(f)
        assert h["x-semgate-cache"] == "hit-exact"
        assert int(h["content-length"]) == len(body)
        assert json.loads(body)["choices"][0]["message"]["content"]


def test_http10_and_connection_close_get_close_and_the_socket_closes(gateway):
    for request in (b"GET /healthz HTTP/1.0\r\n\r\n",
                    b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"):
        s, f = connect(gateway)
        with s:
            s.sendall(request)
            status, h, body = read_response(f)
            assert status.split()[1] == "200"
            assert status.startswith("HTTP/1.0" if b"1.0" in request else "HTTP/1.1")
            assert h["connection"] == "close"
            assert json.loads(body)["status"] == "ok"
            assert f.read() == b""  # the gateway closed the connection


def test_connection_tokens_are_read_as_civetweb_reads_them(gateway):
    # "foo keep-alive" is one token, not keep-alive: civetweb closes, and
    # the answer must say so; a list with keep-alive in it keeps the socket
    s, f = connect(gateway)
    with s:
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: foo keep-alive\r\n\r\n")
        _, h, _ = read_response(f)
        assert h["connection"] == "close"
        assert f.read() == b""
    s, f = connect(gateway)
    with s:
        for _ in range(2):
            s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: x-foo ,  "
                      b"Keep-Alive \r\n\r\n")
            _, h, _ = read_response(f)
            assert h["connection"] == "keep-alive"
    # civetweb closes after a request asking for an Upgrade: say so
    s, f = connect(gateway)
    with s:
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: Upgrade, keep-alive\r\n\r\n")
        _, h, _ = read_response(f)
        assert h["connection"] == "close"
        assert f.read() == b""


def test_http10_keep_alive_when_asked(gateway):
    s, f = connect(gateway)
    with s:
        for _ in range(2):
            s.sendall(b"GET /healthz HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n")
            status, h, body = read_response(f)
            assert status.startswith("HTTP/1.0 200")
            assert h["connection"] == "keep-alive"


def test_head_gets_headers_without_a_body_and_the_connection_stays_usable(gateway):
    s, f = connect(gateway)
    with s:
        s.sendall(b"HEAD /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        status, h, _ = read_response(f, head=True)
        assert status.startswith("HTTP/1.1 405")
        assert int(h["content-length"]) > 0
        assert h["allow"] == "GET"
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        status, h, body = read_response(f)  # no stray body bytes in between
        assert status == "HTTP/1.1 200 OK" and json.loads(body)["status"] == "ok"


def sse_events(body):
    return [line[6:] for line in body.decode().split("\n") if line.startswith("data: ")]


def test_streamed_answer_is_well_framed_and_the_connection_is_reused(gateway):
    s, f = connect(gateway)
    with s:
        for expect in ("miss", "hit-exact"):
            s.sendall(post_bytes("/v1/chat/completions",
                                 {"model": "m", "stream": True,
                                  "messages": user("stream over the wire")}))
            status, h, body = read_response(f)
            assert status == "HTTP/1.1 200 OK"
            assert h["transfer-encoding"] == "chunked"
            assert "content-length" not in h
            assert h["content-type"].startswith("text/event-stream")
            assert h["cache-control"] == "no-cache"
            assert h["x-semgate-cache"] == expect
            events = sse_events(body)
            assert events[-1] == "[DONE]"
            text = "".join(json.loads(e)["choices"][0]["delta"].get("content") or ""
                           for e in events[:-1] if json.loads(e).get("choices"))
            assert text == "Mock answer: stream over the wire"
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        status, _, _ = read_response(f)
        assert status == "HTTP/1.1 200 OK"


def test_413_says_close(gateway):
    s, f = connect(gateway)
    with s:
        s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n"
                  b"Content-Type: application/json\r\nContent-Length: 999999999\r\n\r\n")
        status, h, body = read_response(f)
        assert status.startswith("HTTP/1.1 413")
        assert h["connection"] == "close"
        assert json.loads(body)["error"]["code"] == "request_too_large"


def test_access_log_lines_are_json_even_for_hostile_paths(gateway):
    s, f = connect(gateway)
    with s:
        # civetweb itself refuses control characters in the request line;
        # quotes and backslashes reach the gateway and its log
        s.sendall('GET /a"b\\c/%22 HTTP/1.1\r\nHost: x\r\n\r\n'.encode())
        status, _, _ = read_response(f)
        assert status.startswith("HTTP/1.1 404")
    gateway.chat(user("log me"))

    def lines():
        return [l for l in gateway.logs().splitlines() if l.startswith("{")]

    wait_until(lambda: any('"route":"/v1/chat/completions"' in l for l in lines()))
    parsed = [json.loads(l) for l in lines()]  # every line, not only the good ones
    bad = [p for p in parsed if p.get("route") == "-"]
    assert bad and bad[-1]["path"] == '/a"b\\c/%22'
    assert bad[-1]["status"] == 404
    chat = [p for p in parsed if p.get("route") == "/v1/chat/completions"][-1]
    assert chat["status"] == 200 and chat["cache"] == "miss"
    assert isinstance(chat["ms"], float) and isinstance(chat["upstream_ms"], float)
    assert chat["method"] == "POST" and chat["tenant"] == "default"
