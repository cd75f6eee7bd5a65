#!/usr/bin/env bash
# Installs what the build, the namespace tests and the demo need, only if something is missing.
# Idempotent and quiet: on a machine that has everything it does nothing (no apt-get update).
#
#   protoc and the well-known .proto files (etcd-client's build), etcd + etcdctl, iperf3, ip/bridge, ping, tcpdump, tinc,
#   ethtool (the NIC-like wires: tests/wire_segmenting.rs, WIRE= in scripts/bench-e2e.sh),
#   pkill/sysctl (procps), killall (psmisc), python3 (the L2 trunk test's tagged station), the CNI reference plugins (bridge, host-local) that
#   overlay-cni delegates to (containernetworking-plugins, in /usr/lib/cni), podman + runc + strip (the container
#   image: scripts/build-image.sh and tests/image.rs; runc because this machine's crun refuses its hybrid cgroups),
#   iptables (--ip-masq and the FORWARD rules, tests/masq.rs; also copied into the image)
set -euo pipefail

# command -> Debian package
declare -A NEED=(
  [protoc]=protobuf-compiler
  [etcd]=etcd-server
  [etcdctl]=etcd-client
  [iperf3]=iperf3
  [ip]=iproute2
  [bridge]=iproute2
  [ping]=iputils-ping
  [tcpdump]=tcpdump
  [tincd]=tinc
  [pkill]=procps
  [sysctl]=procps
  [killall]=psmisc
  [iptables]=iptables
  [python3]=python3
  [podman]=podman
  [runc]=runc
  [strip]=binutils
  [nsenter]=util-linux
  [ethtool]=ethtool
  [wg]=wireguard-tools
  [wireguard-go]=wireguard-go
)

PATH="$PATH:/usr/sbin:/sbin"
missing=()
for cmd in "${!NEED[@]}"; do
  command -v "$cmd" >/dev/null 2>&1 || missing+=("${NEED[$cmd]}")
done
# file -> Debian package, for what is not on PATH
# The well-known .proto files that etcd-client's build script imports (google/protobuf/*.proto):
# protoc alone does not bring them, and apt's --no-install-recommends leaves them out.
# tests/install_deps.rs checks this list against the imports in etcd-client's own proto files.
declare -A NEED_FILE=(
  [/usr/include/google/protobuf/descriptor.proto]=libprotobuf-dev
  [/usr/include/google/protobuf/struct.proto]=libprotobuf-dev
  [/usr/lib/cni/bridge]=containernetworking-plugins
  [/usr/lib/cni/host-local]=containernetworking-plugins
)
for f in "${!NEED_FILE[@]}"; do
  [ -e "$f" ] || missing+=("${NEED_FILE[$f]}")
done
[ ${#missing[@]} -eq 0 ] && exit 0

# De-duplicate, keep it stable for the log line.
mapfile -t pkgs < <(printf '%s\n' "${missing[@]}" | sort -u)
echo "install-deps: installing ${pkgs[*]}"

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1; then SUDO="sudo"; else
    echo "install-deps: need root (or sudo) to install: ${pkgs[*]}" >&2; exit 1
  fi
fi
if ! command -v apt-get >/dev/null 2>&1; then
  echo "install-deps: no apt-get; install these by hand: ${pkgs[*]}" >&2; exit 1
fi

# Keep package scripts from starting daemons (etcd, iperf3, tinc) in the root namespace:
# the tests run their own, inside namespaces. Only if no policy is in place already.
POLICY=/usr/sbin/policy-rc.d
if [ ! -e "$POLICY" ]; then
  $SUDO sh -c "printf '#!/bin/sh\nexit 101\n' > $POLICY && chmod 755 $POLICY"
  trap '$SUDO rm -f "$POLICY"' EXIT
fi

export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq >/dev/null
$SUDO apt-get install -y -qq --no-install-recommends "${pkgs[@]}" >/dev/null

for cmd in "${!NEED[@]}"; do
  command -v "$cmd" >/dev/null 2>&1 || { echo "install-deps: $cmd still missing" >&2; exit 1; }
done
for f in "${!NEED_FILE[@]}"; do
  [ -e "$f" ] || { echo "install-deps: $f still missing" >&2; exit 1; }
done
echo "install-deps: done"
