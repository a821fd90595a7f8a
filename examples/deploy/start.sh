#!/usr/bin/env bash
# The start-up half of the deployment recipe (docs/deployment.md; the Dockerfile's
# ENTRYPOINT): check the image, then become the server.
#
#   ROOT=/ PYTHON=python3 MODEL=minilm start.sh [INFINITY_ARGS...]
#
# 1. `sandboxload verify ... $ROOT/models`: every file pinned at build time is there,
#    unchanged, and no weight file was added below the models since (UNPINNED);
# 2. `sandboxload scan $ROOT/models`: nothing would be refused under the policy, remote code
#    (a *.py, an auto_map) added since included;
# 3. `sandboxload doctor`: the start-up hook, the policy in force and the seccomp sandbox work
#    on this host (a container runtime's own seccomp profile can break the last one);
# 4. exec `python -m sandboxload infinity_emb v2 --model-id $ROOT/models/$MODEL INFINITY_ARGS`.
# Any failing check exits non-zero before the server starts, so no weight is ever loaded.
# ROOT and PYTHON as for build.sh; INFINITY_ARGS e.g. `--host 0.0.0.0 --port 7997`.
set -euo pipefail

ROOT=${ROOT:-/}
# Absolute, as for build.sh (the installed policy holds ROOT).
case $ROOT in /*) ;; *) echo "$0: ROOT must be an absolute path: $ROOT" >&2 && exit 2 ;; esac
ROOT=${ROOT%/} # "" for the real /, so paths below never start with //
PYTHON=${PYTHON:-python3}
MODEL=${MODEL:-minilm}
etc=$ROOT/etc/sandboxload

say() { echo "start.sh: $*" >&2; }

# Every Python started from here on (the server and any child it spawns) reads this policy.
# A SANDBOXLOAD_* variable given at run time (docker run -e) still overrides one of its
# settings, as everywhere; doctor prints each value's origin, so the log shows it.
export SANDBOXLOAD_POLICY=$etc/policy.toml
# infinity_emb reports usage to a third party unless told not to; a vetted image does not.
export INFINITY_ANONYMOUS_USAGE_STATS=${INFINITY_ANONYMOUS_USAGE_STATS:-0}
export DO_NOT_TRACK=${DO_NOT_TRACK:-1}

say "verify the pinned weights ($etc/SHA256SUMS)"
if ! "$PYTHON" -m sandboxload verify --manifest "$etc/SHA256SUMS" "$ROOT/models"; then
  say "a weight file is missing, changed or added since the build (see above); not starting"
  exit 1
fi

say "scan $ROOT/models under $SANDBOXLOAD_POLICY"
if ! "$PYTHON" -m sandboxload scan "$ROOT/models"; then
  say "a file would be refused (see above); not starting"
  exit 1
fi

say "doctor"
if ! "$PYTHON" -m sandboxload doctor; then
  say "sandboxload does not work as configured here (see above); not starting"
  exit 1
fi

say "starting infinity_emb on $ROOT/models/$MODEL through the wrapper"
exec "$PYTHON" -m sandboxload infinity_emb v2 --model-id "$ROOT/models/$MODEL" "$@"
