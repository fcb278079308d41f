# Two commands for a newcomer: `make run` and `make test`. Everything else is set up by them.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
GEN    := server/_gen/reranker/v1/reranker_pb2.py
PROTO  := proto/reranker/v1/reranker.proto
ADDR   ?= 127.0.0.1:50051
# Extra `reranker serve` flags for `make run`, e.g. SERVE_ARGS="--processes 1 --metrics-port -1".
SERVE_ARGS ?=
PYTEST_ARGS ?=

.PHONY: setup run test bench bench-load redis chromium data schema clean workbench

setup: $(STAMP) $(GEN)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

# Generated gRPC modules are a build output (never committed). protoc sees proto/ as the root, so
# the descriptor is registered as reranker/v1/reranker.proto (what reflection clients see); the
# modules land in server/_gen/ and the one cross-import is rewritten to server._gen.reranker.v1
# (the top-level name `proto`, or a bare `reranker`, would clash with other packages).
$(GEN): $(PROTO) $(STAMP)
	rm -rf server/_gen && mkdir -p server/_gen
	$(PY) -m grpc_tools.protoc -Iproto --python_out=server/_gen --grpc_python_out=server/_gen --pyi_out=server/_gen $(PROTO)
	sed -i 's/^from reranker\.v1 import /from server._gen.reranker.v1 import /' server/_gen/reranker/v1/*.py server/_gen/reranker/v1/*.pyi
	touch server/_gen/__init__.py server/_gen/reranker/__init__.py server/_gen/reranker/v1/__init__.py

run: setup
	$(VENV)/bin/reranker serve --address $(ADDR) --policies policies $(SERVE_ARGS)

test: setup redis chromium data
	$(PY) -m pytest $(PYTEST_ARGS)

# The Redis ledger tests start their own redis-server processes (testing/redis_server.py); this
# only makes sure the binary exists. Without it they are skipped (and fail when CI is set).
redis:
	@command -v redis-server >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing redis-server (apt-get)"; \
	    apt-get update -qq && apt-get install -y -qq redis-server >/dev/null; \
	  else \
	    echo "*** redis-server not found: install it (e.g. 'sudo apt-get install redis-server'" \
	         "or 'brew install redis'); the Redis ledger tests will be skipped until then ***" >&2; \
	  fi; }

# The workbench's browser tests drive Debian's chromium through chromium-driver (Selenium); this
# only makes sure both exist. Without them those tests are skipped (and fail when CI is set).
chromium:
	@{ [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ]; } || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing chromium and chromium-driver (apt-get)"; \
	    apt-get update -qq && apt-get install -y -qq chromium chromium-driver >/dev/null; \
	  else \
	    echo "*** chromium / chromedriver not found: install them (e.g. 'sudo apt-get install" \
	         "chromium chromium-driver'); the workbench browser tests will be skipped until then ***" >&2; \
	  fi; }

# The Open Bandit Dataset sample (in the obp 0.5.7 sdist on PyPI; CC BY 4.0): pip download, sha256
# check, unpack into data/obd (never committed). Silent when data/obd already verifies.
data: setup
	@$(PY) -m offline.obd fetch --dest data/obd --quiet

# The policy workbench on policies/ (http://127.0.0.1:$(WB_PORT)/), previewing against a sample
# decision log: data/workbench-log, written on first use (synthetic requests served by home_feed,
# with simulated clicks; about half a minute). WB_ARGS for more flags, e.g. WB_ARGS=--read-only.
WB_PORT ?= 8750
WB_LOG  ?= data/workbench-log
WB_ARGS ?=
workbench: setup
	@$(PY) -m testing.workbench --policies policies --out $(WB_LOG)
	$(VENV)/bin/reranker workbench --policies policies --experiments examples/experiments --log $(WB_LOG) \
	  --port $(WB_PORT) $(WB_ARGS)

bench: setup
	$(PY) -m benchmarks.run

# Load + soak benchmark (real server, 1 and 2 processes, and echo floor as subprocesses; ~20 min);
# `make bench-load LOAD_ARGS=--quick` for a short smoke run without the soak.
LOAD_ARGS ?= --soak 180
bench-load: setup
	$(PY) -m benchmarks.bench_load $(LOAD_ARGS)

schema: setup
	$(VENV)/bin/reranker schema --output policies/policy.schema.json

clean:
	rm -rf $(VENV) server/_gen .pytest_cache .hypothesis
