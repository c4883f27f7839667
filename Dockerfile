# syntax=docker/dockerfile:1
# s3-notify-relay: the production image.
#
#   docker build -t s3-notify-relay .
#   docker run -d --name relay --read-only --tmpfs /tmp --cap-drop ALL --stop-timeout 30 \
#     -p 8080:8080 -v relay-data:/data -e RELAY_AUTH_TOKENS=<token> s3-notify-relay
#
# tests/deploy/test_image.py does in CI what this file does (wheel, venv, unprivileged
# read-only run, SIGTERM) without a Docker engine, and checks the instructions below.
#
# Base image: pinned by tag only. The machines this repository is built and tested on cannot
# pull images, so no digest was verified here. Pin the digest when you release:
#   docker buildx imagetools inspect python:3.11-slim-bookworm    # prints "Digest: sha256:…"
#   docker build --build-arg PYTHON_IMAGE=python:3.11-slim-bookworm@sha256:<digest> .
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# -- build: the project's wheel, installed with its dependencies into a venv --------------------
FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore
WORKDIR /src
COPY pyproject.toml README.md ./
COPY relay ./relay
# --only-binary: every dependency comes as a wheel, so no compiler is needed (and a dependency
# that loses its wheel fails the build here instead of building from source). pip compiles
# the .pyc files now: at run time the root filesystem can be read-only.
RUN pip wheel --no-deps --wheel-dir /wheels . \
    && python -m venv /opt/relay \
    && /opt/relay/bin/pip install --only-binary=:all: /wheels/*.whl

# -- runtime -------------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE}
LABEL org.opencontainers.image.title="s3-notify-relay" \
      org.opencontainers.image.description="The S3 bucket-notification hop, made lossless, observable and replayable." \
      org.opencontainers.image.licenses="Apache-2.0"
# uid/gid 10001: a system user with no login, whose home is the data volume. /data is created
# owned by it, so a new named volume mounted there is writable (Docker copies the ownership).
RUN groupadd --system --gid 10001 relay \
    && useradd --system --uid 10001 --gid 10001 --home-dir /data --no-create-home \
       --shell /usr/sbin/nologin relay \
    && install -d -o 10001 -g 10001 -m 0750 /data
# The venv stays owned by root: the relay cannot change its own code.
COPY --from=build /opt/relay /opt/relay
# Only /data (the log) and /tmp are written: run with --read-only --tmpfs /tmp (Kubernetes:
# readOnlyRootFilesystem with an emptyDir on /tmp). No .pyc is written at run time.
# RELAY_SHUTDOWN_TIMEOUT: on SIGTERM the relay stops taking requests, lets in-flight commits
# finish, and gives the sinks' in-flight batches this long to settle; what is not settled stays
# in the log and is sent again after the restart. Give the container more than twice this plus
# 5 s per sink before it is killed (docker --stop-timeout / stop_grace_period,
# terminationGracePeriodSeconds); a SIGKILL loses nothing either, it only causes redeliveries.
ENV PATH=/opt/relay/bin:$PATH \
    RELAY_DATA_DIR=/data \
    RELAY_LISTEN=0.0.0.0:8080 \
    RELAY_SHUTDOWN_TIMEOUT=10s \
    HOME=/data \
    TMPDIR=/tmp \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /data
# Numeric, so Kubernetes' runAsNonRoot can check it without a passwd lookup.
USER 10001:10001
VOLUME ["/data"]
EXPOSE 8080
# No tini: the relay is PID 1 and installs its own SIGTERM/SIGINT handlers (the kernel ignores
# signals that PID 1 does not handle, these it does), and it starts no child processes, so
# there are no zombies to reap. A SIGTERM that arrives while the relay is still opening its log
# (before the handlers exist) is ignored; the stop timeout's SIGKILL then ends it, losing nothing.
STOPSIGNAL SIGTERM
# /healthz: the process serves HTTP (the log is open). Liveness only: /readyz answers 503 under
# backpressure, which is a state to alert on, not a reason to restart. No curl in the slim
# image: Python. The port follows RELAY_LISTEN.
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s --retries=3 \
  CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('RELAY_LISTEN', ':8080').rpartition(':')[2], timeout=2)"]
ENTRYPOINT ["relay"]
CMD ["serve"]
