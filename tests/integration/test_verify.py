"""The hit verifier on the real gateway: a vector match whose question
differs in what matters is a miss with its reason (chat header, lookup
field, Prometheus counter, access log); X-Semgate-Verify and SEMGATE_VERIFY
choose the mode; the next candidate above the threshold is served when the
best one is refused; a bad header is a 400 that changes nothing. The mock
upstream's embedding overrides make the vectors match, so every verdict here
is the verifier's."""
import requests

from conftest import user, wait_until

API = "/v1/cache"


def ask(gw, text, headers=None):
    r = gw.chat(user(text), headers=headers)
    assert r.status_code == 200, r.text
    return r


def lookup(gw, headers=None, **body):
    r = requests.post(gw.url + API + "/lookup", json=body, headers=headers or {}, timeout=15)
    assert r.status_code == 200, r.text
    return r.json()


def store(gw, **body):
    r = requests.post(gw.url + API + "/entries", json=body, timeout=15)
    assert r.status_code == 201, r.text
    return r.json()["id"]


def metric(gw, line_start):
    for line in requests.get(gw.url + "/metrics", timeout=10).text.splitlines():
        if line.startswith(line_start + " "):
            return float(line.split()[-1])
    raise AssertionError(line_start + " not in /metrics")


def rejections(gw, reason):
    return metric(gw, f'semgate_verify_rejections_total{{reason="{reason}"}}')


STORED = "What was the price of gold on March 3, 2021?"
ASKED = "What was the price of gold on March 4, 2021?"


def test_number_mismatch_is_a_miss_with_its_reason_header_metric_and_log(gateway, upstream):
    ask(gateway, STORED)
    upstream.set_similarity(ASKED, STORED, 0.99)
    before = rejections(gateway, "number")
    r = ask(gateway, ASKED)
    assert r.headers["X-Semgate-Cache"] == "miss"
    assert r.headers["X-Semgate-Verify"] == "rejected=number"
    assert abs(float(r.headers["X-Semgate-Similarity"]) - 0.99) < 1e-4
    assert upstream.stats()["chat_requests"] == 2  # it went upstream
    assert r.json()["choices"][0]["message"]["content"] == "Mock answer: " + ASKED
    assert rejections(gateway, "number") == before + 1
    wait_until(lambda: any(e.get("verify") == "number" and e.get("cache") == "miss"
                           for e in gateway.access_log()),
               what="the reason in the access log")
    # a hit carries no verdict header
    upstream.set_similarity("what was the price of gold on march 3, 2021", STORED, 0.99)
    r = ask(gateway, "what was the price of gold on march 3, 2021")
    assert r.headers["X-Semgate-Cache"] == "hit-semantic"
    assert "X-Semgate-Verify" not in r.headers


def test_header_off_serves_what_the_verifier_would_refuse(gateway, upstream):
    ask(gateway, STORED)
    upstream.set_similarity(ASKED, STORED, 0.99)
    r = ask(gateway, ASKED, headers={"X-Semgate-Verify": "off"})
    assert r.headers["X-Semgate-Cache"] == "hit-semantic"
    assert "X-Semgate-Verify" not in r.headers
    assert upstream.stats()["chat_requests"] == 1


def test_basic_mode_lets_names_through_strict_does_not(gateway, upstream):
    stored = "What did the Carter administration do about oil prices?"
    asked = "What did the Nixon administration do about oil prices?"
    ask(gateway, stored)
    upstream.set_similarity(asked, stored, 0.97)
    r = ask(gateway, asked)  # strict by default
    assert r.headers["X-Semgate-Cache"] == "miss"
    assert r.headers["X-Semgate-Verify"] == "rejected=entity"
    # the miss stored the new question; ask a third that matches the first only
    asked2 = "What did the Ford administration do about oil prices?"
    upstream.set_similarity(asked2, stored, 0.97)
    r = ask(gateway, asked2, headers={"X-Semgate-Verify": "basic"})
    assert r.headers["X-Semgate-Cache"] == "hit-semantic"


def test_strict_refuses_swapped_roles_and_one_sided_negation(gateway, upstream):
    cases = [
        ("Did Brazil beat Germany in the 2014 final?",
         "Did Germany beat Brazil in the 2014 final?", "order"),
        ("Why do cats like water?", "Why do cats not like water?", "negation"),
        ("What should I eat before a marathon?", "What should I eat after a marathon?",
         "opposite"),
    ]
    for stored, asked, reason in cases:
        ask(gateway, stored)
        upstream.set_similarity(asked, stored, 0.98)
        r = ask(gateway, asked)
        assert r.headers["X-Semgate-Cache"] == "miss", (asked, dict(r.headers))
        assert r.headers["X-Semgate-Verify"] == "rejected=" + reason


def test_next_candidate_is_served_when_the_best_is_refused(gateway, upstream):
    general = "How tall is the Eiffel Tower?"
    dated = "How tall was the Eiffel Tower in 1889?"
    asked = "how tall is the eiffel tower"
    # overrides make a vector near the named text's own (not its override)
    upstream.set_similarity(general, dated, 0.99)
    ask(gateway, general)
    r = ask(gateway, dated)
    assert r.headers["X-Semgate-Verify"] == "rejected=number"  # stored as its own entry
    # the dated question is the closest vector, the general one the right answer
    upstream.set_similarity(asked, dated, 0.995)
    r = ask(gateway, asked)
    assert r.headers["X-Semgate-Cache"] == "hit-semantic", {k: v for k, v in r.headers.items() if k.startswith("X-")}
    assert r.json()["choices"][0]["message"]["content"] == "Mock answer: " + general
    assert float(r.headers["X-Semgate-Similarity"]) < 0.995


def test_verify_candidates_one_tries_only_the_best(make_gateway, redis_db, upstream):
    g = make_gateway(SEMGATE_VERIFY_CANDIDATES=1)
    general = "How tall is the Eiffel Tower?"
    dated = "How tall was the Eiffel Tower in 1889?"
    asked = "how tall is the eiffel tower"
    upstream.set_similarity(general, dated, 0.99)
    ask(g, general)
    ask(g, dated)
    upstream.set_similarity(asked, dated, 0.995)
    r = ask(g, asked)
    assert r.headers["X-Semgate-Cache"] == "miss"
    assert r.headers["X-Semgate-Verify"] == "rejected=number"


def test_config_off_turns_the_verifier_off(make_gateway, redis_db, upstream):
    g = make_gateway(SEMGATE_VERIFY="off")
    ask(g, STORED)
    upstream.set_similarity(ASKED, STORED, 0.99)
    assert ask(g, ASKED).headers["X-Semgate-Cache"] == "hit-semantic"
    # and a request may turn it back on
    upstream.set_similarity("What was the price of gold on March 5, 2021?", STORED, 0.99)
    r = ask(g, "What was the price of gold on March 5, 2021?",
            headers={"X-Semgate-Verify": "strict"})
    assert r.headers["X-Semgate-Verify"] == "rejected=number"


def test_bad_verify_header_is_400_and_changes_nothing(gateway, upstream, redis_db):
    keys = set(redis_db.keys("*"))
    for value in ("loose", "", "strict,off", "0"):
        r = gateway.chat(user("What is the boiling point of water?"),
                         headers={"X-Semgate-Verify": value})
        assert r.status_code == 400, (value, r.text)
        err = r.json()["error"]
        assert "X-Semgate-Verify" in err["message"] and err["type"] == "invalid_request_error"
        r = requests.post(gateway.url + API + "/lookup", json={"query": "x"},
                          headers={"X-Semgate-Verify": value}, timeout=10)
        assert r.status_code == 400 and "X-Semgate-Verify" in r.json()["error"]["message"]
    assert set(redis_db.keys("*")) == keys
    assert upstream.stats()["chat_requests"] == 0


def test_lookup_reports_the_refused_candidate(gateway, upstream):
    eid = store(gateway, query="How do I deploy a Flask app to Heroku?", answer="Use a config.")
    upstream.set_similarity("How do I deploy a Flask app to Netlify?",
                            "How do I deploy a Flask app to Heroku?", 0.97)
    before = metric(gateway, 'semgate_cache_lookups_total{outcome="miss"}')
    out = lookup(gateway, query="How do I deploy a Flask app to Netlify?")
    assert out["hit"] is False
    assert out["verify"] == {"rejected": "entity", "candidate": eid}
    assert abs(out["best_similarity"] - 0.97) < 1e-4
    assert metric(gateway, 'semgate_cache_lookups_total{outcome="miss"}') == before + 1
    out = lookup(gateway, query="How do I deploy a Flask app to Netlify?",
                 headers={"X-Semgate-Verify": "off"})
    assert out["hit"] is True and out["id"] == eid and "verify" not in out
    # an unrelated miss has no verify field
    out = lookup(gateway, query="Something else entirely")
    assert out["hit"] is False and "verify" not in out


def test_lookup_serves_the_second_candidate(gateway, upstream):
    general = "What is the population of Lisbon?"
    dated = "What was the population of Lisbon in 1950?"
    upstream.set_similarity(general, dated, 0.99)
    g_id = store(gateway, query=general, answer="About half a million.")
    store(gateway, query=dated, answer="About 780,000.")
    asked = "what is the population of lisbon"
    upstream.set_similarity(asked, dated, 0.995)
    out = lookup(gateway, query=asked)
    assert out["hit"] is True and out["id"] == g_id, out
    assert 0.85 < out["similarity"] < 0.995
