# PostgreSQL helpers shared by demo.sh, test.sh and .ci/run. Source this file.
# A fresh Debian/Ubuntu machine may have no PostgreSQL at all: install the server package,
# then either use the machine's server (when it accepts user postgres over TCP without a
# password) or start a private throwaway instance with trust auth.

pg_log() { echo "[postgres] $*" >&2; }

# The server binaries: PG_BIN_DIR when set, else the newest Debian install.
pg_bin_dir() {
    if [ -n "${PG_BIN_DIR:-}" ]; then
        echo "$PG_BIN_DIR"
    else
        ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1
    fi
}

as_root() {
    if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi
}

ensure_pg_installed() {
    if [ -n "$(pg_bin_dir)" ] && command -v psql >/dev/null 2>&1; then
        return 0
    fi
    pg_log "PostgreSQL server not found; installing the Debian package"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql postgresql-client >/dev/null
    [ -n "$(pg_bin_dir)" ] || { pg_log "installation failed: no /usr/lib/postgresql/*/bin"; return 1; }
}

# PgBouncer (Debian's package) for the pooling tests (crates/ingester/tests/pgbouncer.rs, which
# start their own pgbouncer process with their own ini file; the package's service is not used).
ensure_pgbouncer_installed() {
    if [ -x /usr/sbin/pgbouncer ] || [ -n "${PGBOUNCER_BIN:-}" ]; then
        return 0
    fi
    pg_log "pgbouncer not found; installing the Debian package"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq pgbouncer >/dev/null
    [ -x /usr/sbin/pgbouncer ] || { pg_log "installation failed: no /usr/sbin/pgbouncer"; return 1; }
}

# True when HOST:PORT accepts user postgres without a password.
pg_trust_ok() {
    PGCONNECT_TIMEOUT=3 psql -h "$1" -p "$2" -U postgres -d postgres -Atqc 'select 1' >/dev/null 2>&1
}

# Starts the machine's own cluster when it is installed but stopped (as CI machines boot it).
start_system_pg() {
    command -v pg_ctlcluster >/dev/null 2>&1 || return 1
    local ver
    ver=$(ls /etc/postgresql 2>/dev/null | sort -V | tail -n 1)
    [ -n "$ver" ] || return 1
    as_root pg_ctlcluster --skip-systemctl-redirect "$ver" main start >/dev/null 2>&1 || true
    for _ in $(seq 1 30); do
        pg_trust_ok 127.0.0.1 5432 && return 0
        sleep 0.5
    done
    return 1
}

# A port nobody listens on, outside the kernel's ephemeral range (an outgoing connection may
# take a port from inside it between this probe and the server's bind). Pure bash: a fresh
# machine may lack python3 and curl. The same rule as testkit::free_port.
free_tcp_port() {
    local port lo=10000 hi=32767 eph_lo eph_hi
    if read -r eph_lo eph_hi </proc/sys/net/ipv4/ip_local_port_range 2>/dev/null; then
        if [ "$eph_lo" -gt 11000 ]; then hi=$((eph_lo - 1)); else lo=$((eph_hi + 1)); hi=65535; fi
    fi
    while :; do
        port=$((lo + (RANDOM * 32768 + RANDOM) % (hi - lo + 1)))
        if ! (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
            echo "$port"
            return 0
        fi
    done
}

# http_get PORT PATH: prints the status code, then the body.
http_get() {
    local port=$1 path=$2
    (
        exec 3<>"/dev/tcp/127.0.0.1/$port" || exit 1
        printf 'GET %s HTTP/1.0\r\nHost: localhost\r\n\r\n' "$path" >&3
        sed -n '1s/^HTTP\/[0-9.]* \([0-9]*\).*/\1/p; /^\r\{0,1\}$/,$p' <&3 | sed '2{/^\r\{0,1\}$/d}'
    ) 2>/dev/null
}

# start_private_pg DIR: initdb + start on a free port, trust auth, socket in DIR.
# Sets PRIVATE_PG_PORT and PRIVATE_PG_DIR.
start_private_pg() {
    local dir="$1" bin port run=()
    bin=$(pg_bin_dir)
    port=$(free_tcp_port)
    mkdir -p "$dir"
    if [ "$(id -u)" = 0 ]; then
        # initdb refuses to run as root.
        id postgres >/dev/null 2>&1 || useradd --system --home "$dir" postgres
        chown -R postgres "$dir"
        # mktemp makes 0700 directories: let the postgres user reach into its own.
        chmod a+x "$(dirname "$dir")"
        run=(runuser -u postgres --)
    fi
    "${run[@]}" "$bin/initdb" -D "$dir/data" -U postgres --auth=trust -E UTF8 >"$dir/initdb.log" 2>&1 \
        || { cat "$dir/initdb.log" >&2; return 1; }
    # The port was free when chosen; another process may bind it first: then take another.
    local attempt
    for attempt in 1 2 3 4 5; do
        "${run[@]}" "$bin/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 60 \
            -o "-p $port -k $dir -c listen_addresses=127.0.0.1 -c fsync=off" start >/dev/null && break
        if [ "$attempt" -lt 5 ] && grep -q "could not create any TCP/IP sockets" "$dir/server.log"; then
            pg_log "port $port was taken; trying another"
            port=$(free_tcp_port)
            continue
        fi
        cat "$dir/server.log" >&2
        return 1
    done
    PRIVATE_PG_PORT=$port
    PRIVATE_PG_DIR=$dir
    pg_log "private PostgreSQL on 127.0.0.1:$port (data in $dir/data)"
}

stop_private_pg() {
    [ -n "${PRIVATE_PG_DIR:-}" ] || return 0
    local run=()
    [ "$(id -u)" = 0 ] && run=(runuser -u postgres --)
    "${run[@]}" "$(pg_bin_dir)/pg_ctl" -D "$PRIVATE_PG_DIR/data" -m fast -w stop >/dev/null 2>&1 || true
    rm -rf "$PRIVATE_PG_DIR"
    PRIVATE_PG_DIR=
}
