"""A private PostgreSQL 15 for the archive tests: initdb in a temporary
directory owned by the postgres user (PostgreSQL refuses to run as root),
a free loopback port, its unix socket in that directory, stopped by the
postmaster's pid. Queried with psql, so the tests need no Python driver."""
import os
import shutil
import signal
import subprocess
import tempfile
import time

from conftest import free_port, wait_until

PG_BIN = "/usr/lib/postgresql/15/bin"


def _as_postgres(args, **kw):
    if os.geteuid() == 0:
        args = ["runuser", "-u", "postgres", "--", *args]
    return subprocess.run(args, capture_output=True, text=True, timeout=120, **kw)


class PostgresServer:
    def __init__(self):
        self.dir = tempfile.mkdtemp(prefix="semgate-pg-")
        self.data = os.path.join(self.dir, "data")
        self.port = free_port()
        if os.geteuid() == 0:
            shutil.chown(self.dir, "postgres", "postgres")
        r = _as_postgres([f"{PG_BIN}/initdb", "-D", self.data, "-U", "postgres",
                          "--auth=trust", "-E", "UTF8", "--no-sync"])
        assert r.returncode == 0, r.stdout + r.stderr
        self.pid = None

    # the DSN the gateway gets: the password is ignored by trust auth but is
    # there so the tests can check it never reaches a log
    PASSWORD = "pg-secret-do-not-log"

    def dsn(self, dbname="postgres"):
        return (f"host={self.dir} port={self.port} user=postgres dbname={dbname} "
                f"password={self.PASSWORD} connect_timeout=2")

    def start(self):
        r = _as_postgres([f"{PG_BIN}/pg_ctl", "-D", self.data, "-l",
                          os.path.join(self.dir, "pg.log"), "-w", "-t", "60", "-o",
                          f"-p {self.port} -k {self.dir} -c listen_addresses='' "
                          "-c fsync=off -c synchronous_commit=off", "start"])
        assert r.returncode == 0, r.stdout + r.stderr + self.log()
        with open(os.path.join(self.data, "postmaster.pid")) as f:
            self.pid = int(f.readline())
        wait_until(lambda: self.psql("SELECT 1") == "1", what="postgres to accept")

    def stop(self):
        """Fast shutdown by pid; waits until the postmaster has gone."""
        if not self.pid:
            return
        try:
            os.kill(self.pid, signal.SIGINT)
        except ProcessLookupError:
            self.pid = None
            return
        pid = self.pid

        def gone():
            try:
                os.kill(pid, 0)
                return False
            except ProcessLookupError:
                return True
        wait_until(gone, timeout=60, what="postgres to stop")
        self.pid = None

    def destroy(self):
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)

    def log(self):
        try:
            with open(os.path.join(self.dir, "pg.log")) as f:
                return f.read()[-3000:]
        except OSError:
            return ""

    def psql(self, sql, dbname="postgres"):
        """One query's rows, '|'-separated, lines joined by newlines."""
        r = subprocess.run(["psql", "-h", self.dir, "-p", str(self.port), "-U", "postgres",
                            "-d", dbname, "-X", "-A", "-t", "-q", "-v", "ON_ERROR_STOP=1",
                            "-c", sql], capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stderr
        return r.stdout.strip()

    def new_db(self):
        name = f"sg_{os.getpid()}_{time.monotonic_ns()}"
        self.psql(f"CREATE DATABASE {name}")
        return name
