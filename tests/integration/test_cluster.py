"""Redis Cluster faults under load, on a real local cluster of 3 masters and
3 replicas that this module starts itself (whatever SEMGATE_TEST_REDIS says):
a master killed during mixed traffic (its replica takes over and the gateway
follows), and a slot migration during traffic (no error reaches a client).
Loopback only, bounded; speed is measured in scripts/bench, not here."""
import re
import subprocess
import threading
import time

import pytest
import redis
import requests

from conftest import SLOW, RedisCluster, metric, user, wait_until
from test_faults import Load, assert_whole_turns
from test_store_behind import pile_stores
import keys as K


@pytest.fixture
def cluster(tmpdir_session):
    c = RedisCluster(tmpdir_session)
    c.start()
    yield c
    c.stop()


def cluster_gateway(make_gateway, cluster, **env):
    return make_gateway(**{"SEMGATE_REDIS_CLUSTER": cluster.seeds(),
                           "SEMGATE_REDIS_TIMEOUT_MS": 300, **env})


def master_of(cluster, key):
    """The port of the master serving key's slot."""
    slot = K.key_slot(key)
    for lo, hi, master, *_ in cluster.node(cluster.master_ports()[0]).execute_command(
            "CLUSTER", "SLOTS"):
        if int(lo) <= slot <= int(hi):
            return int(master[1])
    raise AssertionError(f"no master for slot {slot}")


def node_id(cluster, port):
    return cluster.node(port).execute_command("CLUSTER", "MYID").decode()


def test_a_master_killed_under_load_fails_over_and_the_gateway_follows(
        make_gateway, redis_db, upstream, cluster):
    g = cluster_gateway(make_gateway, cluster)
    rc = cluster.client()
    # conversations and questions whose keys live on the master to be killed
    victim = master_of(cluster, K.chat("default", "c-0"))
    convs = [f"c-{i}" for i in range(200)
             if master_of(cluster, K.chat("default", f"c-{i}")) == victim][:4]
    others = [f"c-{i}" for i in range(200)
              if master_of(cluster, K.chat("default", f"c-{i}")) != victim][:4]
    assert len(convs) == 4 and len(others) == 4
    qs = [user(f"cluster question {i}") for i in range(12)]
    for q in qs:
        assert g.chat(q).headers["X-Semgate-Cache"] == "miss"
        assert g.chat(q).headers["X-Semgate-Cache"] == "hit-exact"

    def one(i, n):
        if n % 3 == 0:
            conv = (convs + others)[(i + n) % 8]
            return "turn", g.chat(user(f"turn {n} of {i}"), timeout=15 * SLOW,
                                  headers={"X-Conversation-Id": conv})
        if n % 3 == 1:
            return "miss", g.chat(user(f"new {i} {n} {time.monotonic()}"), timeout=15 * SLOW)
        return "hit", g.chat(qs[(i + n) % len(qs)], timeout=15 * SLOW)

    with Load(one, 6) as load:
        load.run_for(1.0)
        load.phase = "down"
        cluster.kill(victim)
        # the replica takes over (cluster-node-timeout 1000 ms)
        wait_until(lambda: len(cluster.master_ports()) == 3, timeout=30, interval=0.1,
                   what="a replica to take over")
        cluster.wait_ok(timeout=30)
        over = time.monotonic()
        load.phase = "after"

        # the gateway follows: a turn on a conversation of the killed master's
        # slots, and a cache hit, within 5 s of the failover
        def follows():
            r = g.chat(user("after the failover"), timeout=15 * SLOW,
                       headers={"X-Conversation-Id": convs[0]})
            h = g.chat(qs[0], timeout=15 * SLOW)
            return r.status_code == 200 and h.headers["X-Semgate-Cache"] in ("hit-exact", "miss")
        wait_until(follows, timeout=5.0, interval=0.05, what="the gateway to follow the failover")
        followed = time.monotonic() - over
        load.run_for(1.0)
    print(f"master kill: failover seen, gateway followed {followed:.3f} s later, "
          f"{len(load.results)} requests")
    assert followed <= 5.0 * SLOW
    assert g.alive()
    res = load.results
    assert not [r for r in res if r[4]], [r for r in res if r[4]][:5]
    # before and well after the failover, every request succeeds
    assert all(r[2] == 200 for r in res if r[0] in ("before", "after")), \
        [r for r in res if r[0] in ("before", "after") and r[2] != 200][:5]
    # while the master is down, a miss or a hit still answers (bypass if need
    # be); a turn on its conversations may be refused with a JSON 503, never torn
    assert all(r[2] == 200 for r in res if r[1] in ("hit", "miss")), \
        [r for r in res if r[1] in ("hit", "miss") and r[2] != 200][:5]
    assert all(r[2] in (200, 503) for r in res if r[1] == "turn")
    for conv in convs + others:
        assert_whole_turns(rc, K.chat("default", conv).encode())
    # cache hits come back (an answer lost with the master is stored again)
    for q in qs:
        wait_until(lambda: g.chat(q).headers["X-Semgate-Cache"] == "hit-exact", timeout=5,
                   what="cache hits after the failover")


def test_a_slot_migration_under_load_reaches_no_client(make_gateway, redis_db, upstream,
                                                        cluster):
    g = cluster_gateway(make_gateway, cluster)
    rc = cluster.client()
    qs = [user(f"reshard question {i}") for i in range(16)]
    for q in qs:
        g.chat(q)
    convs = [f"r-{i}" for i in range(8)]
    stored = []

    def one(i, n):
        if n % 4 == 0:
            return "turn", g.chat(user(f"turn {n} of {i}"), timeout=15 * SLOW,
                                  headers={"X-Conversation-Id": convs[(i + n) % 8]})
        if n % 4 == 1:
            r = requests.post(g.url + "/v1/cache/entries", timeout=15 * SLOW,
                              json={"query": f"stored {i} {n}", "answer": "a", "tags": ["mv"]})
            if r.status_code == 201:
                stored.append(r.json()["id"])
            return "store", r
        if n % 4 == 2:
            return "stats", requests.get(g.url + "/v1/cache/stats", timeout=15 * SLOW)
        return "hit", g.chat(qs[(i + n) % len(qs)], timeout=15 * SLOW)

    masters = cluster.master_ports()
    src, dst = masters[0], masters[1]
    with Load(one, 6) as load:
        load.run_for(0.5)
        load.phase = "moving"
        r = subprocess.run(
            ["redis-cli", "--cluster", "reshard", f"127.0.0.1:{src}",
             "--cluster-from", node_id(cluster, src), "--cluster-to", node_id(cluster, dst),
             "--cluster-slots", "1500", "--cluster-yes", "--cluster-pipeline", "10"],
            capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
        load.phase = "after"
        load.run_for(0.5)
    moved = len(re.findall(r"^Moving slot", r.stdout, re.M))
    print(f"reshard: {moved} slots moved under {len(load.results)} requests")
    assert moved == 1500
    assert g.alive()
    res = load.results
    bad = [r for r in res if r[4] or r[2] not in (200, 201)]
    assert not bad, bad[:5]
    # nothing the migration touched was lost or torn
    assert all(r[3] in ("hit-exact", "hit-semantic") for r in res if r[1] == "hit"), \
        [r for r in res if r[1] == "hit" and r[3] not in ("hit-exact", "hit-semantic")][:5]
    for conv in convs:
        assert_whole_turns(rc, K.chat("default", conv).encode())
    for eid in stored[:50]:
        assert requests.get(g.url + "/v1/cache/entries/" + eid, timeout=10).status_code == 200
    assert requests.post(g.url + "/v1/cache/invalidate", json={"tag": "mv"},
                         timeout=30).json() == {"deleted": len(stored)}


def test_connections_cut_during_a_big_resync_pipeline_leave_the_gateway_whole(
        make_gateway, redis_db, upstream, cluster):
    """A resync reads entries 1,000 keys at a time: 2,000 commands to one
    node in one pipeline. Cutting the gateway's connections again and again
    while it runs (CLIENT KILL on every master) once freed a connection an
    earlier command of that pipeline still held, and the read crashed (seen
    by ASan as a use after free). Now each batch fails cleanly, the resync
    is retried, and once the cutting stops the index holds every entry."""
    from test_warm_start import fill_partition
    g = cluster_gateway(make_gateway, cluster, SEMGATE_EMBED_URL="")
    rc = cluster.client()
    r = g.chat(user("the template question"))
    assert r.headers["X-Semgate-Cache"] == "miss"
    g.settle()
    fill_partition(rc, K.entry("default", r.headers["X-Semgate-Entry"]).encode(), 3000)
    stop = threading.Event()
    kills = [0]

    def cut():
        nodes = [cluster.node(p) for p in cluster.master_ports()]
        while not stop.is_set():
            for n in nodes:
                for kind in ("pubsub", "normal"):
                    try:
                        kills[0] += n.execute_command("CLIENT", "KILL", "TYPE", kind,
                                                      "SKIPME", "yes")
                    except redis.RedisError:
                        pass
            time.sleep(0.002)

    t = threading.Thread(target=cut)
    t.start()
    try:
        deadline = time.monotonic() + 4 * SLOW
        while time.monotonic() < deadline:
            assert g.alive(), g.logs()[-3000:]
            try:
                g.chat(user(f"while cut {time.monotonic()}"), timeout=10 * SLOW)
            except requests.RequestException:
                pass
    finally:
        stop.set()
        t.join()
    assert kills[0] > 20
    assert g.alive(), g.logs()[-3000:]
    wait_until(lambda: "index resynchronised" in g.logs(), timeout=30,
               what="a resync to complete")
    assert g.readyz().get("index_entries", 0) >= 3001


def test_stores_piled_behind_a_paused_cluster_fail_only_on_the_node_that_dies(
        make_gateway, redis_db, upstream, cluster):
    """The store writer pipelines the stores of one node at a time, so a
    master killed while stores pile up costs only the stores whose keys it
    serves; those of the other nodes are stored, and counted as stored."""
    g = cluster_gateway(make_gateway, cluster, SEMGATE_REDIS_TIMEOUT_MS=20000)
    nodes = {p: cluster.node(p) for p in cluster.master_ports()}
    for n in nodes.values():
        n.execute_command("CLIENT", "PAUSE", 20000, "WRITE")
    victim = sorted(nodes)[0]
    try:
        first, out = pile_stores(g, "cluster pile", 30)
        ids = [first.headers["X-Semgate-Entry"]] + [r.headers["X-Semgate-Entry"]
                                                     for r in out.values()]
        home = {i: master_of(cluster, K.entry("default", i)) for i in ids}
        on_victim = {i for i in ids if home[i] == victim}
        assert 0 < len(on_victim) < len(ids)
        cluster.kill(victim)
    finally:
        for p, n in nodes.items():
            if p != victim:
                n.execute_command("CLIENT", "UNPAUSE")
    wait_until(lambda: metric(g, "semgate_cache_stores_pending") == 0, timeout=30 * SLOW,
               what="every store to end")
    failed = metric(g, 'semgate_cache_stores_behind_total{result="failed"}')
    stored = metric(g, 'semgate_cache_stores_behind_total{result="stored"}')
    assert failed + stored == len(ids)
    # only stores on the killed master may fail (its replica may take over
    # in time for some of them)
    assert failed <= len(on_victim), (failed, len(on_victim), len(ids))
    # read from each entry's own master, which never went down (a cluster
    # client would also try the dead node, still listed as a replica)
    for i in set(ids) - on_victim:
        assert cluster.node(home[i]).exists(K.entry("default", i)), i
    assert g.alive()


def test_a_hot_cache_refused_by_a_master_comes_on_once_the_master_allows_it(
        make_gateway, cluster, upstream):
    # one master refuses CLIENT TRACKING while the gateway starts: its events
    # connection lives, so only a retry can turn the hot exact cache on
    port = cluster.master_ports()[0]
    cluster.node(port).execute_command("ACL", "SETUSER", "default", "-client|tracking")
    g = cluster_gateway(make_gateway, cluster)
    wait_until(lambda: "hot exact cache off" in g.logs(), timeout=10 * SLOW)
    q = user("hot after a refusal")
    r = g.chat(q)
    assert r.headers.get("X-Semgate-Cache") == "miss", r.text
    g.settle()
    for _ in range(3):
        assert g.chat(q).headers["X-Semgate-Cache"] == "hit-exact"
    assert metric(g, "semgate_hot_cache_keys") == 0
    assert metric(g, "semgate_hot_cache_hits_total") == 0
    cluster.node(port).execute_command("ACL", "SETUSER", "default", "+client|tracking")
    wait_until(lambda: "hot exact cache on" in g.logs(), timeout=20 * SLOW,
               what="the tracking retried")
    # the copy comes from a read made after the tracking took, and is used
    assert g.chat(q).headers["X-Semgate-Cache"] == "hit-exact"
    assert g.chat(q).headers["X-Semgate-Cache"] == "hit-exact"
    assert metric(g, "semgate_hot_cache_hits_total") >= 1
    assert metric(g, "semgate_hot_cache_keys") == 1
    # and a change in Redis, on whichever master holds the key, takes it away
    gone = 0
    for p in cluster.master_ports():
        for k in cluster.node(p).scan_iter(match=K.pattern("x")):
            gone += cluster.node(p).delete(k)
    assert gone == 1
    wait_until(lambda: metric(g, "semgate_hot_cache_keys") == 0, timeout=5 * SLOW,
               what="the invalidation")
    hot = metric(g, "semgate_hot_cache_hits_total")
    assert g.chat(q).headers["X-Semgate-Cache"] != "hit-exact"
    assert metric(g, "semgate_hot_cache_hits_total") == hot
