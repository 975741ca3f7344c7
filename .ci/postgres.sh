#!/usr/bin/env bash
# Installs PostgreSQL from Debian's packages (if missing), starts a cluster and
# prints the URL that the datastore tests read from LANYARD_TEST_POSTGRES_URL.
set -euo pipefail

if ! command -v pg_lsclusters >/dev/null 2>&1; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >&2
  apt-get install -y -qq postgresql >&2
fi

cluster=$(pg_lsclusters --no-header | awk 'NR==1 {print $1" "$2}')
if [ -z "$cluster" ]; then
  version=$(ls /usr/lib/postgresql | sort -V | tail -n 1)
  pg_createcluster "$version" main >&2
  cluster="$version main"
fi
# shellcheck disable=SC2086
pg_ctlcluster $cluster start >&2 2>/dev/null || true
port=$(pg_lsclusters --no-header | awk 'NR==1 {print $3}')

# Wait (bounded) for the server to accept connections.
for _ in $(seq 1 60); do
  if su postgres -c "psql -p $port -qAtc 'SELECT 1'" >/dev/null 2>&1; then
    break
  fi
  sleep 0.5
done
su postgres -c "psql -p $port -qAtc \"ALTER USER postgres PASSWORD 'lanyard-ci'\"" >/dev/null
echo "postgres://postgres:lanyard-ci@127.0.0.1:$port/postgres"
