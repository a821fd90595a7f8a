#!/usr/bin/env bash
# The image-build half of the deployment recipe (docs/deployment.md; the Dockerfile beside
# this script runs it):
#
#   ROOT=/ PYTHON=python3 build.sh [MODEL_DIR...]
#
# 1. copies each vetted MODEL_DIR to $ROOT/models/<its name> (none: the models are already
#    there, e.g. put in place by a Dockerfile COPY);
# 2. installs the production policy (policy.toml beside this script) as
#    $ROOT/etc/sandboxload/policy.toml;
# 3. pins every weight file under $ROOT/models in $ROOT/etc/sandboxload/SHA256SUMS;
# 4. gates the build on `sandboxload scan $ROOT/models` under that policy: exit non-zero if
#    any weight file would be refused at start-up (a pickle, a bad header, ...).
#
# ROOT stands in for the image's `/` (tests/test_deploy_recipe.py runs the recipe in a
# scratch directory); PYTHON is the interpreter the server will run on, with sandboxload
# installed, since the scan must judge the files with the code that will load them.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
ROOT=${ROOT:-/}
# Absolute, since ROOT is pasted into the policy, where a relative path means "relative to
# the policy file".
case $ROOT in /*) ;; *) echo "$0: ROOT must be an absolute path: $ROOT" >&2 && exit 2 ;; esac
ROOT=${ROOT%/} # "" for the real /, so paths below never start with //
PYTHON=${PYTHON:-python3}
etc=$ROOT/etc/sandboxload
models=$ROOT/models

say() { echo "build.sh: $*" >&2; }

# ROOT is pasted into the policy by sed below; refuse characters sed would interpret.
case $ROOT in
  *'|'* | *'&'* | *'\'* | *$'\n'*)
    say "ROOT must not contain |, &, \\ or a newline: $ROOT"
    exit 2
    ;;
esac

# The gate judges the files under the policy file alone: a SANDBOXLOAD_* variable left in the
# build environment would override it (env beats file) and could pass what start-up refuses.
while read -r name; do unset "$name"; done < <(compgen -e | grep '^SANDBOXLOAD' || true)

mkdir -p "$models" "$etc" "$ROOT/var/log/sandboxload"

for src in "$@"; do
  dst=$models/$(basename "$src")
  # Never merge into an existing folder: a stale file left there would be pinned as vetted.
  if [ -e "$dst" ]; then
    say "$dst already exists; remove it or build into an empty ROOT"
    exit 2
  fi
  say "copy $src -> $dst"
  cp -R -- "$src" "$dst"
done

# The policy's absolute paths (the audit log) are the image's; under a scratch ROOT they must
# point inside it too. Relative paths (the manifest) are relative to the file and need nothing.
sed -E "s|^([a-z_]+ *= *\")/|\1$ROOT/|" "$here/policy.toml" >"$etc/policy.toml"
say "policy installed: $etc/policy.toml"

# Pin before scanning: the policy names the manifest, so the scan also proves every weight
# file matches the pin that start.sh will verify.
"$PYTHON" -m sandboxload pin --manifest "$etc/SHA256SUMS" "$models"

# The gate. scan exits 0 only when every weight file loads under this very policy.
if ! SANDBOXLOAD_POLICY=$etc/policy.toml "$PYTHON" -m sandboxload scan "$models"; then
  say "scan did not pass every file under $models (see above): the image must not be built"
  exit 1
fi
say "ok: $(grep -c . "$etc/SHA256SUMS") weight file(s) pinned and scanned under $models"
