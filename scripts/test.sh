#!/usr/bin/env bash
# The test command: sets up .venv with the server, client, training and Triton test extras,
# then runs the whole test suite (real servers on loopback, a real Triton, real scrapes).
#
#   scripts/test.sh                 # everything
#   scripts/test.sh -k triton -x    # arguments go to pytest
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=${VENV:-.venv}
if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
fi
# torch==2.13.0 comes from the machine's local CPU wheel; the constraints keep pip's resolver fast.
echo "installing the dev environment into $VENV (about a minute the first time)..."
"$VENV/bin/pip" install -q --disable-pip-version-check --only-binary :all: \
  -c requirements/constraints.txt -e ".[dev,train]" 2>&1 | grep -v "^WARNING: Location" || true
echo "dev environment ready; running pytest"
"$VENV/bin/python" -m pytest "$@"
