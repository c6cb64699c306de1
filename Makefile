# `make test` is the README's test command and what CI runs (.ci/run).
CARGO ?= cargo

.PHONY: test deps lint core-no-std unit

test: deps lint core-no-std unit

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
