#!/usr/bin/env bash
# overlayd in five minutes: three hosts and an etcd, each in its own network namespace on a
# virtual switch, overlayd on every host; then pings between every pair of hosts over the
# overlay and an iperf3 run host1 -> host2 (overlay, then underlay for comparison). Then
# layer 2: two tenants (VNI 100 and 200) with the SAME addresses 192.168.0.0/24, a
# "container" of each on every host's tenant bridge; each reaches only its own tenant.
#
#   scripts/demo.sh [udp|vxlan|gre]        (default: vxlan)
#
# Everything lives in namespaces named ovd-*; the machine's own network is not touched.
# Everything is removed on exit, also on Ctrl-C or failure (or later: scripts/cleanup-netns.sh).
# Environment: OVERLAYD_BIN=path  use this binary instead of building target/release/overlayd
#              KEEP_LOGS=1        keep the logs directory (its path is printed)
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=lib/topology.sh
. scripts/lib/topology.sh

BACKEND=${1:-vxlan}
case $BACKEND in
  udp | vxlan | gre) ;;
  *) echo "usage: $0 [udp|vxlan|gre]" >&2; exit 2 ;;
esac
if [ "$(id -u)" -ne 0 ]; then
  echo "demo: needs root (it creates network namespaces); run it as root" >&2
  exit 1
fi

N=3                          # hosts ovd-h1..ovd-h3, underlay 192.168.77.1..3
P=ovd-
SW=${P}sw
ETCD_NS=${P}etcd
ETCD_IP=$TOPO_ETCD_IP          # 192.168.77.250
ENDPOINT=$TOPO_ETCD_ENDPOINT
PREFIX=/coreos.com/network
NETWORK=10.244.0.0/16
READY_TIMEOUT=30             # seconds for every overlayd to write its subnet.env
WORK=$(mktemp -d /tmp/ovd-demo.XXXXXX)
declare -a PIDS=() UNDERLAY=() SUBNET=() OVERLAY=() READY=()

say() { printf '\n\033[1m==> %s\033[0m\n' "$*"; }
die() { echo "demo: $*" >&2; exit 1; }

cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  say "cleaning up"
  disown -a 2>/dev/null || true   # no "Killed" job reports for the daemons we stop below
  topo_teardown "$P" || true
  if [ -n "${KEEP_LOGS:-}" ]; then echo "logs kept in $WORK"; else rm -rf "$WORK"; fi
  exit $rc
}
trap cleanup EXIT
trap 'echo; echo "demo: interrupted"; exit 130' INT TERM

in_ns() { local ns=$1; shift; ip netns exec "$ns" "$@"; }
ctl() { topo_etcdctl "$P" "$@"; }

log_tail() {
  echo "---- last lines of $1 ----"
  tail -n 25 "$1" 2>/dev/null || true
  echo "----"
}

# ------------------------------------------------------------------------------------------------
say "checking tools"
scripts/install-deps.sh

if [ -n "${OVERLAYD_BIN:-}" ]; then
  BIN=$OVERLAYD_BIN
else
  say "building overlayd (release)"
  cargo build --release --quiet --bin overlayd
  BIN=${CARGO_TARGET_DIR:-$PWD/target}/release/overlayd
fi
[ -x "$BIN" ] || die "no overlayd binary at $BIN"
BIN=$(readlink -f "$BIN")
echo "binary: $BIN"

# ------------------------------------------------------------------------------------------------
say "building the network: switch $SW (bridge br0), $ETCD_NS, ${P}h1..${P}h$N"
topo_teardown "$P" >/dev/null || true   # leftovers of an interrupted run

topo_switch "$P"
topo_attach "$P" etcd "$ETCD_IP"
topo_hosts "$P" "$N"
for i in $(seq 1 $N); do UNDERLAY[i]=$(topo_host_ip "$i"); done

# ------------------------------------------------------------------------------------------------
say "starting etcd in $ETCD_NS ($ENDPOINT)"
topo_etcd_start "$P" demo "$WORK" || { log_tail "$WORK/etcd.log"; die "etcd did not become healthy"; }
echo "etcd is healthy"

# ------------------------------------------------------------------------------------------------
L2B=vxlan; [ "$BACKEND" = gre ] && L2B=gre
say "defining two L2 networks in etcd ($L2B): tenant-a VNI 100, tenant-b VNI 200"
ctl put "$PREFIX/l2/networks/tenant-a" "{\"VNI\": 100, \"Backend\": \"$L2B\"}" >/dev/null
ctl put "$PREFIX/l2/networks/tenant-b" "{\"VNI\": 200, \"Backend\": \"$L2B\"}" >/dev/null
ctl get --prefix "$PREFIX/l2/networks/" | paste - - | sed 's/\t/  /; s/^/    /'

# ------------------------------------------------------------------------------------------------
say "starting overlayd --backend $BACKEND on ${P}h1..${P}h$N"
for i in $(seq 1 $N); do
  mkdir -p "$WORK/h$i"
  # Straight `ip netns exec ... &` (no shell function): $! is then overlayd's own pid.
  ip netns exec "$P""h$i" "$BIN" --backend "$BACKEND" --etcd-endpoints "$ENDPOINT" --etcd-prefix "$PREFIX" \
    --iface eth0 --subnet-file "$WORK/h$i/subnet.env" --network "$NETWORK" --subnet-len 24 \
    --l2 tenant-a@br-a --l2 tenant-b@br-b \
    >"$WORK/h$i/overlayd.log" 2>&1 &
  PIDS[i]=$!
  echo "h$i: pid ${PIDS[i]}, log $WORK/h$i/overlayd.log"
done

START=$(date +%s.%N)
for i in $(seq 1 $N); do
  f=$WORK/h$i/subnet.env
  until grep -q '^FLANNEL_SUBNET=' "$f" 2>/dev/null; do
    if ! kill -0 "${PIDS[i]}" 2>/dev/null; then
      log_tail "$WORK/h$i/overlayd.log"
      die "overlayd on h$i exited before it was ready"
    fi
    if (($(date +%s) - ${START%.*} > READY_TIMEOUT)); then
      log_tail "$WORK/h$i/overlayd.log"
      die "overlayd on h$i not ready after ${READY_TIMEOUT}s"
    fi
    sleep 0.1
  done
  READY[i]=$(awk -v s="$START" -v e="$(date +%s.%N)" 'BEGIN { printf "%.1fs", e - s }')
  SUBNET[i]=$(sed -n 's/^FLANNEL_SUBNET=//p' "$f")
  OVERLAY[i]=$(topo_net_addr "${SUBNET[i]}")
  echo "h$i ready after ${READY[i]}: FLANNEL_SUBNET=${SUBNET[i]}"
done
echo
echo "subnet.env of h1:"
sed 's/^/    /' "$WORK/h1/subnet.env"

say "leases in etcd ($PREFIX/subnets)"
ctl get --prefix "$PREFIX/subnets" | paste - - | sed 's/\t/\n    /'

# ------------------------------------------------------------------------------------------------
say "ping every pair over the overlay (each host's TUN address = its subnet's network address)"
declare -A PING=()
FAILED=0
for i in $(seq 1 $N); do
  for j in $(seq 1 $N); do
    [ "$i" = "$j" ] && continue
    # Give the peers a few seconds to learn each other's leases.
    for _ in $(seq 10); do
      in_ns "$P""h$i" ping -q -n -c 1 -W 1 "${OVERLAY[j]}" >/dev/null 2>&1 && break
    done
    out=$(in_ns "$P""h$i" ping -q -n -c 5 -W 1 -i 0.2 "${OVERLAY[j]}" 2>&1 || true)
    rx=$(sed -n 's/.* \([0-9]*\) received.*/\1/p' <<<"$out")
    avg=$(sed -n 's|^rtt [^=]*= [0-9.]*/\([0-9.]*\)/.*|\1|p' <<<"$out")
    if [ "${rx:-0}" -gt 0 ]; then
      PING[$i,$j]="${rx}/5 ${avg}ms"
    else
      PING[$i,$j]="FAIL"
      FAILED=1
    fi
    printf 'h%s -> h%s (%s): %s\n' "$i" "$j" "${OVERLAY[j]}" "${PING[$i,$j]}"
  done
done

# ------------------------------------------------------------------------------------------------
# iperf3 SRC_NS DST_NS DST_IP: 5 s TCP, prints the receiver's bitrate in Mbit/s (or FAIL)
iperf() {
  local src=$1 dst=$2 addr=$3 out rate
  ip netns exec "$dst" timeout 30 iperf3 -s -1 -B "$addr" >"$WORK/iperf3-server.log" 2>&1 &
  local srv=$!
  for _ in $(seq 50); do
    in_ns "$dst" ss -ltn 2>/dev/null | grep -q "$addr:5201" && break
    sleep 0.1
  done
  out=$(in_ns "$src" timeout 30 iperf3 -c "$addr" -t 5 -f m 2>&1 || true)
  wait "$srv" 2>/dev/null || true
  rate=$(awk '/receiver/ { print $(NF-2) }' <<<"$out")
  echo "${rate:-FAIL}"
}

say "iperf3 h1 -> h2, 5 s over the overlay (${OVERLAY[2]}), then 5 s over the underlay (${UNDERLAY[2]})"
OVL_RATE=$(iperf "$P""h1" "$P""h2" "${OVERLAY[2]}")
echo "overlay:  $OVL_RATE Mbit/s"
UND_RATE=$(iperf "$P""h1" "$P""h2" "${UNDERLAY[2]}")
echo "underlay: $UND_RATE Mbit/s"
[ "$OVL_RATE" = FAIL ] && FAILED=1

# ------------------------------------------------------------------------------------------------
say "layer 2: tenants A and B, both 192.168.0.0/24, a container of each on every host"
declare -A L2PING=() L2MAC=()
for i in $(seq 1 $N); do
  for _ in $(seq 100); do
    ip -n "$P""h$i" link show br-a >/dev/null 2>&1 && ip -n "$P""h$i" link show br-b >/dev/null 2>&1 && break
    sleep 0.1
  done
  for t in a b; do
    ns=$P$t$i
    ip netns add "$ns"
    ip -n "$ns" link set lo up
    ip -n "$P""h$i" link add "c$t" type veth peer name eth0 netns "$ns"
    ip -n "$P""h$i" link set "c$t" master "br-$t"
    ip -n "$P""h$i" link set "c$t" up
    ip -n "$ns" link set eth0 mtu 1400 up
    ip -n "$ns" addr add "192.168.0.$i/24" dev eth0
    L2MAC[$t$i]=$(ip -n "$ns" -br link show eth0 | awk '{ print $3 }')
  done
  echo "h$i: ${P}a$i (tenant A, ${L2MAC[a$i]}) on br-a, ${P}b$i (tenant B, ${L2MAC[b$i]}) on br-b, both 192.168.0.$i"
done
for t in a b; do
  for j in $(seq 2 $N); do
    for _ in $(seq 10); do
      in_ns "$P$t""1" ping -q -n -c 1 -W 1 "192.168.0.$j" >/dev/null 2>&1 && break
    done
    out=$(in_ns "$P$t""1" ping -q -n -c 3 -W 1 -i 0.2 "192.168.0.$j" 2>&1 || true)
    rx=$(sed -n 's/.* \([0-9]*\) received.*/\1/p' <<<"$out")
    mac=$(in_ns "$P$t""1" ip neigh show "192.168.0.$j" | awk '{ for (k = 1; k < NF; k++) if ($k == "lladdr") print $(k + 1) }')
    if [ "${rx:-0}" -gt 0 ] && [ "$mac" = "${L2MAC[$t$j]}" ]; then
      L2PING[$t,$j]="ok ($rx/3, answered by $t$j)"
    else
      L2PING[$t,$j]="FAIL (rx ${rx:-0}/3, MAC ${mac:-none}, want ${L2MAC[$t$j]})"
      FAILED=1
    fi
    echo "tenant ${t^^}: ${t}1 -> 192.168.0.$j: ${L2PING[$t,$j]}"
  done
done
echo "(the same address answers with tenant A's MAC inside A and tenant B's inside B: isolated by VNI)"
echo "L2 members in etcd:"
ctl get --prefix --keys-only "$PREFIX/l2/members/" | sed '/^$/d; s/^/    /'

# ------------------------------------------------------------------------------------------------
say "stopping overlayd (SIGTERM)"
declare -a STOP=()
for i in $(seq 1 $N); do
  kill -TERM "${PIDS[i]}" 2>/dev/null || true
done
for i in $(seq 1 $N); do
  for _ in $(seq 50); do kill -0 "${PIDS[i]}" 2>/dev/null || break; sleep 0.1; done
  if kill -0 "${PIDS[i]}" 2>/dev/null; then
    STOP[i]="still running after 5s"
    FAILED=1
  else
    rc=0
    wait "${PIDS[i]}" || rc=$?
    STOP[i]="exit $rc"
    [ $rc -eq 0 ] || FAILED=1
  fi
  echo "h$i: ${STOP[i]}"
done

# ------------------------------------------------------------------------------------------------
say "summary (backend $BACKEND)"
printf '%-5s %-15s %-18s %-14s %-7s %s\n' node underlay FLANNEL_SUBNET "overlay addr" ready stop
for i in $(seq 1 $N); do
  printf '%-5s %-15s %-18s %-14s %-7s %s\n' "h$i" "${UNDERLAY[i]}" "${SUBNET[i]}" "${OVERLAY[i]}" \
    "${READY[i]}" "${STOP[i]}"
done
echo
printf '%-12s' "from/to"
for j in $(seq 1 $N); do printf '%-16s' "h$j"; done
echo
for i in $(seq 1 $N); do
  printf '%-12s' "h$i"
  for j in $(seq 1 $N); do
    if [ "$i" = "$j" ]; then printf '%-16s' "-"; else printf '%-16s' "${PING[$i,$j]}"; fi
  done
  echo
done
echo
echo "iperf3 h1 -> h2: overlay $OVL_RATE Mbit/s, underlay $UND_RATE Mbit/s"
for t in a b; do
  for j in $(seq 2 $N); do echo "L2 tenant ${t^^} ${t}1 -> ${t}$j: ${L2PING[$t,$j]}"; done
done

if [ $FAILED -ne 0 ]; then
  echo
  echo "demo: SOMETHING FAILED (see above)."
  for i in $(seq 1 $N); do log_tail "$WORK/h$i/overlayd.log"; done
  exit 1
fi
echo
echo "demo: all good."
