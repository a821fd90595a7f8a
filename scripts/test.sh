#!/usr/bin/env bash
# Set up both stacks, lint, run the whole suite on the latest stack, then the Hugging Face and
# infinity_emb tests again on the stack infinity-emb[server,torch]==0.0.78 installs.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/ruff check .
.venv/bin/ruff format --check .
echo "== latest stack: $(.venv/bin/python -c 'import transformers as t, sentence_transformers as s; print("transformers", t.__version__, "sentence-transformers", s.__version__)')"
.venv/bin/python -m pytest "$@"
echo "== infinity stack: $(.venv-infinity/bin/python -c 'import transformers as t, sentence_transformers as s; print("transformers", t.__version__, "sentence-transformers", s.__version__)')"
# The security tests that touch the Hugging Face stack or the process as a whole run again here.
exec .venv-infinity/bin/python -m pytest -p no:cacheprovider tests/test_hf.py tests/test_remote_code.py \
  tests/test_special_files.py tests/test_description.py tests/test_changing_files.py \
  tests/test_faults.py tests/test_pin_origins.py tests/test_load.py tests/test_infinity.py \
  tests/test_allowlist_parity.py tests/test_special_tensors.py tests/test_sandbox_parity.py "$@"
