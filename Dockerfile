# syntax=docker/dockerfile:1
# SmoothServe: the certified inference server, serving dependencies only (no torch, no compiler
# in the runtime stage), with the default model repository baked in at /models.
#
#   docker build -t smoothserve .
#   docker run -p 50051:50051 -p 9464:9464 smoothserve
#   docker run -p 50051:50051 -p 9464:9464 -v "$PWD/model_repo:/models:ro" smoothserve
#
# The fast-noise variant adds the `fastnoise` extra (MKL's ARS-5 host noise, about 1 GB more):
#   docker build --build-arg FASTNOISE=1 -t smoothserve:fastnoise .
# Both serve with --noise-generator auto: ars5 where the extra is installed, else NumPy's pcg64.
#
# Every server option is an environment variable SMOOTHSERVE_<OPTION> (docs/operations.md).
# Without a Docker daemon: scripts/build_image.sh (podman, local Debian base).

# Any Debian-like image with python3 (>= 3.10) and the venv module; builder and runtime must
# share it, since the venv's interpreter is the base image's.
ARG BASE_IMAGE=python:3.11-slim

FROM ${BASE_IMAGE} AS builder
# 1: also install the fastnoise extra (mkl-random: MKL, Intel OpenMP, TBB), which makes host
# noise 2-3x faster to draw; 0 (the default): NumPy's PCG64, an image about 1 GB smaller.
ARG FASTNOISE=0
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONDONTWRITEBYTECODE=1
RUN python3 -m venv /opt/smoothserve/venv
WORKDIR /src
# Dependencies first, from the two pyproject.toml files alone (empty package folders), so that
# editing the sources does not reinstall them. The server depends on the client distribution
# (clients/: smoothserve_client and smoothcert, with its verify extra), which pip takes from
# here only when the same command names it. The optional build secret ca_bundle is a CA trust
# store for pip, for build networks that intercept TLS (scripts/build_image.sh passes the
# host's); it never lands in a layer. The server's extras: FASTNOISE picks one of the two lines.
COPY pyproject.toml README.md ./
COPY clients/pyproject.toml clients/
RUN --mount=type=secret,id=ca_bundle \
    set -eu; \
    if [ -s /run/secrets/ca_bundle ]; then export PIP_CERT=/run/secrets/ca_bundle; fi; \
    case "$FASTNOISE" in \
      0) extras="oip" ;; \
      1) extras="oip,fastnoise" ;; \
      *) echo "FASTNOISE must be 0 or 1, not '$FASTNOISE'" >&2; exit 1 ;; \
    esac; \
    mkdir -p server; \
    /opt/smoothserve/venv/bin/pip install --prefer-binary "setuptools>=68" "./clients[verify]" ".[$extras]" ; \
    /opt/smoothserve/venv/bin/pip uninstall --yes smoothserve smoothserve-client
COPY server server
COPY clients clients
# The generator --noise-generator auto resolves to must be the one this variant promises.
RUN set -eu; \
    /opt/smoothserve/venv/bin/pip install --no-deps --no-build-isolation --no-index ./clients . ; \
    /opt/smoothserve/venv/bin/python -c "import smoothserve.app, smoothserve.healthcheck, onnxruntime, smoothserve.transport.oip_grpc, smoothserve.transport.oip_rest, smoothcert.verify"; \
    if [ "$FASTNOISE" = 1 ]; then expected=ars5; else expected=pcg64; fi; \
    /opt/smoothserve/venv/bin/python -c "import sys; from smoothserve.noise import resolve_generator; g = resolve_generator('auto'); print('noise generator (auto):', g); sys.exit(g != sys.argv[1])" "$expected"; \
    if /opt/smoothserve/venv/bin/python -c "import torch" 2>/dev/null; then \
        echo "torch must not be in the serving image" >&2; exit 1; \
    fi; \
    if /opt/smoothserve/venv/bin/python -c "import matplotlib" 2>/dev/null; then \
        echo "matplotlib (the plot extra) must not be in the serving image" >&2; exit 1; \
    fi

FROM ${BASE_IMAGE} AS runtime
# Empty: the server's own rule (the model named in /models/DEFAULT_MODEL, else the first).
ARG DEFAULT_MODEL=""
RUN groupadd --gid 10001 smoothserve \
    && useradd --uid 10001 --gid smoothserve --create-home --home-dir /home/smoothserve \
        --shell /usr/sbin/nologin smoothserve
COPY --from=builder /opt/smoothserve/venv /opt/smoothserve/venv
# The default models; mount another repository over /models (read-only is fine).
COPY model_repo /models
ENV PATH=/opt/smoothserve/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    SMOOTHSERVE_MODEL_REPO=/models \
    SMOOTHSERVE_DEFAULT_MODEL=${DEFAULT_MODEL} \
    SMOOTHSERVE_HOST=0.0.0.0 \
    SMOOTHSERVE_PORT=50051 \
    SMOOTHSERVE_METRICS_HOST=0.0.0.0 \
    SMOOTHSERVE_METRICS_PORT=9464 \
    SMOOTHSERVE_BACKEND=onnxruntime \
    SMOOTHSERVE_LOG_LEVEL=INFO
USER smoothserve:smoothserve
WORKDIR /opt/smoothserve
EXPOSE 50051 9464
# The gRPC health service; the probe reads SMOOTHSERVE_PORT (pass --address if you move the
# port with a flag instead).
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 \
    CMD ["/opt/smoothserve/venv/bin/python", "-m", "smoothserve.healthcheck", "--quiet"]
ENTRYPOINT ["/opt/smoothserve/venv/bin/smoothserve"]
CMD []

# The self-check: start the server as the image would, check health, certify one input through
# the client, scrape /metrics, stop. The final stage depends on it, so a build that passes has
# served a certification.
FROM runtime AS selfcheck
COPY deploy/docker/selfcheck.py /tmp/selfcheck.py
RUN python /tmp/selfcheck.py && touch /tmp/selfcheck.ok

FROM runtime
COPY --from=selfcheck /tmp/selfcheck.ok /opt/smoothserve/selfcheck.ok
