# The broker's build. `make` alone lists the targets.
SHELL := /bin/bash
GO ?= go
BW := $(CURDIR)/tools/bw/node_modules/.bin/bw
export BROKER_BW ?= $(BW)
GOFLAGS_BUILD := -trimpath

.DEFAULT_GOAL := help

help: ## list the targets
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-8s %s\n", $$1, $$2}'

build: ## build bin/broker (cgo, with the Secrets Manager SDK)
	$(GO) build $(GOFLAGS_BUILD) -o bin/broker ./cmd/broker

tools: $(BW) ## install the pinned bw CLI into tools/bw (npm ci, from the committed lockfile)

$(BW): tools/bw/package.json tools/bw/package-lock.json
	npm ci --prefix tools/bw --no-audit --no-fund --loglevel=error
	@touch $(BW)

test: tools ## every test with -race; again without cgo (native SM client; bw-only packages once); FreeBSD cross build
	$(GO) vet ./...
	@unformatted=$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go')); \
	  if [ -n "$$unformatted" ]; then echo "gofmt would change: $$unformatted"; exit 1; fi
	$(GO) test -race -count=1 -timeout 20m ./...
	CGO_ENABLED=0 $(GO) test -count=1 -timeout 10m $$($(GO) list ./... | grep -v -e /fallback/bwcli -e /upstream/vwserver -e /hardening)
	GOOS=freebsd GOARCH=amd64 CGO_ENABLED=0 $(GO) build -o /dev/null ./...
	GOOS=freebsd GOARCH=amd64 CGO_ENABLED=0 $(GO) build $(GOFLAGS_BUILD) -o bin/broker-freebsd-amd64 ./cmd/broker

demo: tools ## run the whole flow on the embedded upstreams and exit
	$(GO) run ./cmd/broker dev --once

bench: tools ## measure the broker beside its ceiling and predecessor; writes BENCHMARKS.md (about 7 min)
	scripts/bench.sh

fuzz: ## run every fuzz target for FUZZTIME (default 60s) each
	FUZZTIME=$(or $(FUZZTIME),60s) scripts/fuzz.sh

soak: ## the 1,000,000-request load and soak test (about a minute or more)
	BROKER_SOAK=1 $(GO) test -count=1 -run '^TestLoadSoak$$' -v -timeout 30m ./internal/hardening

lint: ## gofmt, go vet, and go mod tidy must change nothing
	@test -z "$$(gofmt -l .)" || (gofmt -l . && exit 1)
	$(GO) vet ./...
	$(GO) mod tidy -diff

.PHONY: help build tools test demo bench fuzz soak lint
