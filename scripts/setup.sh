#!/usr/bin/env bash
# Set up everything qgen needs on a fresh Debian machine (run as root, or with sudo):
#   - Debian packages: python3-venv if the venv module is missing, and the Fashion-MNIST data
#     (dataset-fashion-mnist, installs /usr/share/datasets/fashion-mnist/);
#   - a virtual environment in .venv with PyTorch and qgen installed (editable).
# Usage: scripts/setup.sh [EXTRAS]   e.g. scripts/setup.sh dev,ray,vision
# QGEN_TORCH overrides the torch requirement (default torch==2.13.0, the CPU wheel on our
# machines; on other machines pip may pick a CUDA build of the same version).
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-plot,digits}"
py="${PYTHON:-python3}"

need=()
"$py" -c "import venv, ensurepip" 2>/dev/null || need+=(python3-venv)
[ -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ] || need+=(dataset-fashion-mnist)
if [ ${#need[@]} -gt 0 ]; then
  sudo=""
  [ "$(id -u)" = 0 ] || sudo="sudo"
  echo "setup: installing Debian packages: ${need[*]}" >&2
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${need[@]}" >/dev/null
fi

[ -x .venv/bin/python ] || "$py" -m venv .venv
pip_install() {
  # pip's notes about unreachable local mirrors are noise; its errors still fail the script
  set -o pipefail
  .venv/bin/python -m pip install -q --disable-pip-version-check "$@" 2>&1 \
    | { grep -v "^WARNING: Location" || true; } >&2
}
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
  echo "setup: installing ${QGEN_TORCH:-torch==2.13.0}" >&2
  pip_install "${QGEN_TORCH:-torch==2.13.0}"
fi
# torchvision is built for one torch release: keep the torch installed above (pip would
# otherwise replace it by the newest release to get the newest torchvision)
constraint="$(mktemp)"
trap 'rm -f "$constraint"' EXIT
.venv/bin/python -c "import torch; print('torch==' + torch.__version__.split('+')[0])" > "$constraint"
pip_install -c "$constraint" -e ".[${extras}]"
.venv/bin/python -c "import qgen, torch; print(f'setup: qgen {qgen.__version__}, torch {torch.__version__}')" >&2
