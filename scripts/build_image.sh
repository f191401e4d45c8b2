#!/usr/bin/env bash
# Build the SmoothServe container images without a Docker daemon, and prove they work.
#
#   scripts/build_image.sh                      # base image (once), then both server images
#   scripts/build_image.sh --variant default    # only the default image ($IMAGE)
#   scripts/build_image.sh --variant fastnoise  # only the fast-noise image ($FASTNOISE_IMAGE)
#   scripts/build_image.sh --base-only          # only the base image
#   scripts/build_image.sh --no-build           # only inspect and run images built before
#
# Two variants of one Dockerfile: the default (FASTNOISE=0, tag $IMAGE, NumPy's PCG64 host
# noise) and the fast-noise one (--build-arg FASTNOISE=1, tag $FASTNOISE_IMAGE: the fastnoise
# extra, MKL's ARS-5, about 1 GB more). Both run with --noise-generator auto; the checks below
# make sure it resolves to pcg64 and ars5 respectively. The sizes are printed at the end.
#
# 1. Makes a base image locally: Debian bookworm (minbase) + python3 + python3-venv, built with
#    debootstrap and imported with `podman import` (no container registry needed).
# 2. `podman build --isolation chroot` of ./Dockerfile with BASE_IMAGE set to that base. The
#    Dockerfile's `selfcheck` stage starts the server on the baked-in model, checks health,
#    certifies one input through the client, scrapes /metrics and stops it; the build fails if
#    any of that fails.
# 3. Inspects the result from its root filesystem (`podman image mount`): non-root user, ports,
#    HEALTHCHECK, no compiler, no torch, model present, mkl_random there only in the fast-noise
#    variant.
# 4. Runs each image as `docker run` would and certifies through its ports (below).
#
# Needs root (debootstrap, rootful podman). Environment: IMAGE (default variant),
# FASTNOISE_IMAGE, BASE_IMAGE, DEBIAN_MIRROR, WORK_DIR, REBUILD_BASE=1 (remake the base),
# CA_BUNDLE (trust store handed to pip in the build as a build secret, for networks that
# intercept TLS; it is not copied into the image).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
IMAGE=${IMAGE:-localhost/smoothserve:latest}
FASTNOISE_IMAGE=${FASTNOISE_IMAGE:-localhost/smoothserve:fastnoise}
BASE_IMAGE=${BASE_IMAGE:-localhost/smoothserve-base:bookworm}
DEBIAN_MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
WORK_DIR=${WORK_DIR:-/var/tmp/smoothserve-image}
REBUILD_BASE=${REBUILD_BASE:-0}
CA_BUNDLE=${CA_BUNDLE:-/etc/ssl/certs/ca-certificates.crt}
BASE_ONLY=0
BUILD=1
VARIANTS=(default fastnoise)
usage() { echo "usage: $0 [--base-only | --no-build] [--variant default|fastnoise|both]" >&2; exit 2; }
while (($#)); do
  case $1 in
    --base-only) BASE_ONLY=1 ;;
    --no-build) BUILD=0 ;;
    --variant)
      case ${2:-} in
        default | fastnoise) VARIANTS=("$2") ;;
        both) VARIANTS=(default fastnoise) ;;
        *) usage ;;
      esac
      shift ;;
    *) usage ;;
  esac
  shift
done

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

# The tag, FASTNOISE build argument and expected `--noise-generator auto` of a variant.
tag_of() { [[ $1 == fastnoise ]] && echo "$FASTNOISE_IMAGE" || echo "$IMAGE"; }
fastnoise_of() { [[ $1 == fastnoise ]] && echo 1 || echo 0; }
generator_of() { [[ $1 == fastnoise ]] && echo ars5 || echo pcg64; }

build() {
  local variant=$1 image
  image=$(tag_of "$1")
  step "podman build --isolation chroot $image (FASTNOISE=$(fastnoise_of "$variant"), from $BASE_IMAGE), self-check included"
  local secret=()
  [[ -s $CA_BUNDLE ]] && secret=(--secret "id=ca_bundle,src=$CA_BUNDLE")
  # --format docker keeps the HEALTHCHECK (OCI image configs have no field for it).
  podman build --isolation chroot --format docker \
    --build-arg "BASE_IMAGE=$BASE_IMAGE" --build-arg "FASTNOISE=$(fastnoise_of "$variant")" \
    "${secret[@]}" --tag "$image" --file "$ROOT/Dockerfile" "$ROOT"
}

inspect() {
  local variant=$1 image config mnt site
  image=$(tag_of "$1")
  step "inspecting $image"
  config=$(podman image inspect --format \
    'user={{.Config.User}} ports={{range $p, $_ := .Config.ExposedPorts}}{{$p}} {{end}}healthcheck={{.HealthCheck.Test}}' \
    "$image")
  echo "$config"
  [[ $config == *"user=smoothserve"* ]] || fail "image does not run as the smoothserve user"
  [[ $config == *"50051/tcp"* && $config == *"9464/tcp"* ]] || fail "ports not exposed"
  [[ $config == *"smoothserve.healthcheck"* ]] || fail "no gRPC HEALTHCHECK"
  podman image inspect --format '{{range .Config.Env}}{{println .}}{{end}}' "$image" | grep '^SMOOTHSERVE_'
  podman image inspect --format '{{range .Config.Env}}{{println .}}{{end}}' "$image" |
    grep -q '^SMOOTHSERVE_NOISE_GENERATOR=' && fail "the image must not fix the noise generator"

  mnt=$(podman image mount "$image")
  for tool in gcc cc g++ make; do
    [[ -e $mnt/usr/bin/$tool ]] && fail "runtime stage has a compiler: /usr/bin/$tool"
  done
  site=$(echo "$mnt"/opt/smoothserve/venv/lib/python3*/site-packages)
  [[ -d $site/smoothserve && -d $site/smoothserve_client ]] || fail "smoothserve not installed"
  [[ -e $site/torch ]] && fail "torch in the serving image"
  if [[ $variant == fastnoise ]]; then
    [[ -d $site/mkl_random ]] || fail "the fast-noise image has no mkl_random"
  else
    compgen -G "$site/mkl*" >/dev/null && fail "the default image has MKL: $(cd "$site" && echo mkl*)"
  fi
  compgen -G "$mnt/models/*/config.pbtxt" >/dev/null || fail "no model under /models"
  grep -q '^smoothserve:' "$mnt/etc/passwd" || fail "no smoothserve user"
  echo "models: $(cd "$mnt/models" && ls -d -- */ | tr -d / | tr '\n' ' ')"
  echo "venv: $(du -sh "$mnt/opt/smoothserve/venv" | cut -f1); image: $(podman image inspect --format '{{.Size}}' "$image") bytes"
  podman image unmount "$image" >/dev/null
}

# `podman run` does not work on the development machine (no cgroups or network namespaces), so
# run the image the way `docker run -p 50051:50051 -p 9464:9464 IMAGE` would: its entry point
# and command with exactly its environment, as its user, no flag, chrooted into a container's
# root filesystem, on the host's network (so the "published" ports are the host's).
container="" server_pid=""
cleanup() {
  [[ -n $server_pid ]] && kill -TERM "$server_pid" 2>/dev/null && wait "$server_pid" 2>/dev/null
  server_pid=""
  if [[ -n $container ]]; then
    podman umount "$container" >/dev/null 2>&1 || true
    podman rm "$container" >/dev/null 2>&1 || true
  fi
  container=""
}
trap cleanup EXIT

run_check() {
  local variant=$1 image root user uid healthcheck status
  image=$(tag_of "$1")
  step "running $image as docker run would (chroot into its root filesystem), no flags"
  if (exec 3<>/dev/tcp/127.0.0.1/50051) 2>/dev/null || (exec 3<>/dev/tcp/127.0.0.1/9464) 2>/dev/null; then
    echo "ports 50051 or 9464 are taken on this host: skipping the run check"
    ran=0
    return 0
  fi
  local image_env command
  mapfile -t image_env < <(podman image inspect --format '{{range .Config.Env}}{{println .}}{{end}}' "$image" | grep .)
  mapfile -t command < <(podman image inspect --format '{{range .Config.Entrypoint}}{{println .}}{{end}}{{range .Config.Cmd}}{{println .}}{{end}}' "$image" | grep .)
  container=$(podman create "$image")
  root=$(podman mount "$container")
  user=$(podman image inspect --format '{{.Config.User}}' "$image")
  uid=$(grep "^${user%%:*}:" "$root/etc/passwd" | cut -d: -f3)
  in_image() { chroot --userspec="$uid:$uid" "$root" /usr/bin/env -i "${image_env[@]}" "$@"; }
  unshare --mount --propagation private sh -c \
    'mount --rbind /proc "$0/proc" && mount --rbind /dev "$0/dev" && u=$1 && shift &&
     exec chroot --userspec="$u" "$0" /usr/bin/env -i "$@"' \
    "$root" "$uid:$uid" "${image_env[@]}" "${command[@]}" &
  server_pid=$!
  healthcheck=$(podman image inspect --format '{{range $i, $a := .HealthCheck.Test}}{{if $i}}{{$a}} {{end}}{{end}}' "$image")
  for _ in $(seq 120); do
    kill -0 "$server_pid" 2>/dev/null || fail "the server exited before its HEALTHCHECK passed"
    # shellcheck disable=SC2086 # the HEALTHCHECK's exec form, word by word
    in_image $healthcheck >/dev/null 2>&1 && break
    sleep 1
  done
  # shellcheck disable=SC2086
  in_image $healthcheck || fail "HEALTHCHECK never passed"
  in_image python - "$(generator_of "$variant")" <<'PY' || fail "certification through the published ports failed"
import re
import sys
import urllib.request

import numpy as np

from smoothserve_client.client import SmoothServeClient

with SmoothServeClient("127.0.0.1:50051", timeout=120) as client:
    info = client.list_models()[0]
    image = np.random.default_rng().integers(0, 256, info.input_shape, dtype=np.uint8)
    r = client.predict("", image, n0=100, n=1000)
    print(f"run check: {r.model_name} -> {r.label!r} abstain={r.abstain} radius={r.radius:.3f}")
with urllib.request.urlopen("http://127.0.0.1:9464/metrics", timeout=10) as response:
    scrape = response.read().decode().splitlines()
lines = [l for l in scrape if l.startswith("smoothserve_requests_total{")]
assert lines, "no request counted on port 9464"
print("run check:", lines[0])
(info,) = [l for l in scrape if l.startswith("smoothserve_build_info{")]
generator = re.search(r'noise_generator="(\w+)"', info).group(1)
print(f"run check: --noise-generator auto -> {generator}")
assert generator == sys.argv[1], f"expected the {sys.argv[1]} noise generator, got {generator}"
PY
  kill -TERM "$server_pid"
  status=0
  wait "$server_pid" || status=$?
  server_pid=""
  [[ $status == 0 ]] || fail "the server exited with $status on SIGTERM"
  echo "run check: SIGTERM -> exit 0"
  cleanup
}

if [[ $BUILD == 1 ]]; then
  podman image exists "$BASE_IMAGE" || fail "no base image $BASE_IMAGE"
  compgen -G "$ROOT/model_repo/*/config.pbtxt" >/dev/null ||
    fail "model_repo/ holds no model: the image bakes model_repo in (train one, see README)"
  for variant in "${VARIANTS[@]}"; do build "$variant"; done
fi
ran=1
for variant in "${VARIANTS[@]}"; do
  inspect "$variant"
  run_check "$variant"
done

step "sizes (podman image inspect --format '{{.Size}}')"
for variant in "${VARIANTS[@]}"; do
  image=$(tag_of "$variant")
  size=$(podman image inspect --format '{{.Size}}' "$image")
  printf '%-10s %-40s %12s bytes  %5d MB\n' "$variant" "$image" "$size" $((size / 1000000))
done
podman image ls --filter "reference=${IMAGE%:*}" --filter "reference=${FASTNOISE_IMAGE%:*}"
done_=inspected
[[ $BUILD == 1 ]] && done_="built, self-checked and inspected"
if [[ $ran == 1 ]]; then
  step "OK: ${VARIANTS[*]}: $done_ and run"
else
  step "OK: ${VARIANTS[*]}: $done_ (run check skipped: ports taken)"
fi
