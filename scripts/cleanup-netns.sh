#!/usr/bin/env bash
# Kills every process in, and deletes, every network namespace left by the tests (ovt-) or the
# demo (ovd-). Pass prefixes to restrict it, e.g. `scripts/cleanup-netns.sh ovt-`.
# Never touches other namespaces or the root namespace. Safe to run when there is nothing to do.
set -uo pipefail
PATH="$PATH:/usr/sbin:/sbin"

prefixes=("$@")
[ ${#prefixes[@]} -eq 0 ] && prefixes=(ovt- ovd-)

command -v ip >/dev/null 2>&1 || exit 0

matches() {
  local name=$1 p
  for p in "${prefixes[@]}"; do
    [[ $name == "$p"* ]] && return 0
  done
  return 1
}

mapfile -t all < <(ip netns list 2>/dev/null | awk '{print $1}')
victims=()
for ns in "${all[@]}"; do
  matches "$ns" && victims+=("$ns")
done
[ ${#victims[@]} -eq 0 ] && exit 0

# Ask politely first (lets overlayd remove its own state), then kill whatever is left.
for ns in "${victims[@]}"; do
  for pid in $(ip netns pids "$ns" 2>/dev/null); do kill -TERM "$pid" 2>/dev/null || true; done
done
for _ in $(seq 20); do
  busy=0
  for ns in "${victims[@]}"; do
    [ -n "$(ip netns pids "$ns" 2>/dev/null)" ] && busy=1
  done
  [ $busy -eq 0 ] && break
  sleep 0.1
done
for ns in "${victims[@]}"; do
  for pid in $(ip netns pids "$ns" 2>/dev/null); do kill -KILL "$pid" 2>/dev/null || true; done
done
sleep 0.1
rc=0
for ns in "${victims[@]}"; do
  ip netns del "$ns" 2>/dev/null || { echo "cleanup-netns: cannot delete $ns" >&2; rc=1; }
done
echo "cleanup-netns: removed ${#victims[@]} namespace(s)"
exit $rc
