"""Running summaries beyond the conversation window (SEMGATE_SUMMARY=on):
messages trimmed out of the window move to a pending list in the same
transaction, a summarizer thread folds them into a running summary through
the (mock) upstream, and the chat route sends the summary as a system
message ahead of the window. The mock answers a summary call (model
mock-summary) with a digest: the previous summary, then the text of each
message it was given, space-separated, so a test can tell exactly which
messages a summary covers. It can fail or hold those calls on demand."""
import os
import subprocess

import pytest
import requests

from conftest import ROOT, SEMGATE_BIN, user, wait_until
import keys as K

WINDOW = 10
PREFIX = ("Summary of the earlier part of this conversation "
          "({n} messages no longer shown):\n")


def summary_env(**kw):
    env = {"SEMGATE_SUMMARY": "on", "SEMGATE_SUMMARY_MODEL": "mock-summary",
           "SEMGATE_HISTORY_MAX": WINDOW, "SEMGATE_PROMPTS_DIR": os.path.join(ROOT, "prompts"),
           "SEMGATE_SUMMARY_RETRY_MS": 100, "SEMGATE_SUMMARY_RETRY_MAX_MS": 400}
    env.update(kw)
    return env


def key(kind, cid, tenant="default"):
    return K.key(kind, tenant, cid).encode()


def turn(g, cid, text, headers=None, messages=None):
    h = {"X-Conversation-Id": cid}
    h.update(headers or {})
    r = g.chat(messages or user(text), headers=h)
    assert r.status_code == 200, r.text
    return r


def texts(n_turns, start=0, tag="m"):
    """The message contents n_turns chat turns store, oldest first."""
    out = []
    for i in range(start, start + n_turns):
        q = f"{tag}{i:02d}"
        out += [q, f"Mock answer: {q}"]
    return out


def conv(g, cid, headers=None):
    r = requests.get(f"{g.url}/v1/conversations/{cid}", headers=headers or {}, timeout=5)
    assert r.status_code == 200, r.text
    return r.json()


def settled(g, cid, covered, headers=None):
    """Wait until the summary covers `covered` messages and nothing is pending."""
    def done():
        c = conv(g, cid, headers)
        return c if c["pending"] == 0 and c["summary"] and \
            c["summary"]["messages"] == covered else None
    return wait_until(done, timeout=30, what=f"the summary of {cid} to cover {covered}")


def metric(g, name):
    for line in requests.get(g.url + "/metrics", timeout=5).text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return None


def test_sixty_message_conversation_keeps_its_summary_and_window(make_gateway, redis_db,
                                                                   upstream):
    g = make_gateway(summary_env())
    for i in range(30):
        turn(g, "long", f"m{i:02d}")
    stored = texts(30)
    assert len(stored) == 60
    c = settled(g, "long", 50)
    # the window is the last N, as without summaries
    assert [m["content"] for m in c["messages"]] == stored[-WINDOW:]
    assert c["length"] == WINDOW
    # every trimmed message is covered once, in order, however many calls it took
    assert c["summary"]["text"] == " ".join(stored[:-WINDOW])
    assert c["skipped"] == 0 and c["summary"]["updated_at_ms"] > 0
    assert upstream.stats()["summary_requests"] >= 1
    # pending is gone, the summary lives as long as the conversation
    assert redis_db.exists(key("chatpend", "long")) == 0
    assert 0 < redis_db.ttl(key("chatsum", "long")) <= 86400
    # the summary call used the summarizer's own prompt, not a chat prompt
    call = upstream.stats()["last_summary_request"]
    assert call["model"] == "mock-summary"
    assert call["messages"][0]["role"] == "system"
    assert "running summary" in call["messages"][0]["content"]

    # the next turn: client system message, then the summary, then the window
    turn(g, "long", "next", messages=[{"role": "system", "content": "Be brief."},
                                      {"role": "user", "content": "next"}])
    sent = upstream.stats()["last_chat_request"]["messages"]
    assert sent[0] == {"role": "system", "content": "Be brief."}
    assert sent[1] == {"role": "system",
                       "content": PREFIX.format(n=50) + " ".join(stored[:-WINDOW])}
    assert [m["content"] for m in sent[2:-1]] == stored[-WINDOW:]
    assert sent[-1] == {"role": "user", "content": "next"}
    # and that turn's trimmed pair is folded in too
    c = settled(g, "long", 52)
    assert c["summary"]["text"] == " ".join(stored[:-WINDOW + 2])
    assert metric(g, 'semgate_summaries_total{outcome="written"}') >= 2
    assert metric(g, 'semgate_summary_messages_total{stage="captured"}') == 52
    assert metric(g, 'semgate_summary_messages_total{stage="covered"}') == 52
    assert metric(g, "semgate_summary_backlog") == 0


def test_summary_position_with_a_named_prompt_and_without_a_client_system_message(
        make_gateway, redis_db, upstream, tmp_path):
    prompts = tmp_path / "prompts"
    (prompts / "summarizer").mkdir(parents=True)
    (prompts / "base.txt").write_text("You are Base.")
    (prompts / "summarizer" / "summary.txt").write_text("Fold the messages into a running summary.")
    g = make_gateway(summary_env(SEMGATE_PROMPTS_DIR=str(prompts), SEMGATE_DEFAULT_PROMPT="base"))
    for i in range(6):
        turn(g, "np", f"n{i:02d}")
    stored = texts(6, tag="n")
    settled(g, "np", 2)
    turn(g, "np", "again")
    sent = upstream.stats()["last_chat_request"]["messages"]
    assert sent[0] == {"role": "system", "content": "You are Base."}
    assert sent[1] == {"role": "system", "content": PREFIX.format(n=2) + " ".join(stored[:2])}
    assert [m["content"] for m in sent[2:-1]] == stored[2:]
    # the summarizer's prompt is not a prompt clients can select
    r = g.chat(user("x"), headers={"X-Semgate-Prompt": "summary"})
    assert r.status_code == 400 and "unknown prompt" in r.text


def test_a_failing_summary_call_is_retried_later_and_loses_nothing(make_gateway, redis_db,
                                                                    upstream):
    upstream.control(summary_mode="fail")
    g = make_gateway(summary_env())
    for i in range(8):
        turn(g, "flaky", f"f{i:02d}")
    stored = texts(8, tag="f")
    # retried with back-off: several calls, all failed, nothing lost
    wait_until(lambda: upstream.stats()["summary_requests"] >= 3, timeout=30,
               what="the summary call to be retried")
    c = conv(g, "flaky")
    assert c["summary"] is None and c["pending"] == 6
    assert [m["content"] for m in c["messages"]] == stored[-WINDOW:]
    assert redis_db.lrange(key("chatpend", "flaky"), 0, -1) and \
        [eval_json(m)["content"] for m in redis_db.lrange(key("chatpend", "flaky"), 0, -1)] \
        == stored[:6]
    assert metric(g, 'semgate_summaries_total{outcome="failed"}') >= 3
    assert metric(g, "semgate_summary_backlog") == 1
    assert "summary of conversation flaky failed" in g.logs()
    # chat replies went on meanwhile
    turn(g, "flaky", "f08")
    stored = texts(9, tag="f")
    upstream.control(summary_mode="ok")
    c = settled(g, "flaky", 8)
    assert c["summary"]["text"] == " ".join(stored[:8])
    assert [m["content"] for m in c["messages"]] == stored[-WINDOW:]


def eval_json(b):
    import json
    return json.loads(b)


def test_a_hanging_summary_call_does_not_block_chat_replies(make_gateway, redis_db, upstream):
    upstream.control(summary_mode="hang")
    g = make_gateway(summary_env())
    for i in range(6):
        turn(g, "slow", f"h{i:02d}")
    wait_until(lambda: upstream.stats()["summary_held"] == 1, timeout=30,
               what="the mock to hold a summary call")
    # replies arrive while the summary call is still held by the mock
    for i in range(6, 9):
        turn(g, "slow", f"h{i:02d}")
        c = conv(g, "slow")
        assert c["summary"] is None
    assert upstream.stats()["summary_held"] == 1
    assert conv(g, "slow")["pending"] == 8
    upstream.control(summary_mode="ok")
    stored = texts(9, tag="h")
    # the held call covered what it read (2), a later one the rest
    c = settled(g, "slow", 8)
    assert c["summary"]["text"] == " ".join(stored[:8])
    assert metric(g, 'semgate_summaries_total{outcome="written"}') >= 2


def test_summary_off_changes_nothing(make_gateway, redis_db, upstream):
    g = make_gateway(SEMGATE_HISTORY_MAX=WINDOW, SEMGATE_SUMMARY_MODEL="mock-summary")
    for i in range(8):
        turn(g, "plain", f"p{i:02d}")
    stored = texts(8, tag="p")
    r = requests.get(f"{g.url}/v1/conversations/plain", timeout=5).json()
    assert set(r) == {"id", "messages", "length", "ttl_seconds"}
    assert [m["content"] for m in r["messages"]] == stored[-WINDOW:]
    assert sorted(redis_db.keys("sg:chat*")) == [key("chat", "plain")]
    sent = upstream.stats()["last_chat_request"]["messages"]
    assert [m["content"] for m in sent] == stored[-WINDOW - 2:-2] + ["p07"]
    assert upstream.stats()["summary_requests"] == 0
    assert "semgate_summary_backlog 0" in requests.get(g.url + "/metrics", timeout=5).text


def test_delete_clears_summary_and_pending_even_with_a_call_in_flight(make_gateway, redis_db,
                                                                       upstream):
    g = make_gateway(summary_env())
    for i in range(7):
        turn(g, "gone", f"d{i:02d}")
    settled(g, "gone", 4)
    upstream.control(summary_mode="hang")
    turn(g, "gone", "d07")
    wait_until(lambda: upstream.stats()["summary_held"] == 1, timeout=30,
               what="the mock to hold a summary call")
    assert requests.delete(g.url + "/v1/conversations/gone", timeout=5).status_code == 204
    assert redis_db.keys("sg:chat*") == []
    assert requests.get(g.url + "/v1/conversations/gone", timeout=5).status_code == 404
    # the call that began before the delete answers: it must write nothing
    upstream.control(summary_mode="ok")
    wait_until(lambda: upstream.stats()["summary_held"] == 0, timeout=30,
               what="the held call to be answered")
    wait_until(lambda: metric(g, 'semgate_summaries_total{outcome="conflict"}') >= 1
               and metric(g, "semgate_summary_backlog") == 0, timeout=30,
               what="the summarizer to drop the stale call")
    assert redis_db.keys("sg:chat*") == []
    # the id starts afresh
    turn(g, "gone", "fresh")
    c = conv(g, "gone")
    assert c["summary"] is None and c["pending"] == 0 and c["length"] == 2


@pytest.mark.parametrize("body", [
    b"", b"{}", b'{"messages": [{"role": "user"}]}',
    b'{"messages": [{"role": "system", "content": "x"}]}',
    b'{"messages": [{"role": "user", "content": "x"}]} x',
])
def test_bad_input_changes_nothing(make_gateway, redis_db, upstream, body):
    g = make_gateway(summary_env())
    for i in range(7):
        turn(g, "keep", f"k{i:02d}")
    settled(g, "keep", 4)
    before = snapshot(redis_db)
    r = requests.post(g.url + "/v1/conversations/keep/messages", data=body, timeout=5)
    assert r.status_code == 400 and "error" in r.json()
    r = g.chat(user("x"), headers={"X-Conversation-Id": "bad id"})
    assert r.status_code == 400
    r = requests.post(g.url + "/v1/chat/completions", data=b'{"model": "m", "messages": 5}',
                      headers={"X-Conversation-Id": "keep"}, timeout=5)
    assert r.status_code == 400
    assert requests.get(g.url + "/v1/conversations/bad%20id", timeout=5).status_code == 400
    assert snapshot(redis_db) == before


def snapshot(rdb):
    out = {}
    for k in rdb.keys("sg:chat*"):
        t = rdb.type(k)
        out[k] = rdb.lrange(k, 0, -1) if t == b"list" else rdb.hgetall(k)
    return out


def test_tenant_isolation(make_gateway, redis_db, upstream):
    g = make_gateway(summary_env(SEMGATE_API_KEYS="key-a:alpha,key-b:beta"))
    a = {"Authorization": "Bearer key-a"}
    b = {"Authorization": "Bearer key-b"}
    for i in range(7):
        turn(g, "shared", f"a{i:02d}", headers=a)
    turn(g, "shared", "b00", headers=b)
    ca = settled(g, "shared", 4, headers=a)
    assert ca["summary"]["text"] == " ".join(texts(2, tag="a"))
    cb = conv(g, "shared", headers=b)
    assert cb["summary"] is None and cb["pending"] == 0 and cb["length"] == 2
    turn(g, "shared", "b01", headers=b)
    sent = upstream.stats()["last_chat_request"]["messages"]
    assert all("Summary" not in m["content"] for m in sent)
    assert redis_db.exists(key("chatsum", "shared", "alpha")) == 1
    assert redis_db.exists(key("chatsum", "shared", "beta")) == 0
    # deleting beta's conversation leaves alpha's summary alone
    assert requests.delete(g.url + "/v1/conversations/shared", headers=b,
                           timeout=5).status_code == 204
    assert conv(g, "shared", headers=a)["summary"]["messages"] == 4


def test_cache_key_takes_the_summary_into_account(make_gateway, redis_db, upstream):
    g = make_gateway(summary_env(SEMGATE_MEMORY_CACHE="all"))
    window = [{"role": "user" if i % 2 == 0 else "assistant", "content": f"w{i}"}
              for i in range(WINDOW)]

    def seed(cid, head):
        r = requests.post(f"{g.url}/v1/conversations/{cid}/messages",
                          json={"messages": head + window}, timeout=5)
        assert r.status_code == 201, r.text
        settled(g, cid, len(head))

    seed("x", [{"role": "user", "content": "old-x1"}, {"role": "assistant", "content": "old-x2"}])
    seed("y", [{"role": "user", "content": "old-y1"}, {"role": "assistant", "content": "old-y2"}])
    seed("z", [{"role": "user", "content": "old-x1"}, {"role": "assistant", "content": "old-x2"}])
    rx = turn(g, "x", "same question?")
    assert rx.headers["X-Semgate-Cache"] == "miss"
    # same window, same question, another summary: never x's answer
    ry = turn(g, "y", "same question?")
    assert ry.headers["X-Semgate-Cache"] == "miss"
    assert ry.headers.get("X-Semgate-Entry") != rx.headers.get("X-Semgate-Entry")
    # same summary and window as x: x's answer may serve
    rz = turn(g, "z", "same question?")
    assert rz.headers["X-Semgate-Cache"] == "hit-exact"
    assert rz.headers["X-Semgate-Entry"] == rx.headers["X-Semgate-Entry"]


def test_pending_bound_drops_the_oldest_counted_and_logged(make_gateway, redis_db, upstream):
    upstream.control(summary_mode="fail")
    g = make_gateway(summary_env(SEMGATE_SUMMARY_PENDING_MAX=4))
    for i in range(9):
        turn(g, "full", f"b{i:02d}")
    stored = texts(9, tag="b")
    c = conv(g, "full")
    assert c["pending"] == 4 and c["skipped"] == 4
    assert metric(g, 'semgate_summary_messages_total{stage="skipped"}') == 4
    assert "dropped unsummarized" in g.logs()
    upstream.control(summary_mode="ok")
    c = settled(g, "full", 4)
    # the newest pending ones are kept and summarized; the dropped ones are counted
    assert c["summary"]["text"] == " ".join(stored[4:8])
    assert c["skipped"] == 4


def test_summary_on_without_its_prompt_is_refused_at_start(tmp_path):
    env = {"PATH": os.environ.get("PATH", ""), "SEMGATE_PROMPTS_DIR": str(tmp_path),
           "SEMGATE_SUMMARY": "on", "SEMGATE_PORT": "0"}
    r = subprocess.run([SEMGATE_BIN], env=env, capture_output=True, text=True, timeout=20)
    assert r.returncode == 2 and "summarizer/summary.txt" in r.stderr


def test_messages_left_pending_by_a_stopped_gateway_are_summarized_after_a_restart(
        make_gateway, redis_db, upstream):
    upstream.control(summary_mode="fail")
    g = make_gateway(summary_env())
    for i in range(8):
        turn(g, "left", f"r{i:02d}")
    wait_until(lambda: upstream.stats()["summary_requests"] >= 1, timeout=30,
               what="a summary call")
    assert g.stop() == 0
    assert conv_raw(redis_db, "left") == 6
    upstream.control(summary_mode="ok")
    # a new gateway finds them at start, with no new turn to kick it
    g2 = make_gateway(summary_env())
    c = settled(g2, "left", 6)
    assert c["summary"]["text"] == " ".join(texts(8, tag="r")[:6])
    assert "summarizer sweep: 1 conversations" in g2.logs()


def conv_raw(rdb, cid):
    return rdb.llen(key("chatpend", cid))


def test_a_full_queue_keeps_messages_pending_until_the_sweep(make_gateway, redis_db, upstream):
    upstream.control(summary_mode="fail")
    g = make_gateway(summary_env(SEMGATE_SUMMARY_QUEUE=1, SEMGATE_SUMMARY_SWEEP_S=1))
    for cid in ("q1", "q2"):
        for i in range(6):
            turn(g, cid, f"{cid}-{i:02d}")
    assert metric(g, "semgate_summary_backlog") == 1
    assert "summarizer queue full" in g.logs()
    assert metric(g, "semgate_summary_queue_full_total") >= 1
    assert conv(g, "q2")["pending"] == 2
    upstream.control(summary_mode="ok")
    for cid in ("q1", "q2"):
        c = settled(g, cid, 2)
        assert c["summary"]["text"] == " ".join(texts(1, tag=f"{cid}-"))


def test_streamed_turns_get_the_summary_and_feed_it(make_gateway, redis_db, upstream):
    g = make_gateway(summary_env())
    for i in range(6):
        turn(g, "st", f"s{i:02d}")
    settled(g, "st", 2)
    r = g.chat(user("s06"), headers={"X-Conversation-Id": "st"}, stream=True)
    assert r.status_code == 200 and "data: [DONE]" in r.text
    sent = upstream.stats()["last_chat_request"]
    assert sent["stream"] is True
    stored = texts(7, tag="s")
    assert sent["messages"][0] == {"role": "system",
                                   "content": PREFIX.format(n=2) + " ".join(stored[:2])}
    assert [m["content"] for m in sent["messages"][1:-1]] == stored[2:12]
    c = settled(g, "st", 4)
    assert c["summary"]["text"] == " ".join(stored[:4])
    assert [m["content"] for m in c["messages"]] == stored[4:]


def test_a_call_sends_at_most_the_input_budget_and_the_rest_follows(make_gateway, redis_db,
                                                                     upstream):
    g = make_gateway(summary_env(SEMGATE_SUMMARY_INPUT_BYTES=1024))
    msgs = [{"role": "user" if i % 2 == 0 else "assistant", "content": f"{i:02d}" + "x" * 398}
            for i in range(16)]
    r = requests.post(f"{g.url}/v1/conversations/big/messages", json={"messages": msgs},
                      timeout=5)
    assert r.status_code == 201
    c = settled(g, "big", 6)
    # two 407-byte lines fit in 1024, three do not: three calls of two
    assert upstream.stats()["summary_requests"] == 3
    assert c["summary"]["text"] == " ".join(m["content"] for m in msgs[:6])
    sent = upstream.stats()["last_summary_request"]["messages"][1]["content"]
    part = sent[sent.index("<messages>\n") + 11:sent.index("</messages>")]
    assert len(part) <= 1024 and part.count("\n") == 2
