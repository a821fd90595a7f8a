#!/usr/bin/env bash
# Set up both stacks, lint, run the whole suite on the latest stack, then the Hugging Face and
# infinity_emb tests again on the stack infinity-emb[server,torch]==0.0.78 installs. Both
# stacks always run; each one's result is reported, and the script fails if either failed.
# (SANDBOXLOAD_TEST_ONLY=PATH runs only PATH on both stacks and skips setup: the test of this
# script uses it.)
set -uo pipefail
cd "$(dirname "$0")/.."
if [ -z "${SANDBOXLOAD_TEST_ONLY:-}" ]; then
  bash scripts/setup.sh || exit 1
  .venv/bin/ruff check . || exit 1
  .venv/bin/ruff format --check . || exit 1
fi

# The security tests that touch the Hugging Face stack or the process as a whole run again on
# the infinity stack.
AGAIN=(tests/test_hf.py tests/test_remote_code.py tests/test_special_files.py
  tests/test_description.py tests/test_changing_files.py tests/test_faults.py
  tests/test_pin_origins.py tests/test_load.py tests/test_infinity.py
  tests/test_allowlist_parity.py tests/test_special_tensors.py tests/test_sandbox_parity.py tests/test_convert.py tests/test_convert_dcp.py
  tests/test_numpy_pickles.py tests/test_dcp.py tests/test_trainer_resume.py
  tests/test_infinity_kinds.py tests/test_workers.py tests/test_family.py tests/test_zygote.py
  tests/test_hidden_pickles.py tests/test_convert_layout.py)
ALL=()
if [ -n "${SANDBOXLOAD_TEST_ONLY:-}" ]; then
  AGAIN=("$SANDBOXLOAD_TEST_ONLY")
  ALL=("$SANDBOXLOAD_TEST_ONLY")
fi

results=()
failed=0
stack() {  # stack NAME VENV PYTEST-ARGS...: run pytest there, remember the outcome
  local name=$1 venv=$2
  shift 2
  echo "== $name stack: $("$venv/bin/python" -c 'import transformers as t, sentence_transformers as s; print("transformers", t.__version__, "sentence-transformers", s.__version__)')"
  if "$venv/bin/python" -m pytest -p no:cacheprovider "$@"; then
    results+=("$name stack: passed")
  else
    results+=("$name stack: FAILED (pytest exit $?)")
    failed=1
  fi
}

stack latest .venv "${ALL[@]}" "$@"
stack infinity .venv-infinity "${AGAIN[@]}" "$@"
echo "== summary"
printf '   %s\n' "${results[@]}"
exit "$failed"
