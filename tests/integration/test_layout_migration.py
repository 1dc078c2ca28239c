"""Data written by the layout before slot buckets (sg:{kind}:{tenant}:...,
no hash tag) is never silently lost: a conversation moves to its new key the
first time it is read or appended to; the cache (entries, their exact keys,
tags, hit counts and leaderboard rows, the stats counters, series,
calibration and embeddings) moves once when a gateway starts
(src/store/legacy.c)."""
import json
import threading

import requests

from conftest import REDIS_MODE, user, wait_until
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


# ---- the cache ----

FRANCE = "What is the capital of France?"
OFF = {"X-Semgate-Verify": "off"}


def snapshot(r):
    """Every tagged key of the gateway: old name -> [(type, value, pttl)],
    the bucket parts of a tenant-wide key under one old name."""
    out = {}
    for k in r.scan_iter(match=K.PREFIX + "*"):
        old = K.untagged(k)
        if old is None:
            continue
        t = r.type(k).decode()
        val = {"hash": r.hgetall, "string": r.get, "set": r.smembers,
               "zset": lambda k: dict(r.zrange(k, 0, -1, withscores=True)),
               "list": lambda k: r.lrange(k, 0, -1)}[t](k)
        out.setdefault(old, []).append((t, val, r.pttl(k)))
    return out


def merged(parts, kind):
    t = parts[0][0]
    if t == "hash":
        v = {}
        for _, h, _ in parts:
            for f, x in h.items():
                v[f] = str(int(v.get(f, 0)) + int(x)).encode() if x.lstrip(b"-").isdigit() else x
    elif t == "set":
        v = set().union(*[p[1] for p in parts])
    elif t == "zset":
        v = {}
        for _, z, _ in parts:
            for m, sc in z.items():
                v[m] = v.get(m, 0) + sc if kind == "top" else max(v.get(m, 0), sc)
    else:
        v = parts[0][1]
    return t, v, max(p[2] for p in parts)


def write_old(r, old, t, v, pttl):
    if t == "hash":
        r.hset(old, mapping=v)
    elif t == "string":
        r.set(old, v)
    elif t == "set":
        r.sadd(old, *v)
    elif t == "zset":
        r.zadd(old, v)
    else:
        r.rpush(old, *v)
    if pttl > 0:
        r.pexpire(old, pttl)


def to_old_layout(r, renames):
    """Rewrite what a gateway of this version wrote as the layout before
    slot buckets named it, with entry ids renamed (old id -> an id of the
    old version, not fitted to its exact key's bucket). Returns the
    snapshot taken before."""
    snap = snapshot(r)
    for k in list(r.scan_iter(match=K.PREFIX + "*")):
        r.delete(k)
    sub = lambda b: renames.get(b.decode(), b.decode()).encode() if isinstance(b, bytes) else b
    for old, parts in snap.items():
        kind, tenant, rest = (old[len(K.PREFIX):].split(":", 2) + [""])[:3]
        t, v, pttl = merged(parts, kind)
        if kind == "e":
            old = K.legacy("e", tenant, renames.get(rest, rest))
        elif kind == "x":
            eid, _, ans = v.partition(b"\n")
            bare, colon, mark = eid.partition(b":")
            v = sub(bare) + colon + mark + b"\n" + ans
        elif kind in ("tag", "live"):
            v = {sub(m) for m in v} if t == "set" else {sub(m): sc for m, sc in v.items()}
        elif kind in ("top",):
            v = {sub(m): sc for m, sc in v.items()}
        elif kind == "size":
            v = {sub(f): x for f, x in v.items()}
        write_old(r, old, t, v, pttl)
    return snap


def unfitted(tenant, sha, eid):
    """An id like eid in another bucket than the exact key's, as the old
    version's random ids mostly were."""
    for n in range(1, 65536):
        cand = eid[:-4] + "%04x" % ((int(eid[-4:], 16) + n) & 0xFFFF)
        if K.bucket_of(tenant, cand) != K.bucket_of(tenant, sha):
            return cand
    raise AssertionError("no unfitted id")


def old_cache(make_gateway, r, upstream):
    """A cache as the old version left it: a chat entry with two exact hits,
    a text entry with tags and metadata, counters, series and two cached
    embeddings.
    Returns the ids ({"orig", "old", "new"}: as this version wrote them, as
    the old version named them, as the move will name them) and the
    snapshot of the data before it was made old."""
    g = make_gateway()
    chat = g.chat(user(FRANCE))
    assert chat.headers["X-Semgate-Cache"] == "miss"
    for _ in range(2):
        assert g.chat(user(FRANCE)).headers["X-Semgate-Cache"] == "hit-exact"
    s = requests.post(g.url + "/v1/cache/entries", timeout=15, json={
        "query": "how do refunds work", "answer": "Within 30 days.", "tags": ["docs", "faq"],
        "metadata": {"source": "handbook"}})
    assert s.status_code == 201, s.text
    emb = requests.post(g.url + "/v1/embeddings", timeout=15,
                        json={"model": "text-embedding-test", "input": ["one", "two"]})
    assert emb.status_code == 200, emb.text
    assert g.stop() == 0  # writes the pending stores and counts
    ids = {"orig": [chat.headers["X-Semgate-Entry"], s.json()["id"]], "old": [], "new": []}
    for eid in ids["orig"]:
        sha = r.hget(K.entry("default", eid), "exact").decode()
        assert sha
        ids["old"].append(unfitted("default", sha, eid))
        ids["new"].append(K.fit_id("default", sha, ids["old"][-1]))
        assert ids["new"][-1] != ids["old"][-1]
    snap = to_old_layout(r, dict(zip(ids["orig"], ids["old"])))
    assert r.hget(K.legacy("e", "default", ids["old"][0]), "hits") == b"2"
    assert upstream.stats()["chat_requests"] == 1
    return ids, snap


def untagged_keys(r):
    """Keys without a bucket tag, but for rate-limit windows (short-lived,
    never moved) and the marker."""
    return {k.decode() for k in r.scan_iter(match=K.PREFIX + "*")
            if K.untagged(k) is None and not k.startswith(K.PREFIX.encode() + b"rl:")}


def counted(snap):
    """The counters, series, calibration and embeddings of a snapshot,
    merged per old name (the stats marker left out)."""
    out = {}
    for old, parts in snap.items():
        kind = old[len(K.PREFIX):].split(":", 1)[0]
        if kind in ("stats", "ts", "cal", "emb"):
            v = merged(parts, kind)[1]
            if kind == "stats":
                v.pop(b"entries_tracked", None)
            out[old] = v
    return out


def test_the_old_cache_moves_once_at_start(make_gateway, redis_db, upstream):
    ids, before = old_cache(make_gateway, redis_db, upstream)
    chat, text = ids["new"]
    olds = untagged_keys(redis_db)
    assert K.legacy("e", "default", ids["old"][0]) in olds
    assert {o.split(":")[1] for o in olds} >= {"e", "x", "tag", "top", "stats", "ts", "emb"}
    g = make_gateway()
    if REDIS_MODE == "cluster":
        # the old layout predates cluster mode: a cluster is never upgraded
        # in place, and its keys are left as they are (docs/OPERATIONS.md)
        assert untagged_keys(redis_db) == olds
        assert g.chat(user(FRANCE)).headers["X-Semgate-Cache"] == "miss"
        return
    assert untagged_keys(redis_db) == {K.PREFIX + "layout"}
    assert redis_db.get(K.PREFIX + "layout") == b"buckets"
    # counters, series, embeddings: the same sums, now in the bucket layout
    assert counted(snapshot(redis_db)) == counted(before)
    # the entries, under their fitted ids, with their hit counts, TTLs,
    # tags and metadata
    e = requests.get(f"{g.url}/v1/cache/entries/{chat}", timeout=10).json()
    assert e["hits"] == 2 and e["query"] == FRANCE and e["kind"] == "chat"
    ttl_before = before[K.legacy("e", "default", ids["orig"][0])][0][2]
    # (the TTL, in whole seconds, rounded up)
    assert ttl_before - 60_000 < redis_db.pttl(K.entry("default", chat)) <= ttl_before + 1000
    t = requests.get(f"{g.url}/v1/cache/entries/{text}", timeout=10).json()
    assert t["kind"] == "text" and sorted(t["tags"]) == ["docs", "faq"]
    assert t["metadata"] == {"source": "handbook"}
    top = requests.get(f"{g.url}/v1/cache/top", timeout=10).json()["top"]
    assert [(x["id"], x["hits"]) for x in top] == [(chat, 2)]
    st = requests.get(f"{g.url}/v1/cache/stats", timeout=10).json()
    assert st["entries"] == 2 and st["hits_exact"] == 2 and st["misses"] == 1
    # served: an exact hit, a semantic hit, a tag invalidation
    r = g.chat(user(FRANCE))
    assert r.headers["X-Semgate-Cache"] == "hit-exact" and r.headers["X-Semgate-Entry"] == chat
    upstream.set_similarity("capital city of France?", FRANCE, 0.97)
    r = g.chat(user("capital city of France?"), headers=OFF)
    assert r.headers["X-Semgate-Cache"] == "hit-semantic", dict(r.headers)
    assert r.headers["X-Semgate-Entry"] == chat
    assert upstream.stats()["chat_requests"] == 1
    r = requests.post(f"{g.url}/v1/cache/invalidate", json={"tag": "docs"}, timeout=10)
    assert r.json() == {"deleted": 1}
    assert "old-layout cache moved to the slot-bucket layout: 2 entries" in g.logs()
    # a later start finds the marker and moves nothing
    assert "old-layout cache moved" not in make_gateway().logs()


def test_gateways_starting_together_move_the_old_cache_once(make_gateway, redis_db, upstream):
    ids, before = old_cache(make_gateway, redis_db, upstream)
    gs = []
    starters = [threading.Thread(target=lambda: gs.append(make_gateway())) for _ in range(3)]
    for th in starters:
        th.start()
    for th in starters:
        th.join()
    assert len(gs) == 3
    if REDIS_MODE == "cluster":
        assert K.legacy("e", "default", ids["old"][0]) in untagged_keys(redis_db)
        return
    assert untagged_keys(redis_db) == {K.PREFIX + "layout"}
    # whoever moved what: every counter once, every entry once, hits kept
    assert counted(snapshot(redis_db)) == counted(before)
    chat, text = ids["new"]
    assert requests.get(f"{gs[0].url}/v1/cache/entries/{chat}", timeout=10).json()["hits"] == 2
    st = requests.get(f"{gs[1].url}/v1/cache/stats", timeout=10).json()
    assert st["entries"] == 2 and st["hits_exact"] == 2 and st["misses"] == 1
    for g in gs:
        r = g.chat(user(FRANCE))
        assert r.headers["X-Semgate-Cache"] == "hit-exact" and r.headers["X-Semgate-Entry"] == chat
