#!/usr/bin/env bash
# Start web, worker, maintenance worker, beat and flower (Procfile, through honcho); print the URLs once all are up.
set -u
cd "$(dirname "$0")/.."
PORT=${COHORTS_PORT:-6061}
FLOWER=${FLOWER_PORT:-5555}
.venv/bin/honcho start -f Procfile &
HONCHO=$!
trap 'kill -TERM $HONCHO 2>/dev/null; wait $HONCHO' INT TERM EXIT
for _ in $(seq 1 120); do
  if curl -fsS "http://127.0.0.1:$PORT/healthz" >/dev/null 2>&1 && curl -fs -o /dev/null -u "${FLOWER_BASIC_AUTH:-admin:admin}" "http://127.0.0.1:$FLOWER/" 2>/dev/null; then
    cat <<MSG

================================================================
 Cohort service is up.
   API:      http://127.0.0.1:$PORT/api/v1   (token: Authorization: Bearer ${COHORTS_DEFAULT_TOKEN})
   API docs: http://127.0.0.1:$PORT/docs     (OpenAPI: http://127.0.0.1:$PORT/openapi.json)
   Flower:   http://127.0.0.1:$FLOWER/       (basic auth: ${FLOWER_BASIC_AUTH:-admin:admin})
   Health:   http://127.0.0.1:$PORT/healthz
 Ctrl-C stops everything.
================================================================
MSG
    break
  fi
  if ! kill -0 $HONCHO 2>/dev/null; then echo "run: a process exited during start-up; see the log above" >&2; exit 1; fi
  sleep 1
done
wait $HONCHO
