# syntax=docker/dockerfile:1
# trustmesh's image: every component runs from it (`trustmesh up`, or one component per
# pod as `trustmesh k8s render` lays them out).
#
#   docker build --build-arg PYTHON_IMAGE=python:3.11-slim-bookworm@sha256:<64 hex> -t trustmesh .
#
# - The base image is a required build argument, pinned by digest: the build stops with a
#   message when PYTHON_IMAGE is missing or is a tag, so no build floats to whatever a tag
#   points at today. Both stages use the same image, so the virtualenv's interpreter is the
#   one it was built with.
# - Dependencies come from requirements-runtime.lock (the run-time subset of
#   requirements.lock, same versions), every file checked against its hash.
# - The final stage holds the virtualenv and nothing to build or install with: no pip,
#   setuptools or wheel (removed from the base's interpreter too), no compiler, no source.
# - It runs as uid/gid 10001, never root, and writes nothing under / at run time: the byte
#   code is compiled at build time and PYTHONDONTWRITEBYTECODE stops any other; the state
#   (keys, SQLite, spools) lives in /var/lib/trustmesh and temporary files in /tmp, both
#   to be mounted writable (an emptyDir or a volume) beside a read-only root filesystem.

ARG PYTHON_IMAGE

FROM ${PYTHON_IMAGE} AS build
ARG PYTHON_IMAGE
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
RUN if ! [[ "${PYTHON_IMAGE}" =~ ^[^@[:space:]]+@sha256:[0-9a-f]{64}$ ]]; then \
      echo "PYTHON_IMAGE must be an image pinned by digest (name@sha256:<64 hex>), got '${PYTHON_IMAGE}'" >&2; \
      exit 1; \
    fi
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
COPY requirements-runtime.lock ./
RUN python -m venv /opt/trustmesh \
    && /opt/trustmesh/bin/python -m pip install --no-cache-dir --require-hashes --no-deps \
       -r requirements-runtime.lock
COPY pyproject.toml README.md ./
COPY src ./src
# the wheel is built here (setuptools in pip's isolated build environment), installed
# without dependencies (they are the hashed ones above), and the installers removed
RUN python -m pip wheel --no-cache-dir --no-deps --wheel-dir /tmp/wheel . \
    && /opt/trustmesh/bin/python -m pip install --no-cache-dir --no-deps /tmp/wheel/trustmesh-*.whl \
    && /opt/trustmesh/bin/python -m pip uninstall --yes pip \
    && /opt/trustmesh/bin/python -m compileall -q /opt/trustmesh/lib

FROM ${PYTHON_IMAGE}
LABEL org.opencontainers.image.title="trustmesh" \
      org.opencontainers.image.description="Zero-trust security platform for Python microservices" \
      org.opencontainers.image.licenses="Apache-2.0"
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
# no installer in the image: the base interpreter's pip, setuptools and wheel go too
RUN python -m pip uninstall --yes pip setuptools wheel \
    && rm -rf /usr/local/lib/python3*/ensurepip /root/.cache \
    && groupadd --system --gid 10001 trustmesh \
    && useradd --system --uid 10001 --gid 10001 --home-dir /var/lib/trustmesh \
       --no-create-home --shell /usr/sbin/nologin trustmesh \
    && install -d -o 10001 -g 10001 -m 0700 /var/lib/trustmesh
COPY --from=build /opt/trustmesh /opt/trustmesh
ENV PATH=/opt/trustmesh/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/var/lib/trustmesh
WORKDIR /var/lib/trustmesh
USER 10001:10001
ENTRYPOINT ["trustmesh"]
CMD ["--help"]
