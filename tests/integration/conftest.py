"""Fixtures for semgate's integration tests: a real redis-server, the
project's mock OpenAI upstream and the real semgate binary, each on a free
loopback port, started and stopped by the tests themselves."""
import json
import os
import signal
import socket
import subprocess
import tempfile
import time

import pytest
import redis as redis_lib
import redis.cluster
import requests

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BUILD = os.environ.get("SEMGATE_BUILD_DIR", os.path.join(ROOT, "build"))
SEMGATE_BIN = os.path.join(BUILD, "semgate")
MOCK_BIN = os.path.join(BUILD, "tests", "upstream", "sg-mock-upstream")
# Sanitizer builds are slower; every wait below is a deadline, never a sleep.
SANITIZED = bool(os.environ.get("SEMGATE_SANITIZED"))
SLOW = 3.0 if SANITIZED else 1.0


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def metric(gw, name):
    """The value of an unlabelled metric in gw's /metrics."""
    for line in requests.get(gw.url + "/metrics", timeout=10).text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(name + " not in /metrics")


def wait_until(pred, timeout=10.0, interval=0.02, what="condition"):
    deadline = time.monotonic() + timeout * SLOW
    last = None
    while time.monotonic() < deadline:
        try:
            last = pred()
            if last:
                return last
        except Exception as exc:  # noqa: BLE001 - keep polling until the deadline
            last = exc
        time.sleep(interval)
    raise AssertionError(f"timed out waiting for {what} (last: {last!r})")


class RedisServer:
    # commands (INFO commandstats names) that reach the server from the
    # deployment itself rather than from a gateway: none on a lone server
    background_commands = frozenset()

    def __init__(self, tmpdir):
        self.port = free_port()
        self.tmpdir = tmpdir
        self.proc = None

    def start(self):
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1",
             "--save", "", "--appendonly", "no", "--dir", self.tmpdir],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_until(lambda: self.client().ping(), what="redis to start")

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)
        self.proc = None

    def client(self):
        return redis_lib.Redis(host="127.0.0.1", port=self.port,
                               socket_timeout=5, decode_responses=False)

    def gateway_env(self):
        return {"SEMGATE_REDIS_PORT": str(self.port)}

    def set_password(self, pw):
        c = self.client()
        if getattr(self, "password", ""):
            c.execute_command("AUTH", self.password)
        c.config_set("requirepass", pw)
        self.password = pw

    def shutdown(self):
        self.stop()

    def flush(self):
        self.client().flushall()

    def any_node(self):
        """A plain client of one node (for PUBLISH and server commands)."""
        return self.client()

    def config_set(self, name, value, password=None):
        c = self.client()
        if password:
            c.execute_command("AUTH", password)
        c.config_set(name, value)


class ClusterClient(redis.cluster.RedisCluster):
    """redis-py's cluster client, with KEYS over every master (redis-py sends
    it to one node only)."""

    def keys(self, pattern="*", **kwargs):
        kwargs.setdefault("target_nodes", self.PRIMARIES)
        return super().keys(pattern, **kwargs)

    def flushdb(self, *args, **kwargs):
        kwargs.setdefault("target_nodes", self.PRIMARIES)
        return super().flushdb(*args, **kwargs)

    def config_resetstat(self, **kwargs):
        kwargs.setdefault("target_nodes", self.PRIMARIES)
        return super().config_resetstat(**kwargs)

    def info(self, section=None, *args, **kwargs):
        """INFO commandstats summed over the masters (other sections: one node)."""
        if section != "commandstats":
            return super().info(section, *args, **kwargs)
        out = {}
        for node in self.get_primaries():
            for k, v in super().info(section, target_nodes=node).items():
                acc = out.setdefault(k, {"calls": 0, "failed_calls": 0})
                acc["calls"] += v.get("calls", 0)
                acc["failed_calls"] += v.get("failed_calls", 0)
        return out


def on_masters(r, *cmd):
    """Run a server command (CLIENT PAUSE, ...) on every master: the one
    Redis, or each master of a cluster."""
    if isinstance(r, redis.cluster.RedisCluster):
        return r.execute_command(*cmd, target_nodes=r.PRIMARIES)
    return r.execute_command(*cmd)


def free_cluster_port(taken=()):
    """A free port whose cluster bus port (+10000) is free too."""
    for _ in range(1000):
        p = free_port()
        if p >= 55535 or p in taken or p + 10000 in taken:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind(("127.0.0.1", p + 10000))
            except OSError:
                continue
        return p
    raise AssertionError("no free port pair below 55535")


class RedisCluster:
    """A real local Redis Cluster: `masters` masters with `replicas` replicas
    each (redis-server --cluster-enabled yes + redis-cli --cluster create),
    on free loopback ports, in a temp dir. stop() and start() take every node
    down and up again (their nodes.conf survives: the same cluster, empty)."""
    # what the replicas send their masters on their own
    background_commands = frozenset({"cmdstat_replconf", "cmdstat_ping"})

    def __init__(self, tmpdir, masters=3, replicas=1):
        self.ports = []
        for _ in range(masters * (1 + replicas)):
            self.ports.append(free_cluster_port(self.ports))
        self.port = self.ports[0]
        self.dir = os.path.join(tmpdir, f"cluster-{self.port}")
        self.masters, self.replicas = masters, replicas
        self.procs = {}
        self.created = False

    def start_node(self, port):
        d = os.path.join(self.dir, str(port))
        os.makedirs(d, exist_ok=True)
        self.procs[port] = subprocess.Popen(
            ["redis-server", "--port", str(port), "--bind", "127.0.0.1",
             "--save", "", "--appendonly", "no", "--dir", d,
             "--logfile", os.path.join(d, "redis.log"),
             "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
             "--cluster-node-timeout", "1000", "--cluster-require-full-coverage", "no"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_until(lambda: self.node(port).ping(), what=f"redis node {port} to start")

    def start(self):
        for p in self.ports:
            if p not in self.procs or self.procs[p].poll() is not None:
                self.start_node(p)
        if not self.created:
            r = subprocess.run(["redis-cli", "--cluster", "create",
                                *[f"127.0.0.1:{p}" for p in self.ports],
                                "--cluster-replicas", str(self.replicas), "--cluster-yes"],
                               capture_output=True, text=True, timeout=120)
            assert r.returncode == 0, r.stdout + r.stderr
            self.created = True
        self.wait_ok()

    def wait_ok(self, timeout=60):
        def ok():
            live = [p for p in self.ports if self.procs.get(p) and self.procs[p].poll() is None]
            for p in live:
                info = self.node(p).execute_command("CLUSTER", "INFO").decode()
                if "cluster_state:ok" not in info:
                    return False
                slots = self.node(p).execute_command("CLUSTER", "SLOTS")
                if sum(int(s[1]) - int(s[0]) + 1 for s in slots) != 16384:
                    return False
                # a replica that never synced could not take over
                repl = self.node(p).info("replication")
                if repl.get("role") == "slave" and repl.get("master_link_status") != "up":
                    return False
            return len(self.master_ports()) == self.masters
        wait_until(ok, timeout=timeout, interval=0.1, what="cluster_state:ok")

    def node(self, port):
        return redis_lib.Redis(host="127.0.0.1", port=port, socket_timeout=5)

    def master_ports(self):
        out = []
        for p in self.ports:
            if self.procs.get(p) is None or self.procs[p].poll() is not None:
                continue
            try:
                if self.node(p).execute_command("ROLE")[0] == b"master":
                    out.append(p)
            except redis_lib.RedisError:
                pass
        return out

    def kill(self, port):
        """Kill one node (SIGKILL, by pid), as a crash would."""
        proc = self.procs.pop(port)
        proc.kill()
        proc.wait(timeout=10)

    def stop(self):
        for p in list(self.procs):
            self.kill(p)
        self.procs = {}

    @property
    def proc(self):
        """Like RedisServer.proc: None once stopped."""
        return next(iter(self.procs.values()), None)

    def client(self):
        return ClusterClient(host="127.0.0.1", port=self.master_ports()[0],
                             socket_timeout=5, decode_responses=False)

    def flush(self):
        for p in self.master_ports():
            self.node(p).flushall()

    def any_node(self):
        """A plain client of one node (for PUBLISH and server commands)."""
        return self.node(self.master_ports()[0])

    def config_set(self, name, value, password=None):
        """CONFIG SET on every node (masters and replicas)."""
        for p in self.ports:
            if self.procs.get(p) is not None and self.procs[p].poll() is None:
                redis_lib.Redis(host="127.0.0.1", port=p, socket_timeout=5,
                                password=password).config_set(name, value)

    def seeds(self):
        return ",".join(f"127.0.0.1:{p}" for p in self.ports)

    def shutdown(self):
        self.stop()

    def set_password(self, pw):
        self.config_set("requirepass", pw, password=getattr(self, "password", "") or None)
        self.password = pw

    def gateway_env(self):
        return {"SEMGATE_REDIS_CLUSTER": self.seeds()}


def redis_mode():
    """SEMGATE_TEST_REDIS: single (the default), sentinel or cluster: the one
    switch between the Redis deployments the suite runs against."""
    mode = os.environ.get("SEMGATE_TEST_REDIS") or "single"
    assert mode in ("single", "sentinel", "cluster"), \
        f"SEMGATE_TEST_REDIS={mode!r}: expected single, sentinel or cluster"
    return mode


REDIS_MODE = redis_mode()


def make_redis(tmpdir, mode=REDIS_MODE):
    """The Redis deployment of this mode, started. Each offers start, stop
    (Redis down), client (the current master, or a cluster client), port,
    gateway_env (what points a gateway at it), flush, any_node, config_set,
    set_password and shutdown."""
    if mode == "single":
        srv = RedisServer(tmpdir)
    elif mode == "sentinel":
        from redis_sentinel import SentinelRedis
        srv = SentinelRedis(tmpdir)
    else:
        srv = RedisCluster(tmpdir)
    srv.start()
    return srv


class MockUpstream:
    def __init__(self, tmpdir, extra_args=()):
        self.port_file = os.path.join(tmpdir, f"mock-{os.getpid()}-{time.monotonic_ns()}.port")
        self.log = open(os.path.join(tmpdir, "mock.log"), "ab")
        self.proc = subprocess.Popen(
            [MOCK_BIN, "--port", "0", "--port-file", self.port_file, *extra_args],
            stdout=self.log, stderr=self.log)
        self.port = int(wait_until(lambda: os.path.exists(self.port_file)
                                   and open(self.port_file).read().strip(),
                                   what="mock upstream port"))
        self.url = f"http://127.0.0.1:{self.port}"
        self.base = self.url + "/v1"
        wait_until(lambda: requests.get(self.url + "/healthz", timeout=2).ok,
                   what="mock upstream")

    def stats(self):
        return requests.get(self.url + "/stats", timeout=5).json()

    def reset(self):
        requests.post(self.url + "/reset", timeout=5).raise_for_status()

    def control(self, **kw):
        r = requests.post(self.url + "/control", json=kw, timeout=5)
        r.raise_for_status()
        return r.json()

    def set_similarity(self, text, like, similarity):
        r = requests.post(self.url + "/control/embeddings",
                          json={"text": text, "like": like, "similarity": similarity},
                          timeout=5)
        r.raise_for_status()

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


class Gateway:
    """The gateway binary. start() waits for /healthz and then, unless
    wait_index is false, until the index has loaded from Redis (/readyz no
    longer says "warming"), so a test sees the state it set up in Redis."""

    def __init__(self, tmpdir, env, args=(), wait_index=True):
        self.port = free_port()
        self.log_path = os.path.join(tmpdir, f"semgate-{self.port}.log")
        full_env = {k: v for k, v in os.environ.items() if not k.startswith("SEMGATE_")}
        full_env.update({"SEMGATE_HOST": "127.0.0.1", "SEMGATE_PORT": str(self.port),
                         "SEMGATE_THREADS": "32"})
        full_env.update({k: str(v) for k, v in env.items()})
        self.env = full_env
        self.args = list(args)
        self.wait_index = wait_index
        self.proc = None
        self.url = f"http://127.0.0.1:{self.port}"
        # a port (and so a log path) can come round again in one session:
        # this gateway's log starts empty; its own restarts append to it
        open(self.log_path, "wb").close()
        self.start()

    def start(self):
        self.log = open(self.log_path, "ab")
        self.proc = subprocess.Popen([SEMGATE_BIN, *self.args], env=self.env,
                                     stdout=self.log, stderr=self.log)
        wait_until(self._healthy, what="semgate to start")
        if self.wait_index:
            wait_until(lambda: self.readyz().get("status") != "warming",
                       timeout=60 * SLOW, what="the index to load")

    def readyz(self):
        """/readyz's JSON body (an error body when it is not 200)."""
        r = requests.get(self.url + "/readyz", timeout=5)
        try:
            return r.json()
        except ValueError:
            return {}

    def _healthy(self):
        if self.proc.poll() is not None:
            raise AssertionError(f"semgate exited with {self.proc.returncode}: {self.logs()[-2000:]}")
        return requests.get(self.url + "/healthz", timeout=2).status_code == 200

    def alive(self):
        return self.proc.poll() is None

    def logs(self):
        # stop() closes the handle; the file is still there to read
        if not self.log.closed:
            self.log.flush()
        with open(self.log_path, "rb") as f:
            return f.read().decode("utf-8", "replace")

    def access_log(self):
        out = []
        for line in self.logs().splitlines():
            if line.startswith("{"):
                try:
                    out.append(json.loads(line))
                except ValueError:
                    pass
        return out

    def chat(self, messages, model="mock-1", headers=None, timeout=30, **extra):
        body = {"model": model, "messages": messages, **extra}
        return requests.post(self.url + "/v1/chat/completions", json=body,
                             headers=headers or {}, timeout=timeout)

    def settle(self, headers=None):
        """Return once every answer this gateway has sent is stored in Redis:
        a miss's store is written behind its answer (src/cache/behind.h),
        and every cache API route waits for it first."""
        r = requests.get(self.url + "/v1/cache/stats", headers=headers or {}, timeout=30)
        assert r.status_code == 200, r.text

    def stop(self, sig=signal.SIGTERM):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=15 * SLOW)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        rc = self.proc.returncode if self.proc else None
        self.log.close()
        return rc


@pytest.fixture(scope="session")
def tmpdir_session():
    with tempfile.TemporaryDirectory(prefix="semgate-it-") as d:
        yield d


@pytest.fixture(scope="session")
def redis_server(tmpdir_session):
    srv = make_redis(tmpdir_session)
    yield srv
    srv.shutdown()


@pytest.fixture(scope="session")
def mock_upstream(tmpdir_session):
    m = MockUpstream(tmpdir_session)
    yield m
    m.stop()


@pytest.fixture(scope="session")
def openai_node():
    """tests/node with the official `openai` npm package installed (npm ci from
    its lock file, once per session), for every test that drives the gateway
    with the real client. Installing is a step of the suite, so a test that
    needs it never skips for want of it."""
    import shutil
    node_dir = os.path.join(ROOT, "tests", "node")
    assert shutil.which("node") and shutil.which("npm"), \
        "node and npm are needed (scripts/deps installs them)"
    if not os.path.isdir(os.path.join(node_dir, "node_modules", "openai")):
        r = subprocess.run(["npm", "ci", "--no-audit", "--no-fund"], cwd=node_dir,
                           capture_output=True, text=True, timeout=600)
        assert r.returncode == 0, r.stdout + r.stderr
    return node_dir


@pytest.fixture
def redis_db(redis_server):
    """A running Redis (every master of a cluster), emptied before the test;
    a client of the deployment (redis.cluster.RedisCluster on a cluster)."""
    if redis_server.proc is None:
        redis_server.start()
    redis_server.flush()
    c = redis_server.client()
    yield c
    if redis_server.proc is None:  # a test stopped it: bring it back for the next one
        redis_server.start()


@pytest.fixture
def upstream(mock_upstream):
    mock_upstream.reset()
    return mock_upstream


@pytest.fixture
def make_gateway(tmpdir_session, redis_server, mock_upstream):
    started = []

    def make(env=None, args=(), wait_index=True, **kw):
        own = {**(env or {}), **kw}
        # a test that names its own Redis deployment talks to that one only
        own_redis = {"SEMGATE_REDIS_PORT", "SEMGATE_REDIS_SENTINELS", "SEMGATE_REDIS_CLUSTER"}
        where = {} if own_redis & set(own) else redis_server.gateway_env()
        full = {**where,
                "SEMGATE_UPSTREAM_URL": mock_upstream.base,
                "SEMGATE_EMBED_URL": mock_upstream.base,
                "SEMGATE_LOG_LEVEL": "info"}
        full.update(own)
        g = Gateway(tmpdir_session, full, args, wait_index=wait_index)
        started.append(g)
        return g

    yield make
    for g in started:
        rc = g.stop()
        # a gateway that crashed during a test is a failure of that test
        assert rc in (0, None, -signal.SIGKILL), f"semgate exited with {rc}:\n{g.logs()[-3000:]}"


@pytest.fixture
def gateway(make_gateway, redis_db, upstream):
    return make_gateway()


def user(text):
    return [{"role": "user", "content": text}]
