# Every target installs what is missing first; nothing else needs installing by hand.
SHELL := /bin/bash
BIN := node_modules/.bin
TSX := node --import tsx

# Dataset size for db-seed (also read from the environment).
SEED_USERS ?= 100000
SEED_SUBSCRIPTIONS ?= 500000
SEED_FEATURES ?= 30
SEED ?= 42
export SEED_USERS SEED_SUBSCRIPTIONS SEED_FEATURES SEED

.PHONY: install run test codegen check-generated typecheck lint docs db-migrate db-seed db-reconcile bench

# npm ci only when package-lock.json changed since the last install.
node_modules/.installed: package.json package-lock.json
	npm ci --no-audit --no-fund
	@touch $@

install: node_modules/.installed

## make run: PostgreSQL 16 (embedded unless DATABASE_URL is set), migrations, seed when empty, the API.
run: install docs/index.html
	SEED_WHEN_EMPTY=1 $(TSX) src/main.ts

## make test: codegen freshness, spec lint, type check, then every ava test against a real PostgreSQL 16.
test: install check-generated lint typecheck
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

docs/index.html: openapi/openapi.yaml node_modules/.installed
	$(BIN)/redocly build-docs openapi/openapi.yaml --output docs/index.html

docs: install docs/index.html

db-migrate: install
	$(TSX) scripts/db.ts migrate
