#!/bin/sh
# A throwaway PostgreSQL server for netblock's fleet tests.
#
#   pg-test-server.sh start DIR [DBNAME]   initialise (first time) and start; prints the DSN
#   pg-test-server.sh stop DIR             stop it (the cluster stays in DIR for a restart)
#   pg-test-server.sh destroy DIR          stop it and delete DIR
#
# It listens on a Unix socket in DIR only (no TCP port), so it is reachable from
# every network namespace of this machine and from nothing else. Durability
# is traded for speed (fsync off): the data is thrown away after the tests.
set -eu

PGBIN=${PGBIN:-/usr/lib/postgresql/15/bin}
cmd=${1:?usage: $0 start|stop|destroy DIR [DBNAME]}
dir=${2:?usage: $0 start|stop|destroy DIR [DBNAME]}
db=${3:-netblock}

# Under scripts/test-clock.sh, libfaketime in a postgres-owned process cannot open the semaphore the
# root `faketime` made for FAKETIME_SHARED (and then fails the command); the offset alone needs no sharing.
as_postgres() { env -u FAKETIME_SHARED runuser -u postgres -- "$@"; }

case "$cmd" in
start)
    if [ ! -x "$PGBIN/initdb" ]; then
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q postgresql >&2
    fi
    mkdir -p "$dir"
    chown postgres: "$dir"
    chmod 700 "$dir"
    if [ ! -f "$dir/data/PG_VERSION" ]; then
        as_postgres "$PGBIN/initdb" -D "$dir/data" -A trust -U postgres -E UTF8 --no-sync >"$dir/initdb.log" 2>&1 \
            || { cat "$dir/initdb.log" >&2; exit 1; }
    fi
    as_postgres "$PGBIN/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 30 \
        -o "-c listen_addresses='' -k $dir -c fsync=off -c synchronous_commit=off -c full_page_writes=off" \
        start >/dev/null || { cat "$dir/server.log" >&2; exit 1; }
    if ! as_postgres "$PGBIN/../bin/psql" -h "$dir" -U postgres -d postgres -Atqc \
            "SELECT 1 FROM pg_database WHERE datname = '$db'" | grep -q 1; then
        as_postgres "$PGBIN/createdb" -h "$dir" -U postgres "$db"
    fi
    echo "postgresql:///$db?host=$dir&user=postgres"
    ;;
stop)
    if [ -f "$dir/data/postmaster.pid" ]; then
        as_postgres "$PGBIN/pg_ctl" -D "$dir/data" -m fast -w -t 30 stop >/dev/null
    fi
    ;;
destroy)
    "$0" stop "$dir"
    rm -rf "$dir"
    ;;
*)
    echo "usage: $0 start|stop|destroy DIR [DBNAME]" >&2
    exit 2
    ;;
esac
