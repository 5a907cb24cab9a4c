# fedmesh build. On a fresh machine `sudo make demo` and `make test` each run
# `make deps` first, so they install what they need on first use.
SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c

GO       ?= go
VERSION  ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo devel)
LDFLAGS  := -X github.com/fedmesh/fedmesh/federation/buildinfo.version=$(VERSION)
BIN      := $(CURDIR)/bin
CACHE    := $(CURDIR)/.cache
# Debian packages the tests and the lab run for real (BIRD/FRR peers, clang
# for bpf2go, wireguard-tools, iproute2 for namespaces).
APT_PACKAGES := bird2 frr wireguard-tools clang llvm libbpf-dev bpftool iproute2 iputils-ping iperf3 tcpdump util-linux redis-server redis-tools unbound chromium
BINARIES := controlplane/cmd/fedmesh-controlplane nodeagent/cmd/fedmesh-agent \
            federation/cmd/fedmesh-syncer tools/fedctl tools/fedlab
TEST_TIMEOUT ?= 25m
# ARTIFACTS keeps what tests save with t.ArtifactDir (the service-graph
# page's screenshot, ...), one directory per test under _artifacts.
ARTIFACTS ?= $(CURDIR)/.artifacts
# Development tools (buf, protoc-gen-*, staticcheck, bpf2go, cyclonedx-gomod)
# are pinned in their own module so their requirements never reach the
# binaries' build list (issue 25).
DEVTOOLS_MOD := $(CURDIR)/tools/devtools/go.mod
DEVTOOL  := $(GO) tool -modfile=$(DEVTOOLS_MOD)

# A count, not a duration: Go 1.26's fuzz coordinator can fail a target with a
# bare "context deadline exceeded" when a duration expires mid-exec on a loaded
# machine (golang/go#75804, fixed in Go 1.27). A count has no deadline to race.
FUZZTIME ?= 20000x

.PHONY: all deps generate build test fuzz bench bench-scale demo lint clean sbom

all: build

deps: $(CACHE)/bin/etcd $(CACHE)/bin/kube-apiserver ## install what the project needs (idempotent)
	@missing=""; for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing:$$missing"; \
	  SUDO=""; [ "$$(id -u)" = 0 ] || SUDO=sudo; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing >/dev/null; \
	fi
	$(GO) mod download
	$(GO) -C tools/devtools build -o /dev/null tool   # compile the pinned dev tools once
	@if [ "$$(id -u)" = 0 ] && ! mountpoint -q /sys/fs/bpf; then mount -t bpf bpffs /sys/fs/bpf; fi

# Real etcd and kube-apiserver for the syncer's tests and the store's peer
# benchmark, built from the Go module proxy once and cached (git-ignored).
$(CACHE)/bin/etcd: tools/etcdbin/go.mod tools/etcdbin/go.sum
	@mkdir -p $(@D)
	cd tools/etcdbin && $(GO) build -o $@ go.etcd.io/etcd/server/v3

$(CACHE)/bin/kube-apiserver: tools/kubebin/go.mod tools/kubebin/go.sum
	@mkdir -p $(@D)
	@echo "building kube-apiserver v1.37.2 once (about 4-7 minutes on 2 cores)"
	cd tools/kubebin && $(GO) build -o $@ k8s.io/kubernetes/cmd/kube-apiserver

# OCI images of every component (issue 20), built by go-containerregistry
# from static binaries: no Docker daemon, no registry. Reproducible: the
# same sources and VERSION give the same digests.
.PHONY: images
images: ## image tarballs of every component in .cache/images (digests printed; load with ctr/docker, push with crane)
	$(GO) -C tools/devtools run ./images -root $(CURDIR) -out $(CACHE)/images -version $(VERSION)

# The kubelet lab (fedlab up --kubelet, issue 20): real nodes need kubelet,
# kube-controller-manager and kube-scheduler (built from the same pinned
# Kubernetes as kube-apiserver, once, into .cache/bin) and Debian's
# containerd, runc and CNI plugins. Kept out of `make deps` (so `make demo`
# does not wait for them); `make test` runs it, since the kubelet e2e is part
# of the suite.
KUBELET_LAB_BINS := $(CACHE)/bin/kubelet $(CACHE)/bin/kube-controller-manager $(CACHE)/bin/kube-scheduler
HELM_BIN         := $(CACHE)/bin/helm
KUBELET_LAB_APT  := containerd runc containernetworking-plugins
KUBE_LDFLAGS     := -X k8s.io/component-base/version.gitVersion=v1.37.2 -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=37

.PHONY: kubelet-lab-deps
kubelet-lab-deps: deps $(KUBELET_LAB_BINS) $(HELM_BIN) ## what fedlab up --kubelet and its e2e need (binaries cached in .cache/bin)
	@missing=""; for p in $(KUBELET_LAB_APT); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing:$$missing"; \
	  SUDO=""; [ "$$(id -u)" = 0 ] || SUDO=sudo; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing >/dev/null; \
	fi

# Helm v4 as pinned in tools/helmbin, for the lab (which runs it as a program).
$(HELM_BIN): tools/helmbin/go.mod tools/helmbin/go.sum
	@mkdir -p $(@D)
	cd tools/helmbin && $(GO) build -o $@ helm.sh/helm/v4/cmd/helm

.PHONY: kubelet-lab
kubelet-lab: kubelet-lab-deps images build ## the lab on real kubelets, fedmesh installed with its Helm chart (needs root)
	@if [ "$$(id -u)" != 0 ]; then echo "make kubelet-lab needs root: it creates network namespaces, cgroups and runs kubelets. Run: sudo make kubelet-lab"; exit 1; fi
	@if ! mountpoint -q /sys/fs/bpf; then mount -t bpf bpffs /sys/fs/bpf; fi
	$(BIN)/fedlab up --kubelet --name kl --nodes 1 --bin-dir $(BIN)

$(KUBELET_LAB_BINS) &: tools/kubebin/go.mod tools/kubebin/go.sum
	@mkdir -p $(CACHE)/bin
	@echo "building kubelet, kube-controller-manager and kube-scheduler v1.37.2 once (several minutes on 2 cores)"
	cd tools/kubebin && time $(GO) build -ldflags "$(KUBE_LDFLAGS)" -o $(CACHE)/bin/ k8s.io/kubernetes/cmd/kubelet k8s.io/kubernetes/cmd/kube-controller-manager k8s.io/kubernetes/cmd/kube-scheduler

generate: ## regenerate protobuf and bpf2go output with the pinned tools
	$(DEVTOOL) buf generate
	$(GO) generate ./...

build: ## build every binary into ./bin
	@mkdir -p $(BIN)
	$(GO) build -ldflags "$(LDFLAGS)" -o $(BIN)/ $(addprefix ./,$(BINARIES))

test: deps kubelet-lab-deps ## unit, integration and end-to-end tests, the kubelet lab included (installs what is missing first)
	@mkdir -p $(ARTIFACTS)
	$(GO) test -count=1 -timeout $(TEST_TIMEOUT) -artifacts -outputdir $(ARTIFACTS) ./...
	$(GO) -C tools/devtools test -count=1 ./...

fuzz: ## every fuzz target for FUZZTIME each (CI runs it); corpora live in testdata/fuzz
	@for f in $$(git grep -l '^func Fuzz' -- '*_test.go'); do \
	  pkg=./$$(dirname $$f); \
	  for t in $$(grep -o '^func Fuzz[A-Za-z0-9_]*' $$f | sed 's/^func //'); do \
	    echo "fuzz $$pkg $$t ($(FUZZTIME))"; \
	    out=$$($(GO) test -run '^$$' -fuzz "^$$t$$" -fuzztime $(FUZZTIME) $$pkg 2>&1) || { echo "$$out"; echo "fuzz target $$t in $$pkg failed; a crashing input, if one was found, is under $$pkg/testdata/fuzz/$$t"; exit 1; }; \
	  done; \
	done

bench: ## benchmarks; ratios are against a peer measured in the same run
	$(GO) test -run '^$$' -bench . -benchmem -count 1 -timeout 30m ./...

bench-scale: build ## the federation-scale profile (tools/fedload: real replicas, simulated syncers and agents); results in bin/bench-scale.json
	$(GO) build -o $(BIN)/fedload ./tools/fedload
	$(BIN)/fedload --controlplane-bin $(BIN)/fedmesh-controlplane --duration 60s --json $(BIN)/bench-scale.json
	$(GO) test -run '^$$' -bench . -benchtime 1x ./test/scale

demo: deps build ## the whole federation running locally in network namespaces (needs root)
	@if [ "$$(id -u)" != 0 ]; then echo "make demo needs root: it creates network namespaces, veths and BPF programs. Run: sudo make demo"; exit 1; fi
	@if ! mountpoint -q /sys/fs/bpf; then mount -t bpf bpffs /sys/fs/bpf; fi
	$(BIN)/fedlab demo --bin-dir $(BIN)

lint: ## gofmt, go vet, staticcheck, buf lint
	@bad=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$bad" ]; then echo "gofmt needed:"; echo "$$bad"; exit 1; fi
	$(GO) vet ./...
	$(GO) -C tools/devtools vet ./...
	$(DEVTOOL) staticcheck ./...
	$(DEVTOOL) buf lint
	@# API compatibility: on a branch, the protos must not break what main serves.
	@if git rev-parse -q --verify main >/dev/null; then $(DEVTOOL) buf breaking --against '.git#branch=main'; fi
	@# Released versions in the binaries, and no dev tool in the product's module graph.
	$(GO) -C tools/devtools run ./modcheck -root $(CURDIR) -allow $(CURDIR)/tools/devtools/pseudo-allowlist.txt -tools $(DEVTOOLS_MOD)

sbom: build ## a CycloneDX SBOM per binary, from the build info Go embeds (bin/<name>.cdx.json)
	@for b in $(notdir $(BINARIES)); do \
	  $(DEVTOOL) cyclonedx-gomod bin -json -version $(VERSION) -output $(BIN)/$$b.cdx.json $(BIN)/$$b; \
	  echo "wrote $(BIN)/$$b.cdx.json"; \
	done

clean: ## remove build output (keeps the .cache of etcd/kube-apiserver; rm -rf .cache to rebuild them)
	rm -rf $(BIN)
