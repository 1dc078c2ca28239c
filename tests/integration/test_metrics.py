"""GET /metrics: Prometheus text that a strict parser accepts, counters and
histograms that move with the traffic, and the JSON access log."""
import math
import re

import pytest
import requests

from conftest import user, wait_until

NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
LABEL_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")
TYPES = {"counter", "gauge", "histogram", "summary", "untyped"}


def parse_value(s):
    if s in ("+Inf", "-Inf", "NaN"):
        return float(s.replace("Inf", "inf").replace("NaN", "nan"))
    if not re.fullmatch(r"[-+]?(\d+\.?\d*([eE][-+]?\d+)?|\.\d+([eE][-+]?\d+)?)", s):
        raise AssertionError(f"bad sample value {s!r}")
    return float(s)


def parse_labels(s, pos):
    """Parse '{a="x",b="y"}' starting at s[pos] == '{'; return (dict, end)."""
    assert s[pos] == "{"
    pos += 1
    labels = {}
    while True:
        if s[pos] == "}":
            return labels, pos + 1
        m = LABEL_NAME.match(s, pos)
        assert m, f"bad label name at {s[pos:]!r}"
        name = m.group(0)
        assert name not in labels, f"duplicate label {name}"
        pos = m.end()
        assert s[pos] == "=" and s[pos + 1] == '"', f"bad label syntax in {s!r}"
        pos += 2
        val = []
        while s[pos] != '"':
            if s[pos] == "\\":
                esc = s[pos + 1]
                assert esc in ('\\', '"', 'n'), f"bad escape in {s!r}"
                val.append({"\\": "\\", '"': '"', "n": "\n"}[esc])
                pos += 2
            else:
                assert s[pos] != "\n"
                val.append(s[pos])
                pos += 1
        labels[name] = "".join(val)
        pos += 1
        if s[pos] == ",":
            pos += 1
        else:
            assert s[pos] == "}", f"expected , or }} in {s!r}"


def family_of(name, types):
    for suffix in ("_bucket", "_sum", "_count"):
        if name.endswith(suffix) and types.get(name[: -len(suffix)]) in ("histogram", "summary"):
            return name[: -len(suffix)]
    return name


def parse_exposition(text):
    """Strict parser for the Prometheus text format 0.0.4. Returns
    {family: {"type", "help", "samples": [(name, labels, value)]}}."""
    assert text.endswith("\n"), "exposition must end with a newline"
    fams, types, seen_series, done = {}, {}, set(), set()
    current = None
    for line in text.split("\n")[:-1]:
        assert line == line.strip() and line, f"blank or padded line {line!r}"
        if line.startswith("#"):
            parts = line.split(" ", 3)
            if len(parts) >= 2 and parts[1] in ("HELP", "TYPE"):
                assert len(parts) >= 3 and NAME.fullmatch(parts[2]), line
                name = parts[2]
                f = fams.setdefault(name, {"type": None, "help": None, "samples": []})
                if parts[1] == "HELP":
                    assert f["help"] is None, f"second HELP for {name}"
                    assert len(parts) == 4 and parts[3], line
                    f["help"] = parts[3]
                else:
                    assert f["type"] is None, f"second TYPE for {name}"
                    assert not f["samples"], f"TYPE after samples for {name}"
                    assert len(parts) == 4 and parts[3] in TYPES, line
                    f["type"] = types[name] = parts[3]
                if current != name:
                    assert name not in done, f"family {name} split in two groups"
                    if current:
                        done.add(current)
                    current = name
            continue
        m = NAME.match(line)
        assert m, f"bad metric name in {line!r}"
        name, pos = m.group(0), m.end()
        labels = {}
        if pos < len(line) and line[pos] == "{":
            labels, pos = parse_labels(line, pos)
        assert line[pos] == " ", f"expected a space in {line!r}"
        rest = line[pos + 1:].split(" ")
        assert 1 <= len(rest) <= 2, line
        value = parse_value(rest[0])
        if len(rest) == 2:
            assert re.fullmatch(r"-?\d+", rest[1]), line
        fam = family_of(name, types)
        assert fam in fams and fams[fam]["type"], f"sample {name} before its TYPE"
        if current != fam:
            assert fam not in done, f"family {fam} split in two groups"
            if current:
                done.add(current)
            current = fam
        key = (name, tuple(sorted(labels.items())))
        assert key not in seen_series, f"duplicate series {key}"
        seen_series.add(key)
        fams[fam]["samples"].append((name, labels, value))
    for name, f in fams.items():
        assert f["type"], f"{name} has no TYPE"
        if f["type"] == "counter":
            assert name.endswith("_total"), f"counter {name} should end in _total"
            assert all(v >= 0 for _, _, v in f["samples"])
        if f["type"] == "histogram":
            check_histogram(name, f["samples"])
    return fams


def check_histogram(name, samples):
    groups = {}
    for sname, labels, value in samples:
        base = tuple(sorted((k, v) for k, v in labels.items() if k != "le"))
        g = groups.setdefault(base, {"buckets": [], "sum": None, "count": None})
        if sname == name + "_bucket":
            assert "le" in labels, f"{sname} without le"
            g["buckets"].append((parse_value(labels["le"]), value))
        elif sname == name + "_sum":
            g["sum"] = value
        elif sname == name + "_count":
            g["count"] = value
        else:
            raise AssertionError(f"unexpected sample {sname} in histogram {name}")
    assert groups, f"histogram {name} has no samples"
    for base, g in groups.items():
        les = [le for le, _ in g["buckets"]]
        assert les == sorted(les) and len(set(les)) == len(les), f"{name}{base}: le order"
        assert les and math.isinf(les[-1]), f"{name}{base}: no +Inf bucket"
        counts = [c for _, c in g["buckets"]]
        assert all(a <= b for a, b in zip(counts, counts[1:])), f"{name}{base} not cumulative"
        assert g["count"] is not None and g["sum"] is not None, f"{name}{base}: _sum/_count"
        assert counts[-1] == g["count"], f"{name}{base}: +Inf != _count"
        assert g["sum"] >= 0


def scrape(gw):
    r = requests.get(gw.url + "/metrics", timeout=10)
    assert r.status_code == 200
    assert r.headers["Content-Type"].startswith("text/plain")
    assert "version=0.0.4" in r.headers["Content-Type"]
    return parse_exposition(r.text)


def value(fams, name, **labels):
    fam = family_of(name, {n: f["type"] for n, f in fams.items()})
    total = 0.0
    for sname, lab, v in fams.get(fam, {"samples": []})["samples"]:
        if sname == name and all(lab.get(k) == str(x) for k, x in labels.items()):
            total += v
    return total


def test_parser_rejects_malformed_expositions():
    good = ("# HELP a_total A.\n# TYPE a_total counter\na_total{x=\"1\"} 3\n"
            "# HELP h H.\n# TYPE h histogram\nh_bucket{le=\"1\"} 1\nh_bucket{le=\"+Inf\"} 2\n"
            "h_sum 0.5\nh_count 2\n")
    parse_exposition(good)
    bad = [
        good.replace("h_count 2", "h_count 3"),                        # +Inf != count
        good.replace('h_bucket{le="1"} 1', 'h_bucket{le="1"} 5'),      # not cumulative
        good.replace("a_total{x=\"1\"} 3", "a_total{x=1} 3"),          # unquoted label
        good.replace("a_total{x=\"1\"} 3", "a_total{x=\"1\"} three"),  # bad value
        good.replace("# TYPE a_total counter\n", ""),                  # no TYPE
        good + "a_total{x=\"1\"} 4\n",                                  # duplicate series
        good.replace("a_total{", "9a_total{").replace("a_total counter", "9a_total counter"),
        good.rstrip("\n"),
    ]
    for text in bad:
        with pytest.raises(AssertionError):
            parse_exposition(text)


def test_metrics_parse_and_count_requests_cache_outcomes_and_latency(make_gateway, redis_db,
                                                                     upstream):
    g = make_gateway(SEMGATE_PRICE_PROMPT_PER_1K="0.5", SEMGATE_PRICE_COMPLETION_PER_1K="1.5")
    m0 = scrape(g)
    assert value(m0, "semgate_cache_requests_total") == 0
    r1 = g.chat(user("metrics question"))
    assert r1.status_code == 200
    r2 = g.chat(user("metrics question"))
    assert r2.headers["X-Semgate-Cache"] == "hit-exact"
    upstream.set_similarity("metrics question?", "metrics question", 0.99)
    r3 = g.chat(user("metrics question?"))
    assert r3.headers["X-Semgate-Cache"] == "hit-semantic"
    r4 = g.chat(user("no cache please"), headers={"Cache-Control": "no-store"})
    assert r4.headers["X-Semgate-Cache"] == "bypass"
    assert requests.get(g.url + "/v1/nope", timeout=5).status_code == 404
    route = "/v1/chat/completions"

    def counted():
        """A request is counted once its answer is sent, so a scrape right
        after the answer may come before the count."""
        m = scrape(g)
        done = (value(m, "semgate_http_requests_total", route=route, method="POST",
                      status=200) >= 4 and
                value(m, "semgate_http_requests_total", route="unmatched", status=404) >= 1)
        return m if done else None
    m = wait_until(counted, what="the requests to be counted")
    assert value(m, "semgate_http_requests_total", route=route, method="POST", status=200) == 4
    assert value(m, "semgate_http_requests_total", route="unmatched", status=404) == 1
    assert value(m, "semgate_http_requests_total", route="/metrics", status=200) >= 1
    assert value(m, "semgate_http_request_duration_seconds_count", route=route) == 4
    for outcome, n in (("miss", 1), ("hit-exact", 1), ("hit-semantic", 1), ("bypass", 1)):
        assert value(m, "semgate_cache_requests_total", outcome=outcome) == n, outcome
    usage = r1.json()["usage"]
    prompt = value(m, "semgate_tokens_saved_total", kind="prompt")
    completion = value(m, "semgate_tokens_saved_total", kind="completion")
    assert prompt == 2 * usage["prompt_tokens"]
    assert completion == 2 * usage["completion_tokens"]
    cost = value(m, "semgate_estimated_cost_saved_total")
    assert cost == pytest.approx(prompt / 1000 * 0.5 + completion / 1000 * 1.5, abs=1e-6)
    assert value(m, "semgate_upstream_duration_seconds_count") == 2      # miss + bypass
    assert value(m, "semgate_embedding_duration_seconds_count") == 2     # miss + paraphrase
    assert value(m, "semgate_vector_search_duration_seconds_count") >= 2
    assert value(m, "semgate_redis_duration_seconds_count") >= 4
    assert value(m, "semgate_index_entries") == 1
    assert value(m, "semgate_index_partitions") == 1
    assert value(m, "semgate_index_bytes") > 0
    assert value(m, "semgate_requests_in_flight") == 1                   # the scrape itself


def test_auth_and_rate_limit_counters(make_gateway, redis_db, upstream):
    g = make_gateway(SEMGATE_API_KEYS="sk-m-1:mt", SEMGATE_RATE_LIMIT="2/60s")
    h = {"Authorization": "Bearer sk-m-1"}
    assert requests.get(g.url + "/v1/conversations/x", timeout=5).status_code == 401
    codes = [requests.get(g.url + "/v1/conversations/x", headers=h, timeout=5).status_code
             for _ in range(4)]
    assert codes == [404, 404, 429, 429]
    m = scrape(g)
    assert value(m, "semgate_auth_failures_total") == 1
    assert value(m, "semgate_rate_limited_total") == 2
    assert value(m, "semgate_rate_limiter_bypass_total") == 0
    assert value(m, "semgate_http_requests_total", route="/v1/conversations/{id}",
                 status=429) == 2
    assert value(m, "semgate_http_requests_total", route="/v1/conversations/{id}",
                 status=401) == 1


def test_embedding_input_counters(gateway, upstream):
    requests.post(gateway.url + "/v1/embeddings", json={"model": "e", "input": ["a", "b"]},
                  timeout=10)
    requests.post(gateway.url + "/v1/embeddings", json={"model": "e", "input": ["a", "c"]},
                  timeout=10)
    m = scrape(gateway)
    assert value(m, "semgate_embedding_inputs_total", source="upstream") == 3
    assert value(m, "semgate_embedding_inputs_total", source="cache") == 1
    assert value(m, "semgate_embedding_inputs_total", source="bypass") == 0
    assert value(m, "semgate_embedding_duration_seconds_count") == 2


def test_redis_reconnects_and_limiter_bypass_are_counted(make_gateway, redis_db, redis_server,
                                                         upstream):
    g = make_gateway(SEMGATE_RATE_LIMIT="1000/60s", SEMGATE_THREADS=2)
    assert g.chat(user("before outage")).status_code == 200
    redis_server.stop()
    assert g.chat(user("during outage")).status_code == 200
    redis_server.start()

    def reconnected():
        g.chat(user("after outage"))
        return value(scrape(g), "semgate_redis_reconnects_total") >= 1

    wait_until(reconnected, what="a counted reconnect")
    m = scrape(g)
    assert value(m, "semgate_rate_limiter_bypass_total") >= 1
    assert value(m, "semgate_cache_requests_total", outcome="bypass") >= 1


def test_upstream_failures_are_counted(make_gateway, redis_db):
    from conftest import free_port
    g = make_gateway(SEMGATE_UPSTREAM_URL=f"http://127.0.0.1:{free_port()}/v1",
                     SEMGATE_EMBED_URL="")
    assert g.chat(user("nobody home")).status_code == 502
    m = scrape(g)
    assert value(m, "semgate_upstream_errors_total", kind="llm") == 1
    assert value(m, "semgate_upstream_duration_seconds_count") == 1


def test_access_log_has_tenant_cache_and_stage_timings(make_gateway, redis_db, upstream):
    g = make_gateway(SEMGATE_API_KEYS="sk-log-1:logTenant")
    r = g.chat(user("log line question"), headers={"Authorization": "Bearer sk-log-1"})
    assert r.status_code == 200
    wait_until(lambda: any(l.get("route") == "/v1/chat/completions" for l in g.access_log()),
               what="the access log line")
    line = [l for l in g.access_log() if l.get("route") == "/v1/chat/completions"][0]
    assert line["msg"] == "request" and line["method"] == "POST" and line["status"] == 200
    assert line["tenant"] == "logTenant"
    assert line["cache"] == "miss"
    for k in ("ms", "upstream_ms", "embed_ms", "redis_ms", "search_ms"):
        assert isinstance(line[k], (int, float)) and line[k] >= 0, (k, line)
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", line["time"])
    assert "sk-log-1" not in g.logs()


def test_log_level_warn_silences_access_log(make_gateway, redis_db, upstream):
    g = make_gateway(SEMGATE_LOG_LEVEL="warn")
    assert g.chat(user("quiet")).status_code == 200
    assert requests.get(g.url + "/healthz", timeout=5).status_code == 200
    assert g.access_log() == []
