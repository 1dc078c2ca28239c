"""GET /v1/cache/stats without a walk of the keyspace (src/store/stats.c):
entries, indexed_entries, bytes and vector_bytes come from per-tenant
accounting kept in the same transaction as every store and delete, and stay
exactly what a SCAN of the tenant's entries counts, across stores, deletes,
invalidations, TTL expiry, overwrites of one id and data written before the
accounting existed; and a stats read costs the same few Redis commands
however many entries there are."""
import concurrent.futures
import os
import subprocess

import pytest
import requests

from conftest import BUILD, on_masters, user, wait_until
import keys as K
from test_cache_api import API, call, lookup, stats, store

STORE_PUT = os.path.join(BUILD, "tests", "tools", "sg-store-put")
COUNTED = ("entries", "indexed_entries", "bytes", "vector_bytes")
TOOLS = [{"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}}]


def scanned(rdb, tenant="default"):
    """What the stats of earlier versions counted, by a SCAN of every entry:
    a hash with a dim field; bytes of query, answer, metadata and vector;
    indexed when dim > 0 and there is a vector."""
    out = dict.fromkeys(COUNTED, 0)
    for k in rdb.scan_iter(match=K.pattern("e", tenant), count=1000):
        if rdb.type(k) != b"hash" or rdb.hget(k, "dim") is None:
            continue
        vb = rdb.hstrlen(k, "vector")
        out["entries"] += 1
        out["bytes"] += sum(rdb.hstrlen(k, f) for f in ("query", "answer", "metadata")) + vb
        if int(rdb.hget(k, "dim")) > 0 and vb > 0:
            out["indexed_entries"] += 1
            out["vector_bytes"] += vb
    return out


def assert_exact(gw, rdb, headers=None, tenant="default"):
    st = stats(gw, headers)
    want = scanned(rdb, tenant)
    assert {k: st[k] for k in COUNTED} == want
    return st


def forget_accounting(rdb, tenant="default"):
    """Put a tenant back in the state an earlier version left: entries, but
    no accounting keys and no marker."""
    rdb.delete(*K.tenant_keys("live", tenant), *K.tenant_keys("size", tenant))
    for k in K.tenant_keys("stats", tenant):
        rdb.hdel(k, "entries_tracked")


def acct_exists(rdb, tenant="default"):
    """How many of the tenant's accounting keys (live and size of every
    bucket) exist."""
    return rdb.exists(*K.tenant_keys("live", tenant), *K.tenant_keys("size", tenant))


def marked(rdb, tenant):
    return all(rdb.hget(k, "entries_tracked") == b"1" for k in K.tenant_keys("stats", tenant))


def store_put(redis_server, *args):
    env = {**os.environ, **redis_server.gateway_env()}
    r = subprocess.run([STORE_PUT, *map(str, args)], env=env, capture_output=True,
                       text=True, timeout=30)
    assert r.returncode == 0, r.stderr


@pytest.fixture
def keyed(make_gateway, redis_db, upstream):
    g = make_gateway(SEMGATE_API_KEYS="k1:a,k2:b")
    return g, {"Authorization": "Bearer k1"}, {"Authorization": "Bearer k2"}


def commands(rdb, deployment):
    """Commands Redis has run, scripts' own calls included (INFO itself not,
    nor those the deployment's own machinery sends: a sentinel's PINGs)."""
    skip = {"cmdstat_info"} | deployment.background_commands
    return sum(v["calls"] for k, v in rdb.info("commandstats").items() if k not in skip)


def test_stats_stay_exact_across_stores_deletes_and_invalidations(gateway, upstream, redis_db):
    st = assert_exact(gateway, redis_db)
    assert st["entries"] == 0 and st["bytes"] == 0
    a = store(gateway, query="alpha", answer="first answer", namespace="A", tags=["red"],
              metadata={"src": "kb/a.md"})
    b = store(gateway, query="beta", answer="second", namespace="A", tags=["blue"],
              vector=[1, 2, 3])
    store(gateway, query="gamma", answer="third " * 50, namespace="B", tags=["red", "blue"])
    store(gateway, query="delta", answer="fourth", tags=["red"])
    gateway.chat(user("a chat question"), headers={"X-Semgate-Namespace": "B"})
    r = gateway.chat(user("chat with tools"), tools=TOOLS)  # exact only: no vector
    assert r.headers["X-Semgate-Cache"] == "miss"
    tools_entry = r.headers["X-Semgate-Entry"]
    st = assert_exact(gateway, redis_db)
    assert st["entries"] == 6 and st["indexed_entries"] == 5

    assert call(gateway, "DELETE", f"{API}/entries/{a}").status_code == 204
    assert_exact(gateway, redis_db)
    assert call(gateway, "DELETE", f"{API}/entries/{a}").status_code == 404  # counted once
    assert call(gateway, "DELETE", f"{API}/entries/{b}").status_code == 204
    assert assert_exact(gateway, redis_db)["entries"] == 4

    r = call(gateway, "POST", API + "/invalidate", {"namespace": "B", "tag": "red"})
    assert r.json() == {"deleted": 1}
    assert assert_exact(gateway, redis_db)["entries"] == 3
    assert call(gateway, "POST", API + "/invalidate", {"tag": "red"}).json() == {"deleted": 1}
    assert assert_exact(gateway, redis_db)["entries"] == 2
    assert call(gateway, "POST", API + "/invalidate", {"namespace": "B"}).json() == {"deleted": 1}
    st = assert_exact(gateway, redis_db)
    assert st["entries"] == 1 and st["indexed_entries"] == 0  # the one with tools
    assert K.zcard(redis_db, "live", "default") == 1
    assert call(gateway, "DELETE", f"{API}/entries/{tools_entry}").status_code == 204
    st = assert_exact(gateway, redis_db)
    assert st["entries"] == st["bytes"] == st["vector_bytes"] == 0
    # nothing tracked is left behind once the last entry is gone
    assert not acct_exists(redis_db)


def test_stats_stay_exact_as_entries_expire(gateway, upstream, redis_db):
    short = [store(gateway, query=f"brief {i}", answer="x" * (i + 1), ttl=2, tags=["t"])
             for i in range(3)]
    store(gateway, query="lasting", answer="stays", ttl=3600, metadata={"k": "v"})
    too = store(gateway, query="lasting too", answer="stays", ttl=7200, vector=[0.5, 0.5])
    assert assert_exact(gateway, redis_db)["entries"] == 5
    # the accounting keys (of a bucket) live as long as their longest-lived entry
    b = K.bucket_of("default", too)
    assert 7190 <= redis_db.ttl(K.key_in("live", b, "default")) <= 7200
    assert 7190 <= redis_db.ttl(K.key_in("size", b, "default")) <= 7200
    wait_until(lambda: not any(redis_db.exists(K.entry("default", i)) for i in short),
               timeout=5, what="the short entries to expire")
    st = assert_exact(gateway, redis_db)
    assert st["entries"] == 2 and st["indexed_entries"] == 2
    assert K.zcard(redis_db, "live", "default") == 2
    sizes = [k for k in K.tenant_keys("size", "default") if redis_db.exists(k)]
    # the two ids and, in each bucket that tracks one, the four totals
    assert sum(redis_db.hlen(k) for k in sizes) == 2 + 4 * len(sizes)


def test_expired_ids_are_untracked_by_writes_too(gateway, upstream, redis_db):
    """However rarely stats are read, expired ids never pile up: every store
    and delete untracks a few of them."""
    stats(gateway)
    lasting = store(gateway, query="lasting", answer="y", ttl=3600)
    # three short-lived entries in lasting's slot bucket (whose accounting
    # lasting keeps); the others go with their bucket's accounting keys
    lb, short, n = K.bucket_of("default", lasting), [], 0
    while len(short) < 3:
        assert n < 3000
        eid = store(gateway, query=f"gone soon {n}", answer="x", ttl=8)
        n += 1
        if K.bucket_of("default", eid) == lb:
            short.append(eid)
    wait_until(lambda: not any(redis_db.exists(K.entry("default", i)) for i in short),
               timeout=10, what="the entries to expire")
    wait_until(lambda: K.zcard(redis_db, "live", "default") == 4, timeout=10,
               what="the other buckets' accounting to expire")  # nothing has looked yet
    # a write untracks the expired ids of its own slot bucket: write until
    # lasting's bucket has had one
    need, newcomers = {lb}, []
    while need:
        assert len(newcomers) < 3000
        newcomers.append(store(gateway, query=f"newcomer {len(newcomers)}", answer="y"))
        need.discard(K.bucket_of("default", newcomers[-1]))
    tracked = set()
    for k in K.tenant_keys("live", "default"):
        tracked |= set(redis_db.zrange(k, 0, -1))
    assert tracked == {lasting.encode()} | {n.encode() for n in newcomers}
    assert assert_exact(gateway, redis_db)["entries"] == 1 + len(newcomers)
    # the last entry untracked takes the accounting keys with it
    # (in lasting's bucket, whose accounting keys outlive it)
    gone, n = None, 0
    while gone is None or K.bucket_of("default", gone) != lb:
        if gone is not None:
            assert call(gateway, "DELETE", f"{API}/entries/{gone}").status_code == 204
        assert n < 3000
        gone = store(gateway, query=f"alone {n}", answer="z", ttl=1)
        n += 1
    for eid in [lasting, *newcomers]:
        assert call(gateway, "DELETE", f"{API}/entries/{eid}").status_code == 204
    wait_until(lambda: not redis_db.exists(K.entry("default", gone)), timeout=5, what="expiry")
    assert acct_exists(redis_db) == 2
    assert assert_exact(gateway, redis_db)["entries"] == 0
    assert acct_exists(redis_db) == 0


def test_overwriting_an_entry_in_place_counts_it_once_with_its_new_size(gateway, upstream,
                                                                       redis_server, redis_db):
    store(gateway, query="neighbour", answer="n")
    eid = "0123456789abcdef0123456789abcdef"
    store_put(redis_server, "default", eid, "small", "a", 600, 0)
    assert assert_exact(gateway, redis_db)["entries"] == 2
    store_put(redis_server, "default", eid, "a larger question", "a longer answer", 600, 8,
              '{"m":1}')
    st = assert_exact(gateway, redis_db)
    assert st["entries"] == 2 and st["indexed_entries"] == 2
    assert st["vector_bytes"] == 8 * 4 + 384 * 4
    # again without a vector: the hash keeps the old vector field, and the
    # count follows what Redis holds, not what the last writer sent
    store_put(redis_server, "default", eid, "q", "a", 600, 0)
    assert assert_exact(gateway, redis_db)["entries"] == 2
    # an overwrite with a shorter TTL moves its expiry too
    store_put(redis_server, "default", eid, "q", "a", 1, 0)
    wait_until(lambda: not redis_db.exists(K.entry("default", eid)), timeout=5, what="expiry")
    assert assert_exact(gateway, redis_db)["entries"] == 1
    assert K.zcard(redis_db, "live", "default") == 1


def test_entries_written_before_the_accounting_are_counted_exactly(keyed, upstream, redis_db):
    g, ha, hb = keyed
    for h in (ha, hb):
        store(g, headers=h, query="old one", answer="x" * 10, tags=["t"], metadata={"a": 1})
        store(g, headers=h, query="old two", answer="y", vector=[1, 0])
        g.chat(user("old chat"), headers=h)
        stats(g, h)
    brief = store(g, headers=ha, query="old and brief", answer="b", ttl=2)
    # tenant a as an earlier version left it: entries, no accounting, no marker
    forget_accounting(redis_db, "a")
    assert marked(redis_db, "b")
    # an entry stored after the upgrade, before anyone read the stats
    store(g, headers=ha, query="new one", answer="z")
    st = assert_exact(g, redis_db, ha, "a")  # the one SCAN that builds it
    assert st["entries"] == 5
    assert marked(redis_db, "a")
    assert K.zcard(redis_db, "live", "a") == 5
    assert assert_exact(g, redis_db, hb, "b")["entries"] == 3
    # and from then on it counts exactly: an expiry, a delete of an old entry
    wait_until(lambda: not redis_db.exists(K.entry("a", brief)), timeout=5, what="expiry")
    assert assert_exact(g, redis_db, ha, "a")["entries"] == 4
    old = [K.entry_id(k) for k in redis_db.scan_iter(match=K.pattern("e", "a"))
           if redis_db.hget(k, "query") == b"old one"][0]
    assert call(g, "DELETE", f"{API}/entries/{old}", headers=ha).status_code == 204
    assert assert_exact(g, redis_db, ha, "a")["entries"] == 3
    assert assert_exact(g, redis_db, hb, "b")["entries"] == 3


def test_a_lost_accounting_key_is_rebuilt(gateway, upstream, redis_db):
    ids = [store(gateway, query=f"entry {i}", answer="a" * (i + 1)) for i in range(5)]
    assert assert_exact(gateway, redis_db)["entries"] == 5
    b = K.bucket_of("default", ids[0])
    redis_db.delete(K.key_in("size", b, "default"))  # as if evicted under memory pressure
    assert assert_exact(gateway, redis_db)["entries"] == 5
    redis_db.delete(K.key_in("live", b, "default"))
    assert assert_exact(gateway, redis_db)["entries"] == 5


def test_dropping_the_marker_recounts_entries_that_went_behind_the_gateways_back(
        gateway, upstream, redis_db):
    ids = [store(gateway, query=f"entry {i}", answer="a" * (i + 1)) for i in range(5)]
    assert assert_exact(gateway, redis_db)["entries"] == 5
    redis_db.delete(K.entry("default", ids[0]))  # evicted, or deleted by hand
    # no delete told the accounting: counted until its TTL would have ended...
    assert stats(gateway)["entries"] == 5
    # ...or until the tenant's accounting is rebuilt
    redis_db.hdel(K.tenant_keys("stats", "default")[0], "entries_tracked")
    assert assert_exact(gateway, redis_db)["entries"] == 4
    assert K.zcard(redis_db, "live", "default") == 4


def test_a_stats_read_costs_the_same_few_commands_with_2000_entries(gateway, upstream, redis_db,
                                                                   redis_server):
    session = requests.Session()

    def put(i):
        r = requests.post(gateway.url + API + "/entries", timeout=30,
                          json={"query": f"bulk {i}", "answer": "x", "vector": [1, i + 1]})
        assert r.status_code == 201, r.text

    def fill(lo, hi):
        with concurrent.futures.ThreadPoolExecutor(8) as ex:
            list(ex.map(put, range(lo, hi)))

    def cost():
        before = commands(redis_db, redis_server)
        st = session.get(gateway.url + API + "/stats", timeout=30).json()
        return commands(redis_db, redis_server) - before, st

    fill(0, 20)
    stats(gateway)  # the first read of a tenant builds the accounting (one SCAN)
    small, st = cost()
    assert st["entries"] == 20
    fill(20, 2000)
    large, st = cost()
    assert st["entries"] == 2000 and st == stats(gateway)
    assert large == small, (small, large)
    # one EVAL per slot bucket and the dozen calls each makes; the SCAN it
    # replaced ran five commands per entry (10,005 here)
    assert small <= 16 * K.BUCKETS, small
    assert_exact(gateway, redis_db)




def test_writes_run_the_accounting_by_its_sha_and_a_script_flush_loses_no_count(
        gateway, upstream, redis_db, redis_server):
    """Each store and delete runs the accounting script by its SHA1 (EVALSHA:
    Redis neither receives nor hashes the body); a Redis that lacks it
    (new, restarted, SCRIPT FLUSH) has it run by its body once, and no
    count is lost or doubled."""
    def evalsha():
        st = redis_db.info("commandstats").get("cmdstat_evalsha", {})
        return st.get("calls", 0), st.get("failed_calls", 0)

    nodes = len(redis_db.get_primaries()) if hasattr(redis_db, "get_primaries") else 1
    on_masters(redis_db, "SCRIPT", "FLUSH")
    calls0, failed0 = evalsha()
    ids = [store(gateway, query=f"by sha {i}", answer="y" * (i + 1), tags=["s"])
           for i in range(24)]
    calls, failed = evalsha()
    assert calls - calls0 == 24
    # one NOSCRIPT per Redis at most: the body run after it caches it there
    assert 1 <= failed - failed0 <= nodes, (failed - failed0, nodes)
    st = assert_exact(gateway, redis_db)
    assert st["entries"] == 24

    # a flush between writes: the next delete and overwrite still count once
    on_masters(redis_db, "SCRIPT", "FLUSH")
    for i in ids[:6]:
        assert call(gateway, "DELETE", f"{API}/entries/{i}").status_code == 204
    assert assert_exact(gateway, redis_db)["entries"] == 18
    eid = "00112233445566778899aabbccddeeff"
    store_put(redis_server, "default", eid, "small", "a", 600, 0)
    on_masters(redis_db, "SCRIPT", "FLUSH")
    store_put(redis_server, "default", eid, "a larger question", "longer now " * 20, 600, 8)
    st = assert_exact(gateway, redis_db)
    assert st["entries"] == 19 and st["indexed_entries"] == 19
    assert "entry accounting refused" not in gateway.logs()
