#!/usr/bin/env bash
# Captures tests/vectors/kernel-vxlan6-flannel.pcap: the Linux kernel's own VXLAN driver with
# an IPv6 underlay, configured as flanneld's dual-stack vxlan backend makes its `flannel-v6.1`
# device, carrying ICMPv6 echo and a short TCP exchange between two namespace hosts.
#
#   sudo scripts/capture-vectors6.sh [output.pcap]   (default: tests/vectors/kernel-vxlan6-flannel.pcap)
#
# Needs root, iproute2, ethtool, tcpdump and python3. Everything lives in two namespaces, ovcap-h1 and
# ovcap-h2, joined by a veth pair; the root namespace is not touched. Both are removed on exit,
# also on failure or Ctrl-C.
#
# The kernel chooses the outer UDP source ports by hashing the inner flow (seeded), and TCP
# sequence numbers, ping ids and timestamps differ on every run: a new capture is equivalent,
# not byte-identical. MAC addresses are fixed so that the inner Ethernet headers are.
set -euo pipefail
cd "$(dirname "$0")/.."
PATH="$PATH:/usr/sbin:/sbin"

OUT=${1:-tests/vectors/kernel-vxlan6-flannel.pcap}
H1=ovcap-h1
H2=ovcap-h2
PORT=5001

for tool in ip ethtool tcpdump python3; do
  command -v "$tool" >/dev/null || { echo "$tool is required" >&2; exit 1; }
done
for ns in $H1 $H2; do
  if ip netns list | awk '{print $1}' | grep -qx "$ns"; then
    echo "namespace $ns already exists; remove it first (ip netns del $ns)" >&2
    exit 1
  fi
done

tmp=$(mktemp -d)
cleanup() {
  local ns pid
  for ns in $H1 $H2; do
    for pid in $(ip netns pids "$ns" 2>/dev/null); do kill -TERM "$pid" 2>/dev/null || true; done
  done
  sleep 0.2
  for ns in $H1 $H2; do
    for pid in $(ip netns pids "$ns" 2>/dev/null); do kill -KILL "$pid" 2>/dev/null || true; done
    ip netns del "$ns" 2>/dev/null || true
  done
  rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

ip netns add $H1
ip netns add $H2
ip link add ovcap-v1 netns $H1 type veth peer name ovcap-v2 netns $H2

# host N: underlay fd00:77::N on its veth, VTEP MAC 02:42:fd:10:0N:00, pod subnet fd00:10:0:N::/64.
host() {
  local n=$1 m=$2
  local ns=ovcap-h$n veth=ovcap-v$n
  local x=(ip -n "$ns")
  "${x[@]}" link set lo up
  "${x[@]}" link set "$veth" address "02:00:fd:77:00:0$n"
  "${x[@]}" addr add "fd00:77::$n/64" dev "$veth" nodad
  "${x[@]}" link set "$veth" up
  # As flanneld's vxlan backend creates its IPv6 device (vxlan.go, newVXLANDevice).
  "${x[@]}" link add flannel-v6.1 address "02:42:fd:10:0$n:00" type vxlan id 1 dev "$veth" \
    local "fd00:77::$n" dstport 8472 nolearning
  "${x[@]}" addr add "fd00:10:0:$n::/128" dev flannel-v6.1 nodad
  "${x[@]}" link set flannel-v6.1 up
  # The peer as flanneld programs it from the lease: neighbour, fdb entry, onlink route.
  "${x[@]}" -6 neigh replace "fd00:10:0:$m::" dev flannel-v6.1 lladdr "02:42:fd:10:0$m:00" nud permanent
  ip netns exec "$ns" bridge fdb replace "02:42:fd:10:0$m:00" dev flannel-v6.1 dst "fd00:77::$m" self permanent
  "${x[@]}" -6 route replace "fd00:10:0:$m::/64" via "fd00:10:0:$m::" dev flannel-v6.1 onlink
  # No checksum offload and no segmentation offload on either device: the kernel finishes
  # every checksum in software (inner TCP, outer UDP) before tcpdump sees the frame, and
  # every frame is MTU-sized. With offload on, tcpdump on a veth sees partial checksums
  # (pseudo-header only, or the outer one computed for an inner one not yet filled in).
  local dev
  for dev in "$veth" flannel-v6.1; do
    ip netns exec "$ns" ethtool -K "$dev" tx off tso off gso off gro off >/dev/null
  done
}
host 1 2
host 2 1

# The kernel gives the device the IPv6-underlay MTU itself: 1500 - 70 = 1430.
ip -n $H1 -d link show flannel-v6.1 >&2
ip -n $H1 -6 route show >&2

# Underlay reachable before capturing (no DAD, but neighbour discovery on the veth).
ip netns exec $H1 ping -6 -c 1 -W 2 fd00:77::2 >/dev/null

# TCP: the client writes 4 x 1000 bytes, the server answers 2 x 1000; TCP_NODELAY and a pause
# between writes keep every segment MTU-sized (one write, one segment: no GSO super-frames,
# which tcpdump on the veth would otherwise see unsegmented).
cat >"$tmp/server.py" <<'EOF'
import socket, sys, time
s = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], int(sys.argv[2])))
s.listen(1)
print("listening", flush=True)
c, _ = s.accept()
c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
got = 0
while True:
    b = c.recv(65536)
    if not b:
        break
    got += len(b)
assert got == 4000, got
for i in range(2):
    c.sendall(bytes([0x61 + i]) * 1000)
    time.sleep(0.05)
c.close()
EOF
cat >"$tmp/client.py" <<'EOF'
import socket, sys, time
c = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=5)
c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
time.sleep(0.05)
for i in range(4):
    c.sendall(bytes([0x41 + i]) * 1000)
    time.sleep(0.05)
c.shutdown(socket.SHUT_WR)
got = 0
while True:
    b = c.recv(65536)
    if not b:
        break
    got += len(b)
assert got == 2000, got
c.close()
EOF

ip netns exec $H2 python3 -u "$tmp/server.py" fd00:10:0:2:: $PORT >"$tmp/server.log" 2>&1 &
server=$!
for _ in $(seq 50); do grep -q listening "$tmp/server.log" 2>/dev/null && break; sleep 0.1; done
grep -q listening "$tmp/server.log"

ip netns exec $H1 tcpdump -i ovcap-v1 -s 0 -U --immediate-mode -Z root -c 40 -w "$tmp/cap.pcap" 'udp port 8472' \
  2>"$tmp/tcpdump.log" &
dump=$!
for _ in $(seq 50); do grep -q listening "$tmp/tcpdump.log" 2>/dev/null && break; sleep 0.1; done
grep -q listening "$tmp/tcpdump.log"

# ICMPv6 echo: 4 default (56-byte payload) and 2 of 1300 bytes (1348-byte inner packets).
ip netns exec $H1 ping -6 -c 4 -i 0.2 -W 2 fd00:10:0:2:: >&2
ip netns exec $H1 ping -6 -c 2 -i 0.2 -W 2 -s 1300 fd00:10:0:2:: >&2
ip netns exec $H1 python3 "$tmp/client.py" fd00:10:0:2:: $PORT
wait $server

sleep 1
kill -INT $dump 2>/dev/null || true
wait $dump || true
cat "$tmp/tcpdump.log" >&2
cp "$tmp/cap.pcap" "$OUT"
frames=$(tcpdump -nn -r "$OUT" 2>/dev/null | grep -c '\.8472: ')
echo "frames: $frames" >&2
# 12 ICMPv6 echo and about 18 TCP; fewer means tcpdump lost some (it would not say so).
[ "$frames" -ge 24 ] || { echo "only $frames frames captured" >&2; exit 1; }
ls -l "$OUT" >&2
