# Every target installs what is missing first; nothing else needs installing by hand.
SHELL := /bin/bash
BIN := node_modules/.bin
TSX := node --import tsx
# V8 heap sizing for the service (make run and make bench): a small young generation and a capped
# old one keep its resident memory well under 200 MB at 64 connections (bench figures in README).
SERVICE_NODE_FLAGS ?= --max-semi-space-size=2 --max-old-space-size=192
export SERVICE_NODE_FLAGS

# Dataset size for db-seed (also read from the environment).
SEED_USERS ?= 100000
SEED_SUBSCRIPTIONS ?= 500000
SEED_FEATURES ?= 30
SEED ?= 42
export SEED_USERS SEED_SUBSCRIPTIONS SEED_FEATURES SEED

.PHONY: install run test codegen check-generated typecheck lint docs browser db-migrate db-seed db-reconcile bench

# npm ci only when package-lock.json changed since the last install.
node_modules/.installed: package.json package-lock.json
	npm ci --no-audit --no-fund
	@touch $@

install: node_modules/.installed

## make run: PostgreSQL 16 (embedded unless DATABASE_URL is set), migrations, seed when empty, the API.
run: install docs/index.html
	SEED_WHEN_EMPTY=1 node $(SERVICE_NODE_FLAGS) --import tsx src/main.ts

## make test: codegen freshness, spec lint, type check, then every ava test against a real PostgreSQL 16.
test: install check-generated lint typecheck docs/index.html browser
	$(TSX) scripts/run-tests.ts

codegen: install
	$(BIN)/openapi-typescript openapi/openapi.yaml -o generated/api.d.ts

check-generated: install
	@$(BIN)/openapi-typescript openapi/openapi.yaml -o generated/api.d.ts --check \
	  || { echo "generated/ is stale: run make codegen and commit it"; exit 1; }

typecheck: install
	$(BIN)/tsc --noEmit -p .

lint: install
	$(BIN)/redocly lint openapi/openapi.yaml

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

# Chromium for the browser test of /docs and /docs/swagger (Debian's package, as root). Where it
# cannot be installed, that test is skipped and says why.
browser:
	@if [ ! -x /usr/bin/chromium ] && [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  echo "installing chromium for the docs browser test"; \
	  { apt-get install -y --no-install-recommends chromium fonts-liberation >/dev/null 2>&1 \
	    || { apt-get update >/dev/null 2>&1 && apt-get install -y --no-install-recommends chromium fonts-liberation >/dev/null 2>&1; }; } \
	  || echo "could not install chromium: the docs browser test will be skipped"; \
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

## make bench: seed a dedicated database (BENCH_SUBSCRIPTIONS, default 500000), load the service over
## loopback with autocannon, print the table and write bench/results/<date>-<size>.json.
BENCH_SUBSCRIPTIONS ?= 500000
bench: install
	BENCH_SUBSCRIPTIONS=$(BENCH_SUBSCRIPTIONS) $(TSX) scripts/bench.ts
