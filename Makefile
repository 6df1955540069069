# The two commands: `make serve` runs batchd on the embedded default model, `make test` runs
# the whole suite. Both set everything up on a fresh machine (a venv in .venv).

VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

# llama-cpp-python compiles llama.cpp from source: build only the library the engine needs.
# pip keeps the built wheel in its cache, so only the first install pays for the compile.
# Built for this machine's CPU, but without Intel AMX: ggml's AMX matmul crashes (SIGSEGV in
# ggml_backend_amx_mul_mat) when many sequences decode together, as batchd's scheduler does,
# on the Sapphire Rapids machines this runs on. An explicit -mno-* wins over -march=native.
NO_AMX := -mno-amx-tile -mno-amx-int8 -mno-amx-bf16
export CMAKE_ARGS ?= -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_TOOLS=OFF -DLLAMA_BUILD_SERVER=OFF -DLLAMA_CURL=OFF "-DCMAKE_C_FLAGS=$(NO_AMX)" "-DCMAKE_CXX_FLAGS=$(NO_AMX)"
export CMAKE_BUILD_PARALLEL_LEVEL ?= $(shell nproc)

.PHONY: install serve test test-container lint bench clean screenshots

$(STAMP): pyproject.toml
	@echo "Installing batchd into $(VENV): the first install compiles llama.cpp from source (about 8 minutes on 2 cores); later ones reuse pip's cache."
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

serve: $(STAMP)
	$(VENV)/bin/batchd serve --models models.yaml

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests bench
	$(VENV)/bin/mypy

# The browser tests drive Debian's Chromium; a fresh machine gets it from the OS registry.
CHROMIUM := /usr/bin/chromium

$(CHROMIUM):
	@echo "Installing Debian's chromium package for the browser tests (once)."
	apt-get update -qq
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium

# PostgreSQL's server binaries for the scale-out tests (the tests start and stop their own
# cluster; nothing runs as a system service). `ip` makes the multi-host test's namespaces.
PG_INITDB := /usr/lib/postgresql/15/bin/initdb

$(PG_INITDB):
	@echo "Installing Debian's postgresql package for the scale-out tests (once)."
	apt-get update -qq
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql iproute2

# The whole suite on the embedded default (SQLite + the data dir, PostgreSQL and S3 for the
# contract and scale-out tests), then the integration, end-to-end and fault suites once more
# on PostgreSQL + S3 (a real PostgreSQL and SeaweedFS that the run starts and stops): all but
# the tests that touch no store, and the kill tests with half their kill points (5 and 3).
test: lint $(CHROMIUM) $(PG_INITDB)
	$(VENV)/bin/pytest
	BATCHD_TEST_BACKEND=postgres-s3 BATCHD_FAULT_KILLS=5 $(VENV)/bin/pytest -m "not backend_independent" \
		tests/integration tests/e2e tests/faults

# The container tier: builds the image from the Dockerfile (the first build compiles llama.cpp,
# ~8 minutes on 2 cores; podman's layer cache keeps it), then runs migrate, the API and two
# workers as containers on PostgreSQL + S3 (tests/container). .ci/run calls it after `make
# test`. podman, runc and mmdebstrap (for the Debian base, there being no registry) come from
# the OS registry.
PODMAN := /usr/bin/podman

$(PODMAN):
	@echo "Installing Debian's podman, runc and mmdebstrap for the container tier (once)."
	apt-get update -qq
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq podman runc mmdebstrap

test-container: $(STAMP) $(PODMAN) $(PG_INITDB)
	BATCHD_CONTAINER_TESTS=1 $(VENV)/bin/pytest -s --timeout 3600 tests/container

# The console screenshots in docs/ (shown in the README) come from the browser tests.
screenshots: $(STAMP) $(CHROMIUM)
	BATCHD_SCREENSHOTS=docs $(VENV)/bin/pytest -q tests/browser/test_console.py

bench: $(STAMP)
	$(PY) bench/throughput.py --workload short --rounds 3
	$(PY) bench/throughput.py --workload shared --rounds 3
	$(PY) bench/decode_ceiling.py
	$(PY) bench/latency.py
	$(PY) bench/embeddings.py
	$(PY) bench/control_plane.py
	$(PY) bench/fairness.py
	$(PY) bench/upstream.py --llama
	$(PY) bench/memory.py
	$(PY) bench/scale.py
	$(PY) bench/control_plane.py --backend postgres-s3
	$(PY) bench/memory.py --backend postgres-s3
	$(PY) bench/container.py

clean:
	rm -rf $(VENV) batchd-data .pytest_cache .mypy_cache .ruff_cache
