#!/usr/bin/env bash
# The main job: set up, then run the MiniLM demonstration (examples/minilm_demo.py).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python examples/minilm_demo.py "$@"
