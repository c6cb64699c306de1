#!/bin/sh
# Installs what the build and the tests need on a Debian 12 machine, as root.
# Idempotent: packages already present are not fetched again, and the kernel
# package for the QEMU tests is cached (scripts/fetch-kernel.sh).
set -eu

packages="qemu-system-x86 ovmf grub-efi-amd64-bin grub2-common mtools dosfstools
e2fsprogs gdisk busybox-static kmod zstd file openssl nginx musl-tools
docker-registry skopeo qemu-utils cryptsetup-bin mmdebstrap"

# kubectl renders deploy/ with kustomize in the tests; any kubectl will do.
command -v kubectl >/dev/null 2>&1 || packages="$packages kubernetes-client"

missing=""
for p in $packages; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
if [ -n "$missing" ]; then
    echo "install-deps: installing$missing"
    apt-get update -q
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $missing
fi

# bootctl's core is checked to build without std; os-agent/os-init are static musl.
rustup target add x86_64-unknown-none x86_64-unknown-linux-musl >/dev/null 2>&1 ||
    rustup target add x86_64-unknown-none x86_64-unknown-linux-musl

"$(dirname "$0")/fetch-kernel.sh" >/dev/null
# Debian's own kubectl (1.20), beside whichever kubectl is on PATH.
"$(dirname "$0")/fetch-kubectl.sh" >/dev/null
