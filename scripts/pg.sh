# Sourced by scripts/run and scripts/bench: start a private PostgreSQL 15 for
# the archive. initdb in a fresh temporary directory owned by the postgres
# user (PostgreSQL refuses to run as root), a free port, the unix socket in
# that directory (no TCP listener), trust auth for the local socket only.
# Sets PG_DIR, PG_PID and PG_DSN; pg_private_stop stops it by pid and
# removes the directory.
PG_BIN=/usr/lib/postgresql/15/bin

pg_as_postgres() {
  if [ "$(id -u)" -eq 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

pg_private_start() {
  PG_DIR=$(mktemp -d /tmp/semgate-pg.XXXXXX)
  [ "$(id -u)" -eq 0 ] && chown postgres:postgres "$PG_DIR"
  local port
  port=$(/usr/bin/python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  pg_as_postgres "$PG_BIN/initdb" -D "$PG_DIR/data" -U postgres --auth=trust -E UTF8 \
    --no-sync >"$PG_DIR/initdb.log" 2>&1 || { cat "$PG_DIR/initdb.log" >&2; return 1; }
  pg_as_postgres "$PG_BIN/pg_ctl" -D "$PG_DIR/data" -l "$PG_DIR/pg.log" -w -t 60 \
    -o "-p $port -k $PG_DIR -c listen_addresses=''" start >/dev/null ||
    { cat "$PG_DIR/pg.log" >&2; return 1; }
  PG_PID=$(head -1 "$PG_DIR/data/postmaster.pid")
  PG_DSN="host=$PG_DIR port=$port user=postgres dbname=postgres"
}

pg_private_stop() {
  [ -n "${PG_PID:-}" ] || return 0
  kill -INT "$PG_PID" 2>/dev/null || true
  for _ in $(seq 200); do kill -0 "$PG_PID" 2>/dev/null || break; sleep 0.05; done
  PG_PID=
  rm -rf "$PG_DIR"
}
