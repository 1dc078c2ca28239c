"""Sentinel mode under faults, on a deployment of this module's own (master,
replica, 3 sentinels on loopback): the master killed by its pid during
mixed traffic, a graceful SENTINEL FAILOVER, WAIT keeping every
acknowledged turn across a failover, and WAIT's error when no replica
answers. Bounded: every wait is a deadline."""
import collections
import re
import threading
import time

import pytest
import requests

from conftest import SLOW, RedisServer, user, wait_until
from redis_sentinel import SentinelRedis, start_node

SEEDED = [f"What is the capital of country number {i}?" for i in range(4)]


@pytest.fixture(scope="module")
def deployment(tmpdir_session):
    d = SentinelRedis(tmpdir_session, replicas=1, down_after_ms=1000, failover_timeout_ms=3000)
    d.start()
    yield d
    d.shutdown()


@pytest.fixture
def sentinel(deployment):
    """The deployment whole again (a previous test killed a node), emptied."""
    for n in deployment.nodes:
        if n.proc is None:
            deployment.restart_node(n.port)
    deployment.wait_settled()
    deployment.client().flushall()
    return deployment


def through(d, **env):
    return {**d.gateway_env(), "SEMGATE_REDIS_TIMEOUT_MS": 300, "SEMGATE_HISTORY_MAX": 10000,
            **env}


def append(g, cid, k, timeout=30):
    return requests.post(f"{g.url}/v1/conversations/{cid}/messages", timeout=timeout * SLOW,
                         json={"messages": [{"role": "user", "content": f"{cid} q{k}"},
                                            {"role": "assistant", "content": f"{cid} a{k}"}]})


def history(g, cid):
    r = requests.get(f"{g.url}/v1/conversations/{cid}", timeout=10)
    if r.status_code == 404:
        return []
    assert r.status_code == 200, r.text
    return [m["content"] for m in r.json()["messages"]]


def assert_whole_turns(cid, contents):
    """Every turn is both of its messages, in order, each once."""
    assert len(contents) % 2 == 0, contents
    last = -1
    for i in range(0, len(contents), 2):
        q = re.fullmatch(rf"{re.escape(cid)} q(\d+)", contents[i])
        a = re.fullmatch(rf"{re.escape(cid)} a(\d+)", contents[i + 1])
        assert q and a and q.group(1) == a.group(1), contents[i:i + 2]
        assert int(q.group(1)) > last, contents
        last = int(q.group(1))


class Traffic:
    """Conversation appends and chat hits and misses in threads, until stopped."""

    def __init__(self, g, convs=3, chatters=2):
        self.g = g
        self.stop = threading.Event()
        self.acked = collections.defaultdict(list)
        self.append_status = collections.Counter()
        self.chat_bad = []
        self.chats = collections.Counter()
        self.threads = [threading.Thread(target=self._appends, args=(f"conv-{i}",))
                        for i in range(convs)]
        self.threads += [threading.Thread(target=self._chats, args=(i,))
                         for i in range(chatters)]

    def __enter__(self):
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        for t in self.threads:
            t.join(timeout=60 * SLOW)
        assert not any(t.is_alive() for t in self.threads)

    def _appends(self, cid):
        k = 0
        while not self.stop.is_set():
            r = append(self.g, cid, k)
            self.append_status[r.status_code] += 1
            if r.status_code == 201:
                self.acked[cid].append(k)
            else:
                # Redis unavailable mid-failover: a JSON error, never a hang or a 500
                assert r.status_code == 503, r.text
                assert r.json()["error"]["code"] in ("redis_unavailable",
                                                     "replicas_unconfirmed"), r.text
            k += 1

    def _chats(self, i):
        n = 0
        while not self.stop.is_set():
            q = SEEDED[n % len(SEEDED)] if n % 2 else f"fresh {i} {n} {time.monotonic_ns()}"
            r = self.g.chat(user(q))
            # a chat never fails for want of Redis: it bypasses the cache
            if r.status_code != 200:
                self.chat_bad.append((r.status_code, r.text))
            else:
                self.chats[r.headers.get("X-Semgate-Cache")] += 1
            n += 1


def metric(g, name):
    text = requests.get(g.url + "/metrics", timeout=5).text
    m = re.search(rf"^{name} (\S+)$", text, re.M)
    return float(m.group(1)) if m else None


def seed(d, g, upstream):
    for q in SEEDED:
        assert g.chat(user(q)).headers["X-Semgate-Cache"] == "miss"
        assert g.chat(user(q)).headers["X-Semgate-Cache"] == "hit-exact"
    # the replica has it all before anything is killed
    assert d.client().execute_command("WAIT", 1, 10000) >= 1


def follows_within_5s(g, cid="probe"):
    """After the sentinels finished the failover, the gateway writes to the
    new master within 5 s (scaled for slow builds)."""
    t0 = time.monotonic()
    k = iter(range(10 ** 6))
    wait_until(lambda: append(g, cid, next(k), timeout=5).status_code == 201, timeout=5.0,
               interval=0.05, what="the gateway to write to the new master")
    return time.monotonic() - t0


def check_after_failover(d, g, other, upstream, traffic, resyncs_before):
    assert g.alive() and other.alive()
    assert not traffic.chat_bad, traffic.chat_bad[:3]
    assert traffic.append_status[201] > 0 and traffic.chats["hit-exact"] > 0, \
        (traffic.append_status, traffic.chats)
    for cid in list(traffic.acked) + ["probe"]:
        assert_whole_turns(cid, history(g, cid))
    # the entries stored before the failover are still hits
    for q in SEEDED:
        assert g.chat(user(q)).headers["X-Semgate-Cache"] == "hit-exact"
    # the follower resubscribed on the new master and rescanned it
    wait_until(lambda: g.logs().count("index resynchronised") > resyncs_before,
               timeout=10, what="the index to resynchronise")
    assert "redis master is now" in g.logs()
    assert metric(g, "semgate_redis_master_changes_total") >= 1
    # an answer cached through the other gateway after the switch reaches
    # this one's index by the events on the new master: a semantic hit
    q = f"After the failover, what is new {time.monotonic_ns()}?"
    assert other.chat(user(q)).headers["X-Semgate-Cache"] == "miss"
    upstream.set_similarity(q.lower().rstrip("?"), q, 0.97)
    wait_until(lambda: g.chat(user(q.lower().rstrip("?"))).headers["X-Semgate-Cache"]
               == "hit-semantic", timeout=10, what="a semantic hit after the failover")


def failover_under_traffic(d, make_gateway, upstream, trigger):
    g = make_gateway(through(d))
    other = make_gateway(through(d))
    seed(d, g, upstream)
    wait_until(lambda: "index rebuilt" in g.logs(), what="the first index load")
    resyncs = g.logs().count("index resynchronised")
    with Traffic(g) as traffic:
        wait_until(lambda: traffic.append_status[201] >= 10, timeout=30,
                   what="traffic to get going")
        old = trigger()
        d.wait_failover_from(old)
        follows_within_5s(g)
        time.sleep(0.5)  # traffic on the new master for a moment
    check_after_failover(d, g, other, upstream, traffic, resyncs)
    return traffic


def test_master_killed_under_traffic_the_gateway_follows(sentinel, make_gateway, upstream):
    failover_under_traffic(sentinel, make_gateway, upstream, sentinel.kill_master)


def test_graceful_sentinel_failover_under_traffic(sentinel, make_gateway, upstream):
    def failover():
        old = sentinel.master_port()
        assert sentinel.sentinels[0].client().execute_command(
            "SENTINEL", "FAILOVER", "sgmaster") in ("OK", b"OK", True)
        return old
    failover_under_traffic(sentinel, make_gateway, upstream, failover)


def test_with_wait_every_acknowledged_turn_survives_the_master_kill(sentinel, make_gateway,
                                                                     upstream):
    g = make_gateway(through(sentinel, SEMGATE_REDIS_WAIT_REPLICAS=1,
                             SEMGATE_REDIS_WAIT_TIMEOUT_MS=2000))
    with Traffic(g, convs=4, chatters=0) as traffic:
        wait_until(lambda: sum(len(v) for v in traffic.acked.values()) >= 40, timeout=30,
                   what="acknowledged turns")
        old = sentinel.kill_master()  # right after acknowledged writes, more in flight
        sentinel.wait_failover_from(old)
        # the gateway writes to the new master at once, but that one has no
        # replica yet: nothing is acknowledged until the old one rejoins
        k = iter(range(10 ** 6))
        wait_until(lambda: append(g, "probe", next(k), timeout=5).json()["error"]["code"]
                   == "replicas_unconfirmed", timeout=5.0, interval=0.05,
                   what="the gateway to write to the new master")
        sentinel.restart_node(old)
        wait_until(lambda: append(g, "probe", next(k), timeout=5).status_code == 201,
                   timeout=10, interval=0.05, what="acknowledged writes again")
    assert g.alive()
    assert traffic.append_status[201] >= 40
    for cid, acked in traffic.acked.items():
        contents = history(g, cid)
        assert_whole_turns(cid, contents)
        have = {int(c.rsplit("q", 1)[1]) for c in contents[::2]}
        lost = [k for k in acked if k not in have]
        assert not lost, f"{cid}: acknowledged turns lost in the failover: {lost}"


def test_wait_without_a_replica_is_a_prompt_503_and_works_with_one(tmpdir_session,
                                                                  make_gateway, upstream):
    """Single-server mode: WAIT is honoured too, with a replica or without."""
    master = RedisServer(tmpdir_session)
    master.start()
    replica = RedisServer(tmpdir_session)
    try:
        g = make_gateway(SEMGATE_REDIS_PORT=master.port, SEMGATE_REDIS_WAIT_REPLICAS=1,
                         SEMGATE_REDIS_WAIT_TIMEOUT_MS=500)
        t0 = time.monotonic()
        r = append(g, "lonely", 0)
        took = time.monotonic() - t0
        assert r.status_code == 503, r.text
        assert r.headers["Content-Type"].startswith("application/json")
        err = r.json()["error"]
        assert err["code"] == "replicas_unconfirmed" and err["type"] == "service_unavailable"
        assert "0 of 1 replicas" in err["message"] and "500 ms" in err["message"]
        assert took < 0.5 + 5 * SLOW, took  # the WAIT timeout, not a hang
        # documented: the write stays on the master, only unacknowledged
        assert history(g, "lonely") == ["lonely q0", "lonely a0"]
        # a chat turn's answer is still served; its memory is marked unconfirmed
        c = g.chat(user("remember me"), headers={"X-Conversation-Id": "chatty"})
        assert c.status_code == 200 and c.headers["X-Semgate-Memory"] == "unconfirmed"
        # with a replica attached, the same writes are acknowledged
        start_node(replica, master.port)
        r = append(g, "lonely", 1)
        assert r.status_code == 201, r.text
        c = g.chat(user("remember me too"), headers={"X-Conversation-Id": "chatty"})
        assert c.headers["X-Semgate-Memory"] == "stored"
        assert replica.client().lrange(
            next(iter(replica.client().scan_iter(match="*lonely*"))), 0, -1)[-1].find(
            b"lonely a1") >= 0
    finally:
        replica.stop()
        master.stop()
