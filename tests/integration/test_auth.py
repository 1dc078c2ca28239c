"""API keys and tenants: every /v1/* call needs a configured key when keys
are set, the key chooses the tenant, tenants never see each other's
answers, conversations or cache entries, and no key reaches a log line or
(with gateway keys) the upstream."""
import os
import re
import subprocess

import pytest
import requests

from conftest import SEMGATE_BIN, SLOW, user, wait_until
import keys as K

KEY_A = "sk-gw-tenant-a-0123456789abcdef"
KEY_B = "sk-gw-tenant-b-fedcba9876543210"
KEYS = f"{KEY_A}:tenantA,{KEY_B}:tenantB"
HA = {"Authorization": f"Bearer {KEY_A}"}
HB = {"Authorization": f"Bearer {KEY_B}"}


def assert_error(resp, status, type_=None, code=None):
    assert resp.status_code == status, resp.text
    assert resp.headers["Content-Type"].startswith("application/json")
    body = resp.json()
    assert set(body) == {"error"}
    err = body["error"]
    assert isinstance(err["message"], str) and err["message"]
    if type_:
        assert err["type"] == type_, err
    if code:
        assert err["code"] == code, err
    return err


@pytest.fixture
def keyed(make_gateway, redis_db, upstream):
    return make_gateway(SEMGATE_API_KEYS=KEYS)


def chat(gw, text, headers, **kw):
    return gw.chat(user(text), headers=headers, **kw)


def assert_no_key_in_logs(gw, *keys):
    logs = gw.logs()
    for k in keys:
        assert k not in logs, "a key reached the log"


# ---- authentication ----

@pytest.mark.parametrize("headers", [
    {},
    {"Authorization": "Bearer sk-wrong"},
    {"Authorization": f"Bearer {KEY_A}x"},
    {"Authorization": f"Bearer {KEY_A[:-1]}"},
    {"Authorization": f"Basic {KEY_A}"},
    {"Authorization": KEY_A},
    {"Authorization": "Bearer "},
])
def test_v1_calls_without_a_valid_key_get_401_in_openai_shape(keyed, upstream, headers):
    for method, path, body in [
        ("POST", "/v1/chat/completions", {"model": "m", "messages": user("hi")}),
        ("POST", "/v1/embeddings", {"model": "e", "input": "hi"}),
        ("GET", "/v1/conversations/c1", None),
        ("DELETE", "/v1/conversations/c1", None),
        ("POST", "/v1/conversations/c1/messages", {"messages": user("x")}),
    ]:
        r = requests.request(method, keyed.url + path, json=body, headers=headers, timeout=10)
        assert_error(r, 401, "invalid_request_error", "invalid_api_key")
        assert r.headers["WWW-Authenticate"].startswith("Bearer")
    st = upstream.stats()
    assert st["chat_requests"] == 0 and st["embedding_requests"] == 0
    assert_no_key_in_logs(keyed, KEY_A, KEY_B)


def test_keep_alive_connection_survives_a_401_with_an_unread_body(keyed):
    s = requests.Session()
    big = {"model": "m", "messages": user("x" * 200000)}
    for _ in range(3):
        assert_error(s.post(keyed.url + "/v1/chat/completions", json=big,
                            headers={"Authorization": "Bearer sk-nope"}, timeout=10), 401)
        r = s.get(keyed.url + "/v1/conversations/none", headers=HA, timeout=10)
        assert_error(r, 404)


def test_unauthenticated_request_changes_no_stored_data(keyed, redis_db):
    r = requests.post(keyed.url + "/v1/conversations/c1/messages",
                      json={"messages": user("sneaky")}, timeout=10)
    assert_error(r, 401)
    assert redis_db.keys("*") == []


def test_health_ready_and_metrics_stay_open(keyed):
    assert requests.get(keyed.url + "/healthz", timeout=5).status_code == 200
    assert requests.get(keyed.url + "/readyz", timeout=5).status_code == 200
    assert requests.get(keyed.url + "/metrics", timeout=5).status_code == 200


def test_valid_key_runs_in_its_tenant(keyed, redis_db, upstream):
    r = chat(keyed, "who am i", HA)
    assert r.status_code == 200, r.text
    keyed.settle(HA)  # its store is written behind the answer
    r = requests.post(keyed.url + "/v1/conversations/c9/messages",
                      json={"messages": user("hello")}, headers=HB, timeout=10)
    assert r.status_code == 201, r.text
    keys = [k.decode() for k in redis_db.keys("*")]
    assert any(re.match(K.regex("e", "tenantA", ".+"), k) for k in keys), keys
    assert K.chat("tenantB", "c9") in keys
    assert not any(":default:" in k for k in keys), keys
    def lines_v1():
        return [l for l in keyed.access_log() if l.get("path", "").startswith("/v1/")
                and l.get("path") != "/v1/cache/stats"]
    wait_until(lambda: len(lines_v1()) >= 2, what="access log lines")
    lines = lines_v1()
    assert [l["tenant"] for l in lines] == ["tenantA", "tenantB"]
    assert_no_key_in_logs(keyed, KEY_A, KEY_B)


def test_failed_auth_is_logged_without_tenant_or_key(keyed):
    requests.get(keyed.url + "/v1/conversations/x", headers={"Authorization": "Bearer sk-nope-123"},
                 timeout=5)
    wait_until(lambda: any(l.get("status") == 401 for l in keyed.access_log()),
               what="401 in access log")
    line = [l for l in keyed.access_log() if l.get("status") == 401][0]
    assert line["tenant"] == "-"
    assert_no_key_in_logs(keyed, "sk-nope-123", KEY_A, KEY_B)


def test_gateway_key_is_never_forwarded_upstream(keyed, upstream):
    assert chat(keyed, "forward check", HA).status_code == 200
    assert upstream.stats()["last_authorization"] is None
    r = chat(keyed, "forward check stream", HA, stream=True)
    assert r.status_code == 200
    assert upstream.stats()["last_authorization"] is None


def test_gateway_keys_with_upstream_key_send_only_the_upstream_key(make_gateway, redis_db,
                                                                   upstream):
    g = make_gateway(SEMGATE_API_KEYS=KEYS, SEMGATE_UPSTREAM_API_KEY="sk-upstream-xyz")
    assert chat(g, "upstream key check", HA).status_code == 200
    assert upstream.stats()["last_authorization"] == "Bearer sk-upstream-xyz"
    assert_no_key_in_logs(g, KEY_A, "sk-upstream-xyz")


def test_open_mode_is_tenant_default_and_passes_the_client_key(make_gateway, redis_db,
                                                               upstream):
    g = make_gateway()
    assert "open mode" in g.logs()
    r = chat(g, "open mode check", {"Authorization": "Bearer sk-client-own"})
    assert r.status_code == 200, r.text
    assert upstream.stats()["last_authorization"] == "Bearer sk-client-own"
    g.settle()
    assert any(re.match(K.regex("e", "default", ".+"), k.decode()) for k in redis_db.keys("*"))
    assert_no_key_in_logs(g, "sk-client-own")


def test_keys_file_with_comments_and_blank_lines(make_gateway, redis_db, upstream,
                                                 tmpdir_session):
    path = os.path.join(tmpdir_session, "keys.txt")
    with open(path, "w") as f:
        f.write("# gateway keys\n\n   \n"
                f"{KEY_A} tenantA\n"
                f"  {KEY_B}\t tenantB  \r\n"
                "  # trailing comment\n")
    os.chmod(path, 0o600)
    g = make_gateway(SEMGATE_API_KEYS_FILE=path)
    assert chat(g, "file key a", HA).status_code == 200
    r = requests.get(g.url + "/v1/conversations/none", headers=HB, timeout=5)
    assert_error(r, 404)
    assert_error(requests.get(g.url + "/v1/conversations/none", timeout=5), 401)
    assert_no_key_in_logs(g, KEY_A, KEY_B)


def run_bad_config(env, tmpdir):
    full = {k: v for k, v in os.environ.items() if not k.startswith("SEMGATE_")}
    full.update({"SEMGATE_HOST": "127.0.0.1", "SEMGATE_PORT": "0"})
    full.update(env)
    return subprocess.run([SEMGATE_BIN], env=full, capture_output=True, text=True,
                          timeout=30 * SLOW, cwd=tmpdir)


@pytest.mark.parametrize("env,needle", [
    ({"SEMGATE_API_KEYS": "sk-secret-1"}, "SEMGATE_API_KEYS"),
    ({"SEMGATE_API_KEYS": ":tenantA"}, "SEMGATE_API_KEYS"),
    ({"SEMGATE_API_KEYS": "sk-secret-1:"}, "SEMGATE_API_KEYS"),
    ({"SEMGATE_API_KEYS": "sk-secret-1:bad/tenant"}, "SEMGATE_API_KEYS"),
    ({"SEMGATE_API_KEYS": "sk-secret-1:a" + "x" * 64}, "SEMGATE_API_KEYS"),
    ({"SEMGATE_API_KEYS": "sk-secret-1:a,sk-secret-1:b"}, "duplicate"),
    ({"SEMGATE_API_KEYS": "sk-secret-1:a,"}, "SEMGATE_API_KEYS"),
    ({"SEMGATE_API_KEYS_FILE": "/nonexistent/keys"}, "SEMGATE_API_KEYS_FILE"),
    ({"SEMGATE_RATE_LIMIT": "0/60s"}, "SEMGATE_RATE_LIMIT"),
    ({"SEMGATE_RATE_LIMIT": "10/86401s"}, "SEMGATE_RATE_LIMIT"),
    ({"SEMGATE_RATE_LIMIT": "ten per minute"}, "SEMGATE_RATE_LIMIT"),
])
def test_bad_auth_or_limit_config_exits_2_naming_the_variable(env, needle, tmpdir_session):
    r = run_bad_config(env, tmpdir_session)
    assert r.returncode == 2, r.stderr
    assert needle in r.stderr
    assert "sk-secret-1" not in r.stderr + r.stdout


def test_bad_keys_file_line_exits_2_without_the_key(tmpdir_session):
    path = os.path.join(tmpdir_session, "bad-keys.txt")
    with open(path, "w") as f:
        f.write("sk-ok-1 tenantA\nsk-secret-2 tenant B extra\n")
    r = run_bad_config({"SEMGATE_API_KEYS_FILE": path}, tmpdir_session)
    assert r.returncode == 2
    assert "SEMGATE_API_KEYS_FILE" in r.stderr and "line 2" in r.stderr
    assert "sk-secret-2" not in r.stderr and "sk-ok-1" not in r.stderr


# ---- tenant isolation ----

def test_tenant_b_never_gets_an_exact_hit_on_tenant_a_answer(keyed, upstream):
    q = "What is the tallest mountain?"
    assert chat(keyed, q, HA).headers["X-Semgate-Cache"] == "miss"
    assert chat(keyed, q, HA).headers["X-Semgate-Cache"] == "hit-exact"
    rb = chat(keyed, q, HB)
    assert rb.status_code == 200
    assert rb.headers["X-Semgate-Cache"] == "miss"
    assert upstream.stats()["chat_requests"] == 2


def test_tenant_b_never_gets_a_semantic_hit_on_tenant_a_answer(keyed, upstream):
    q = "How do I reset my router?"
    para = "how can my router be reset"
    assert chat(keyed, q, HA).headers["X-Semgate-Cache"] == "miss"
    upstream.set_similarity(para, q, 0.99)
    rb = chat(keyed, para, HB)
    assert rb.headers["X-Semgate-Cache"] == "miss"
    # B found nothing of A's: no similarity from A's entry
    assert float(rb.headers.get("X-Semgate-Similarity", "0")) < 0.99
    # the same paraphrase hits for A (B's own answer is in B's partition)
    ra = chat(keyed, para, HA)
    assert ra.headers["X-Semgate-Cache"] == "hit-semantic"


def test_conversations_are_per_tenant(keyed, upstream, redis_db):
    r = requests.post(keyed.url + "/v1/conversations/shared-id/messages",
                      json={"messages": user("A's secret note")}, headers=HA, timeout=10)
    assert r.status_code == 201
    # B cannot read it ...
    assert_error(requests.get(keyed.url + "/v1/conversations/shared-id", headers=HB,
                              timeout=10), 404)
    # ... its delete touches only its own (empty) namespace ...
    r = requests.delete(keyed.url + "/v1/conversations/shared-id", headers=HB, timeout=10)
    assert r.status_code in (204, 404)
    ga = requests.get(keyed.url + "/v1/conversations/shared-id", headers=HA, timeout=10)
    assert ga.status_code == 200 and ga.json()["length"] == 1
    # ... and its append starts its own conversation
    r = requests.post(keyed.url + "/v1/conversations/shared-id/messages",
                      json={"messages": user("B's note")}, headers=HB, timeout=10)
    assert r.status_code == 201 and r.json()["length"] == 1
    ga = requests.get(keyed.url + "/v1/conversations/shared-id", headers=HA, timeout=10).json()
    gb = requests.get(keyed.url + "/v1/conversations/shared-id", headers=HB, timeout=10).json()
    assert [m["content"] for m in ga["messages"]] == ["A's secret note"]
    assert [m["content"] for m in gb["messages"]] == ["B's note"]


def test_memory_mode_never_loads_another_tenants_history(keyed, upstream):
    h = dict(HA, **{"X-Conversation-Id": "conv-1"})
    assert chat(keyed, "my name is Alice", h).status_code == 200
    hb = dict(HB, **{"X-Conversation-Id": "conv-1"})
    assert chat(keyed, "what is my name?", hb).status_code == 200
    sent = upstream.stats()["last_chat_request"]["messages"]
    assert [m["content"] for m in sent] == ["what is my name?"]


def test_cache_api_is_per_tenant(keyed, upstream):
    r = requests.post(keyed.url + "/v1/cache/entries",
                      json={"query": "A's question", "answer": "A's answer", "tags": ["t1"],
                            "namespace": "ns1"},
                      headers=HA, timeout=10)
    assert r.status_code == 201, r.text
    eid = r.json()["id"]
    stats_a = requests.get(keyed.url + "/v1/cache/stats", headers=HA, timeout=10).json()
    assert stats_a["entries"] == 1
    upstream.set_similarity("A's question?", "A's question", 0.99)
    # B cannot look it up, by text (exact or semantic) or by id
    for q in ("A's question", "A's question?"):
        r = requests.post(keyed.url + "/v1/cache/lookup",
                          json={"query": q, "namespace": "ns1", "threshold": 0.01},
                          headers=HB, timeout=10)
        assert r.status_code == 200 and r.json()["hit"] is False, r.text
    assert_error(requests.get(keyed.url + f"/v1/cache/entries/{eid}", headers=HB,
                              timeout=10), 404)
    # B cannot delete or invalidate it
    assert requests.delete(keyed.url + f"/v1/cache/entries/{eid}", headers=HB,
                           timeout=10).status_code == 404
    for body in ({"tag": "t1"}, {"namespace": "ns1"}, {"namespace": "ns1", "tag": "t1"}):
        r = requests.post(keyed.url + "/v1/cache/invalidate", json=body, headers=HB, timeout=10)
        assert r.status_code == 200 and r.json()["deleted"] == 0, r.text
    # B's leaderboard and stats hold nothing of A's
    assert requests.get(keyed.url + "/v1/cache/top", headers=HB, timeout=10).json()["top"] == []
    stats_b = requests.get(keyed.url + "/v1/cache/stats", headers=HB, timeout=10).json()
    assert stats_b["entries"] == 0 and stats_b["hits"] == 0
    # nothing B did moved A's stats, and A still has its entry
    assert requests.get(keyed.url + "/v1/cache/stats", headers=HA, timeout=10).json() == stats_a
    assert requests.get(keyed.url + f"/v1/cache/entries/{eid}", headers=HA,
                        timeout=10).status_code == 200
    r = requests.post(keyed.url + "/v1/cache/lookup",
                      json={"query": "A's question", "namespace": "ns1"}, headers=HA,
                      timeout=10)
    assert r.json()["hit"] is True and r.json()["answer"] == "A's answer"
    r = requests.post(keyed.url + "/v1/cache/lookup",
                      json={"query": "A's question?", "namespace": "ns1"}, headers=HA,
                      timeout=10)
    assert r.json()["hit"] is True and r.json()["id"] == eid
