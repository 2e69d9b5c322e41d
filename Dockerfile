# syntax=docker/dockerfile:1
# CPE's image: the CPU build of torch by default. For a GPU image, pick a CUDA base and torch's CUDA wheels:
#   docker build -t cpe:cuda \
#     --build-arg BASE_IMAGE=nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04 \
#     --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128 .
# and run it with `--gpus all` (CPE_DEVICE=auto takes the GPU).
ARG BASE_IMAGE=python:3.11-slim-bookworm

# -- build: a virtual environment with torch, then the project (not editable), then nothing else ----
FROM ${BASE_IMAGE} AS build
ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 DEBIAN_FRONTEND=noninteractive
# CUDA base images come without Python; the python images have it. A C compiler and Python's headers
# build app.wire._json_reader (setup.py), the reader of prediction bodies; they stay in this stage.
RUN apt-get update \
    && apt-get install -y --no-install-recommends gcc libc6-dev \
    && (command -v python3 >/dev/null || apt-get install -y --no-install-recommends python3 python3-venv python3-dev) \
    && rm -rf /var/lib/apt/lists/*
RUN python3 -m venv /opt/cpe
ENV PATH=/opt/cpe/bin:$PATH
# torch first, from its own index, so that resolving the project never pulls a multi-GB CUDA build
RUN pip install --index-url "${TORCH_INDEX_URL}" "torch==${TORCH_VERSION}"
WORKDIR /src
COPY pyproject.toml setup.py README.md ./
COPY app ./app
COPY models ./models
# the C reader must be there: without it the service still runs, but spends more CPU reading bodies
RUN pip install . && python -c "import app.main, models.checkpoint, app.wire._json_reader"

# -- runtime: the environment alone, run by an unprivileged user -------------------------------------
FROM ${BASE_IMAGE}
ENV DEBIAN_FRONTEND=noninteractive
RUN command -v python3 >/dev/null \
    || (apt-get update && apt-get install -y --no-install-recommends python3 \
        && rm -rf /var/lib/apt/lists/*)
RUN groupadd --system --gid 10001 cpe \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --shell /usr/sbin/nologin cpe
COPY --from=build /opt/cpe /opt/cpe
ENV PATH=/opt/cpe/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    CPE_HOST=0.0.0.0 \
    CPE_PORT=8000
WORKDIR /tmp
USER 10001:10001
EXPOSE 8000
# Python rather than curl, which the slim images lack; the port follows CPE_PORT
HEALTHCHECK --interval=10s --timeout=3s --start-period=60s --retries=3 \
    CMD ["python3", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('CPE_PORT', '8000'), timeout=2)"]
CMD ["cpe", "serve"]
