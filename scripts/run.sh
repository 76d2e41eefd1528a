#!/usr/bin/env bash
# Start web, worker, maintenance worker, beat and flower (Procfile, through honcho) and the hproxy stand-in;
# print the URLs once all are up.
set -u
cd "$(dirname "$0")/.."
PORT=${COHORTS_PORT:-6061}
FLOWER=${FLOWER_PORT:-5555}
HPROXY_PORT=${COHORTS_HPROXY_STANDIN_PORT:-8085}
# The demo opens token-less Sugo calls (what Sugo's own clients send) for the sample project
# "default"; set COHORTS_SUGO_PROJECT= (empty) to require tokens. docs/dialects/sugo.md.
export COHORTS_SUGO_PROJECT="${COHORTS_SUGO_PROJECT-default}"
.venv/bin/python scripts/hproxy_standin.py --port "$HPROXY_PORT" &
HPROXY=$!
.venv/bin/honcho start -f Procfile &
HONCHO=$!
trap 'kill -TERM $HONCHO $HPROXY 2>/dev/null; wait $HONCHO $HPROXY' INT TERM EXIT
for _ in $(seq 1 120); do
  if curl -fsS "http://127.0.0.1:$PORT/healthz" >/dev/null 2>&1 && curl -fs -o /dev/null -u "${FLOWER_BASIC_AUTH:-admin:admin}" "http://127.0.0.1:$FLOWER/" 2>/dev/null; then
    cat <<MSG

================================================================
 Cohort service is up.
   API:      http://127.0.0.1:$PORT/api/v1   (token: Authorization: Bearer ${COHORTS_DEFAULT_TOKEN})
   API docs: http://127.0.0.1:$PORT/docs     (OpenAPI: http://127.0.0.1:$PORT/openapi.json)
   Flower:   http://127.0.0.1:$FLOWER/       (basic auth: ${FLOWER_BASIC_AUTH:-admin:admin})
   Health:   http://127.0.0.1:$PORT/healthz
   Sugo:     token-less /ant and /druid/v2 act for project '${COHORTS_SUGO_PROJECT:-<none: token required>}';
             hproxy stand-in at http://127.0.0.1:$HPROXY_PORT/druid/proxy/batchupdate/<dataSource>
 Ctrl-C stops everything.
================================================================
MSG
    break
  fi
  if ! kill -0 $HONCHO 2>/dev/null || ! kill -0 $HPROXY 2>/dev/null; then echo "run: a process exited during start-up; see the log above" >&2; exit 1; fi
  sleep 1
done
wait $HONCHO
