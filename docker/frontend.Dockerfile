# Shardline web UI: the Vite build of frontend/ served by unprivileged nginx on :5173, which proxies the API
# routes (/api/, /v1/, /health, /ready, /metrics) to http://api:8000 (see docker/nginx.conf). Build from the repo root:
#   docker build -f docker/frontend.Dockerfile -t shardline/frontend:0.1.0 .

# NODE_IMAGE / NGINX_IMAGE: the bases (local stand-ins where no registry can be reached; make deploy-test). A build
# secret `ca_bundle` (optional) is the CA bundle npm trusts, for networks that intercept TLS.
ARG NODE_IMAGE=node:20.19.0-bookworm-slim
ARG NGINX_IMAGE=nginxinc/nginx-unprivileged:1.27.3-alpine
FROM ${NODE_IMAGE} AS build
WORKDIR /src
COPY frontend/package.json frontend/package-lock.json ./
RUN --mount=type=secret,id=ca_bundle if [ -f /run/secrets/ca_bundle ]; then export NODE_EXTRA_CA_CERTS=/run/secrets/ca_bundle; fi \
    && npm ci --no-audit --no-fund
COPY frontend/ ./
RUN npm run build

FROM ${NGINX_IMAGE}
COPY docker/nginx.conf /etc/nginx/conf.d/default.conf
COPY --from=build /src/dist /usr/share/nginx/html
# the image's own unprivileged user (nginx, UID 101), named by number so runAsNonRoot can check it
USER 101
EXPOSE 5173
HEALTHCHECK --interval=10s --timeout=5s --start-period=10s --retries=3 \
    CMD ["wget", "-q", "--spider", "http://127.0.0.1:5173/"]
