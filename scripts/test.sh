#!/usr/bin/env bash
# The test command: sets up .venv with the client, the server, the test harness (dev/), the
# training package (export/) and the Triton test extras, then runs the whole test suite (real
# servers on loopback, a real Triton, real scrapes).
#
#   scripts/test.sh                 # everything
#   scripts/test.sh -k triton -x    # arguments go to pytest
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=${VENV:-.venv}
if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
fi
# The four projects of the checkout (client, server, test harness, training), editable and in
# one command, so that the local smoothserve-client satisfies the server's dependency on it.
# torch==2.13.0 (smoothserve-train's) comes from the machine's local CPU wheel; the constraints
# keep pip's resolver fast.
echo "installing the dev environment into $VENV (about a minute the first time)..."
# A venv from before the split, whose `smoothserve` installed every package and script: remove
# it first, or pip uninstalls it after installing the client and takes the client's scripts.
# (-I: the installed metadata, not the old layout's smoothserve.egg-info in this folder.)
if "$VENV/bin/python" -I -c "import importlib.metadata as m, sys
sys.exit(0 if 'smoothserve-verify' in m.distribution('smoothserve').entry_points.names else 1)" \
    >/dev/null 2>&1; then
  "$VENV/bin/pip" uninstall -q -y --disable-pip-version-check smoothserve >/dev/null 2>&1 || true
  rm -rf smoothserve.egg-info  # the old layout's; the server's is now server/smoothserve.egg-info
fi
# pip's noise about editable locations is filtered out; its exit status is kept (a failed
# install stops here, rather than as a confusing import error in pytest).
"$VENV/bin/pip" install -q --disable-pip-version-check --only-binary :all: \
  -c requirements/constraints.txt -e "./clients[verify,cli,plot]" -e . -e ./dev -e ./export \
  > "$VENV/pip-install.log" 2>&1 || {
  grep -v "^WARNING: Location" "$VENV/pip-install.log" >&2
  echo "scripts/test.sh: pip install failed (log: $VENV/pip-install.log)" >&2
  exit 1
}
grep -v "^WARNING: Location" "$VENV/pip-install.log" || true  # what else pip had to say
echo "dev environment ready; running pytest"
"$VENV/bin/python" -m pytest "$@"
