# shellcheck shell=bash
# The network-namespace topology scripts/demo.sh and scripts/bench-e2e.sh share (sourced by
# both; tests/common/topology.rs builds the same layout for the Rust tests):
#
#   ns PREFIXsw:    bridge br0 ── etcd ── h1 ── h2 ...    (veth ends, made inside PREFIXsw)
#   ns PREFIXetcd:  eth0 192.168.77.250/24, one etcd member (client :2379, peer :2380)
#   ns PREFIXhN:    eth0 192.168.77.N/24
#
# Every namespace is PREFIX + role (the demo uses ovd-, the benchmark ovb-). The root namespace
# is never touched: every command runs with `ip -n NS` or inside `ip netns exec NS`.
#
#   topo_switch PREFIX               PREFIXsw with bridge br0, up
#   topo_bridge_nf_off PREFIX        br_netfilter's bridge-nf-call-{iptables,ip6tables,arptables}
#                                    off in PREFIXsw (a switch runs no netfilter; no-op without
#                                    br_netfilter)
#   topo_attach PREFIX NAME IP       namespace PREFIXNAME, eth0 IP/24 (mtu 1500) on br0 by a veth
#                                    whose switch end is named NAME
#   topo_host_ip N                   underlay address of host hN: 192.168.77.N
#   topo_hosts PREFIX N              topo_attach of h1..hN at their topo_host_ip
#   topo_etcd_start PREFIX NAME DIR  etcd member NAME in PREFIXetcd (data DIR/etcd, log
#                                    DIR/etcd.log), in the background; waits up to ~20 s until
#                                    it is healthy and fails if it is not
#   topo_etcdctl PREFIX ARGS...      etcdctl (API v3) against that etcd, run in PREFIXetcd,
#                                    bounded (3 s dial, 5 s per command, 10 s in all)
#   topo_net_addr CIDR               10.244.37.1/24 -> 10.244.37.0 (a subnet's network address)
#   topo_wire PREFIX N WIRE          what the switch carries to h1..hN: veth (default: super-
#                                    packets cross whole, nothing is segmented), segmenting (a
#                                    NIC-like wire: the ports that send to a host segment in
#                                    software, without checksum offload, and each host's eth0
#                                    runs NAPI GRO), partial (the same, but the ports keep
#                                    checksum offload, so frames arrive with partial checksums,
#                                    as from a virtio or veth peer); needs ethtool
#   topo_teardown PREFIX             kills everything in, and deletes, every PREFIX* namespace
#                                    (scripts/cleanup-netns.sh PREFIX)

TOPO_SCRIPTS=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
TOPO_NET=192.168.77
TOPO_ETCD_IP=$TOPO_NET.250
TOPO_ETCD_ENDPOINT=http://$TOPO_ETCD_IP:2379

topo_switch() { # PREFIX
  local sw=${1}sw
  ip netns add "$sw"
  ip -n "$sw" link set lo up
  ip -n "$sw" link add br0 type bridge
  ip -n "$sw" link set br0 up
}

topo_bridge_nf_off() { # PREFIX
  local k
  [ -e /proc/sys/net/bridge ] || return 0
  for k in iptables ip6tables arptables; do
    ip netns exec "${1}sw" sysctl -qw "net.bridge.bridge-nf-call-$k=0"
  done
}

topo_attach() { # PREFIX NAME IP
  local sw=${1}sw ns=$1$2 port=$2 addr=$3
  ip netns add "$ns"
  ip -n "$ns" link set lo up
  ip -n "$sw" link add "$port" mtu 1500 type veth peer name eth0 mtu 1500 netns "$ns"
  ip -n "$sw" link set "$port" master br0
  ip -n "$sw" link set "$port" up
  ip -n "$ns" addr add "$addr/24" dev eth0
  ip -n "$ns" link set eth0 up
}

topo_host_ip() { # N
  echo "$TOPO_NET.$1"
}

topo_hosts() { # PREFIX N
  local i
  for i in $(seq 1 "$2"); do
    topo_attach "$1" "h$i" "$(topo_host_ip "$i")"
  done
}

topo_etcdctl() { # PREFIX ARGS...
  local ns=${1}etcd
  shift
  ip netns exec "$ns" env ETCDCTL_API=3 timeout 10 etcdctl --endpoints="$TOPO_ETCD_ENDPOINT" \
    --dial-timeout=3s --command-timeout=5s "$@"
}

topo_etcd_start() { # PREFIX NAME DIR
  local ns=${1}etcd name=$2 dir=$3 ip=$TOPO_ETCD_IP ep=$TOPO_ETCD_ENDPOINT _
  ip netns exec "$ns" etcd --name "$name" --data-dir "$dir/etcd" --logger=zap --log-level=warn \
    --listen-client-urls "$ep" --advertise-client-urls "$ep" \
    --listen-peer-urls "http://$ip:2380" --initial-advertise-peer-urls "http://$ip:2380" \
    --initial-cluster "$name=http://$ip:2380" --initial-cluster-state new \
    >"$dir/etcd.log" 2>&1 &
  for _ in $(seq 100); do
    topo_etcdctl "$1" endpoint health >/dev/null 2>&1 && return 0
    sleep 0.2
  done
  topo_etcdctl "$1" endpoint health >/dev/null 2>&1
}

topo_net_addr() { # CIDR
  local ip=${1%/*} len=${1#*/} a b c d n mask
  IFS=. read -r a b c d <<<"$ip"
  n=$(((a << 24) | (b << 16) | (c << 8) | d))
  mask=$(((0xffffffff << (32 - len)) & 0xffffffff))
  n=$((n & mask))
  echo "$((n >> 24 & 255)).$((n >> 16 & 255)).$((n >> 8 & 255)).$((n & 255))"
}

topo_teardown() { # PREFIX
  # Never without a prefix: cleanup-netns.sh alone removes every ovt-/ovd- namespace.
  [ -n "${1:-}" ] || { echo "topo_teardown: no namespace prefix given" >&2; return 2; }
  "$TOPO_SCRIPTS/cleanup-netns.sh" "$1"
}

topo_wire() { # PREFIX N WIRE
  local p=$1 n=$2 wire=$3 tx i
  case $wire in
    veth) return 0 ;;
    segmenting) tx=off ;;
    partial) tx=on ;;
    *) echo "WIRE must be veth, segmenting or partial, not '$wire'" >&2; return 2 ;;
  esac
  for i in $(seq 1 "$n"); do
    ip netns exec "${p}sw" ethtool -K "h$i" tx "$tx" tso off tx-udp_tnl-segmentation off \
      tx-udp_tnl-csum-segmentation off tx-udp-segmentation off tx-gso-list off
    # A veth runs NAPI GRO for what comes from a peer without TSO once GRO is switched on.
    ip netns exec "${p}h$i" ethtool -K eth0 gro off
    ip netns exec "${p}h$i" ethtool -K eth0 gro on
  done
}
