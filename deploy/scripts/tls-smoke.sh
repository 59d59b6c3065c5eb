#!/usr/bin/env bash
# TLS to PostgreSQL, end to end, against a private local PostgreSQL with a self-signed CA.
#
#   cargo build -p resources-ingester -p kube-sim
#   deploy/scripts/tls-smoke.sh            # BIN=..., KUBE_SIM=... to use other binaries
#
# Makes a CA and a server certificate for DNS:localhost (openssl), starts PostgreSQL with
# ssl=on and only `hostssl` access (scram-sha-256), starts kube-sim, then runs the ingester:
#   1. sslmode=verify-full, DB_HOST=localhost, right CA  -> ready; pg_stat_ssl shows TLS
#   2. sslmode=verify-full, DB_HOST=127.0.0.1            -> refused (name not in the certificate)
#   3. sslmode=verify-ca,   DB_HOST=127.0.0.1            -> ready (chain checked, name not)
#   4. sslmode=verify-full, another CA                   -> refused (unknown issuer)
#   5. sslmode=disable                                   -> refused by the server (hostssl only)
#   6. sslmode=require, any certificate                  -> ready, encrypted
# Exits non-zero on the first case that does not behave. Needs initdb/pg_ctl/psql and openssl.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
BIN=${BIN:-$ROOT/target/debug/resources-ingester}
KUBE_SIM=${KUBE_SIM:-$ROOT/target/debug/kube-sim}
for t in initdb pg_ctl psql openssl curl; do command -v "$t" >/dev/null || { echo "missing $t" >&2; exit 2; }; done
[ -x "$BIN" ] && [ -x "$KUBE_SIM" ] || { echo "build first: cargo build -p resources-ingester -p kube-sim" >&2; exit 2; }

WORK=$(mktemp -d /tmp/tls-smoke.XXXXXX)
chmod 755 "$WORK"
AS_PG=()
if [ "$(id -u)" = 0 ]; then AS_PG=(runuser -u postgres --); fi  # PostgreSQL refuses to run as root
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
PGPORT=$(free_port)
SIM_PID=""; ING_PID=""
cleanup() {
  [ -n "$ING_PID" ] && kill "$ING_PID" 2>/dev/null || true
  [ -n "$SIM_PID" ] && kill "$SIM_PID" 2>/dev/null || true
  "${AS_PG[@]}" pg_ctl -D "$WORK/pg" -m immediate stop >/dev/null 2>&1 || true
  rm -rf "$WORK"
}
trap cleanup EXIT

echo "== certificates"
cd "$WORK"
openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj "/CN=smoke-ca" \
  -keyout ca.key -out ca.crt -addext basicConstraints=critical,CA:TRUE \
  -addext keyUsage=critical,keyCertSign,cRLSign 2>/dev/null
openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj "/CN=other-ca" \
  -keyout other.key -out other.crt -addext basicConstraints=critical,CA:TRUE 2>/dev/null
openssl req -newkey rsa:2048 -nodes -subj "/CN=localhost" -keyout server.key -out server.csr 2>/dev/null
printf 'subjectAltName=DNS:localhost\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n' > ext.cnf
openssl x509 -req -in server.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 2 \
  -extfile ext.cnf -out server.crt 2>/dev/null

echo "== PostgreSQL with ssl=on on 127.0.0.1:$PGPORT"
echo secret-pw > pw
chmod 644 pw ca.crt other.crt
mkdir -m 700 "$WORK/pg"
[ "$(id -u)" = 0 ] && chown postgres "$WORK/pg"
"${AS_PG[@]}" initdb -D "$WORK/pg" -U postgres --pwfile="$WORK/pw" --auth-local=trust \
  --auth-host=scram-sha-256 >/dev/null
cp server.crt server.key "$WORK/pg/"
[ "$(id -u)" = 0 ] && chown postgres "$WORK/pg/server.crt" "$WORK/pg/server.key"
chmod 600 "$WORK/pg/server.key"
cat >> "$WORK/pg/postgresql.conf" <<EOF
listen_addresses = '127.0.0.1'
port = $PGPORT
unix_socket_directories = '$WORK/pg'
ssl = on
ssl_cert_file = 'server.crt'
ssl_key_file = 'server.key'
EOF
cat > "$WORK/pg/pg_hba.conf" <<EOF
local     all all                trust
hostssl   all all 127.0.0.1/32   scram-sha-256
hostnossl all all 0.0.0.0/0      reject
EOF
"${AS_PG[@]}" pg_ctl -D "$WORK/pg" -l "$WORK/pg/log" -w start >/dev/null
PSQL=("${AS_PG[@]}" psql -h "$WORK/pg" -p "$PGPORT" -U postgres -X -At)
"${PSQL[@]}" -c "CREATE DATABASE krateo" >/dev/null

echo "== kube-sim"
"$KUBE_SIM" --kubeconfig-out "$WORK/kubeconfig" >"$WORK/kube-sim.log" 2>&1 &
SIM_PID=$!
for _ in $(seq 100); do [ -s "$WORK/kubeconfig" ] && break; sleep 0.05; done

PORT=$(free_port); MPORT=$(free_port)
# run_case NAME EXPECT(ready|fail) DB_HOST DB_PARAMS
run_case() {
  local name=$1 expect=$2 host=$3 params=$4 log="$WORK/ingester.$1.log"
  env -i PATH="$PATH" KUBECONFIG="$WORK/kubeconfig" CLUSTER_NAME=tls-smoke \
    DB_HOST="$host" DB_PORT="$PGPORT" DB_USER=postgres DB_PASS=secret-pw DB_NAME=krateo \
    DB_PARAMS="$params" DB_READY_TIMEOUT=4s PORT="$PORT" METRICS_PORT="$MPORT" LOG_FORMAT=json \
    "$BIN" >"$log" 2>&1 &
  ING_PID=$!
  local ready=no
  for _ in $(seq 150); do
    if curl -fsS "http://127.0.0.1:$PORT/readyz" >/dev/null 2>&1; then ready=yes; break; fi
    kill -0 "$ING_PID" 2>/dev/null || break
    sleep 0.1
  done
  local ssl=""
  if [ $ready = yes ]; then
    ssl=$("${PSQL[@]}" -c "SELECT s.ssl || ' ' || s.version FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) WHERE a.application_name = 'resources-ingester' LIMIT 1")
    kill -TERM "$ING_PID"; wait "$ING_PID" || true
  else
    kill "$ING_PID" 2>/dev/null || true; wait "$ING_PID" 2>/dev/null || true
  fi
  ING_PID=""
  if [ "$expect" = ready ] && [ $ready = yes ] && [[ "$ssl" == true\ TLS* ]]; then
    echo "ok   $name: ready, connection encrypted ($ssl)"
  elif [ "$expect" = fail ] && [ $ready = no ]; then
    echo "ok   $name: refused: $(python3 -c '
import json, sys
for line in open(sys.argv[1]):
    try: f = json.loads(line); f = f.get("fields", f)
    except ValueError: continue
    if "error" in f: print(str(f["error"])[:160]); break' "$log")"
  else
    echo "FAIL $name: expected $expect, ready=$ready ssl='$ssl'; log:" >&2
    tail -20 "$log" >&2
    exit 1
  fi
}

echo "== cases"
run_case verify-full-localhost ready localhost "sslmode=verify-full&sslrootcert=$WORK/ca.crt&connect_timeout=5"
run_case verify-full-wrong-name fail 127.0.0.1 "sslmode=verify-full&sslrootcert=$WORK/ca.crt&connect_timeout=2"
run_case verify-ca-ip ready 127.0.0.1 "sslmode=verify-ca&sslrootcert=$WORK/ca.crt&connect_timeout=5"
run_case verify-full-other-ca fail localhost "sslmode=verify-full&sslrootcert=$WORK/other.crt&connect_timeout=2"
run_case disable fail localhost "sslmode=disable&connect_timeout=2"
run_case require ready 127.0.0.1 "sslmode=require&connect_timeout=5"
echo "== all TLS cases behave"
