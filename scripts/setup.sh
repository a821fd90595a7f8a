#!/usr/bin/env bash
# Create (or reuse) .venv and install sandboxload with everything its tests and demo need.
# The constraints file pins the CPU build of torch; without it pip would fetch a CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
# The sandbox's seccomp filter is compiled by the system libseccomp (through pyseccomp).
libs=$(ldconfig -p 2>/dev/null || true)
if ! grep -q 'libseccomp\.so' <<<"$libs"; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    apt-get update -qq && apt-get install -y -qq libseccomp2 >/dev/null
  else
    echo "setup: libseccomp is missing; install it (Debian: libseccomp2)" >&2
  fi
fi
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -c constraints.txt -e '.[test]'
# Editable installs leave byte-compilation to first use; with PYTHONDONTWRITEBYTECODE set
# that never happens, and every interpreter start would recompile the start-up hook.
.venv/bin/python -m compileall -q sandboxload
