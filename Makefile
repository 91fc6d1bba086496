# weft — build, test, demo, bench, lint.
# `make test` runs unit, root integration and end-to-end tests and prints a
# closing line with the counts of passed, failed and skipped tests.

SHELL     := /bin/bash
GO        ?= go
BIN       := bin
CACHE     := .cache
VERSION   ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
COMMIT    ?= $(shell git rev-parse HEAD 2>/dev/null || echo unknown)
LDFLAGS   := -s -w -X github.com/weftnet/weft/version.Version=$(VERSION) -X github.com/weftnet/weft/version.Commit=$(COMMIT)
GOBUILD   := CGO_ENABLED=0 $(GO) build -trimpath -ldflags '$(LDFLAGS)'
KUBE_APISERVER := $(CACHE)/bin/kube-apiserver
# The version kube-apiserver reports (/version), read from the pin in
# tests/kubeapiserver/go.mod, stamped as the upstream release scripts do.
KUBE_VERSION := $(shell awk '$$1 == "require" && $$2 == "k8s.io/kubernetes" {print $$3}' tests/kubeapiserver/go.mod)
KUBE_VERSION_X = gitVersion=$(KUBE_VERSION) gitMajor=$(word 1,$(subst ., ,$(KUBE_VERSION:v%=%))) gitMinor=$(word 2,$(subst ., ,$(KUBE_VERSION))) gitTreeState=clean
KUBE_LDFLAGS = -s -w $(foreach pkg,k8s.io/component-base/version k8s.io/client-go/pkg/version,$(foreach kv,$(KUBE_VERSION_X),-X $(pkg).$(kv)))
TESTFLAGS ?=
STATICCHECK_VERSION := v0.6.1

export WEFT_BINARY := $(CURDIR)/$(BIN)/weft
export WEFT_KUBE_APISERVER := $(CURDIR)/$(KUBE_APISERVER)
export WEFT_KUBELET := $(CURDIR)/$(CACHE)/bin/kubelet
export WEFT_CONTAINERD := $(CURDIR)/$(CACHE)/bin/containerd

.PHONY: all build build-arm64 test unit demo bench lint clean clean-netns kube-apiserver kubelet containerd image wireguard-go-upstream

all: build

build:
	$(GOBUILD) -o $(BIN)/weft .
	ln -sf weft $(BIN)/weft-cni

build-arm64:
	GOARCH=arm64 $(GOBUILD) -o $(BIN)/weft-arm64 .

# The container image, without Docker: FROM scratch plus bin/weft at
# /usr/local/bin/weft, as one tarball that is both an OCI layout and a
# `docker save` archive (deploy/image). Reproducible: timestamps are
# SOURCE_DATE_EPOCH (the commit's time), so the same binary gives the same
# digest. Release: make image VERSION=v0.1.0 (the tag deploy/weft.yaml names).
IMAGE_REPO ?= ghcr.io/weftnet/weft
IMAGE_TAG  ?= $(VERSION)
SOURCE_DATE_EPOCH ?= $(shell git log -1 --format=%ct 2>/dev/null || echo 0)
image: build
	SOURCE_DATE_EPOCH=$(SOURCE_DATE_EPOCH) $(GO) run ./deploy/image -binary $(BIN)/weft -tag $(IMAGE_REPO):$(IMAGE_TAG) -version $(VERSION) -revision $(COMMIT) -out $(BIN)/weft-image.tar

# The kube-apiserver of the test harness, built from k8s.io/kubernetes through
# the Go module proxy (tests/kubeapiserver pins the version). Built once and
# kept under .cache; never downloaded as a binary.
kube-apiserver: $(KUBE_APISERVER)
# A copy keyed by the pinned go.sum also lives in the user's cache, outside
# the work tree, so CI on a fresh clone of the same machine skips the build;
# when it is missing or stale the binary is simply built again.
KUBE_SUM := $(shell sha256sum tests/kubeapiserver/go.sum 2>/dev/null | cut -c1-16)
KUBE_USER_CACHE := $(or $(XDG_CACHE_HOME),$(HOME)/.cache)/weft/kube-apiserver-$(KUBE_VERSION)-$(KUBE_SUM)
$(KUBE_APISERVER): tests/kubeapiserver/go.mod tests/kubeapiserver/go.sum
	mkdir -p $(CACHE)/bin
	if [ -x "$(KUBE_USER_CACHE)" ] && "$(KUBE_USER_CACHE)" --version >/dev/null 2>&1; then \
		cp "$(KUBE_USER_CACHE)" $(KUBE_APISERVER); \
	else \
		(cd tests/kubeapiserver && CGO_ENABLED=0 $(GO) build -trimpath -ldflags '$(KUBE_LDFLAGS)' -o $(CURDIR)/$(KUBE_APISERVER) k8s.io/kubernetes/cmd/kube-apiserver) && \
		mkdir -p "$$(dirname "$(KUBE_USER_CACHE)")" && cp $(KUBE_APISERVER) "$(KUBE_USER_CACHE)"; \
	fi

# The kubelet and containerd of the end-to-end tests with real nodes
# (tests/kubenode), built from source like kube-apiserver and cached the same
# way, under .cache/bin and in the user's cache keyed by the pinned go.sum.
# kubelet comes from the same module as kube-apiserver (tests/kubeapiserver),
# so the two share the module and build caches; containerd, its runc shim and
# ctr from tests/containerd. runc is Debian's (apt-get install runc).
# cached-build: $(1) the binary under .cache/bin, $(2) its copy in the user's
# cache, $(3) the module directory, $(4) go build's flags, $(5) the package.
define cached-build
	mkdir -p $(CACHE)/bin
	if [ -x "$(2)" ] && "$(2)" --version >/dev/null 2>&1; then \
		cp "$(2)" $(1); \
	else \
		(cd $(3) && CGO_ENABLED=0 $(GO) build -trimpath $(4) -o $(CURDIR)/$(1) $(5)) && \
		mkdir -p "$$(dirname "$(2)")" && cp $(1) "$(2)"; \
	fi
endef
USER_CACHE := $(or $(XDG_CACHE_HOME),$(HOME)/.cache)/weft
KUBELET := $(CACHE)/bin/kubelet
kubelet: $(KUBELET)
$(KUBELET): tests/kubeapiserver/go.mod tests/kubeapiserver/go.sum
	$(call cached-build,$(KUBELET),$(USER_CACHE)/kubelet-$(KUBE_VERSION)-$(KUBE_SUM),tests/kubeapiserver,-ldflags '$(KUBE_LDFLAGS)',k8s.io/kubernetes/cmd/kubelet)

CONTAINERD_VERSION := $(shell awk '$$1 == "require" && $$2 == "github.com/containerd/containerd/v2" {print $$3}' tests/containerd/go.mod)
CONTAINERD_SUM := $(shell sha256sum tests/containerd/go.sum 2>/dev/null | cut -c1-16)
CONTAINERD_KEY := $(CONTAINERD_VERSION)-$(CONTAINERD_SUM)
CONTAINERD_LDFLAGS := -s -w $(foreach kv,Version=$(CONTAINERD_VERSION) Revision=$(CONTAINERD_VERSION) Package=github.com/containerd/containerd,-X github.com/containerd/containerd/v2/version.$(kv))
CONTAINERD_BINS := $(addprefix $(CACHE)/bin/,containerd containerd-shim-runc-v2 ctr)
containerd: $(CONTAINERD_BINS)
$(CACHE)/bin/containerd $(CACHE)/bin/ctr: $(CACHE)/bin/%: tests/containerd/go.mod tests/containerd/go.sum
	$(call cached-build,$@,$(USER_CACHE)/$*-$(CONTAINERD_KEY),tests/containerd,-tags urfave_cli_no_docs -ldflags '$(CONTAINERD_LDFLAGS)',github.com/containerd/containerd/v2/cmd/$*)
# The shim has no --version; -v prints it.
$(CACHE)/bin/containerd-shim-runc-v2: tests/containerd/go.mod tests/containerd/go.sum
	mkdir -p $(CACHE)/bin
	c="$(USER_CACHE)/containerd-shim-runc-v2-$(CONTAINERD_KEY)"; \
	if [ -x "$$c" ] && "$$c" -v >/dev/null 2>&1; then \
		cp "$$c" $@; \
	else \
		(cd tests/containerd && CGO_ENABLED=0 $(GO) build -trimpath -tags 'urfave_cli_no_docs no_grpc' -ldflags '$(CONTAINERD_LDFLAGS)' -o $(CURDIR)/$@ github.com/containerd/containerd/v2/cmd/containerd-shim-runc-v2) && \
		mkdir -p "$$(dirname "$$c")" && cp $@ "$$c"; \
	fi

# Unit tests (no root), root integration tests and end-to-end tests on the
# one-machine cluster, in one run. Tests that cannot run say why with t.Skip;
# the closing line counts them.
test: build kube-apiserver kubelet containerd
	@mkdir -p $(CACHE)
	@$(GO) test -count=1 -v -timeout 45m $(TESTFLAGS) ./... 2>&1 | tee $(CACHE)/test.log | grep --line-buffered -vE '^=== (RUN|PAUSE|CONT|NAME)'; \
	rc=$${PIPESTATUS[0]}; scripts/test-summary $(CACHE)/test.log; exit $$rc

unit:
	$(GO) test -count=1 -short ./...

demo: build
	sudo -n true 2>/dev/null || [ "$$(id -u)" = 0 ] || { echo "make demo needs root (network namespaces)"; exit 1; }
	$(BIN)/weft demo

# Every benchmark of the repo, one round each (BENCHMARKS.md has the
# results). The data-path benchmark (tests/, BenchmarkTunnel) compares weft
# with the upstream standalone wireguard-go built here from the module proxy
# and with Debian's /usr/bin/wireguard-go when installed; benchmarks whose
# tools are missing skip and say what to install. Nothing is installed here.
# -p 1: one package at a time, so no benchmark competes with another for CPU;
# -v: a skipped benchmark shows why.
WIREGUARD_GO_UPSTREAM := $(CACHE)/bin/wireguard-go-upstream
export WEFT_WIREGUARD_GO_UPSTREAM := $(CURDIR)/$(WIREGUARD_GO_UPSTREAM)

wireguard-go-upstream:
	GO=$(GO) scripts/build-wireguard-go $(WIREGUARD_GO_UPSTREAM)

bench: build kube-apiserver wireguard-go-upstream
	@mkdir -p $(CACHE)
	set -o pipefail; $(GO) test -v -p 1 -run '^$$' -bench . -benchtime 1x -timeout 60m ./... 2>&1 | tee $(CACHE)/bench.log

lint:
	@out=$$(gofmt -l $$(git ls-files '*.go')); [ -z "$$out" ] || { echo "gofmt would change:"; echo "$$out"; exit 1; }
	$(GO) vet ./...
	$(GO) run honnef.co/go/tools/cmd/staticcheck@$(STATICCHECK_VERSION) ./...

# Removes network namespaces, links and mounts left by interrupted test runs:
# only ours, recognised by the netlab name prefix.
clean-netns: build
	$(BIN)/weft netlab-clean

clean:
	rm -rf $(BIN)
