#!/usr/bin/env bash
# The main job: set everything up, then run `qgen demo` (a small real study on Fashion-MNIST).
# Extra arguments go to `qgen demo`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh plot,digits
exec .venv/bin/qgen demo "$@"
