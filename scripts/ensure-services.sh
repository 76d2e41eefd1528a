#!/usr/bin/env bash
# Make sure PostgreSQL and Redis answer; start the local Debian servers if installed but stopped.
set -u
PGHOST=${PGHOST:-127.0.0.1}; PGPORT=${PGPORT:-5432}
REDIS_PORT=${REDIS_PORT:-6379}

pg_up() { pg_isready -q -h "$PGHOST" -p "$PGPORT" 2>/dev/null || (exec 3<>/dev/tcp/"$PGHOST"/"$PGPORT") 2>/dev/null; }
redis_up() { redis-cli -h 127.0.0.1 -p "$REDIS_PORT" ping 2>/dev/null | grep -q PONG; }

if ! pg_up; then
  if command -v pg_ctlcluster >/dev/null && [ -d /etc/postgresql ]; then
    echo "ensure-services: starting PostgreSQL"
    pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -1)" main start || true
    for _ in $(seq 1 30); do pg_up && break; sleep 1; done
  fi
  if ! pg_up; then
    echo "ensure-services: PostgreSQL is not reachable on $PGHOST:$PGPORT." >&2
    echo "  Install it with: sudo apt-get install postgresql   (then re-run; trust auth for local TCP is expected," >&2
    echo "  or set COHORTS_DATABASE_URL to a server you can reach)" >&2
    exit 1
  fi
fi

if ! redis_up; then
  if command -v redis-server >/dev/null; then
    echo "ensure-services: starting Redis"
    redis-server --daemonize yes --bind 127.0.0.1 --port "$REDIS_PORT" --save "" --appendonly no >/dev/null
    for _ in $(seq 1 30); do redis_up && break; sleep 0.5; done
  fi
  if ! redis_up; then
    echo "ensure-services: Redis is not reachable on 127.0.0.1:$REDIS_PORT." >&2
    echo "  Install it with: sudo apt-get install redis-server   (then re-run)" >&2
    exit 1
  fi
fi
echo "ensure-services: PostgreSQL and Redis answer"
