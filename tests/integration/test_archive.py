"""The write-behind archive: every turn and cache-entry event goes to the
Redis stream in the data's own MULTI and from there, through the
archiver's consumer group, into a real PostgreSQL (started here, never
skipped). Crashes and outages lose nothing and double nothing; the archive
reads back (?all=1, the warm start) and deletes propagate; bad input and
other tenants change and see nothing."""
import concurrent.futures
import os
import re
import signal
import subprocess
import time

import pytest
import requests

from conftest import REDIS_MODE, SEMGATE_BIN, SLOW, user, wait_until
import keys as K
from pgserver import PostgresServer

# one stream on one server (and through Sentinel), one per slot bucket on a
# cluster (src/store/archive.c)
STREAMS = ([f"sg:arch:{{{t}}}".encode() for t in K.TAGS] if REDIS_MODE == "cluster"
           else [b"sg:arch"])


def stream_len(r):
    return sum(r.xlen(s) for s in STREAMS)


def stream_exists(r):
    return any(r.exists(s) for s in STREAMS)


def grouped(r):
    """The streams that have the archive's consumer group."""
    out = []
    for s in STREAMS:
        try:
            if any(g["name"] in (GROUP, GROUP.encode()) for g in r.xinfo_groups(s)):
                out.append(s)
        except Exception:  # no such stream yet
            pass
    return out


def pending(r):
    return sum(r.xpending(s, GROUP)["pending"] for s in grouped(r))


def consumers(r):
    return {c["name"] for s in grouped(r) for c in r.xinfo_consumers(s, GROUP)}


def lag_zero(r):
    return all((g.get("lag") or 0) == 0 for s in grouped(r) for g in r.xinfo_groups(s))
GROUP = "semgate-archive"


@pytest.fixture(scope="session")
def pg():
    srv = PostgresServer()
    srv.start()
    yield srv
    srv.destroy()


@pytest.fixture
def archive_db(pg):
    """A fresh database per test, so row counts are this test's own."""
    if pg.pid is None:  # a test stopped it and failed before restarting it
        pg.start()
    return pg.new_db()


def arch_env(pg, db, **kw):
    env = {"SEMGATE_ARCHIVE_DSN": pg.dsn(db), "SEMGATE_ARCHIVE_CLAIM_MS": "1000"}
    env.update({k: str(v) for k, v in kw.items()})
    return env


@pytest.fixture
def agw(make_gateway, redis_db, upstream, pg, archive_db):
    g = make_gateway(arch_env(pg, archive_db))
    g.db = archive_db
    return g


def q(pg, db, sql):
    return pg.psql(sql, dbname=db)


def count(pg, db, sql):
    return int(q(pg, db, sql) or 0)


def append(gw, cid, text, headers=None, role="user"):
    return requests.post(f"{gw.url}/v1/conversations/{cid}/messages",
                         json={"messages": [{"role": role, "content": text}]},
                         headers=headers or {}, timeout=10 * SLOW)


def turn(gw, cid, text, headers=None):
    h = {"X-Conversation-Id": cid}
    h.update(headers or {})
    return gw.chat(user(text), headers=h)


def metric(gw, name):
    for line in requests.get(gw.url + "/metrics", timeout=5).text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    return None


def start_archiver(tmpdir, env, redis_server, name):
    log = open(os.path.join(tmpdir, f"archiver-{name}-{time.monotonic_ns()}.log"), "ab")
    full = {k: v for k, v in os.environ.items() if not k.startswith("SEMGATE_")}
    full.update({**redis_server.gateway_env(), "SEMGATE_LOG_LEVEL": "info"})
    full.update(env)
    p = subprocess.Popen([SEMGATE_BIN, "--archiver"], env=full, stdout=log, stderr=log)
    p.log_path = log.name
    p.log_file = log
    return p


def test_turns_and_entries_arrive_in_the_archive(agw, pg, upstream, redis_db):
    db = agw.db
    # the archiver thread migrates the schema as it first connects, behind the start
    wait_until(lambda: q(pg, db, "SELECT max(version) FROM archive_schema_version") == "2",
               timeout=30, what="the schema")
    for i in range(3):
        assert turn(agw, "arr-1", f"arrival question {i}").status_code == 200
    assert append(agw, "arr-2", "a note").status_code == 201
    r = requests.post(agw.url + "/v1/cache/entries", timeout=5, json={
        "query": "What is the capital of France?", "answer": "Paris", "tags": ["geo"],
        "metadata": {"src": "atlas"}})
    assert r.status_code == 201, r.text
    eid = r.json()["id"]
    # the record sits in the stream: written in the entry's own transaction
    assert stream_len(redis_db) >= 5
    wait_until(lambda: count(pg, db, "SELECT count(*) FROM archive_turns") == 7,
               timeout=30, what="turns to reach the archive")
    rows = q(pg, db, "SELECT conv, idx, message FROM archive_turns WHERE tenant = 'default'"
             " ORDER BY conv, sid_ms, sid_seq, idx").splitlines()
    assert rows[0] == 'arr-1|0|{"role":"user","content":"arrival question 0"}'
    assert rows[1].startswith('arr-1|1|{"role":"assistant"')
    assert rows[6] == 'arr-2|0|{"role":"user","content":"a note"}'
    wait_until(lambda: q(pg, db, f"SELECT query, answer, tags, deleted, kind FROM "
                             f"archive_entries WHERE id = '{eid}'")
               == "What is the capital of France?|Paris|geo|f|text", timeout=30,
               what="the sidecar entry in the archive")
    # the chat turns' cache entries (first turn of arr-1) with their vectors
    dim = int(redis_db.hget(next(iter(redis_db.scan_iter(K.pattern("e", "default")))), "dim") or 0)
    wait_until(lambda: count(pg, db, "SELECT count(*) FROM archive_entries WHERE kind = 'chat'"
                                 f" AND octet_length(vector) = {4 * dim}") >= 1,
               timeout=30, what="a chat entry with its vector")
    # hits are batched and arrive as absolute counts
    for _ in range(3):
        r = requests.post(agw.url + "/v1/cache/lookup", json={
            "query": "What is the capital of France?"}, timeout=5)
        assert r.json()["hit"] is True
    wait_until(lambda: count(pg, db, f"SELECT hits FROM archive_entries WHERE id = '{eid}'")
               == 3, timeout=30, what="the hit count in the archive")
    wait_until(lambda: metric(agw, "semgate_archive_pending") == 0 and
               metric(agw, "semgate_archive_lag") == 0, what="lag metrics at zero")
    # 4 turns, 2 puts and at least one (batched) hit count
    assert metric(agw, 'semgate_archive_records_total{outcome="archived"}') >= 7
    assert metric(agw, 'semgate_archive_records_total{outcome="lost"}') == 0
    assert PostgresServer.PASSWORD not in agw.logs()


def test_archive_off_writes_no_stream_record(gateway, redis_db):
    assert turn(gateway, "off-1", "hello there").status_code == 200
    assert append(gateway, "off-1", "more").status_code == 201
    assert requests.delete(gateway.url + "/v1/conversations/off-1", timeout=5).status_code == 204
    assert not stream_exists(redis_db)
    assert metric(gateway, "semgate_archive_lag") is None
    r = requests.get(gateway.url + "/v1/conversations/off-1?all=1", timeout=5)
    assert r.status_code == 400 and r.json()["error"]["code"] == "archive_disabled"


def test_sigkill_of_the_archiver_mid_batch_loses_and_doubles_nothing(
        make_gateway, redis_db, upstream, pg, archive_db, tmpdir_session, redis_server):
    env = arch_env(pg, archive_db, SEMGATE_ARCHIVE_THREAD=0, SEMGATE_ARCHIVE_BATCH=7)
    g = make_gateway(env)
    total = 300

    def write(i):
        r = append(g, f"kill-{i % 10}", f"message {i}")
        assert r.status_code == 201, r.text

    arch = start_archiver(tmpdir_session, env, redis_server, "a")
    with concurrent.futures.ThreadPoolExecutor(8) as ex:
        list(ex.map(write, range(total // 2)))
        wait_until(lambda: count(pg, archive_db, "SELECT count(*) FROM archive_turns") > 0,
                   timeout=30, what="the first batches")
        # hold the table so the archiver is caught inside a batch: read from
        # the stream (pending), written in part, not committed
        locker = subprocess.Popen(
            ["psql", "-h", pg.dir, "-p", str(pg.port), "-U", "postgres", "-d", archive_db,
             "-X", "-q", "-c", "BEGIN; LOCK TABLE archive_turns IN ACCESS EXCLUSIVE MODE; "
             "SELECT pg_sleep(3); COMMIT"], stdout=subprocess.DEVNULL)
        wait_until(lambda: count(pg, archive_db, "SELECT count(*) FROM pg_locks WHERE "
                                 "mode = 'AccessExclusiveLock' AND granted") > 0,
                   what="the lock")
        list(ex.map(write, range(total // 2, total // 2 + 20)))
        wait_until(lambda: pending(redis_db) > 0, timeout=30,
                   what="the archiver inside a batch")
        arch.kill()  # SIGKILL: the batch it held stays pending, unacknowledged
        arch.wait()
        held = pending(redis_db)
        assert held > 0
        locker.wait(timeout=30)
        list(ex.map(write, range(total // 2 + 20, total)))
    assert count(pg, archive_db, "SELECT count(*) FROM archive_turns") < total
    arch2 = start_archiver(tmpdir_session, env, redis_server, "b")
    try:
        wait_until(lambda: count(pg, archive_db, "SELECT count(*) FROM archive_turns") == total,
                   timeout=60, what="every turn archived after the restart")
        wait_until(lambda: pending(redis_db) == 0, timeout=30,
                   what="the dead archiver's records claimed and acknowledged")
        # the dead consumer, left with nothing pending, is forgotten after ten
        # claim periods (SEMGATE_ARCHIVE_CLAIM_MS=1000 here)
        wait_until(lambda: len(consumers(redis_db)) == 1, timeout=40,
                   what="the dead consumer removed")
        # replay everything: the rows are idempotent
        for st in grouped(redis_db):
            redis_db.xgroup_setid(st, GROUP, "0")
        wait_until(lambda: lag_zero(redis_db) and
                   pending(redis_db) == 0, timeout=60,
                   what="the replay to drain")
    finally:
        arch2.send_signal(signal.SIGTERM)
        assert arch2.wait(timeout=30) == 0
    assert count(pg, archive_db, "SELECT count(*) FROM archive_turns") == total
    assert count(pg, archive_db, "SELECT count(DISTINCT message) FROM archive_turns") == total
    with open(arch2.log_path, "rb") as f:
        log = f.read().decode()
    assert "claimed" in log
    assert "removed 1 idle consumers" in log
    assert PostgresServer.PASSWORD not in log


def test_postgres_outage_keeps_serving_and_the_archive_catches_up(agw, pg, upstream):
    db = agw.db
    assert append(agw, "out-0", "before").status_code == 201
    wait_until(lambda: count(pg, db, "SELECT count(*) FROM archive_turns") == 1, timeout=30,
               what="the first turn")
    pg.stop()
    try:
        n = 0
        t_end = time.monotonic() + 10
        while time.monotonic() < t_end:
            assert append(agw, f"out-{n % 3}", f"during {n}").status_code == 201
            r = turn(agw, "out-chat", f"chat during outage {n}")
            assert r.status_code == 200, r.text
            n += 1
            time.sleep(0.05)
        assert requests.get(agw.url + "/v1/conversations/out-1", timeout=5).status_code == 200
        wait_until(lambda: metric(agw, "semgate_archive_lag") + metric(
            agw, "semgate_archive_pending") > 0, what="lag to show")
        assert metric(agw, "semgate_archive_pg_errors_total") > 0
        r = requests.get(agw.url + "/v1/conversations/out-1?all=1", timeout=30)
        assert r.status_code == 503 and r.json()["error"]["code"] == "archive_unavailable"
        assert r.json()["error"]["message"] == "the archive is unavailable"
    finally:
        pg.start()
    want = 1 + n + 2 * n
    wait_until(lambda: count(pg, db, "SELECT count(*) FROM archive_turns") == want,
               timeout=60, what="the archive to catch up")
    assert "PostgreSQL" in agw.logs()
    assert PostgresServer.PASSWORD not in agw.logs()


def test_all_returns_the_whole_conversation_beyond_the_window(make_gateway, redis_db,
                                                              upstream, pg, archive_db):
    g = make_gateway(arch_env(pg, archive_db, SEMGATE_HISTORY_MAX=4))
    for i in range(10):
        assert append(g, "long-1", f"m{i}").status_code == 201
    wait_until(lambda: count(pg, archive_db, "SELECT count(*) FROM archive_turns") == 10,
               timeout=30, what="the turns")
    win = requests.get(g.url + "/v1/conversations/long-1", timeout=5).json()
    assert [m["content"] for m in win["messages"]] == ["m6", "m7", "m8", "m9"]
    full = requests.get(g.url + "/v1/conversations/long-1?all=1", timeout=5)
    assert full.status_code == 200
    body = full.json()
    assert body["source"] == "archive" and body["length"] == 10
    assert [m["content"] for m in body["messages"]] == [f"m{i}" for i in range(10)]
    again = requests.get(g.url + "/v1/conversations/long-1?all=0", timeout=5).json()
    assert again["messages"] == win["messages"] and "source" not in again
    for bad in ("all=2", "all=", "all=1&all=1", "every=1"):
        r = requests.get(f"{g.url}/v1/conversations/long-1?{bad}", timeout=5)
        assert r.status_code == 400, bad
        assert r.json()["error"]["type"] == "invalid_request_error"
    assert requests.get(g.url + "/v1/conversations/nothing-here?all=1",
                        timeout=5).status_code == 404


def test_deletes_propagate_to_the_archive(agw, pg, redis_db):
    db = agw.db
    for i in range(3):
        assert append(agw, "del-1", f"x{i}").status_code == 201
    assert append(agw, "keep-1", "stays").status_code == 201
    ids = []
    for i, tag in enumerate(["t1", "t1", "t2"]):
        r = requests.post(agw.url + "/v1/cache/entries", timeout=5, json={
            "query": f"question to delete {i}", "answer": f"a{i}", "tags": [tag]})
        ids.append(r.json()["id"])
    wait_until(lambda: count(pg, db, "SELECT count(*) FROM archive_entries WHERE NOT deleted")
               == 3 and count(pg, db, "SELECT count(*) FROM archive_turns") == 4, timeout=30,
               what="everything archived")
    assert requests.delete(agw.url + "/v1/conversations/del-1", timeout=5).status_code == 204
    assert requests.delete(agw.url + f"/v1/cache/entries/{ids[2]}", timeout=5).status_code == 204
    r = requests.post(agw.url + "/v1/cache/invalidate", json={"tag": "t1"}, timeout=5)
    assert r.json()["deleted"] == 2
    wait_until(lambda: count(pg, db, "SELECT count(*) FROM archive_turns WHERE conv = 'del-1'")
               == 0, timeout=30, what="the conversation deleted in the archive")
    wait_until(lambda: count(pg, db, "SELECT count(*) FROM archive_entries WHERE deleted AND "
                                 "query IS NULL AND vector IS NULL") == 3, timeout=30,
               what="the entries deleted in the archive")
    assert q(pg, db, "SELECT message FROM archive_turns") == '{"role":"user","content":"stays"}'
    assert requests.get(agw.url + "/v1/conversations/del-1?all=1", timeout=5).status_code == 404
    # a new conversation under the same id starts empty in the archive too
    assert append(agw, "del-1", "again").status_code == 201
    wait_until(lambda: requests.get(agw.url + "/v1/conversations/del-1?all=1", timeout=5)
               .json().get("length") == 1, timeout=30, what="the new conversation")


def test_bad_input_changes_nothing_in_redis_or_postgres(agw, pg, redis_db):
    db = agw.db
    assert append(agw, "bad-1", "good").status_code == 201
    wait_until(lambda: count(pg, db, "SELECT count(*) FROM archive_turns") == 1, timeout=30,
               what="the good turn")

    def snapshot():
        keys = sorted(k for k in redis_db.keys(b"*") if b"bad-marker" not in k)
        return (keys, redis_db.lrange(K.chat("default", "bad-1"), 0, -1),
                q(pg, db, "SELECT count(*), coalesce(string_agg(message, ','), '') FROM "
                          "archive_turns WHERE conv <> 'bad-marker'"),
                q(pg, db, "SELECT count(*) FROM archive_entries"))
    xlen = stream_len(redis_db)
    before = snapshot()
    url = agw.url + "/v1/conversations/bad-1/messages"
    bodies = [b"{", b'{"messages":[{"role":"user","content":"x"}]} trailing',
              b'{"messages":[]}', b'{"messages":[{"role":"system","content":"x"}]}',
              b'{"messages":[{"content":"no role"}]}', b'{"messages":"x"}',
              b'\xff\xfe', b'{"messages":[{"role":"user","content":"\\ud800"}]}']
    for b in bodies:
        r = requests.post(url, data=b, headers={"Content-Type": "application/json"}, timeout=5)
        assert r.status_code == 400, (b, r.text)
    assert append(agw, "bad id!", "x").status_code == 400
    assert requests.delete(agw.url + "/v1/conversations/bad%20id", timeout=5).status_code == 400
    r = requests.post(agw.url + "/v1/cache/entries", json={"query": "", "answer": "a"}, timeout=5)
    assert r.status_code == 400
    r = requests.post(agw.url + "/v1/cache/entries", json={"query": "q", "answer": "a",
                                                           "vector": []}, timeout=5)
    assert r.status_code == 400
    assert requests.delete(agw.url + "/v1/cache/entries/not*an*id", timeout=5).status_code \
        == 400
    # a marker behind the bad requests: once it is archived, anything they
    # had queued would have been archived too
    assert append(agw, "bad-marker", "marker").status_code == 201
    wait_until(lambda: count(pg, db, "SELECT count(*) FROM archive_turns WHERE conv = "
                                     "'bad-marker'") == 1, timeout=30, what="the marker")
    assert stream_len(redis_db) == xlen + 1
    assert snapshot() == before


def test_tenants_never_read_each_others_archive(make_gateway, redis_db, upstream, pg,
                                                archive_db):
    g = make_gateway(arch_env(pg, archive_db, SEMGATE_API_KEYS="ka:alpha,kb:beta",
                              SEMGATE_HISTORY_MAX=2))
    ha, hb = {"Authorization": "Bearer ka"}, {"Authorization": "Bearer kb"}
    for i in range(3):
        assert append(g, "shared", f"alpha {i}", headers=ha).status_code == 201
    assert append(g, "shared", "beta 0", headers=hb).status_code == 201
    assert append(g, "only-a", "alpha only", headers=ha).status_code == 201
    wait_until(lambda: count(pg, archive_db, "SELECT count(*) FROM archive_turns") == 5,
               timeout=30, what="both tenants' turns")
    a = requests.get(g.url + "/v1/conversations/shared?all=1", headers=ha, timeout=5).json()
    b = requests.get(g.url + "/v1/conversations/shared?all=1", headers=hb, timeout=5).json()
    assert [m["content"] for m in a["messages"]] == ["alpha 0", "alpha 1", "alpha 2"]
    assert [m["content"] for m in b["messages"]] == ["beta 0"]
    r = requests.get(g.url + "/v1/conversations/only-a?all=1", headers=hb, timeout=5)
    assert r.status_code == 404
    assert q(pg, archive_db, "SELECT count(*) FROM archive_turns WHERE tenant = 'beta'") == "1"
    # deleting beta's conversation leaves alpha's archive alone
    assert requests.delete(g.url + "/v1/conversations/shared", headers=hb,
                           timeout=5).status_code == 204
    wait_until(lambda: count(pg, archive_db,
                             "SELECT count(*) FROM archive_turns WHERE tenant = 'beta'") == 0,
               timeout=30, what="beta's delete")
    assert count(pg, archive_db, "SELECT count(*) FROM archive_turns WHERE tenant = 'alpha'") == 4


def test_warm_start_from_the_archive_after_redis_lost_everything(
        make_gateway, redis_db, upstream, pg, archive_db):
    env = arch_env(pg, archive_db, SEMGATE_API_KEYS="ka:alpha,kb:beta")
    ha, hb = {"Authorization": "Bearer ka"}, {"Authorization": "Bearer kb"}
    g = make_gateway(env)
    q1, q2 = "How do I reset my password?", "Where is the Eiffel Tower?"
    assert g.chat(user(q1), headers=ha).headers["X-Semgate-Cache"] == "miss"
    assert g.chat(user(q2), headers=ha).headers["X-Semgate-Cache"] == "miss"
    r = requests.post(g.url + "/v1/cache/entries", headers=hb, timeout=5,
                      json={"query": "beta only question", "answer": "beta answer",
                            "ttl": 600})
    assert r.status_code == 201
    wait_until(lambda: count(pg, archive_db, "SELECT count(*) FROM archive_entries") == 3,
               timeout=30, what="the entries archived")
    g.stop()
    redis_db.flushall()
    upstream.reset()
    g2 = make_gateway(dict(env, SEMGATE_ARCHIVE_WARM=1))
    assert "restored from the archive" in g2.logs()
    r = g2.chat(user(q1), headers=ha)
    assert r.headers["X-Semgate-Cache"] == "hit-exact", r.headers
    upstream.set_similarity("where's the eiffel tower", q2, 0.98)
    r = g2.chat(user("where's the eiffel tower"), headers=ha)
    assert r.headers["X-Semgate-Cache"] == "hit-semantic", r.headers
    assert upstream.stats()["chat_requests"] == 0
    # each entry went back to its own tenant, with its remaining TTL
    r = requests.post(g2.url + "/v1/cache/lookup", headers=hb, timeout=5,
                      json={"query": "beta only question"})
    assert r.json()["hit"] is True and r.json()["answer"] == "beta answer"
    r = requests.post(g2.url + "/v1/cache/lookup", headers=ha, timeout=5,
                      json={"query": "beta only question"})
    assert r.json()["hit"] is False
    ttl = [redis_db.ttl(k) for k in redis_db.scan_iter(K.pattern("e", "beta"))]
    assert len(ttl) == 1 and 0 < ttl[0] <= 600
    # a warm restore is not archived again
    assert count(pg, archive_db, "SELECT count(*) FROM archive_entries") == 3


def test_records_trimmed_before_archiving_are_counted_as_lost(
        make_gateway, redis_db, upstream, pg, archive_db, tmpdir_session, redis_server):
    # a small stream and nobody draining it: MAXLEN ~ trims unarchived records
    env = arch_env(pg, archive_db, SEMGATE_ARCHIVE_THREAD=0, SEMGATE_ARCHIVE_STREAM_MAX=100)
    g = make_gateway(env)
    total = 450
    # MAXLEN holds per stream: on a cluster (a stream per slot bucket) the
    # turns go to one conversation, so to one stream, as on one server
    conv = (lambda i: "trim-0") if REDIS_MODE == "cluster" else (lambda i: f"trim-{i % 5}")
    with concurrent.futures.ThreadPoolExecutor(8) as ex:
        assert all(r.status_code == 201 for r in ex.map(
            lambda i: append(g, conv(i), f"t{i}"), range(total)))
    kept = stream_len(redis_db)
    assert kept < total
    arch = start_archiver(tmpdir_session, env, redis_server, "trim")
    try:
        wait_until(lambda: count(pg, archive_db, "SELECT count(*) FROM archive_turns") == kept,
                   timeout=60, what="what the stream kept")
    finally:
        arch.send_signal(signal.SIGTERM)
        assert arch.wait(timeout=30) == 0
    with open(arch.log_path, "rb") as f:
        log = f.read().decode()
    trimmed = sum(int(n) for n in re.findall(r"(\d+) records of sg:arch\S* were trimmed", log))
    assert trimmed == total - kept, log[-2000:]
    # the newest records are the ones kept
    assert q(pg, archive_db, "SELECT count(*) FROM archive_turns WHERE message LIKE "
             f"'%\"t{total - 1}\"%'") == "1"


def test_a_record_postgres_refuses_is_skipped_and_the_batch_lands(agw, pg):
    db = agw.db
    assert append(agw, "poison-0", "first").status_code == 201
    wait_until(lambda: count(pg, db, "SELECT count(*) FROM archive_turns") == 1, timeout=30,
               what="the schema and a first turn")
    # a database-side rule the archiver cannot foresee: one message is refused
    q(pg, db, "CREATE FUNCTION refuse() RETURNS trigger AS $$ BEGIN "
              "IF NEW.message LIKE '%poison%' THEN RAISE EXCEPTION 'refused'; END IF; "
              "RETURN NEW; END $$ LANGUAGE plpgsql; "
              "CREATE TRIGGER refuse BEFORE INSERT ON archive_turns "
              "FOR EACH ROW EXECUTE FUNCTION refuse()")
    with concurrent.futures.ThreadPoolExecutor(4) as ex:
        texts = [f"good {i}" for i in range(20)] + ["poison pill"]
        assert all(r.status_code == 201 for r in ex.map(
            lambda t: append(agw, "poison-1", t), texts))
    wait_until(lambda: count(pg, db, "SELECT count(*) FROM archive_turns") == 21, timeout=30,
               what="every good turn")
    wait_until(lambda: metric(agw, 'semgate_archive_records_total{outcome="rejected"}') == 1
               and metric(agw, "semgate_archive_pending") == 0, what="the refusal counted")
    assert count(pg, db, "SELECT count(*) FROM archive_turns WHERE message LIKE '%poison%'") == 0
    assert "refused, skipped" in agw.logs()


def test_two_gateways_starting_at_once_migrate_the_schema_once(make_gateway, redis_db,
                                                                upstream, pg, archive_db):
    env = arch_env(pg, archive_db)
    with concurrent.futures.ThreadPoolExecutor(2) as ex:
        gws = list(ex.map(lambda _: make_gateway(env), range(2)))
    wait_until(lambda: q(pg, archive_db, "SELECT string_agg(version::text, ',' ORDER BY version)"
                                         " FROM archive_schema_version") == "1,2",
               timeout=30, what="the schema")
    # both archive, through the one consumer group: each turn once
    for i in range(20):
        assert append(gws[i % 2], f"two-{i % 3}", f"m{i}").status_code == 201
    wait_until(lambda: count(pg, archive_db, "SELECT count(*) FROM archive_turns") == 20,
               timeout=30, what="both gateways' turns")
    for st in grouped(redis_db):
        groups = redis_db.xinfo_groups(st)
        assert len(groups) == 1 and groups[0]["consumers"] == 2, (st, groups)
    assert grouped(redis_db)
    for g in gws:
        assert "archive:" not in "".join(l for l in g.logs().splitlines() if " warn " in l)
