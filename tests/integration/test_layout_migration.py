"""Conversations written by the layout before slot buckets
(sg:chat:{tenant}:{conv}, no hash tag) are moved to the new key the first
time they are read or appended to: never silently lost."""
import json

import requests

from conftest import user
import keys as K


def msg(role, text):
    return json.dumps({"role": role, "content": text})


def old_conversation(r, conv, n=2, ttl=3600, tenant="default"):
    key = K.legacy("chat", tenant, conv)
    for i in range(n):
        r.rpush(key, msg("user", f"old question {i}"), msg("assistant", f"old answer {i}"))
    r.expire(key, ttl)
    return key


def history(g, conv):
    r = requests.get(f"{g.url}/v1/conversations/{conv}", timeout=10)
    assert r.status_code == 200, r.text
    return r.json()


def test_an_old_conversation_is_moved_on_first_read(gateway, redis_db):
    old = old_conversation(redis_db, "legacy-read")
    h = history(gateway, "legacy-read")
    assert [m["content"] for m in h["messages"]] == [
        "old question 0", "old answer 0", "old question 1", "old answer 1"]
    assert not redis_db.exists(old)
    new = K.chat("default", "legacy-read")
    assert redis_db.llen(new) == 4
    assert 3500 < redis_db.ttl(new) <= 3600
    # read again: the same, from the new key
    assert history(gateway, "legacy-read")["messages"] == h["messages"]


def test_an_old_conversation_goes_before_the_first_append(gateway, redis_db):
    old = old_conversation(redis_db, "legacy-append", n=1)
    r = requests.post(f"{gateway.url}/v1/conversations/legacy-append/messages",
                      json={"messages": user("a new question")}, timeout=10)
    assert r.status_code == 201, r.text
    assert r.json() == {"length": 3}
    assert not redis_db.exists(old)
    assert [m["content"] for m in history(gateway, "legacy-append")["messages"]] == [
        "old question 0", "old answer 0", "a new question"]


def test_a_chat_turn_sees_the_old_history(gateway, upstream, redis_db):
    old_conversation(redis_db, "legacy-chat", n=1)
    r = gateway.chat(user("and now?"), headers={"X-Conversation-Id": "legacy-chat"})
    assert r.status_code == 200, r.text
    sent = upstream.stats()["last_chat_request"]["messages"]
    assert [m["content"] for m in sent][-3:] == ["old question 0", "old answer 0", "and now?"]
    assert [m["content"] for m in history(gateway, "legacy-chat")["messages"]] == [
        "old question 0", "old answer 0", "and now?", "Mock answer: and now?"]


def test_the_window_still_holds_after_a_move(make_gateway, redis_db):
    g = make_gateway(SEMGATE_HISTORY_MAX=4)
    old_conversation(redis_db, "legacy-window", n=3)
    r = requests.post(f"{g.url}/v1/conversations/legacy-window/messages",
                      json={"messages": user("newest")}, timeout=10)
    assert r.status_code == 201, r.text
    assert r.json() == {"length": 4}
    assert [m["content"] for m in history(g, "legacy-window")["messages"]] == [
        "old answer 1", "old question 2", "old answer 2", "newest"]
