"""A real Redis Sentinel deployment for the integration tests: a master, its
replicas and three sentinels (quorum 2) on free loopback ports, in a temp
dir, each process stopped by its pid. It offers what the single RedisServer
offers (start, stop, client, port, proc) so the whole suite runs through it
(SEMGATE_TEST_REDIS=sentinel), plus the failover controls test_sentinel.py
uses. "Redis is down" (stop) means every data node is down; the sentinels
stay up, as they would on their own machines."""
import os
import subprocess
import tempfile

import redis as redis_lib

from conftest import SLOW, RedisServer, wait_until

MASTER_NAME = "sgmaster"


class Sentinel(RedisServer):
    """A redis-server --sentinel; stop() is RedisServer's (SIGKILL by pid)."""

    def __init__(self, tmpdir, master_port, down_after_ms, failover_timeout_ms):
        super().__init__(tmpdir)
        self.dir = tempfile.mkdtemp(dir=tmpdir, prefix=f"sentinel-{self.port}-")
        self.conf = os.path.join(self.dir, "sentinel.conf")
        with open(self.conf, "w") as f:
            f.write(f"port {self.port}\nbind 127.0.0.1\ndir {self.dir}\n"
                    f"sentinel monitor {MASTER_NAME} 127.0.0.1 {master_port} 2\n"
                    f"sentinel down-after-milliseconds {MASTER_NAME} {down_after_ms}\n"
                    f"sentinel failover-timeout {MASTER_NAME} {failover_timeout_ms}\n"
                    f"sentinel parallel-syncs {MASTER_NAME} 1\n")

    def start(self):
        with open(os.path.join(self.dir, "sentinel.log"), "ab") as log:
            self.proc = subprocess.Popen(["redis-server", self.conf, "--sentinel"],
                                         stdout=log, stderr=log)
        wait_until(lambda: self.client().ping(), what="a sentinel to start")

    def client(self):
        return redis_lib.Redis(host="127.0.0.1", port=self.port, socket_timeout=5,
                               decode_responses=True)


class SentinelRedis:
    """node 0 starts as the master, the others as its replicas."""

    # sentinels PING, INFO and PUBLISH hellos to the master (and may CLIENT
    # KILL or CONFIG REWRITE); replicas REPLCONF ACK every second
    background_commands = frozenset({"cmdstat_ping", "cmdstat_info", "cmdstat_publish",
                                     "cmdstat_replconf", "cmdstat_client|setname",
                                     "cmdstat_client|kill", "cmdstat_config|rewrite"})

    def __init__(self, tmpdir, replicas=1, down_after_ms=1000, failover_timeout_ms=3000):
        self.tmpdir = tempfile.mkdtemp(dir=tmpdir, prefix="sentinel-redis-")
        self.nodes = [RedisServer(self.tmpdir) for _ in range(1 + replicas)]
        for i, n in enumerate(self.nodes):
            n.tmpdir = os.path.join(self.tmpdir, f"node-{n.port}")
            os.makedirs(n.tmpdir)
        self.sentinels = [Sentinel(self.tmpdir, self.nodes[0].port, down_after_ms,
                                   failover_timeout_ms) for _ in range(3)]
        self.master_port_now = self.nodes[0].port
        self.started = False

    # ---- what RedisServer offers ----

    def gateway_env(self):
        return {"SEMGATE_REDIS_SENTINELS":
                ",".join(f"127.0.0.1:{s.port}" for s in self.sentinels),
                "SEMGATE_REDIS_MASTER_NAME": MASTER_NAME}

    @property
    def port(self):
        return self.master_port()

    @property
    def proc(self):
        """The master's process; None while the data nodes are stopped."""
        m = self.node(self.master_port_now)
        return m.proc if m else None

    def client(self):
        return self.node(self.master_port()).client()

    def start(self):
        """First call: the whole deployment. After stop(): the data nodes
        again, in the roles the sentinels now give them, master first."""
        if not self.started:
            start_node(self.nodes[0], None)
            for n in self.nodes[1:]:
                start_node(n, self.nodes[0].port)
            for s in self.sentinels:
                s.start()
            self.started = True
        else:
            master = self.master_port()
            start_node(self.node(master), None)
            wait_until(lambda: all("s_down" not in self._flags(s) for s in self.sentinels
                                   if s.proc), timeout=20, what="the sentinels to see the master")
            for n in self.nodes:
                if n.proc is None:
                    start_node(n, master)
        self.wait_settled()

    def stop(self):
        """Redis down: every data node killed (by pid); sentinels stay up."""
        self.master_port_now = self.master_port()
        for n in self.nodes:
            n.stop()

    def shutdown(self):
        for s in self.sentinels:
            s.stop()
        for n in self.nodes:
            n.stop()

    def set_password(self, pw):
        """requirepass on every data node, with the replicas' masterauth and
        the sentinels' auth-pass to match, so no failover follows."""
        for s in self.sentinels:
            if s.proc:
                s.client().execute_command("SENTINEL", "SET", MASTER_NAME, "auth-pass", pw)
        for n in self.nodes:
            if n.proc:
                c = n.client()
                old = getattr(self, "password", "")
                if old:
                    c.execute_command("AUTH", old)
                c.config_set("masterauth", pw)
                c.config_set("requirepass", pw)
        self.password = pw

    def flush(self):
        self.client().flushall()

    def any_node(self):
        """A plain client of the master (for PUBLISH and server commands)."""
        return self.client()

    def config_set(self, name, value, password=None):
        """CONFIG SET on every data node."""
        for n in self.nodes:
            if n.proc:
                c = n.client()
                if password:
                    c.execute_command("AUTH", password)
                c.config_set(name, value)

    # ---- failover controls ----

    def node(self, port):
        for n in self.nodes:
            if n.port == port:
                return n
        return None

    def master_port(self):
        last = None
        for s in self.sentinels:
            if s.proc is None:
                continue
            try:
                _, port = s.client().execute_command("SENTINEL", "get-master-addr-by-name",
                                                     MASTER_NAME)
                self.master_port_now = int(port)
                return self.master_port_now
            except Exception as exc:  # noqa: BLE001 - try the next sentinel
                last = exc
        if last is None:
            return self.master_port_now
        raise AssertionError(f"no sentinel names the master: {last!r}")

    def replicas(self):
        m = self.master_port()
        return [n for n in self.nodes if n.port != m]

    def kill_master(self):
        """SIGKILL the current master by its pid; returns its old port."""
        port = self.master_port()
        self.node(port).stop()
        return port

    def restart_node(self, port):
        """Bring a killed node back as a replica of the current master."""
        start_node(self.node(port), self.master_port())

    def wait_failover_from(self, old_port, timeout=30):
        """Until every sentinel names a master other than old_port and that
        server says it is a master."""
        def moved():
            ports = {int(s.client().execute_command("SENTINEL", "get-master-addr-by-name",
                                                    MASTER_NAME)[1])
                     for s in self.sentinels if s.proc}
            if len(ports) != 1 or old_port in ports:
                return False
            port = ports.pop()
            return self.node(port).client().execute_command("ROLE")[0] == b"master" and port
        return wait_until(moved, timeout=timeout, interval=0.1, what="the failover")

    def wait_settled(self, timeout=30):
        """Until every sentinel knows the master, its live replicas (linked
        up) and the other two sentinels."""
        live = [n for n in self.nodes if n.proc]

        def settled():
            master = self.master_port()
            for s in self.sentinels:
                if s.proc is None:
                    continue
                c = s.client()
                info = c.execute_command("SENTINEL", "master", MASTER_NAME)
                info = dict(zip(info[::2], info[1::2])) if isinstance(info, list) else info
                if int(info["port"]) != master or "down" in info["flags"]:
                    return False
                if int(info["num-other-sentinels"]) < sum(1 for x in self.sentinels
                                                          if x.proc) - 1:
                    return False
                reps = c.execute_command("SENTINEL", "replicas", MASTER_NAME)
                up = 0
                for r in reps:
                    r = dict(zip(r[::2], r[1::2])) if isinstance(r, list) else r
                    if "down" not in r["flags"] and r.get("master-link-status") == "ok":
                        up += 1
                if up < len(live) - 1:
                    return False
            return True
        wait_until(settled, timeout=timeout, interval=0.1, what="the sentinels to settle")

    # ---- internals ----

    def _flags(self, s):
        info = s.client().execute_command("SENTINEL", "master", MASTER_NAME)
        info = dict(zip(info[::2], info[1::2])) if isinstance(info, list) else info
        return info["flags"]


def start_node(n, replica_of=None):
    """Start RedisServer n (again, on its port), as a replica of the server
    on port replica_of when given (then until it has synced)."""
    args = ["redis-server", "--port", str(n.port), "--bind", "127.0.0.1",
            "--save", "", "--appendonly", "no", "--dir", n.tmpdir]
    if replica_of:
        args += ["--replicaof", "127.0.0.1", str(replica_of)]
    n.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_until(lambda: n.client().ping(), what="redis to start")
    if replica_of:
        def linked():
            info = n.client().info("replication")
            return info.get("master_link_status") == "up"
        wait_until(linked, timeout=20 * SLOW, what="a replica to sync")
