#!/usr/bin/env bash
# Makes (once) a venv with pinned third-party Workload API clients for the
# end-to-end tests: py-spiffe (grpcio, gRPC C-core) and hyper-h2 (raw HTTP/2).
# Usage: .ci/python-clients.sh [VENV_DIR]   (default: <repo>/target/python-clients)
# Prints only the absolute path of the venv's python on stdout; progress goes to stderr.
set -euo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)"
venv="${1:-$root/target/python-clients}"
mkdir -p "$(dirname "$venv")"
venv="$(cd "$(dirname "$venv")" && pwd)/$(basename "$venv")"

# Every package pinned, transitive ones included, so a run today and a run next
# month install the same clients. spiffe 0.3.2 asks for grpcio>=1.78,<2 and
# protobuf>=6.31.1,<8.
pins="spiffe==0.3.2
grpcio==1.85.3
protobuf==7.36.2
h2==4.4.1
hpack==4.2.0
hyperframe==6.1.0
cryptography==50.0.2
cffi==2.1.1
pycparser==3.12
PyJWT==2.15.1
pem==23.1.0
pyasn1==0.6.5
pyasn1_modules==0.4.2
typing_extensions==4.16.0"

# Tests may call this concurrently: one installer at a time.
exec 9>"$venv.lock"
flock 9

stamp="$venv/.lanyard-pins"
if [ -x "$venv/bin/python" ] && "$venv/bin/python" -c '' 2>/dev/null \
  && [ "$(cat "$stamp" 2>/dev/null)" = "$pins" ]; then
  echo "$venv/bin/python"
  exit 0
fi

# Debian's python3 ships without ensurepip (so `python3 -m venv` fails) unless
# python3-venv is installed.
if ! python3 -c 'import ensurepip' >/dev/null 2>&1; then
  echo "installing python3-venv" >&2
  export DEBIAN_FRONTEND=noninteractive
  pyver="$(python3 -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
  apt-get update -qq >&2
  apt-get install -y -qq python3-venv "python$pyver-venv" >&2
fi

# A venv left broken (interrupted run, python upgraded underneath) is remade.
if ! { [ -x "$venv/bin/python" ] && "$venv/bin/python" -c '' 2>/dev/null; }; then
  rm -rf "$venv"
  echo "creating venv $venv" >&2
  python3 -m venv "$venv" >&2
fi

echo "installing pinned clients into $venv" >&2
# shellcheck disable=SC2086
PIP_DISABLE_PIP_VERSION_CHECK=1 "$venv/bin/python" -m pip install -q --no-input $pins >&2
printf '%s' "$pins" >"$stamp"
echo "$venv/bin/python"
