#!/bin/sh
# Write pgbouncer.ini and the user list from the environment, then run PgBouncer in the foreground.
#
# One pooler database per Stella schema, named like the schema, whose connect_query sets search_path: a service
# connects to pgbouncer:6432/<schema> with STELLA_DATABASE_POOL_MODE=transaction and finds its tables there.
#   PGBOUNCER_SERVER_HOST / _PORT / _DATABASE   where Postgres is (postgres / 5432 / stella)
#   PGBOUNCER_USER / PGBOUNCER_PASSWORD          the login clients use and PgBouncer passes on to Postgres
#   PGBOUNCER_AUTH_FILE                          or a mounted userlist.txt with several users (per-service roles)
#   PGBOUNCER_PASSWORD_<SCHEMA>                  also accept the service's login role <prefix><schema> with this
#                                                password (e.g. PGBOUNCER_PASSWORD_EVIDENCE for stella_evidence)
#   PGBOUNCER_ROLE_PREFIX                        the prefix of those roles (default stella_)
#   PGBOUNCER_SCHEMAS                            the schemas to offer ("gateway release promotion ...")
#   PGBOUNCER_POOL_SIZE                          server connections per schema and user (default 10)
#   PGBOUNCER_POOL_SIZE_<SCHEMA>                 the same for one schema (e.g. PGBOUNCER_POOL_SIZE_PROMOTION=15)
#   PGBOUNCER_MAX_CLIENT_CONN                    client connections accepted (default 2000)
#   PGBOUNCER_MAX_DB_CONNECTIONS                 server connections per schema over every user (default 0: no cap)
set -eu
: "${PGBOUNCER_SCHEMAS:?PGBOUNCER_SCHEMAS must name the schemas to pool, e.g. \"gateway release promotion\"}"
host="${PGBOUNCER_SERVER_HOST:-postgres}"
port="${PGBOUNCER_SERVER_PORT:-5432}"
database="${PGBOUNCER_SERVER_DATABASE:-stella}"
pool_size="${PGBOUNCER_POOL_SIZE:-10}"
dir=/etc/pgbouncer/generated
umask 077

if [ -n "${PGBOUNCER_AUTH_FILE:-}" ]; then
  auth_file="$PGBOUNCER_AUTH_FILE"
else
  : "${PGBOUNCER_USER:?PGBOUNCER_USER (or PGBOUNCER_AUTH_FILE) must be set}"
  : "${PGBOUNCER_PASSWORD:?PGBOUNCER_PASSWORD (or PGBOUNCER_AUTH_FILE) must be set}"
  auth_file="$dir/userlist.txt"
  printf '"%s" "%s"\n' "$PGBOUNCER_USER" "$(printf '%s' "$PGBOUNCER_PASSWORD" | sed 's/"/""/g')" > "$auth_file"
  # Each service's own login role, with the password the migration step gave it; PgBouncer logs in to
  # Postgres as that role too, so a service's server connections hold only its grants.
  prefix="${PGBOUNCER_ROLE_PREFIX:-stella_}"
  case "$prefix" in *[!a-z0-9_]*) echo "invalid PGBOUNCER_ROLE_PREFIX '$prefix'" >&2; exit 78;; esac
  for schema in $PGBOUNCER_SCHEMAS; do
    case "$schema" in *[!a-z0-9_]*|"") echo "invalid schema name '$schema' in PGBOUNCER_SCHEMAS" >&2; exit 78;; esac
    role_password=$(printenv "PGBOUNCER_PASSWORD_$(echo "$schema" | tr a-z A-Z)" || true)
    if [ -n "$role_password" ]; then
      printf '"%s" "%s"\n' "$prefix$schema" "$(printf '%s' "$role_password" | sed 's/"/""/g')" >> "$auth_file"
    fi
  done
fi

{
  echo "[databases]"
  for schema in $PGBOUNCER_SCHEMAS; do
    case "$schema" in *[!a-z0-9_]*|"") echo "invalid schema name '$schema' in PGBOUNCER_SCHEMAS" >&2; exit 78;; esac
    size=$(printenv "PGBOUNCER_POOL_SIZE_$(echo "$schema" | tr a-z A-Z)" || echo "$pool_size")
    echo "$schema = host=$host port=$port dbname=$database pool_size=$size connect_query='SET search_path TO $schema, public'"
  done
  cat <<INI
[pgbouncer]
listen_addr = 0.0.0.0
listen_port = 6432
unix_socket_dir =
auth_type = scram-sha-256
auth_file = $auth_file
pool_mode = transaction
max_client_conn = ${PGBOUNCER_MAX_CLIENT_CONN:-2000}
default_pool_size = $pool_size
max_db_connections = ${PGBOUNCER_MAX_DB_CONNECTIONS:-0}
reserve_pool_size = 0
; Nothing of a session survives a transaction here, so there is nothing to reset.
server_reset_query =
server_check_delay = 10
server_login_retry = 1
query_wait_timeout = 120
ignore_startup_parameters = extra_float_digits
log_connections = 0
log_disconnections = 0
log_pooler_errors = 1
stats_period = 300
INI
} > "$dir/pgbouncer.ini"
exec pgbouncer "$dir/pgbouncer.ini"
