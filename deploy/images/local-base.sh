#!/usr/bin/env bash
# Build local stand-ins for the public images the compose file uses, on a machine that cannot reach an image
# registry, from Debian packages only (mmdebstrap uses this machine's apt sources; needs root):
#
#   localhost/stella-local/python:3.11-bookworm  Debian bookworm + python3 (3.11)     -> BASE_IMAGE
#   localhost/stella-local/postgres:15           Debian's postgresql-15               -> POSTGRES_IMAGE
#   localhost/stella-local/nats:2.9              Debian's nats-server                 -> NATS_IMAGE
#   localhost/stella-local/pgbouncer:1.18        Debian's pgbouncer (deploy/pgbouncer) -> PGBOUNCER_IMAGE
#   localhost/stella-local/haproxy:2.6           Debian's haproxy                     -> PROXY_IMAGE
#
# Each image carries the hash of its recipe (this script and the files it builds from) in a label and is
# rebuilt only when that changes: running this again costs a second. `--print-env` prints the variables for
# docker compose (what `make local-images` writes to deploy/images/local.env).
set -euo pipefail
cd "$(dirname "$0")/../.."

PREFIX="${LOCAL_IMAGE_PREFIX:-localhost/stella-local}"
SUITE=bookworm
PYTHON_IMAGE="$PREFIX/python:3.11-$SUITE"
SERVERS_IMAGE="$PREFIX/servers:$SUITE"
POSTGRES_IMAGE="$PREFIX/postgres:15"
NATS_IMAGE="$PREFIX/nats:2.9"
PGBOUNCER_IMAGE="$PREFIX/pgbouncer:1.18"
PROXY_IMAGE="$PREFIX/haproxy:2.6"
LABEL=org.stella.local-image.recipe

print_env() {
  cat <<ENV
BASE_IMAGE=$PYTHON_IMAGE
POSTGRES_IMAGE=$POSTGRES_IMAGE
NATS_IMAGE=$NATS_IMAGE
PGBOUNCER_IMAGE=$PGBOUNCER_IMAGE
PROXY_IMAGE=$PROXY_IMAGE
ENV
}
if [ "${1:-}" = "--print-env" ]; then print_env; exit 0; fi

say() { echo "local-images: $*" >&2; }
recipe() { cat "$0" "$@" | sha256sum | cut -c1-24; }
current() { docker image inspect -f "{{ index .Config.Labels \"$LABEL\" }}" "$1" 2>/dev/null || true; }

command -v docker >/dev/null || { say "docker is not installed"; exit 1; }
docker info >/dev/null 2>&1 || { say "no Docker engine answers"; exit 1; }

# Two builds at once (parallel test runs) would both bootstrap Debian; the second waits and finds it done.
exec 9>"${TMPDIR:-/tmp}/stella-local-images.lock"
flock 9

# A root file system from Debian packages, imported as an image with the given Dockerfile-style changes.
import_rootfs() {
  local image="$1" hash="$2" packages="$3"; shift 3
  if [ "$(current "$image")" = "$hash" ]; then say "$image is up to date"; return; fi
  command -v mmdebstrap >/dev/null || { say "mmdebstrap is not installed (apt-get install mmdebstrap)"; exit 1; }
  local tarball
  tarball="$(mktemp "${TMPDIR:-/tmp}/stella-rootfs.XXXXXX.tar")"
  say "building $image from Debian $SUITE ($packages)"
  # No default database cluster or documentation: the images initialise and run what they need themselves.
  mmdebstrap --quiet --variant=apt --include="$packages" \
    --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-exclude=/usr/share/man/*' \
    --dpkgopt='path-exclude=/usr/share/locale/*' \
    --customize-hook='rm -rf "$1"/var/lib/postgresql/15 "$1"/etc/postgresql/15 "$1"/var/lib/apt/lists/*' \
    "$SUITE" "$tarball"
  docker import "$@" --change "LABEL $LABEL=$hash" --change 'ENV LANG=C.UTF-8' "$tarball" "$image" >/dev/null
  rm -f "$tarball"
}

# A small image on top of an imported one, from a Dockerfile of this repository.
build_on() {
  local image="$1" hash="$2" base="$3" context="$4"
  if [ "$(current "$image")" = "$hash" ]; then say "$image is up to date"; return; fi
  say "building $image"
  local log
  log="$(mktemp)"
  if ! docker build --build-arg "BASE_IMAGE=$base" --label "$LABEL=$hash" -t "$image" "$context" >"$log" 2>&1; then
    cat "$log" >&2; rm -f "$log"; exit 1
  fi
  rm -f "$log"
}

import_rootfs "$PYTHON_IMAGE" "$(recipe)" python3,ca-certificates \
  --change 'CMD ["python3"]'
servers_hash="$(recipe)"
import_rootfs "$SERVERS_IMAGE" "$servers_hash" postgresql-15,pgbouncer,nats-server,haproxy,ca-certificates \
  --change 'CMD ["/bin/sh"]'
build_on "$POSTGRES_IMAGE" "$(recipe deploy/images/postgres/*)-$servers_hash" "$SERVERS_IMAGE" deploy/images/postgres
build_on "$NATS_IMAGE" "$(recipe deploy/images/nats/*)-$servers_hash" "$SERVERS_IMAGE" deploy/images/nats
build_on "$PGBOUNCER_IMAGE" "$(recipe deploy/pgbouncer/*)-$servers_hash" "$SERVERS_IMAGE" deploy/pgbouncer
build_on "$PROXY_IMAGE" "$(recipe deploy/images/haproxy/*)-$servers_hash" "$SERVERS_IMAGE" deploy/images/haproxy
print_env
