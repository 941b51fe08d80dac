# The interface for people and CI: each target does its own setup on a fresh clone.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
BUF := $(VENV)/bin/buf
PROTOS := $(shell find proto -name '*.proto' | sort)
SERVICE_PROTOS := $(shell grep -l '^service ' $(PROTOS))

.PHONY: run test test-shuffled gen lint bench install lock clean-gen

# Everything comes from the hashed lock, so a fresh clone installs exactly what was tested; pip and
# setuptools are in the lock too, and the project itself is built with the locked setuptools.
$(VENV)/.installed: requirements/dev.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --require-hashes --no-deps -r requirements/dev.txt
	$(PY) -m pip install --quiet --no-deps --no-build-isolation -e .
	$(PY) -m pip check
	touch $@

# The grpc-js robot of tests/e2e/test_robot_link_js.py, exactly from its lock, no install scripts.
# Without npm a laptop goes on (that test skips); CI fails.
tests/js/node_modules/.installed: tests/js/package-lock.json tests/js/package.json
	@if command -v npm >/dev/null 2>&1; then \
		npm ci --prefix tests/js --ignore-scripts --no-audit --no-fund --loglevel=error && touch $@; \
	elif [ "$$CI" = true ]; then echo "install: npm is missing" >&2; exit 1; \
	else echo "install: no npm, so tests/js is not installed and its test skips"; fi

# The TypeScript client's plugin (protoc-gen-es) and the browser test's bundler and transports,
# the same way. Without npm `make gen` leaves clients/typescript/src/gen as it is.
TS_CLIENT := clients/typescript
$(TS_CLIENT)/node_modules/.installed: $(TS_CLIENT)/package-lock.json $(TS_CLIENT)/package.json
	@if command -v npm >/dev/null 2>&1; then \
		npm ci --prefix $(TS_CLIENT) --ignore-scripts --no-audit --no-fund --loglevel=error && touch $@; \
	elif [ "$$CI" = true ]; then echo "install: npm is missing" >&2; exit 1; \
	else echo "install: no npm, so $(TS_CLIENT) is not installed and its tests skip"; fi

install: $(VENV)/.installed tests/js/node_modules/.installed $(TS_CLIENT)/node_modules/.installed

run: install
	$(VENV)/bin/roz-server serve

test: install
	$(PY) -m pytest -p no:randomly

# The same suite in a random order (the seed is printed; rerun one order with --randomly-seed=N).
test-shuffled: install
	$(PY) -m pytest

# Re-resolve the lock from pyproject.toml to the newest releases its ranges allow (exact pins stay).
lock: install
	$(VENV)/bin/pip-compile --quiet --upgrade --extra dev --generate-hashes --allow-unsafe \
		--strip-extras --no-emit-index-url --no-emit-find-links \
		--output-file requirements/dev.txt pyproject.toml

# googleapis' protos come from the installed googleapis-common-protos, never from a registry:
# google/api for the HTTP annotations, google/rpc for the error model (Status, its details, Code)
# that clients decode.
third_party: install
	rm -rf third_party && mkdir -p third_party/google
	cp -r $$($(PY) -c 'import os, google.api.http_pb2 as a, google.rpc.status_pb2 as r; \
		print(*(os.path.dirname(m.__file__) for m in (a, r)))') third_party/google/
	find third_party -type f ! -name '*.proto' -delete
	find third_party -type d -empty -delete

gen: third_party
	rm -rf gen && mkdir gen
	$(BUF) generate
	$(BUF) build -o gen/.descriptors.binpb
	$(PY) -m grpc_tools.protoc --descriptor_set_in=gen/.descriptors.binpb --grpc_python_out=gen \
		$(patsubst proto/%,%,$(SERVICE_PROTOS))
	rm gen/.descriptors.binpb
	find gen -type d -exec touch {}/__init__.py \;
	rm -f gen/__init__.py
	@if [ -x $(TS_CLIENT)/node_modules/.bin/protoc-gen-es ]; then \
		echo '$(BUF) generate --template buf.gen.ts.yaml'; $(BUF) generate --template buf.gen.ts.yaml; \
	elif [ "$$CI" = true ]; then echo "gen: protoc-gen-es is missing (make install)" >&2; exit 1; \
	else echo "gen: no protoc-gen-es (npm), so $(TS_CLIENT)/src/gen is left as it is"; fi
	$(PY) -m server.openapi gen

lint: third_party
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports
	$(BUF) lint
	@# Against main's protos, built with today's googleapis copy (third_party is not in git).
	@set -e; if git cat-file -e main:buf.yaml 2>/dev/null; then \
		against=$$(mktemp -d); \
		git archive main buf.yaml proto | tar -x -C $$against; \
		cp -r third_party $$against/; \
		$(BUF) breaking --against $$against; \
		rm -rf $$against; \
	else echo "buf breaking: main has no protos yet, nothing to compare"; fi

# Load generators: h2load (nghttp2-client) for gRPC, wrk for HTTP/1.1, from Debian's packages when
# missing and apt-get can install them; otherwise bench falls back to its asyncio load generator.
BENCH_TOOLS := nghttp2-client wrk
bench: install
	@if ! command -v h2load >/dev/null 2>&1 || ! command -v wrk >/dev/null 2>&1; then \
		if command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
			export DEBIAN_FRONTEND=noninteractive; \
			apt-get install -y -qq $(BENCH_TOOLS) >/dev/null 2>&1 \
				|| { apt-get update -qq && apt-get install -y -qq $(BENCH_TOOLS) >/dev/null; } \
				|| echo "bench: could not install $(BENCH_TOOLS)"; \
		fi; \
	fi
	$(PY) -m bench
