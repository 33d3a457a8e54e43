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

test: tools ## run every test with -race, then the no-cgo tests and the FreeBSD cross build
	$(GO) vet ./...
	@unformatted=$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go')); \
	  if [ -n "$$unformatted" ]; then echo "gofmt would change: $$unformatted"; exit 1; fi
	$(GO) test -race -count=1 -timeout 20m ./...
	CGO_ENABLED=0 $(GO) test -count=1 -timeout 10m ./...
	GOOS=freebsd GOARCH=amd64 CGO_ENABLED=0 $(GO) build -o /dev/null ./...

demo: tools ## run the whole flow on the embedded upstreams and exit
	$(GO) run ./cmd/broker dev --once

lint: ## gofmt, go vet, and go mod tidy must change nothing
	@test -z "$$(gofmt -l .)" || (gofmt -l . && exit 1)
	$(GO) vet ./...
	$(GO) mod tidy -diff

.PHONY: help build tools test demo lint
