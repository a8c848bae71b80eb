# Shardline shard node (gRPC :50051-50053, metrics :9111-9113 in config.json). Build from the repo root:
#   docker build -f docker/shard_node.Dockerfile -t shardline/shard-node:0.1.0 .
# CPU by default. For NVIDIA GPUs build torch from another PyTorch wheel index, e.g. CUDA 12.8:
#   docker build -f docker/shard_node.Dockerfile --build-arg TORCH_VARIANT=cu128 -t shardline/shard-node:0.1.0-cu128 .
# (the CUDA wheels bring their own CUDA runtime; the host needs the NVIDIA driver and container toolkit, and the
# model's "device" in config.json set to "cuda"). The node picks its entry in config.json by $SHARDLINE_NODE_ID,
# or $SHARDLINE_NODE_INDEX (a StatefulSet ordinal). config.json is mounted read-only at /etc/shardline/config.json;
# weights are read from the volume /models. No model is baked in.

# PYTHON_IMAGE: the base (a local stand-in where no registry can be reached; make deploy-test). A build secret
# `ca_bundle` (optional) is the CA bundle pip trusts, for networks that intercept TLS.
ARG PYTHON_IMAGE=python:3.11.11-slim-bookworm
FROM ${PYTHON_IMAGE} AS builder
ARG TORCH_VARIANT=cpu
# where torch comes from: PyTorch's index for TORCH_VARIANT; make deploy-test passes PyPI and a folder holding the
# local CPU wheel (TORCH_FIND_LINKS), since PyTorch's index cannot be reached there
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/${TORCH_VARIANT}
ARG TORCH_FIND_LINKS=""
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PATH=/opt/venv/bin:$PATH
RUN --mount=type=secret,id=ca_bundle python -m venv /opt/venv \
    && if [ -f /run/secrets/ca_bundle ]; then export PIP_CERT=/run/secrets/ca_bundle; fi \
    && if [ -n "$TORCH_FIND_LINKS" ]; then export PIP_FIND_LINKS="$TORCH_FIND_LINKS"; fi \
    && pip install --no-cache-dir --index-url "${TORCH_INDEX_URL}" torch==2.13.0
WORKDIR /src
# only this service's extra: its pinned requirements first, then the source, so
# that a change of the code reinstalls only the package itself (the build backend comes from the index too)
COPY pyproject.toml ops/requirements.py ./
RUN --mount=type=secret,id=ca_bundle if [ -f /run/secrets/ca_bundle ]; then export PIP_CERT=/run/secrets/ca_bundle; fi \
    && python requirements.py pyproject.toml node > requirements.txt \
    && pip install --no-cache-dir -r requirements.txt
COPY README.md ./
COPY protos ./protos
COPY ops ./ops
COPY coordinator ./coordinator
COPY shard_node ./shard_node
COPY tokenizer_svc ./tokenizer_svc
COPY api ./api
RUN --mount=type=secret,id=ca_bundle if [ -f /run/secrets/ca_bundle ]; then export PIP_CERT=/run/secrets/ca_bundle; fi \
    && pip install --no-cache-dir --no-deps "./[node]"

FROM ${PYTHON_IMAGE}
RUN groupadd --system --gid 10001 shardline \
    && useradd --system --uid 10001 --gid 10001 --home-dir /home/shardline --create-home --shell /usr/sbin/nologin shardline \
    && mkdir -p /models /etc/shardline \
    && chown 10001:10001 /models
COPY --from=builder /opt/venv /opt/venv
WORKDIR /app
COPY protos ./protos
COPY ops ./ops
COPY shard_node ./shard_node
ENV PATH=/opt/venv/bin:$PATH \
    SHARDLINE_CONFIG=/etc/shardline/config.json \
    SHARDLINE_MODEL_CACHE=/models \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
VOLUME /models
USER 10001:10001
EXPOSE 50051 9111
HEALTHCHECK --interval=10s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-m", "ops.healthcheck", "node"]
CMD ["python", "-m", "shard_node", "--host", "0.0.0.0"]
