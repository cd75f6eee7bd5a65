#!/usr/bin/env bash
# Builds overlayd's container image (./Containerfile), offline: the static overlayd and
# overlay-cni, plus this machine's iptables (nft backend) with the libraries and extensions it
# loads, staged into target/image/rootfs and copied FROM scratch by `podman build`.
#
#   scripts/build-image.sh [TAG]        (default: overlayd:<version in Cargo.toml>)
#
# Needs podman and iptables (scripts/install-deps.sh installs both). The binaries are linked
# statically against glibc (`-C target-feature=+crt-static`, target x86_64-unknown-linux-gnu):
# the musl target is not installed here and rustup cannot fetch it offline.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n1)
tag=${1:-overlayd:$version}
triple=x86_64-unknown-linux-gnu
PATH="$PATH:/usr/sbin:/sbin"

echo "==> static build (target $triple, crt-static)"
RUSTFLAGS="-C target-feature=+crt-static" cargo build --release --locked --target "$triple" --bins
bin=target/$triple/release

stage=target/image
rm -rf "$stage"
rootfs=$stage/rootfs
mkdir -p "$rootfs/usr/local/bin" "$rootfs/usr/sbin" "$rootfs/run/flannel" "$rootfs/tmp"
for b in overlayd overlay-cni; do
    if ! ldd "$bin/$b" 2>&1 | grep -qE 'statically linked|not a dynamic executable'; then
        echo "build-image: $bin/$b is dynamically linked:" >&2
        ldd "$bin/$b" >&2
        exit 1
    fi
    # Without the debug info the release profile keeps for profiling (60 MB -> a few MB).
    strip --strip-debug -o "$rootfs/usr/local/bin/$b" "$bin/$b"
    chmod 0755 "$rootfs/usr/local/bin/$b"
done

# iptables, nft backend: the multi-call binary, what it links, and its extensions.
multi=$(command -v xtables-nft-multi) || { echo "build-image: xtables-nft-multi not found (apt-get install iptables)" >&2; exit 1; }
cp -L --parents "$multi" "$rootfs"
ldd "$multi" | awk '$2 == "=>" && $3 ~ /^\// { print $3 } $1 ~ /^\// { print $1 }' | while read -r lib; do
    cp -L --parents "$lib" "$rootfs"
done
xtlib=$(dirname "$(ldd "$multi" | awk '/libxtables/ { print $3 }')")
for d in /usr/lib/x86_64-linux-gnu/xtables "$xtlib/xtables"; do
    if [ -d "$d" ]; then mkdir -p "$rootfs$d" && cp -a "$d/." "$rootfs$d/"; break; fi
done
for name in iptables iptables-restore iptables-save; do
    ln -s "$(basename "$multi")" "$rootfs/usr/sbin/$name"
done

echo "==> podman build -t $tag"
podman build --network=none --pull=never -t "$tag" -f Containerfile "$stage"
podman image inspect --format '{{.Id}} {{.Size}} bytes' "$tag"
