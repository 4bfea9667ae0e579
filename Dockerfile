# syntax=docker/dockerfile:1
#
# Image of magnet-exporter: the runtime dependencies exactly as requirements.lock pins them
# (every file checked against its hash), then the project's own wheel without dependencies,
# in a slim Python image. The same commit gives the same libraries, whenever it is built.
# tests/test_deploy.py replays both stages' commands outside Docker; docs/deployment.md
# says how to update the lock and how to cut a release.
#
#   docker build -t magnet-exporter:0.1.0 .
#   docker run --rm -p 9877:9877 magnet-exporter:0.1.0 --demo

# Build stage: the project's own wheel, in /wheels; its dependencies come from the lock.
FROM python:3.12.11-slim-bookworm AS builder
WORKDIR /src
COPY pyproject.toml README.md LICENSE ./
COPY src ./src
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /wheels .

# Runtime stage: the lock and the builder's wheel are only bind-mounted, so they do not
# stay in a layer.
FROM python:3.12.11-slim-bookworm

ARG VERSION=0.1.0
ARG REVISION=unknown
LABEL org.opencontainers.image.title="magnet-exporter" \
      org.opencontainers.image.description="Prometheus exporter for Magnet: organization stats and session counts from the List Sessions API" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.base.name="docker.io/library/python:3.12.11-slim-bookworm"

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1

# The runtime dependencies as locked for this Python version: pip refuses any file whose
# hash is not in the lock and any dependency the lock does not pin; wheels only, so that
# no build step fetches unpinned build tools.
RUN --mount=type=bind,source=requirements.lock,target=/tmp/requirements.lock \
    pip install --no-cache-dir --require-hashes --only-binary=:all: -r /tmp/requirements.lock

# The project itself, offline and without dependencies: they are all installed above.
RUN --mount=type=bind,from=builder,source=/wheels,target=/wheels \
    pip install --no-cache-dir --no-index --no-deps /wheels/magnet_exporter-*.whl

WORKDIR /app
# A numeric, unprivileged user (no passwd entry needed), so that Kubernetes'
# runAsNonRoot can verify it.
USER 65532:65532

EXPOSE 9877

# Python's standard library only (the image has no curl). Follows MAGNET_LISTEN_ADDRESS's
# port and ignores any HTTP(S)_PROXY meant for the upstream API.
HEALTHCHECK --interval=30s --timeout=5s --start-period=15s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; port = os.environ.get('MAGNET_LISTEN_ADDRESS', ':9877').rpartition(':')[2]; urllib.request.build_opener(urllib.request.ProxyHandler({})).open('http://127.0.0.1:' + port + '/-/healthy', timeout=4)"]

ENTRYPOINT ["magnet-exporter"]
