# `make test` is the README's test command and what CI runs (.ci/run).
CARGO ?= cargo
BIN := target/bin
MUSL := x86_64-unknown-linux-musl

.PHONY: test deps lint core-no-std unit bins

test: deps lint core-no-std bins unit

deps:
	./scripts/install-deps.sh

lint:
	$(CARGO) fmt --all --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

# The env codec, slot state and GRUB model must stay no_std and allocation-free.
core-no-std:
	$(CARGO) build -p bootctl --no-default-features --target x86_64-unknown-none

unit:
	$(CARGO) test --workspace

# Release binaries in one directory: os-image (host) finds os-init and os-agent
# (static, for nodes, built with the size-optimised `node` profile) beside itself.
bins:
	$(CARGO) build --release -p image-builder --bin os-image
	$(CARGO) build --profile node --target $(MUSL) -p initramfs -p bootctl -p agent
	mkdir -p $(BIN)
	cp target/release/os-image target/$(MUSL)/node/os-init target/$(MUSL)/node/os-agent target/$(MUSL)/node/bootctl $(BIN)/
	@for b in os-init os-agent bootctl; do file $(BIN)/$$b | grep -Eq 'statically linked|static-pie linked' || { echo "$$b is not static"; exit 1; }; \
	  echo "$$b: static, $$(stat -c %s $(BIN)/$$b) bytes stripped"; done
	@size=$$(stat -c %s $(BIN)/os-agent); [ $$size -lt 3145728 ] || { echo "os-agent is $$size bytes, over 3 MiB (docs/decisions.md, os-agent size)"; exit 1; }

# The README's first command: builds demo bundles v1, v2 and a broken v3, boots a
# QEMU node with v1 and drives it through upgrade, rollback and automatic
# fallback; disk and logs stay in target/ab-demo (DEMO_DIR overrides).
DEMO_DIR ?= target/ab-demo
.PHONY: demo
demo: deps
	$(CARGO) run --release -p e2e --bin ab-demo -- --out $(DEMO_DIR)

# The same scenario with the upgrades pulled from a loopback OCI registry
# (Debian's docker-registry) that `os-image oci --push` published v2 and v3 to;
# disk, registry and logs stay in target/ab-demo-registry (DEMO_REGISTRY_DIR overrides).
DEMO_REGISTRY_DIR ?= target/ab-demo-registry
.PHONY: demo-registry
demo-registry: deps
	$(CARGO) run --release -p e2e --bin ab-demo -- --from-registry --out $(DEMO_REGISTRY_DIR)

# The real Debian node image (systemd, containerd; docs/node-image.md): node roots
# v1, v2 and a broken v3 (containerd never starts), a disk with v1, then upgrade,
# confirm by the agent's health gate and automatic fallback, with a timeline.
# Bundles are cached in /var/cache/ab-os-test/node-bundles; disk and logs stay in
# target/ab-demo-node (DEMO_NODE_DIR overrides).
DEMO_NODE_DIR ?= target/ab-demo-node
.PHONY: demo-node
demo-node: deps
	$(CARGO) run --release -p e2e --bin ab-demo -- --node-image --out $(DEMO_NODE_DIR)

# Container images of os-operator and os-proxy without Docker: static musl
# binaries, each in an OCI image layout under target/images (docs/install.md).
# `make push-images` also pushes them to $(REGISTRY)/os-operator:$(TAG) and
# $(REGISTRY)/os-proxy:$(TAG) (PUSH_FLAGS, e.g. --plain-http or --auth-file F);
# `make deploy-config` points deploy/kustomization.yaml at the same two names.
REGISTRY ?= localhost:5000/ab-os
TAG ?= 0.1.0
IMAGES ?= target/images
PUSH_FLAGS ?=
.PHONY: images push-images deploy-config
images:
	$(CARGO) build --release --target $(MUSL) -p operator -p proxy
	$(CARGO) build --release -p image-builder --bin os-image
	@for b in os-operator os-proxy; do file target/$(MUSL)/release/$$b | grep -Eq 'statically linked|static-pie linked' || { echo "$$b is not static"; exit 1; }; done
	target/release/os-image container --binary target/$(MUSL)/release/os-operator --user 6552:6552 --layout $(IMAGES)/os-operator --tag $(TAG)
	target/release/os-image container --binary target/$(MUSL)/release/os-proxy --layout $(IMAGES)/os-proxy --tag $(TAG)

push-images: images
	target/release/os-image container --binary target/$(MUSL)/release/os-operator --user 6552:6552 --layout $(IMAGES)/os-operator --tag $(TAG) --push $(REGISTRY)/os-operator:$(TAG) $(PUSH_FLAGS)
	target/release/os-image container --binary target/$(MUSL)/release/os-proxy --layout $(IMAGES)/os-proxy --tag $(TAG) --push $(REGISTRY)/os-proxy:$(TAG) $(PUSH_FLAGS)

deploy-config:
	sed -i -e '/name: os-operator$$/{n;s|newName: .*|newName: $(REGISTRY)/os-operator|;n;s|newTag: .*|newTag: $(TAG)|}' \
	       -e '/name: os-proxy$$/{n;s|newName: .*|newName: $(REGISTRY)/os-proxy|;n;s|newTag: .*|newTag: $(TAG)|}' deploy/kustomization.yaml
