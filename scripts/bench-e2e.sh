#!/usr/bin/env bash
# End-to-end benchmark: two hosts in network namespaces on a virtual switch, measured in one run:
#
#   1. underlay            the bare veth/bridge path (192.168.77.1 -> .2)
#   2. kernel_vxlan        the kernel VXLAN device configured exactly as flanneld's vxlan backend
#                          does (flannel.1, VNI 1, dstport 8472, nolearning, mtu 1450, permanent
#                          neigh/fdb entries, onlink route); no overlayd
#   3. vxlan               overlayd --backend vxlan
#   4. udp                 overlayd --backend udp
#   5. gre                 overlayd --backend gre
#   6. vxlan_no_offload    overlayd --backend vxlan --no-offload (no TUN TSO/GRO, no UDP GSO/GRO)
#      vxlan_userspace_gso overlayd --backend vxlan --tunnel-gso off: segmented in userspace and sent
#                          in UDP GSO runs (the way before tunnel GSO); vxlan itself runs with the
#                          default --tunnel-gso auto, so the two rows are the A/B of tunnel GSO
#      udp_userspace_gso   the same for --backend udp
#      vxlan_direct        overlayd --backend vxlan with {"DirectRouting":true} in the network config:
#                          h2 is on h1's link, so the kernel routes the overlay unencapsulated
#                          (plain routing, not overlayd's data path: what DirectRouting buys)
#      kernel_vxlan_uso,   inner UDP with GSO: a sender in h1 writes 62 KiB buffers with
#      vxlan_uso           UDP_SEGMENT=1200 for -t seconds (as QUIC stacks send), the receiver in h2
#                          counts what arrives (Gbit/s of UDP payload received; no flow control,
#                          so this is what each path delivers when the sender runs flat out)
#   7. tinc                tinc 1.0, router mode, Cipher = none, Digest = none (userspace reference)
#      wireguard           overlayd with flannel's {"Backend":{"Type":"wireguard"}} (written to etcd;
#                          that backend has no --backend flag), each host its own key file
#      wireguard_go        Debian's wireguard-go on both hosts, set up as flanneld's wireguard
#                          backend sets up its device (wg: key, listen-port 51820, the peer with
#                          AllowedIPs = its subnet; address, mtu 1420, route to the network); no
#                          etcd, no overlayd. Its "overlayd CPU" column is the two wireguard-go
#                          processes' CPU (the same measure, the other daemon)
#
# IPv6 inner rows (issue 16): the hosts also get fd00:77::1/64 and ::2/64 on eth0.
#      kernel_vxlan6       the kernel VXLAN carrying IPv6 as flanneld's dual-stack vxlan backend
#                          does: flannel-v6.1 (VNI 1, dstport 8472, nolearning, local = the IPv6
#                          underlay address; the kernel gives it mtu 1430), address
#                          fd00:10:0:N::/128, permanent neigh/fdb (dst = the peer's IPv6 address)
#                          and an onlink route; IPv6 inner over the IPv6 underlay, no overlayd
#      vxlan6              overlayd --backend vxlan with flannel's dual-stack config
#                          (IPv6Network fd00:10::/56), measured to h2's IPv6 overlay address:
#                          IPv6 inner over the IPv6 underlay, as flannel (tunnel GSO with IPv6
#                          outer headers where the kernel has it)
#      vxlan6_userspace_gso  the same with --tunnel-gso off
# Their ratio is vxlan6 to kernel_vxlan6 (table column and the JSON's "ipv6_ratio").
#
# L2 rows (issue 6): on each host a bridge brl2 with a "container" namespace (ovb-c1, ovb-c2:
# veth, mtu 1450, 10.50.0.1/.2 in one /24), measured container to container:
#   8. kernel_l2_vxlan     kernel VXLAN vx100 (VNI 100, dstport 4789, learning) on brl2, one
#                          all-zeros flood entry to the peer; no overlayd
#   9. l2_vxlan            overlayd --l2 net@brl2, network VNI 100 Backend vxlan
#  10. l2_gre              overlayd --l2 net@brl2, network VNI 100 Backend gre
#      l2_vxlan_userspace_gso  l2_vxlan with --tunnel-gso off
#      l2_gre_link_tx      l2_gre with --gre-link-tx
# Their ratios are to kernel_l2_vxlan (table column and the JSON's "l2_ratios").
#
# For each: iperf3 one TCP stream and 4 streams (-P 4), -t $DURATION, h1 -> h2 (receiver rate),
# and ping -c 50 -i 0.02 (avg RTT in µs). For every case (the kernel's included) the whole
# machine's CPU per GiB received in the 1-stream run: busy ticks of /proc/stat (everything but
# idle, iowait and steal), since the kernel works on the daemons' behalf (segmentation, GRO,
# checksums, softirqs) and a daemon's own CPU hides that. For every overlayd case also: both daemons' CPU
# time per GiB moved in the 1-stream run (user + system from /proc/PID/stat), their CPU during
# the ping run, and VmRSS sampled every second over the 1-stream run (DURATION=60 makes that
# the 60 s sustained-load check); VmRSS after the 1-stream vxlan run as before.
# Prints a table and one final JSON line.
#
#   scripts/bench-e2e.sh      (as root)
#
# Environment: DURATION=8            seconds per iperf3 run
#              WIRE=veth             what the switch carries (scripts/lib/topology.sh topo_wire):
#                                    veth = super-packets cross whole; segmenting = a NIC-like
#                                    wire of MTU-sized frames with GRO at each host's eth0;
#                                    partial = the same with partial checksums (as from a
#                                    virtio or veth peer)
#              OVERLAYD_BIN=path     binary (default target/release/overlayd; built if missing)
#              KEEP_LOGS=1           keep the work directory (its path is printed)
#              CASES="a b"           run only these cases (default: all), e.g. CASES="kernel_l2_vxlan l2_vxlan"
#              OVERLAYD_FLAGS="..."  extra flags for every L3 overlayd case, e.g. "--busy-poll-us 0"
#              IPERF_FLAGS="..."     extra iperf3 client flags for every case, e.g. "-C cubic"
#              REPEAT=1              iperf3 runs per case and stream count; the table shows the
#                                    median (CPU and RSS come from the first single-stream run)
#              BRIDGE_NF=1           leave br_netfilter's hooks on for the switch's bridge (off by
#                                    default: a switch runs no iptables; runs A-H had them on)
#              PIN=none              where the daemons run (taskset): split = h1's on CPU 0, h2's on
#                                    CPU 1; cross = the other way round; same = both on CPU 0;
#                                    none = wherever the scheduler puts them (the applications
#                                    are never pinned)
#              BENCH_PREFIX=ovb-     namespace prefix; a run refuses to start while namespaces with
#                                    this prefix have processes in them (another run), rather than
#                                    removing them
#
# Everything lives in namespaces named ovb-*; the root namespace is not touched. Everything is
# removed on exit, also on Ctrl-C or failure (or later: scripts/cleanup-netns.sh ovb-).
set -euo pipefail
cd "$(dirname "$0")/.."
PATH="$PATH:/usr/sbin:/sbin"
# shellcheck source=lib/topology.sh
. scripts/lib/topology.sh

if [ "$(id -u)" -ne 0 ]; then
  echo "bench-e2e: needs root (it creates network namespaces); run it as root" >&2
  exit 1
fi

DURATION=${DURATION:-8}
WIRE=${WIRE:-veth}
[[ "$WIRE" =~ ^(veth|segmenting|partial)$ ]] || { echo "WIRE must be veth, segmenting or partial, not '$WIRE'" >&2; exit 2; }
REPEAT=${REPEAT:-1}
[[ "$REPEAT" =~ ^[1-9][0-9]*$ ]] || { echo "REPEAT must be a whole number >= 1, not '$REPEAT'" >&2; exit 2; }
P=${BENCH_PREFIX:-ovb-}
SW=${P}sw
H1=${P}h1
H2=${P}h2
ETCD_NS=${P}etcd
U1=$(topo_host_ip 1)          # 192.168.77.1
U2=$(topo_host_ip 2)          # 192.168.77.2
ETCD_IP=$TOPO_ETCD_IP          # 192.168.77.250
ENDPOINT=$TOPO_ETCD_ENDPOINT
NETWORK=10.244.0.0/16
WORK=$(mktemp -d /tmp/ovb-bench.XXXXXX)
RESULTS=$WORK/results.tsv    # case <tab> gbps_1 <tab> gbps_4 <tab> ping_us
EXTRA=$WORK/extra.tsv        # key <tab> value (rss, skipped reasons)
: >"$RESULTS"
: >"$EXTRA"
declare -a OVD_PIDS=()
OVD_ON=0 # 1 while both daemons of a case run: measure() then also counts their CPU and RSS

say() { printf '\n==> %s\n' "$*" >&2; }
die() { echo "bench-e2e: $*" >&2; exit 1; }
in_ns() { local ns=$1; shift; ip netns exec "$ns" "$@"; }

cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  say "cleaning up"
  disown -a 2>/dev/null || true
  # Kill every process in our namespaces (TERM first, then KILL) and delete them; only once
  # this run owns the prefix (never another run's namespaces).
  [ -n "${OWN_NETNS:-}" ] && { topo_teardown "$P" >&2 || true; }
  if [ -n "${KEEP_LOGS:-}" ]; then echo "logs kept in $WORK" >&2; else rm -rf "$WORK"; fi
  exit $rc
}
trap cleanup EXIT
trap 'echo "bench-e2e: interrupted" >&2; exit 130' INT TERM

log_tail() {
  echo "---- last lines of $1 ----" >&2
  tail -n 20 "$1" >&2 2>/dev/null || true
}

# ------------------------------------------------------------------------------------------------
# Measurements (all bounded by timeouts)

# wait_reachable SRC_NS ADDR: up to ~15 s of 1-packet pings
wait_reachable() {
  local i
  for i in $(seq 15); do
    in_ns "$1" timeout 3 ping -q -n -c 1 -W 1 "$2" >/dev/null 2>&1 && return 0
    sleep 0.2
  done
  return 1
}

# iperf_gbps SRC_NS DST_NS ADDR STREAMS TAG: prints the receiver's rate in Gbit/s (or FAIL)
iperf_gbps() {
  local src=$1 dst=$2 addr=$3 par=$4 tag=$5 json srv i
  json=$WORK/iperf-$tag-P$par.json
  in_ns "$dst" timeout $((DURATION + 30)) iperf3 -s -1 -B "$addr" >"$WORK/iperf-$tag-P$par.srv.log" 2>&1 &
  srv=$!
  for i in $(seq 50); do
    in_ns "$dst" ss -ltn 2>/dev/null | grep -qF -e "$addr:5201" -e "[$addr]:5201" && break
    sleep 0.1
  done
  in_ns "$src" timeout $((DURATION + 20)) iperf3 -c "$addr" -t "$DURATION" -P "$par" ${IPERF_FLAGS:-} -J >"$json" 2>&1 || true
  wait "$srv" 2>/dev/null || true
  python3 - "$json" <<'EOF'
import json, sys
try:
    d = json.load(open(sys.argv[1]))
    print("%.3f" % (d["end"]["sum_received"]["bits_per_second"] / 1e9))
except Exception:
    print("FAIL")
EOF
}

# machine_busy_ticks: the whole machine's busy CPU time in clock ticks (user, nice, system,
# irq, softirq: every /proc/stat column but idle, iowait and steal; guest time is in user)
machine_busy_ticks() {
  awk '/^cpu / { print $2 + $3 + $4 + $7 + $8 }' /proc/stat
}

# ping_us SRC_NS ADDR: average RTT of 50 pings, 20 ms apart, in µs (or FAIL)
ping_us() {
  local out avg
  out=$(in_ns "$1" timeout 20 ping -q -n -c 50 -i 0.02 -W 1 "$2" 2>&1 || true)
  avg=$(sed -n 's|^rtt [^=]*= [0-9.]*/\([0-9.]*\)/.*|\1|p' <<<"$out")
  if [ -n "$avg" ]; then awk -v a="$avg" 'BEGIN { printf "%.0f", a * 1000 }'; else echo FAIL; fi
}

# measure CASE DST_ADDR [HOOK]: ping, 1-stream and 4-stream iperf3 from $SRC_NS (h1) to
# DST_ADDR in $DST_NS (h2). HOOK (a function name) runs right after the 1-stream run.
SRC_NS=$H1
DST_NS=$H2
measure() {
  local name=$1 addr=$2 hook=${3:-} p g1 g4 t0 w0 m0 sampler k tag all1 all4
  say "$name: ping + iperf3 $SRC_NS -> $addr (${DURATION}s, 1 and 4 streams)"
  if ((OVD_ON)); then
    t0=$(ovd_cpu_ticks)
    w0=$(date +%s%N)
  fi
  p=$(ping_us "$SRC_NS" "$addr")
  if ((OVD_ON)); then
    # Both daemons' CPU over the ping run, in % of one CPU (what busy-polling costs).
    printf 'ping_cpu_pct_%s\t%s\n' "$name" \
      "$((($(ovd_cpu_ticks) - t0) * 100 * 1000000000 / $(getconf CLK_TCK) / ($(date +%s%N) - w0)))" >>"$EXTRA"
    t0=$(ovd_cpu_ticks)
    rss_sampler "$WORK/rss-$name.tsv" &
    sampler=$!
  fi
  m0=$(machine_busy_ticks)
  all1=("$(iperf_gbps "$SRC_NS" "$DST_NS" "$addr" 1 "$name")")
  printf 'machine_ticks_%s\t%s\n' "$name" "$(($(machine_busy_ticks) - m0))" >>"$EXTRA"
  if ((OVD_ON)); then
    printf 'cpu_ticks_%s\t%s\n' "$name" "$(($(ovd_cpu_ticks) - t0))" >>"$EXTRA"
    kill "$sampler" 2>/dev/null || true
    wait "$sampler" 2>/dev/null || true
  fi
  for ((k = 2; k <= REPEAT; k++)); do
    all1+=("$(iperf_gbps "$SRC_NS" "$DST_NS" "$addr" 1 "$name-r$k")")
  done
  [ -n "$hook" ] && "$hook"
  all4=()
  for ((k = 1; k <= REPEAT; k++)); do
    tag=$name
    ((k > 1)) && tag=$name-r$k
    all4+=("$(iperf_gbps "$SRC_NS" "$DST_NS" "$addr" 4 "$tag")")
  done
  g1=$(median "${all1[@]}")
  g4=$(median "${all4[@]}")
  if ((REPEAT > 1)); then
    printf 'runs_%s\t%s / %s\n' "$name" "${all1[*]}" "${all4[*]}" >>"$EXTRA"
  fi
  printf '%s: 1-stream %s Gbit/s, 4-stream %s Gbit/s, ping avg %s µs\n' "$name" "$g1" "$g4" "$p" >&2
  printf '%s\t%s\t%s\t%s\n' "$name" "$g1" "$g4" "$p" >>"$RESULTS"
}

# median VALUE...: the middle value (mean of the two middle ones for an even count), FAIL
# entries left out; FAIL when nothing is left
median() {
  printf '%s\n' "$@" | grep -v FAIL | sort -g | awk '{ a[NR] = $1 }
    END { if (NR == 0) print "FAIL"; else if (NR % 2) print a[(NR + 1) / 2];
          else printf "%.3f\n", (a[NR / 2] + a[NR / 2 + 1]) / 2 }'
}

# uso_gbps SRC_NS DST_NS ADDR TAG: inner UDP with GSO for $DURATION s; prints the UDP payload
# rate received, Gbit/s (or FAIL)
uso_gbps() {
  local src=$1 dst=$2 addr=$3 tag=$4 rx out
  in_ns "$dst" timeout $((DURATION + 15)) python3 - "$addr" "$DURATION" >"$WORK/uso-$tag.rx" 2>&1 <<'PY' &
import socket, sys, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16 << 20)
s.bind((sys.argv[1], 7001))
s.settimeout(5)
got, first, last = 0, None, None
try:
    while True:
        n = len(s.recv(65535))
        now = time.monotonic()
        if first is None:
            first = now
            s.settimeout(1)
        got, last = got + n, now
except socket.timeout:
    pass
print("%.3f" % (got * 8 / (last - first) / 1e9) if first and last > first else "FAIL")
PY
  rx=$!
  sleep 0.5
  in_ns "$src" timeout $((DURATION + 10)) python3 - "$addr" "$DURATION" >"$WORK/uso-$tag.tx" 2>&1 <<'PY' || true
import socket, sys, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(17, 103, 1200)  # SOL_UDP, UDP_SEGMENT: 1200-byte datagrams, as QUIC sends
buf, end = bytes(52 * 1200), time.monotonic() + float(sys.argv[2])
while time.monotonic() < end:
    try:
        s.sendto(buf, (sys.argv[1], 7001))
    except OSError:
        pass
PY
  wait "$rx" 2>/dev/null || true
  out=$(tail -n 1 "$WORK/uso-$tag.rx" 2>/dev/null)
  [[ "$out" =~ ^[0-9.]+$ ]] && echo "$out" || echo FAIL
}

# uso_case CASE ADDR: one row of inner-UDP-GSO rate (1-stream column only)
uso_case() {
  local g
  want "$1" || return 0
  say "$1: inner UDP with UDP_SEGMENT $SRC_NS -> $2 (${DURATION}s)"
  g=$(uso_gbps "$SRC_NS" "$DST_NS" "$2" "$1")
  printf '%s: %s Gbit/s of UDP payload received\n' "$1" "$g" >&2
  printf '%s\t%s\t-\t-\n' "$1" "$g" >>"$RESULTS"
}

# want CASE: whether CASE is selected by $CASES (all when unset)
want() { [ -z "${CASES:-}" ] || [[ " $CASES " == *" $1 "* ]]; }

skip() { # CASE REASON
  echo "$1: skipped ($2)"
  printf 'skipped_%s\t%s\n' "$1" "$2" >>"$EXTRA"
  printf '%s\tSKIP\tSKIP\tSKIP\n' "$1" >>"$RESULTS"
}

# ------------------------------------------------------------------------------------------------
say "checking tools"
scripts/install-deps.sh >&2
for c in iperf3 etcd etcdctl ping ss bridge python3 timeout ethtool; do
  command -v "$c" >/dev/null 2>&1 || die "missing $c"
done

BIN=${OVERLAYD_BIN:-${CARGO_TARGET_DIR:-$PWD/target}/release/overlayd}
if [ ! -x "$BIN" ]; then
  say "building overlayd (release)"
  cargo build --release --quiet --bin overlayd
fi
[ -x "$BIN" ] || die "no overlayd binary at $BIN"
BIN=$(readlink -f "$BIN")
echo "binary: $BIN" >&2

# ------------------------------------------------------------------------------------------------
say "building the network: $SW (bridge br0), $ETCD_NS, $H1, $H2"
for ns in $(ip netns list 2>/dev/null | awk '{print $1}'); do
  [[ $ns == "$P"* ]] && [ -n "$(ip netns pids "$ns" 2>/dev/null)" ] &&
    die "namespace $ns has processes: another bench-e2e run? Not touching it (BENCH_PREFIX=... runs beside it; scripts/cleanup-netns.sh $P removes leftovers)"
done
OWN_NETNS=1
topo_teardown "$P" >&2 || true

topo_switch "$P"
# The switch is a switch: a bridge does not run frames through iptables unless
# br_netfilter's bridge-nf-call-* are on, which they are by default in every namespace
# where it is built in. A real switch runs no netfilter hooks on the hosts' traffic.
# BRIDGE_NF=1 keeps them on (as runs A-H did).
if [ "${BRIDGE_NF:-0}" != 1 ]; then
  topo_bridge_nf_off "$P"
fi
topo_attach "$P" etcd "$ETCD_IP"
topo_hosts "$P" 2
# The IPv6 underlay beside the IPv4 one (the IPv6 inner rows use it).
U6_1=fd00:77::1
U6_2=fd00:77::2
ip -n "$H1" addr add "$U6_1/64" dev eth0 nodad
ip -n "$H2" addr add "$U6_2/64" dev eth0 nodad
say "wire: $WIRE"
topo_wire "$P" 2 "$WIRE" >&2 || die "cannot make the $WIRE wire (ethtool -K on the switch ports)"

say "starting etcd in $ETCD_NS"
topo_etcd_start "$P" bench "$WORK" || { log_tail "$WORK/etcd.log"; die "etcd did not become healthy"; }
ctl() { topo_etcdctl "$P" "$@"; }

# ------------------------------------------------------------------------------------------------
# 1. underlay
wait_reachable "$H1" "$U2" || die "underlay not reachable"
want underlay && measure underlay "$U2"

# ------------------------------------------------------------------------------------------------
# 2. kernel VXLAN, configured as flanneld's vxlan backend does
say "kernel_vxlan: flannel.1 on both hosts (10.244.1.0/24, 10.244.2.0/24)"
MAC1=0e:6f:76:f4:01:00
MAC2=0e:6f:76:f4:02:00
kvx() { # NS LOCAL_IP MY_MAC MY_NET PEER_IP PEER_MAC PEER_NET
  local ns=$1
  ip -n "$ns" link add flannel.1 address "$3" mtu 1450 type vxlan id 1 dev eth0 local "$2" dstport 8472 nolearning
  ip -n "$ns" addr add "$4/32" dev flannel.1
  ip -n "$ns" link set flannel.1 up
  ip -n "$ns" neigh replace "$7" lladdr "$6" dev flannel.1 nud permanent
  bridge -n "$ns" fdb append "$6" dev flannel.1 dst "$5" self permanent
  ip -n "$ns" route replace "$7/24" via "$7" dev flannel.1 onlink
}
kvx "$H1" "$U1" "$MAC1" 10.244.1.0 "$U2" "$MAC2" 10.244.2.0
kvx "$H2" "$U2" "$MAC2" 10.244.2.0 "$U1" "$MAC1" 10.244.1.0
if ! want kernel_vxlan; then
  :
elif wait_reachable "$H1" 10.244.2.0; then
  measure kernel_vxlan 10.244.2.0
  printf 'path_kernel_vxlan\tkernel\n' >>"$EXTRA"
  uso_case kernel_vxlan_uso 10.244.2.0
else
  skip kernel_vxlan "10.244.2.0 not reachable over flannel.1"
fi
ip -n "$H1" link del flannel.1
ip -n "$H2" link del flannel.1

# 2b. kernel VXLAN carrying IPv6, configured as flanneld's dual-stack vxlan backend does
kvx6() { # NS LOCAL_IP6 MY_MAC MY_ADDR6 PEER_IP6 PEER_MAC PEER_ADDR6
  local ns=$1
  ip -n "$ns" link add flannel-v6.1 address "$3" type vxlan id 1 dev eth0 local "$2" dstport 8472 nolearning
  ip -n "$ns" -6 addr add "$4/128" dev flannel-v6.1 nodad
  ip -n "$ns" link set flannel-v6.1 up
  ip -n "$ns" -6 neigh replace "$7" lladdr "$6" dev flannel-v6.1 nud permanent
  bridge -n "$ns" fdb append "$6" dev flannel-v6.1 dst "$5" self permanent
  ip -n "$ns" -6 route replace "$7/64" via "$7" dev flannel-v6.1 onlink
}
if want kernel_vxlan6; then
  say "kernel_vxlan6: flannel-v6.1 on both hosts (fd00:10:0:1::/64, fd00:10:0:2::/64), IPv6 underlay"
  kvx6 "$H1" "$U6_1" 0e:6f:36:f4:01:00 fd00:10:0:1:: "$U6_2" 0e:6f:36:f4:02:00 fd00:10:0:2::
  kvx6 "$H2" "$U6_2" 0e:6f:36:f4:02:00 fd00:10:0:2:: "$U6_1" 0e:6f:36:f4:01:00 fd00:10:0:1::
  if wait_reachable "$H1" fd00:10:0:2::; then
    measure kernel_vxlan6 fd00:10:0:2::
    printf 'path_kernel_vxlan6\tkernel\n' >>"$EXTRA"
  else
    skip kernel_vxlan6 "fd00:10:0:2:: not reachable over flannel-v6.1"
  fi
  ip -n "$H1" link del flannel-v6.1
  ip -n "$H2" link del flannel-v6.1
fi

# ------------------------------------------------------------------------------------------------
# 3-6. overlayd
OVD_PEER=""

# ovd_cpu_ticks: user + system CPU time of both daemons (all threads), in clock ticks
ovd_cpu_ticks() {
  local i sum=0 t
  for i in 1 2; do
    # Fields 14 and 15 of /proc/PID/stat; the command name (field 2) has no spaces here.
    t=$(awk '{ print $14 + $15 }' "/proc/${OVD_PIDS[i]}/stat" 2>/dev/null || echo 0)
    sum=$((sum + ${t:-0}))
  done
  echo "$sum"
}

# rss_sampler FILE: every second, "seconds <tab> VmRSS h1 kB <tab> VmRSS h2 kB" until killed
# (the caller kills it after the 1-stream run)
rss_sampler() {
  local s=0 a b
  while :; do
    a=$(awk '/^VmRSS:/ { print $2 }' "/proc/${OVD_PIDS[1]}/status" 2>/dev/null || echo 0)
    b=$(awk '/^VmRSS:/ { print $2 }' "/proc/${OVD_PIDS[2]}/status" 2>/dev/null || echo 0)
    printf '%s\t%s\t%s\n' "$s" "${a:-0}" "${b:-0}" >>"$1"
    sleep 1
    s=$((s + 1))
  done
}
record_rss() {
  local i kb max=0
  for i in 1 2; do
    kb=$(awk '/^VmRSS:/ { print $2 }' "/proc/${OVD_PIDS[i]}/status" 2>/dev/null || echo 0)
    printf 'rss_h%s_kib\t%s\n' "$i" "${kb:-0}" >>"$EXTRA"
    echo "overlayd h$i VmRSS: ${kb:-?} kB" >&2
  done
}

stop_overlayd() {
  local i
  OVD_ON=0
  for i in 1 2; do kill -TERM "${OVD_PIDS[i]}" 2>/dev/null || true; done
  for i in 1 2; do
    for _ in $(seq 50); do kill -0 "${OVD_PIDS[i]}" 2>/dev/null || break; sleep 0.1; done
    if kill -0 "${OVD_PIDS[i]}" 2>/dev/null; then
      echo "overlayd h$i still running 5s after SIGTERM; killing it" >&2
      kill -KILL "${OVD_PIDS[i]}" 2>/dev/null || true
    fi
    wait "${OVD_PIDS[i]}" 2>/dev/null || true
  done
}

# pin HOST_NUMBER: the command words that place that host's daemon as $PIN says
pin() {
  case "${PIN:-none}" in
    none) ;;
    split) echo taskset -c $(($1 - 1)) ;;
    cross) echo taskset -c $((2 - $1)) ;;
    same) echo taskset -c 0 ;;
    *) die "PIN must be none, split, cross or same, not '$PIN'" ;;
  esac
}

# record_path CASE: how h1's daemon sends super-packets, from its log (an IPv6 row's cross
# the IPv6 underlay: tunnel GSO with IPv6 outer headers, unless the kernel refused them; a
# wireguard row's: sealed segments in UDP GSO runs, or one datagram per packet before that)
record_path() {
  local log=$WORK/$1/h1.log path
  if grep -q 'direct route added' "$log" 2>/dev/null; then path=direct-kernel-route
  elif grep -q 'wireguard data path' "$log" 2>/dev/null; then
    if grep -q 'wireguard data path.*gso=true' "$log"; then path=wireguard-gso; else path=wireguard; fi
  elif grep -q 'ready (wireguard)' "$log" 2>/dev/null; then path=wireguard-plain
  elif [ "${OVD_FAMILY:-4}" = 6 ] && grep -q 'ipv6_underlay=Some' "$log" 2>/dev/null; then
    if grep -q 'tunnel GSO on' "$log" 2>/dev/null &&
      ! grep -q 'IPv6 outer headers unavailable' "$log" 2>/dev/null; then path=tunnel-gso-ipv6
    elif grep -q 'gso=true' "$log" 2>/dev/null; then path=userspace-gso-ipv6
    else path=plain-ipv6; fi
  elif grep -q 'tunnel GSO on' "$log" 2>/dev/null; then path=tunnel-gso
  elif grep -q 'gso=true' "$log" 2>/dev/null; then path=userspace-gso
  else path=plain; fi
  printf 'path_%s\t%s\n' "$1" "$path" >>"$EXTRA"
}

# overlayd_case CASE BACKEND [EXTRA_FLAGS...]: BACKEND wireguard has no flag (flannel's network
# config names it, written to etcd here); every host gets its own WireGuard key file
overlayd_case() {
  local name=$1 backend=$2 i f start subnet sel
  want "$name" || return 0
  shift 2
  say "$name: overlayd --backend $backend $* (etcd prefix /bench/$name)"
  mkdir -p "$WORK/$name"
  sel=(--backend "$backend")
  if [ "$backend" = wireguard ]; then
    ctl put "/bench/$name/config" \
      "{\"Network\":\"$NETWORK\",\"SubnetLen\":24,\"Backend\":{\"Type\":\"wireguard\"}}" >/dev/null
    sel=()
  fi
  # A case's own network config (e.g. vxlan_direct's DirectRouting), else the flags'.
  [ -n "${OVD_CONFIG:-}" ] && ctl put "/bench/$name/config" "$OVD_CONFIG" >/dev/null
  for i in 1 2; do
    # Straight `ip netns exec ... &` (env execs): $! is then overlayd's own pid.
    # shellcheck disable=SC2046 # pin's words are meant to split
    ip netns exec "$P""h$i" $(pin "$i") env WIREGUARD_KEY_FILE="$WORK/$name/h$i.wgkey" \
      "$BIN" "${sel[@]}" --etcd-endpoints "$ENDPOINT" \
      --etcd-prefix "/bench/$name" --network "$NETWORK" --subnet-len 24 --iface eth0 \
      --subnet-file "$WORK/$name/h$i.env" "$@" ${OVERLAYD_FLAGS:-} >"$WORK/$name/h$i.log" 2>&1 &
    OVD_PIDS[i]=$!
  done
  start=$(date +%s)
  for i in 1 2; do
    f=$WORK/$name/h$i.env
    until grep -q '^FLANNEL_SUBNET=' "$f" 2>/dev/null; do
      if ! kill -0 "${OVD_PIDS[i]}" 2>/dev/null || (($(date +%s) - start > 30)); then
        log_tail "$WORK/$name/h$i.log"
        stop_overlayd
        skip "$name" "overlayd on h$i not ready"
        return 0
      fi
      sleep 0.1
    done
  done
  subnet=$(sed -n 's/^FLANNEL_SUBNET=//p' "$WORK/$name/h2.env")
  OVD_PEER=$(topo_net_addr "$subnet")
  if [ "${OVD_FAMILY:-4}" = 6 ]; then
    # The IPv6 subnet's network address (the device's IPv6 address).
    subnet=$(sed -n 's/^FLANNEL_IPV6_SUBNET=//p' "$WORK/$name/h2.env")
    OVD_PEER=$(python3 -c 'import ipaddress, sys; print(ipaddress.ip_interface(sys.argv[1]).network.network_address)' "$subnet")
  fi
  echo "h2 subnet $subnet, overlay address $OVD_PEER" >&2
  OVD_ON=1
  if wait_reachable "$H1" "$OVD_PEER"; then
    # After the first ping: by then a DirectRouting peer's route is in place and logged.
    record_path "$name"
    if [ "$name" = vxlan ]; then measure "$name" "$OVD_PEER" record_rss; else measure "$name" "$OVD_PEER"; fi
    [ "$name" = vxlan ] && uso_case vxlan_uso "$OVD_PEER"
  else
    log_tail "$WORK/$name/h1.log"
    skip "$name" "$OVD_PEER not reachable"
  fi
  stop_overlayd
}

overlayd_case vxlan vxlan
overlayd_case vxlan_userspace_gso vxlan --tunnel-gso off
overlayd_case udp udp
overlayd_case udp_userspace_gso udp --tunnel-gso off
overlayd_case gre gre
# DirectRouting: h2 is on h1's link, so the kernel routes the overlay unencapsulated (what a
# flannel cluster with DirectRouting gets between nodes of one subnet; not overlayd's data path).
OVD_CONFIG="{\"Network\":\"$NETWORK\",\"SubnetLen\":24,\"Backend\":{\"Type\":\"vxlan\",\"DirectRouting\":true}}" \
  overlayd_case vxlan_direct vxlan
overlayd_case vxlan_no_offload vxlan --no-offload

# IPv6 inner: flannel's dual-stack config, measured to h2's IPv6 overlay address.
if want vxlan6; then
  ctl put /bench/vxlan6/config \
    '{"Network":"10.244.0.0/16","SubnetLen":24,"EnableIPv6":true,"IPv6Network":"fd00:10::/56","Backend":{"Type":"vxlan"}}' >/dev/null
  OVD_FAMILY=6 overlayd_case vxlan6 vxlan
fi
if want vxlan6_userspace_gso; then
  ctl put /bench/vxlan6_userspace_gso/config \
    '{"Network":"10.244.0.0/16","SubnetLen":24,"EnableIPv6":true,"IPv6Network":"fd00:10::/56","Backend":{"Type":"vxlan"}}' >/dev/null
  OVD_FAMILY=6 overlayd_case vxlan6_userspace_gso vxlan --tunnel-gso off
fi

overlayd_case wireguard wireguard

# wireguard-go on both hosts, set up as flanneld's wireguard backend does (its control
# sockets live in /var/run/wireguard, shared by every namespace: one device name per host)
wireguard_go_case() {
  local name=wireguard_go i o dev d=$WORK/wireguard_go pub=()
  want "$name" || return 0
  command -v wireguard-go >/dev/null 2>&1 && command -v wg >/dev/null 2>&1 ||
    { skip "$name" "needs wireguard-go and wg (scripts/install-deps.sh installs them)"; return 0; }
  say "$name: $(wireguard-go --version 2>&1 | head -1), devices ${P}wg1 and ${P}wg2"
  mkdir -p "$d"
  for i in 1 2; do
    wg genkey >"$d/h$i.key"
    pub[i]=$(wg pubkey <"$d/h$i.key")
    # -f: in the foreground, so $! is wireguard-go's pid (env execs it).
    # shellcheck disable=SC2046 # pin's words are meant to split
    ip netns exec "$P""h$i" $(pin "$i") env WG_I_PREFER_BUGGY_USERSPACE_TO_POLISHED_KMOD=1 \
      wireguard-go -f "${P}wg$i" >"$d/h$i.log" 2>&1 &
    OVD_PIDS[i]=$!
  done
  for i in 1 2; do
    dev=${P}wg$i
    o=$((3 - i))
    for _ in $(seq 50); do [ -S "/var/run/wireguard/$dev.sock" ] && break; sleep 0.1; done
    wg set "$dev" private-key "$d/h$i.key" listen-port 51820 peer "${pub[o]}" \
      endpoint "$(topo_host_ip "$o"):51820" allowed-ips "10.244.$o.0/24" ||
      { log_tail "$d/h$i.log"; stop_overlayd; skip "$name" "wg set $dev failed"; return 0; }
    ip -n "$P""h$i" addr add "10.244.$i.0/32" dev "$dev"
    ip -n "$P""h$i" link set "$dev" mtu 1420 up
    ip -n "$P""h$i" route add "$NETWORK" dev "$dev"
  done
  OVD_ON=1
  printf 'path_%s\twireguard-go\n' "$name" >>"$EXTRA"
  if wait_reachable "$H1" 10.244.2.0; then
    measure "$name" 10.244.2.0
  else
    log_tail "$d/h1.log"
    skip "$name" "10.244.2.0 not reachable over ${P}wg2"
  fi
  stop_overlayd
  rm -f "/var/run/wireguard/${P}wg1.sock" "/var/run/wireguard/${P}wg2.sock"
}
wireguard_go_case

# ------------------------------------------------------------------------------------------------
# 7. tinc 1.0: router mode, no cipher, no digest
tinc_case() {
  want tinc || return 0
  command -v tincd >/dev/null 2>&1 || { apt-get install -y -qq tinc >/dev/null 2>&1 || true; }
  command -v tincd >/dev/null 2>&1 || { skip tinc "tincd not installed and apt-get install tinc failed"; return 0; }
  tincd --version 2>/dev/null | head -1 | grep -q 'version 1\.0' ||
    { skip tinc "tincd is not tinc 1.0: $(tincd --version 2>/dev/null | head -1)"; return 0; }
  say "tinc: $(tincd --version | head -1), Mode = router, Cipher = none, Digest = none"
  local i d pids=()
  for i in 1 2; do
    d=$WORK/tinc/h$i
    mkdir -p "$d/hosts"
    cat >"$d/tinc.conf" <<EOF
Name = h$i
Mode = router
AddressFamily = ipv4
Interface = tinc0
Device = /dev/net/tun
BindToAddress = 192.168.77.$i
EOF
    [ "$i" = 1 ] && echo "ConnectTo = h2" >>"$d/tinc.conf"
    cat >"$d/hosts/h$i" <<EOF
Address = 192.168.77.$i
Port = 655
Subnet = 10.250.$i.0/24
Cipher = none
Digest = none
EOF
    cat >"$d/tinc-up" <<EOF
#!/bin/sh
ip link set "\$INTERFACE" mtu 1400
ip addr add 10.250.$i.1/16 dev "\$INTERFACE"
ip link set "\$INTERFACE" up
EOF
    chmod +x "$d/tinc-up"
    timeout 30 tincd -c "$d" -K 2048 </dev/null >"$d/keygen.log" 2>&1 ||
      { skip tinc "key generation failed: $(tail -1 "$d/keygen.log")"; return 0; }
  done
  cp "$WORK/tinc/h1/hosts/h1" "$WORK/tinc/h2/hosts/h1"
  cp "$WORK/tinc/h2/hosts/h2" "$WORK/tinc/h1/hosts/h2"
  for i in 2 1; do
    d=$WORK/tinc/h$i
    ip netns exec "$P""h$i" tincd -c "$d" -D --pidfile="$d/pid" --logfile="$d/tinc.log" -d1 \
      >"$d/stdout.log" 2>&1 &
    pids+=($!)
    sleep 0.5
  done
  if wait_reachable "$H1" 10.250.2.1; then
    sleep 2   # let tinc finish its UDP/PMTU probing so traffic is not carried over the meta TCP
    measure tinc 10.250.2.1
  else
    log_tail "$WORK/tinc/h1/tinc.log"
    skip tinc "10.250.2.1 not reachable over tinc0"
  fi
  for i in "${pids[@]}"; do kill -TERM "$i" 2>/dev/null || true; done
  for i in "${pids[@]}"; do
    for _ in $(seq 30); do kill -0 "$i" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$i" 2>/dev/null || true
    wait "$i" 2>/dev/null || true
  done
}
tinc_case

# ------------------------------------------------------------------------------------------------
# 8-10. L2: containers on a bridge per host, one Ethernet segment across the hosts
C1=${P}c1
C2=${P}c2
L2_IP1=10.50.0.1
L2_IP2=10.50.0.2
say "L2 layout: brl2 on h1/h2, containers $C1 ($L2_IP1) and $C2 ($L2_IP2), mtu 1450"
l2_container() { # HOST_NS CONTAINER_NS IP MAC
  ip -n "$1" link add brl2 type bridge mcast_snooping 0 2>/dev/null || true
  ip -n "$1" link set brl2 up
  ip netns add "$2"
  ip -n "$2" link set lo up
  ip -n "$1" link add veth-l2 mtu 1450 type veth peer name eth0 mtu 1450 netns "$2"
  ip -n "$1" link set veth-l2 master brl2
  ip -n "$1" link set veth-l2 up
  ip -n "$2" link set eth0 address "$4"
  ip -n "$2" addr add "$3/24" dev eth0
  ip -n "$2" link set eth0 up
}
l2_container "$H1" "$C1" "$L2_IP1" 02:50:00:00:01:01
l2_container "$H2" "$C2" "$L2_IP2" 02:50:00:00:02:01
SRC_NS=$C1
DST_NS=$C2

# 8. kernel L2 VXLAN: vxN on the bridge, head-end replication by a flood entry per peer
say "kernel_l2_vxlan: vx100 (VNI 100, dstport 4789) on brl2 in both hosts"
kl2() { # NS LOCAL_IP PEER_IP
  ip -n "$1" link add vx100 mtu 1450 type vxlan id 100 dstport 4789 local "$2" dev eth0
  ip -n "$1" link set vx100 master brl2
  ip -n "$1" link set vx100 up
  bridge -n "$1" fdb append 00:00:00:00:00:00 dev vx100 dst "$3"
}
kl2 "$H1" "$U1" "$U2"
kl2 "$H2" "$U2" "$U1"
if ! want kernel_l2_vxlan; then
  :
elif wait_reachable "$C1" "$L2_IP2"; then
  measure kernel_l2_vxlan "$L2_IP2"
else
  skip kernel_l2_vxlan "$L2_IP2 not reachable over vx100"
fi
ip -n "$H1" link del vx100
ip -n "$H2" link del vx100

# 9-10. overlayd L2 (the L3 side runs as usual, with its own subnet leases)
# l2_case CASE L2_BACKEND [EXTRA_FLAGS...]
l2_case() {
  local name=$1 backend=$2 i tap
  want "$name" || return 0
  shift 2
  say "$name: overlayd --l2 net@brl2, network VNI 100 Backend $backend (etcd prefix /bench/$name)"
  mkdir -p "$WORK/$name"
  ctl put "/bench/$name/l2/networks/net" "{\"VNI\":100,\"Backend\":\"$backend\"}" >/dev/null
  for i in 1 2; do
    # shellcheck disable=SC2046 # pin's words are meant to split
    ip netns exec "$P""h$i" $(pin "$i") "$BIN" --backend vxlan --etcd-endpoints "$ENDPOINT" \
      --etcd-prefix "/bench/$name" --network "$NETWORK" --subnet-len 24 --iface eth0 \
      --subnet-file "$WORK/$name/h$i.env" --l2 net@brl2 "$@" >"$WORK/$name/h$i.log" 2>&1 &
    OVD_PIDS[i]=$!
  done
  if [ "$backend" = gre ]; then tap=l2g100; else tap=l2v100; fi
  for i in 1 2; do
    for _ in $(seq 300); do
      ip -n "$P""h$i" link show "$tap" >/dev/null 2>&1 && break
      kill -0 "${OVD_PIDS[i]}" 2>/dev/null || break
      sleep 0.1
    done
    if ! ip -n "$P""h$i" link show "$tap" >/dev/null 2>&1; then
      log_tail "$WORK/$name/h$i.log"
      stop_overlayd
      skip "$name" "overlayd on h$i made no $tap"
      return 0
    fi
  done
  OVD_ON=1
  record_path "$name"
  if wait_reachable "$C1" "$L2_IP2"; then
    measure "$name" "$L2_IP2"
  else
    log_tail "$WORK/$name/h1.log"
    skip "$name" "$L2_IP2 not reachable over $tap"
  fi
  stop_overlayd
}
l2_case l2_vxlan vxlan
l2_case l2_vxlan_userspace_gso vxlan --tunnel-gso off
l2_case l2_gre gre
l2_case l2_gre_link_tx gre --gre-link-tx

# ------------------------------------------------------------------------------------------------
say "results (h1 -> h2, iperf3 -t $DURATION receiver rate, median of $REPEAT run(s), ping -c 50 -i 0.02 avg)"
python3 - "$RESULTS" "$EXTRA" "$DURATION" "$WORK" "$(getconf CLK_TCK)" "$WIRE" <<'EOF'
import json, os, sys

rows = [l.rstrip("\n").split("\t") for l in open(sys.argv[1]) if l.strip()]
extra = dict(l.rstrip("\n").split("\t", 1) for l in open(sys.argv[2]) if l.strip())
duration = int(sys.argv[3])
work, clk_tck, wire = sys.argv[4], int(sys.argv[5]), sys.argv[6]

def per_gib(key, c):
    """CPU seconds (ticks recorded under key + case) per GiB received in the 1-stream run:
    a cost per byte that does not swing with the throughput as much."""
    ticks = extra.get(key + c)
    try:
        got = json.load(open(os.path.join(work, "iperf-%s-P1.json" % c)))["end"]["sum_received"]["bytes"]
    except Exception:
        return None
    if ticks is None or not got:
        return None
    return round(int(ticks) / clk_tck / (got / 2**30), 3)

def cpu_s_per_gib(c):
    """Both daemons' CPU (user + system, all threads)."""
    return per_gib("cpu_ticks_", c)

def machine_cpu_s_per_gib(c):
    """The whole machine's busy CPU (the kernel's work for the daemons included): the same
    measure for kernel and overlayd rows."""
    return per_gib("machine_ticks_", c)

def rss_during(c):
    """(min, max) VmRSS in MiB over the 1-stream run, both daemons, sampled every second."""
    try:
        rows = [l.split("\t") for l in open(os.path.join(work, "rss-%s.tsv" % c)) if l.strip()]
    except OSError:
        return None
    kib = [int(v) for r in rows for v in r[1:] if v.strip().isdigit() and int(v) > 0]
    if not kib:
        return None
    return (round(min(kib) / 1024, 1), round(max(kib) / 1024, 1), len(rows))

def num(s):
    try:
        return float(s)
    except ValueError:
        return None

res = {r[0]: {"g1": num(r[1]), "g4": num(r[2]), "ping": num(r[3])} for r in rows}
k = res.get("kernel_vxlan", {})
k1, kping = k.get("g1"), k.get("ping")
k6 = res.get("kernel_vxlan6", {})
k6_1, k6ping = k6.get("g1"), k6.get("ping")
V6_CASES = ["vxlan6", "vxlan6_userspace_gso"]

kl2 = res.get("kernel_l2_vxlan", {})
kl2_1, kl2_ping = kl2.get("g1"), kl2.get("ping")
L2_CASES = ["l2_vxlan", "l2_vxlan_userspace_gso", "l2_gre", "l2_gre_link_tx"]
kuso = res.get("kernel_vxlan_uso", {}).get("g1")

def ratio(c):
    g = res.get(c, {}).get("g1")
    return round(g / k1, 3) if g is not None and k1 else None

def v6_ratio(c):
    g = res.get(c, {}).get("g1")
    return round(g / k6_1, 3) if g is not None and k6_1 else None

def l2_ratio(c):
    g = res.get(c, {}).get("g1")
    return round(g / kl2_1, 3) if g is not None and kl2_1 else None

def uso_ratio(c):
    g = res.get(c, {}).get("g1")
    return round(g / kuso, 3) if g is not None and kuso else None

def fmt(v, f):
    return "-" if v is None else f % v

print("wire: %s" % wire)
print("%-24s %12s %12s %14s %18s %14s %14s  %s" % ("case", "1-stream", "4-stream", "ping avg", "ratio to kernel", "overlayd CPU", "machine CPU", "path"))
print("%-24s %12s %12s %14s %18s %14s %14s" % ("", "Gbit/s", "Gbit/s", "µs", "vxlan 1-stream", "s per GiB", "s per GiB"))
for name, r in res.items():
    if name == "kernel_l2_vxlan":
        print("-- L2, container to container (ratio to kernel_l2_vxlan 1-stream) --")
    if r["g1"] is None and r["g4"] is None and r["ping"] is None:
        reason = extra.get("skipped_" + name, "failed")
        print("%-24s %s" % (name, "skipped (%s)" % reason))
        continue
    if name.endswith("_uso"):
        rt = uso_ratio(name)
    elif name in V6_CASES or name == "kernel_vxlan6":
        rt = v6_ratio(name)
    elif name in L2_CASES or name == "kernel_l2_vxlan":
        rt = l2_ratio(name)
    else:
        rt = ratio(name)
    print("%-24s %12s %12s %14s %18s %14s %14s  %s" % (
        name, fmt(r["g1"], "%.2f"), fmt(r["g4"], "%.2f"), fmt(r["ping"], "%.0f"),
        fmt(rt, "%.2fx"), fmt(cpu_s_per_gib(name), "%.3f"),
        fmt(machine_cpu_s_per_gib(name), "%.3f"), extra.get("path_" + name, "")))
rss = [int(v) for key, v in extra.items() if key.startswith("rss_") and v.isdigit()]
rss_mib = round(max(rss) / 1024, 1) if rss else None
if rss_mib is not None:
    print("\noverlayd VmRSS after the 1-stream vxlan run: %s MiB (max of h1, h2)" % rss_mib)
for name in res:
    if "runs_" + name in extra:
        print("%s runs (1-stream / 4-stream Gbit/s): %s" % (name, extra["runs_" + name]))
for name in res:
    if "ping_cpu_pct_" + name in extra:
        print("overlayd CPU during the %s ping run: %s %% of one CPU (both daemons)" % (name, extra["ping_cpu_pct_" + name]))
for name in res:
    d = rss_during(name)
    if d:
        print("overlayd VmRSS during the 1-stream %s run: %s..%s MiB (%d samples, 1/s, both hosts)" % (name, *d))

cases = ["vxlan", "vxlan_userspace_gso", "udp", "udp_userspace_gso", "gre", "vxlan_direct", "vxlan_no_offload", "wireguard",
         "wireguard_go", "tinc"]
out = {
    "kernel_vxlan_gbps": k1,
    "ratios": {c: ratio(c) for c in cases},
    "latency_delta_us": {
        c: (round(res[c]["ping"] - kping) if c in res and res[c]["ping"] is not None and kping is not None else None)
        for c in cases
    },
    "gbps_1_stream": {c: r["g1"] for c, r in res.items()},
    "gbps_4_streams": {c: r["g4"] for c, r in res.items()},
    "ping_avg_us": {c: r["ping"] for c, r in res.items()},
    "kernel_l2_vxlan_gbps": kl2_1,
    "l2_ratios": {c: l2_ratio(c) for c in L2_CASES},
    "l2_latency_delta_us": {
        c: (round(res[c]["ping"] - kl2_ping) if c in res and res[c]["ping"] is not None and kl2_ping is not None else None)
        for c in L2_CASES
    },
    "uso_ratio": uso_ratio("vxlan_uso"),
    "kernel_vxlan6_gbps": k6_1,
    "ipv6_ratio": v6_ratio("vxlan6"),
    "ipv6_latency_delta_us": (
        round(res["vxlan6"]["ping"] - k6ping)
        if "vxlan6" in res and res["vxlan6"]["ping"] is not None and k6ping is not None else None
    ),
    "paths": {c: extra["path_" + c] for c in res if "path_" + c in extra},
    "overlayd_rss_mib": rss_mib,
    "overlayd_rss_during_1_stream_mib": {c: list(rss_during(c)[:2]) for c in res if rss_during(c)},
    "overlayd_cpu_s_per_gib": {c: cpu_s_per_gib(c) for c in res if cpu_s_per_gib(c) is not None},
    "machine_cpu_s_per_gib": {c: machine_cpu_s_per_gib(c) for c in res if machine_cpu_s_per_gib(c) is not None},
    "wire": wire,
    "overlayd_ping_cpu_pct": {c: int(extra["ping_cpu_pct_" + c]) for c in res if "ping_cpu_pct_" + c in extra},
    "duration_s": duration,
    "runs": {c: extra["runs_" + c] for c in res if "runs_" + c in extra},
}
print()
print(json.dumps(out, separators=(",", ":")))
EOF
