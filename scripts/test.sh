#!/usr/bin/env bash
# Set everything up (with the dev, ray and vision extras), check style, and run the test suite.
# Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh dev,ray,plot,digits,vision
# the report test opens the HTML in a real headless browser: Debian's chromium
if ! command -v chromium >/dev/null 2>&1; then
  sudo=""
  [ "$(id -u)" = 0 ] || sudo="sudo"
  echo "test.sh: installing chromium (for the report's browser test)" >&2
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq chromium >/dev/null
fi
export QGEN_REQUIRE_BROWSER=1
# the zoo-model tests (torchvision, timm) must run here, not skip
export QGEN_REQUIRE_VISION=1
.venv/bin/ruff check src tests bench
set +e
.venv/bin/python -m pytest "$@"
rc=$?
set -e
if [ $rc -eq 5 ]; then
  echo "test.sh: pytest collected no tests: that is a failure" >&2
  exit 1
fi
exit $rc
