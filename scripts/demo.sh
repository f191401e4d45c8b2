#!/usr/bin/env bash
# The main job. Sets up a serving environment (no torch), starts SmoothServe on the embedded
# ONNX Runtime backend with the default model, certifies Fashion-MNIST test images through
# gRPC, prints the certificates and the certified-accuracy table, and stops the server.
#
#   scripts/demo.sh                       # 20 test images, n = 10,000, alpha = 0.001
#   IMAGES=100 N=100000 scripts/demo.sh   # more images, tighter radii
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=${VENV:-.venv-serve}
MODEL=${MODEL:-$(cat model_repo/DEFAULT_MODEL 2>/dev/null || true)}
IMAGES=${IMAGES:-20}
N=${N:-10000}
OUT=${OUT:-out/demo}
PORT=${PORT:-50051}
METRICS_PORT=${METRICS_PORT:-9464}

if [ ! -x "$VENV/bin/smoothserve" ] || [ pyproject.toml -nt "$VENV/bin/smoothserve" ] \
   || [ clients/pyproject.toml -nt "$VENV/bin/smoothserve" ]; then
  echo "== setting up $VENV (serving install, no torch, with the plot extra for certify.png)"
  python3 -m venv --clear "$VENV"
  # The client and the server in one command: the server depends on the local smoothserve-client.
  "$VENV/bin/pip" install -q --disable-pip-version-check --only-binary :all: \
    -c requirements/constraints.txt -e "./clients[cli,plot]" -e ".[plot]" \
    > "$VENV/pip-install.log" 2>&1 || {
    grep -v "^WARNING: Location" "$VENV/pip-install.log" >&2
    echo "scripts/demo.sh: pip install failed (log: $VENV/pip-install.log)" >&2
    exit 1
  }
  touch "$VENV/bin/smoothserve"
fi

DATA_DIR=/usr/share/datasets/fashion-mnist
[ -d "$DATA_DIR" ] || DATA_DIR=data/fashion-mnist-slice
mkdir -p "$OUT"
READY=$(mktemp -u)

echo "== starting SmoothServe (model repository model_repo, default model ${MODEL:-first})"
"$VENV/bin/smoothserve" --model-repo model_repo --default-model "$MODEL" --host 127.0.0.1 \
  --port "$PORT" --metrics-host 127.0.0.1 --metrics-port "$METRICS_PORT" \
  --ready-file "$READY" > "$OUT/server.log" 2>&1 &
SERVER=$!
trap 'kill -TERM $SERVER 2>/dev/null || true; wait $SERVER 2>/dev/null || true' EXIT
for _ in $(seq 600); do
  [ -s "$READY" ] && break
  kill -0 $SERVER 2>/dev/null || { cat "$OUT/server.log"; exit 1; }
  sleep 0.1
done
[ -s "$READY" ] || { echo "server did not start"; cat "$OUT/server.log"; exit 1; }

echo "== certifying one image with the single-image CLI"
"$VENV/bin/python" -c "import numpy as np
from smoothserve_client.datasets import load_fashion_mnist
np.save('$OUT/image0.npy', load_fashion_mnist('$DATA_DIR').images[0])"
"$VENV/bin/smoothserve-certify" --server "127.0.0.1:$PORT" --n "$N" "$OUT/image0.npy"

echo "== certifying $IMAGES Fashion-MNIST test images through gRPC (n = $N, alpha = 0.001)"
"$VENV/bin/smoothserve-certify-dataset" --server "127.0.0.1:$PORT" --data-dir "$DATA_DIR" \
  --max "$IMAGES" --skip 10 --n "$N" --alpha 0.001 --out "$OUT/certify.tsv"
echo
column -t "$OUT/certify.tsv" | head -n $((IMAGES + 1))
echo
echo "== metrics"
curl -s "http://127.0.0.1:$METRICS_PORT/metrics" | grep -E '^smoothserve_(requests_total|noisy_samples_total)' || true

kill -TERM $SERVER
wait $SERVER
trap - EXIT
echo "== server stopped cleanly; results in $OUT/ (certify.tsv, certify.png, server.log)"
