#!/usr/bin/env bash
# The demo: kube-sim with a sample Krateo-style workload, a PostgreSQL (DB_* when set,
# otherwise a private throwaway instance, installing the server package when missing), the
# ingester, and a summary of what landed in krateo_resources. Stops everything it started.
#
#   bash scripts/demo.sh            # DEMO_SECONDS=15 of churn after the initial sync
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib/postgres.sh

DEMO_SECONDS=${DEMO_SECONDS:-15}
WORK=$(mktemp -d /tmp/ingester-demo.XXXXXX)
SIM_PID= INGESTER_PID=
cleanup() {
    [ -n "$INGESTER_PID" ] && kill "$INGESTER_PID" 2>/dev/null || true
    [ -n "$SIM_PID" ] && kill "$SIM_PID" 2>/dev/null || true
    wait 2>/dev/null || true
    stop_private_pg
    rm -rf "$WORK"
}
trap cleanup EXIT

step() { printf '\n==> %s\n' "$*"; }

step "Building resources-ingester and kube-sim (release)"
cargo build --release -q -p resources-ingester -p kube-sim
BIN=${CARGO_TARGET_DIR:-target}/release

step "PostgreSQL"
if [ -n "${DB_HOST:-}" ] && [ -n "${DB_NAME:-}" ] && [ -n "${DB_USER:-}" ]; then
    echo "using DB_HOST=$DB_HOST DB_NAME=$DB_NAME (from the environment)"
    export DB_PORT=${DB_PORT:-5432} DB_PASS=${DB_PASS:-}
    ensure_pg_installed >/dev/null 2>&1 || true
else
    ensure_pg_installed
    start_private_pg "$WORK/pg"
    export DB_HOST=127.0.0.1 DB_PORT=$PRIVATE_PG_PORT DB_USER=postgres DB_PASS= DB_NAME=postgres
fi
export DB_PARAMS=${DB_PARAMS:-sslmode=prefer}
psql_db() { PGPASSWORD="$DB_PASS" psql -h "$DB_HOST" -p "$DB_PORT" -U "$DB_USER" -d "$DB_NAME" -X -q "$@"; }

step "kube-sim with a sample workload (namespaces, deployments, pods, Krateo CRDs and custom resources, churn)"
"$BIN/kube-sim" --listen 127.0.0.1:0 --kubeconfig-out "$WORK/kubeconfig" \
    --pods 300 --namespaces 3 --krateo --churn-rate 20 --seed 7 >"$WORK/sim.out" 2>"$WORK/sim.log" &
SIM_PID=$!
for _ in $(seq 1 100); do grep -q listening "$WORK/sim.out" 2>/dev/null && break; sleep 0.1; done
grep listening "$WORK/sim.out" || { cat "$WORK/sim.log"; exit 1; }

step "resources-ingester"
PORT=$(free_tcp_port) METRICS_PORT=$(free_tcp_port)
# Every run is a new kube-sim (a new kube-system uid): one CLUSTER_ID for all of them, so a
# re-run against the same DB_* database is the same "demo" cluster, not a name collision.
KUBECONFIG="$WORK/kubeconfig" CLUSTER_NAME=demo CLUSTER_ID=kube-sim-demo PORT=$PORT METRICS_PORT=$METRICS_PORT \
    "$BIN/resources-ingester" >"$WORK/ingester.log" 2>&1 &
INGESTER_PID=$!
ready=
for _ in $(seq 1 600); do
    if [ "$(http_get "$PORT" /readyz | head -n 1)" = 200 ]; then ready=1; break; fi
    kill -0 "$INGESTER_PID" 2>/dev/null || break
    sleep 0.1
done
[ -n "$ready" ] || { echo "ingester did not become ready:"; cat "$WORK/ingester.log"; exit 1; }
echo "ready (probes on :$PORT, metrics on :$METRICS_PORT); letting ${DEMO_SECONDS}s of churn flow"
sleep "$DEMO_SECONDS"

step "Rows per kind in krateo_resources"
psql_db -c "SELECT resource_group AS group, resource_version AS version, resource_kind AS kind,
                   count(*) FILTER (WHERE deleted_at IS NULL) AS live,
                   count(*) FILTER (WHERE deleted_at IS NOT NULL) AS deleted,
                   count(composition_id) AS with_composition_id
              FROM krateo_resources GROUP BY 1, 2, 3 ORDER BY 1, 3"

step "A sample row (a Krateo custom resource)"
psql_db -x -c "SELECT id, cluster_name, namespace, resource_group, resource_version, resource_kind, resource_plural,
                      resource_name, composition_id, created_at, updated_at, deleted_at, uid, global_uid,
                      left(raw::text, 240) || '...' AS raw, status_raw
                 FROM krateo_resources WHERE resource_group LIKE '%krateo.io' AND deleted_at IS NULL
                ORDER BY updated_at DESC LIMIT 1"

step "Metrics"
http_get "$METRICS_PORT" /metrics | grep -E '^(workerpool_events_processed_total|workerpool_events_errors_total|ingester_rows_written_total|ingester_active_watches|ingester_sweep_deletes_total|ingester_queue_depth) ' || true

step "Stopping (SIGTERM: drain, flush, exit 0)"
kill -TERM "$INGESTER_PID"
status=0
wait "$INGESTER_PID" || status=$?
INGESTER_PID=
echo "resources-ingester exited with $status"
tail -n 3 "$WORK/ingester.log"
exit "$status"
