#!/usr/bin/env bash
# Build the SmoothServe container image without a Docker daemon, and prove it works.
#
#   scripts/build_image.sh            # base image (once), then the server image
#   scripts/build_image.sh --base-only   # only the base image
#   scripts/build_image.sh --no-build    # only inspect and run an image built before
#
# 1. Makes a base image locally: Debian bookworm (minbase) + python3 + python3-venv, built with
#    debootstrap and imported with `podman import` (no container registry needed).
# 2. `podman build --isolation chroot` of ./Dockerfile with BASE_IMAGE set to that base. The
#    Dockerfile's `selfcheck` stage starts the server on the baked-in model, checks health,
#    certifies one input through the client, scrapes /metrics and stops it; the build fails if
#    any of that fails.
# 3. Inspects the result from its root filesystem (`podman image mount`): non-root user, ports,
#    HEALTHCHECK, no compiler, no torch, model present.
#
# Needs root (debootstrap, rootful podman). Environment: IMAGE, BASE_IMAGE, DEBIAN_MIRROR,
# WORK_DIR, REBUILD_BASE=1 (remake the base), CA_BUNDLE (trust store handed to pip in the build
# as a build secret, for networks that intercept TLS; it is not copied into the image).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
IMAGE=${IMAGE:-localhost/smoothserve:latest}
BASE_IMAGE=${BASE_IMAGE:-localhost/smoothserve-base:bookworm}
DEBIAN_MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
WORK_DIR=${WORK_DIR:-/var/tmp/smoothserve-image}
REBUILD_BASE=${REBUILD_BASE:-0}
CA_BUNDLE=${CA_BUNDLE:-/etc/ssl/certs/ca-certificates.crt}
BASE_ONLY=0
BUILD=1
case ${1:-} in
  --base-only) BASE_ONLY=1 ;;
  --no-build) BUILD=0 ;;
  "") ;;
  *) echo "usage: $0 [--base-only | --no-build]" >&2; exit 2 ;;
esac

step() { printf '\n=== %s: %s\n' "$(date -u +%H:%M:%S)" "$*"; }
fail() { printf 'build_image.sh: %s\n' "$*" >&2; exit 1; }

[[ $(id -u) == 0 ]] || fail "run as root (debootstrap and rootful podman)"
if ! command -v podman >/dev/null || ! command -v debootstrap >/dev/null; then
  step "installing podman and debootstrap"
  apt-get update
  DEBIAN_FRONTEND=noninteractive apt-get install -y podman debootstrap
fi

if [[ $BUILD == 1 ]] && { [[ $REBUILD_BASE == 1 ]] || ! podman image exists "$BASE_IMAGE"; }; then
  step "base image $BASE_IMAGE: debootstrap bookworm minbase + python3 + python3-venv"
  rootfs="$WORK_DIR/rootfs"
  rm -rf "$rootfs"
  mkdir -p "$rootfs"
  debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
    bookworm "$rootfs" "$DEBIAN_MIRROR"
  rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/*.bin \
    "$rootfs"/var/cache/apt/archives/*.deb
  tar -C "$rootfs" --numeric-owner -c . |
    podman import --change 'CMD ["/bin/bash"]' --change 'ENV LANG=C.UTF-8' - "$BASE_IMAGE"
  rm -rf "$rootfs"
fi
[[ $BASE_ONLY == 1 ]] && { step "base image ready"; exit 0; }

if [[ $BUILD == 1 ]]; then
  podman image exists "$BASE_IMAGE" || fail "no base image $BASE_IMAGE"
  compgen -G "$ROOT/model_repo/*/config.pbtxt" >/dev/null ||
    fail "model_repo/ holds no model: the image bakes model_repo in (train one, see README)"

  step "podman build --isolation chroot $IMAGE (from $BASE_IMAGE), self-check included"
  secret=()
  [[ -s $CA_BUNDLE ]] && secret=(--secret "id=ca_bundle,src=$CA_BUNDLE")
  # --format docker keeps the HEALTHCHECK (OCI image configs have no field for it).
  podman build --isolation chroot --format docker \
    --build-arg "BASE_IMAGE=$BASE_IMAGE" "${secret[@]}" \
    --tag "$IMAGE" --file "$ROOT/Dockerfile" "$ROOT"
fi

step "inspecting $IMAGE"
config=$(podman image inspect --format \
  'user={{.Config.User}} ports={{range $p, $_ := .Config.ExposedPorts}}{{$p}} {{end}}healthcheck={{.HealthCheck.Test}}' \
  "$IMAGE")
echo "$config"
[[ $config == *"user=smoothserve"* ]] || fail "image does not run as the smoothserve user"
[[ $config == *"50051/tcp"* && $config == *"9464/tcp"* ]] || fail "ports not exposed"
[[ $config == *"smoothserve.healthcheck"* ]] || fail "no gRPC HEALTHCHECK"
podman image inspect --format '{{range .Config.Env}}{{println .}}{{end}}' "$IMAGE" | grep '^SMOOTHSERVE_'

mnt=$(podman image mount "$IMAGE")
for tool in gcc cc g++ make; do
  [[ -e $mnt/usr/bin/$tool ]] && fail "runtime stage has a compiler: /usr/bin/$tool"
done
site=$(echo "$mnt"/opt/smoothserve/venv/lib/python3*/site-packages)
[[ -d $site/smoothserve && -d $site/smoothserve_client ]] || fail "smoothserve not installed"
[[ -e $site/torch ]] && fail "torch in the serving image"
compgen -G "$mnt/models/*/config.pbtxt" >/dev/null || fail "no model under /models"
grep -q '^smoothserve:' "$mnt/etc/passwd" || fail "no smoothserve user"
echo "models: $(cd "$mnt/models" && ls -d -- */ | tr -d / | tr '\n' ' ')"
echo "venv: $(du -sh "$mnt/opt/smoothserve/venv" | cut -f1); image: $(podman image inspect --format '{{.Size}}' "$IMAGE") bytes"
podman image unmount "$IMAGE" >/dev/null

# `podman run` does not work on the development machine (no cgroups or network namespaces), so
# run the image the way `docker run -p 50051:50051 -p 9464:9464 IMAGE` would: its entry point
# and command with exactly its environment, as its user, no flag, chrooted into a container's
# root filesystem, on the host's network (so the "published" ports are the host's).
step "running $IMAGE as docker run would (chroot into its root filesystem), no flags"
if (exec 3<>/dev/tcp/127.0.0.1/50051) 2>/dev/null || (exec 3<>/dev/tcp/127.0.0.1/9464) 2>/dev/null; then
  echo "ports 50051 or 9464 are taken on this host: skipping the run check"
  step "OK: $IMAGE built, self-checked and inspected (run check skipped)"
  exit 0
fi
mapfile -t image_env < <(podman image inspect --format '{{range .Config.Env}}{{println .}}{{end}}' "$IMAGE" | grep .)
mapfile -t command < <(podman image inspect --format '{{range .Config.Entrypoint}}{{println .}}{{end}}{{range .Config.Cmd}}{{println .}}{{end}}' "$IMAGE" | grep .)
container=$(podman create "$IMAGE")
root=$(podman mount "$container")
user=$(podman image inspect --format '{{.Config.User}}' "$IMAGE")
uid=$(grep "^${user%%:*}:" "$root/etc/passwd" | cut -d: -f3)
server_pid=""
cleanup() {
  [[ -n $server_pid ]] && kill -TERM "$server_pid" 2>/dev/null && wait "$server_pid" 2>/dev/null
  podman umount "$container" >/dev/null 2>&1 || true
  podman rm "$container" >/dev/null 2>&1 || true
}
trap cleanup EXIT
in_image() { chroot --userspec="$uid:$uid" "$root" /usr/bin/env -i "${image_env[@]}" "$@"; }
unshare --mount --propagation private sh -c \
  'mount --rbind /proc "$0/proc" && mount --rbind /dev "$0/dev" && u=$1 && shift &&
   exec chroot --userspec="$u" "$0" /usr/bin/env -i "$@"' \
  "$root" "$uid:$uid" "${image_env[@]}" "${command[@]}" &
server_pid=$!
healthcheck=$(podman image inspect --format '{{range $i, $a := .HealthCheck.Test}}{{if $i}}{{$a}} {{end}}{{end}}' "$IMAGE")
for _ in $(seq 120); do
  kill -0 "$server_pid" 2>/dev/null || fail "the server exited before its HEALTHCHECK passed"
  # shellcheck disable=SC2086 # the HEALTHCHECK's exec form, word by word
  in_image $healthcheck >/dev/null 2>&1 && break
  sleep 1
done
# shellcheck disable=SC2086
in_image $healthcheck || fail "HEALTHCHECK never passed"
in_image python - <<'PY' || fail "certification through the published ports failed"
import urllib.request

import numpy as np

from smoothserve_client.client import SmoothServeClient

with SmoothServeClient("127.0.0.1:50051", timeout=120) as client:
    info = client.list_models()[0]
    image = np.random.default_rng().integers(0, 256, info.input_shape, dtype=np.uint8)
    r = client.predict("", image, n0=100, n=1000)
    print(f"run check: {r.model_name} -> {r.label!r} abstain={r.abstain} radius={r.radius:.3f}")
with urllib.request.urlopen("http://127.0.0.1:9464/metrics", timeout=10) as response:
    lines = [l for l in response.read().decode().splitlines() if l.startswith("smoothserve_requests_total{")]
assert lines, "no request counted on port 9464"
print("run check:", lines[0])
PY
kill -TERM "$server_pid"
status=0
wait "$server_pid" || status=$?
server_pid=""
[[ $status == 0 ]] || fail "the server exited with $status on SIGTERM"
echo "run check: SIGTERM -> exit 0"
step "OK: $IMAGE built, self-checked, inspected and run"
