# syntax=docker/dockerfile:1
# The re-ranking service. CPU image by default; the CUDA image with `--build-arg DEVICE=cuda`:
#   docker build -t dgr2:0.1.0-cpu .
#   docker build -t dgr2:0.1.0-cuda --build-arg DEVICE=cuda .
# The shipped checkpoints are installed with the package and served by default; mount a store with
# others at /models and set DGR2_STORE=/models to serve those instead (docs/operations.md).
ARG DEVICE=cpu

# ---------------------------------------------------------------- runtime bases, one per device
FROM python:3.11-slim-bookworm AS base-cpu
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu

# CUDA libraries come with the torch wheel; the image brings the driver hooks. Triton compiles its
# launcher with the system C compiler and Python headers at run time, hence gcc and python3-dev.
FROM nvidia/cuda:12.8.1-base-ubuntu24.04 AS base-cuda
ARG TORCH_INDEX=https://download.pytorch.org/whl/cu128
# the distribution's current python3 and gcc, not pinned patch versions (DL3008)
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv python3-dev gcc libc6-dev \
    && rm -rf /var/lib/apt/lists/*

# ---------------------------------------------------------------- build: a venv from the locked set
# base-${DEVICE} is a stage above, not an image to tag (DL3006)
# hadolint ignore=DL3006
FROM base-${DEVICE} AS build
ARG DEVICE
ARG TORCH_VERSION=2.13.0
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY requirements ./requirements
# torch from the device's wheel index: the locked CPU wheel (hash-checked), or the CUDA build of the same version;
# then the runtime lock (hash-checked, --no-deps: the lock is the whole set) and the package itself
RUN python3 -m venv /opt/venv \
    && if [ "${DEVICE}" = cpu ]; then \
         /opt/venv/bin/pip install --require-hashes --no-deps --index-url "${TORCH_INDEX}" -r requirements/torch-cpu.lock; \
       else /opt/venv/bin/pip install --index-url "${TORCH_INDEX}" "torch==${TORCH_VERSION}"; fi \
    && /opt/venv/bin/pip install --require-hashes --no-deps -r requirements/runtime.lock
COPY pyproject.toml README.md ./
COPY dgr2 ./dgr2
RUN /opt/venv/bin/pip install --no-deps --no-build-isolation . \
    && /opt/venv/bin/pip check \
    && /opt/venv/bin/dgr2 model verify beauty-gr2:ar \
    && /opt/venv/bin/dgr2 model verify beauty-gr2:diffusion

# ---------------------------------------------------------------- runtime
# hadolint ignore=DL3006
FROM base-${DEVICE} AS runtime
RUN groupadd --system --gid 10001 dgr2 \
    && useradd --system --uid 10001 --gid 10001 --create-home --home-dir /home/dgr2 dgr2 \
    && mkdir /models && chown dgr2:dgr2 /models
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    TRITON_CACHE_DIR=/tmp/triton \
    DGR2_HOST=0.0.0.0 \
    DGR2_PORT=8000
USER 10001:10001
WORKDIR /home/dgr2
VOLUME ["/models"]
EXPOSE 8000
# /healthz answers once the checkpoints are loaded and verified; readiness (/readyz) is the orchestrator's call
HEALTHCHECK --interval=30s --timeout=5s --start-period=120s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request as u; u.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('DGR2_PORT', '8000'), timeout=4)"]
# SIGTERM drains: /readyz turns 503, admitted requests are answered, then the server exits
STOPSIGNAL SIGTERM
ENTRYPOINT ["dgr2"]
CMD ["serve"]
