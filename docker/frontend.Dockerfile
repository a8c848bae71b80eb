# Shardline web UI: the Vite build of frontend/ served by unprivileged nginx on :5173, which proxies the API
# routes (/api/, /v1/, /health, /ready, /metrics) to http://api:8000 (see docker/nginx.conf). Build from the repo root:
#   docker build -f docker/frontend.Dockerfile -t shardline/frontend:0.1.0 .

FROM node:20.19.0-bookworm-slim AS build
WORKDIR /src
COPY frontend/package.json frontend/package-lock.json ./
RUN npm ci --no-audit --no-fund
COPY frontend/ ./
RUN npm run build

FROM nginxinc/nginx-unprivileged:1.27.3-alpine
COPY docker/nginx.conf /etc/nginx/conf.d/default.conf
COPY --from=build /src/dist /usr/share/nginx/html
# the image's own unprivileged user (nginx, UID 101), named by number so runAsNonRoot can check it
USER 101
EXPOSE 5173
HEALTHCHECK --interval=10s --timeout=5s --start-period=10s --retries=3 \
    CMD ["wget", "-q", "--spider", "http://127.0.0.1:5173/"]
