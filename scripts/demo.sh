#!/usr/bin/env bash
# The main job: set up the infinity stack, then run the MiniLM demonstration
# (examples/minilm_demo.py): an infinity_emb server under `python -m sandboxload` on the
# model re-saved as a pickle checkpoint, answering a real embedding request.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh infinity
exec .venv-infinity/bin/python examples/minilm_demo.py "$@"
