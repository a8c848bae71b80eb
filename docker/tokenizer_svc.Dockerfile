# Shardline tokenizer service (gRPC :50054, metrics :9102). CPU only. Build from the repo root:
#   docker build -f docker/tokenizer_svc.Dockerfile -t shardline/tokenizer:0.1.0 .
# config.json is mounted read-only at /etc/shardline/config.json; the prepared model cache is the volume /models
# (filled by the `models` target of docker/coordinator.Dockerfile). No model is baked in.

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
    && python requirements.py pyproject.toml tokenizer > requirements.txt \
    && pip install --no-cache-dir -r requirements.txt
COPY README.md ./
COPY protos ./protos
COPY ops ./ops
COPY coordinator ./coordinator
COPY shard_node ./shard_node
COPY tokenizer_svc ./tokenizer_svc
COPY api ./api
RUN --mount=type=secret,id=ca_bundle if [ -f /run/secrets/ca_bundle ]; then export PIP_CERT=/run/secrets/ca_bundle; fi \
    && pip install --no-cache-dir --no-deps "./[tokenizer]"

FROM ${PYTHON_IMAGE}
RUN groupadd --system --gid 10001 shardline \
    && useradd --system --uid 10001 --gid 10001 --home-dir /home/shardline --create-home --shell /usr/sbin/nologin shardline \
    && mkdir -p /models /etc/shardline \
    && chown 10001:10001 /models
COPY --from=builder /opt/venv /opt/venv
WORKDIR /app
COPY protos ./protos
COPY ops ./ops
COPY tokenizer_svc ./tokenizer_svc
ENV PATH=/opt/venv/bin:$PATH \
    SHARDLINE_CONFIG=/etc/shardline/config.json \
    SHARDLINE_MODEL_CACHE=/models \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
VOLUME /models
USER 10001:10001
EXPOSE 50054 9102
HEALTHCHECK --interval=10s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-m", "ops.healthcheck", "tokenizer"]
CMD ["python", "-m", "tokenizer_svc", "--host", "0.0.0.0"]
