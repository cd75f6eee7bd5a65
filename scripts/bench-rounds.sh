#!/usr/bin/env bash
# Runs scripts/bench-e2e.sh ROUNDS times and reports, per case, the median over the rounds.
#
# Why: on a small VM the end-to-end figure of one harness run is set largely when the daemons
# start (which CPU each worker and iperf3 settle on): repeats inside one run (REPEAT=N) agree
# within ~5 %, while two runs of the same binary have differed by 1.6x. Every round here is a
# whole new harness run (new namespaces, new daemons), so the medians are over daemon starts.
#
#   ROUNDS=3 CASES="kernel_vxlan vxlan udp gre" scripts/bench-rounds.sh
#
# Environment: ROUNDS=3 (at least 1), and everything scripts/bench-e2e.sh reads (CASES,
# DURATION, REPEAT, WIRE, OVERLAYD_BIN, OVERLAYD_FLAGS, IPERF_FLAGS, BRIDGE_NF, PIN, BENCH_PREFIX).
# "machine" is the whole machine's busy CPU seconds per GiB received (the kernel's work for the
# daemons included), "vs kernel" that cost over the kernel case's in the same round.
# "ratio" is the 1-stream rate over the kernel's (kernel_vxlan, kernel_l2_vxlan for L2 rows,
# kernel_vxlan_uso for the inner-UDP rows, kernel_vxlan6 for the IPv6 rows), "ratio 4" the
# same for 4 streams; both are taken per round (over the kernel case of that round), then
# the median.
# Prints each round's table as it goes (stderr), then a table of medians with every round's
# value, then one JSON line. Rounds run one after the other; each cleans up after itself.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" -ne 0 ]; then
  echo "bench-rounds: needs root (scripts/bench-e2e.sh creates network namespaces); run it as root" >&2
  exit 1
fi
ROUNDS=${ROUNDS:-3}
[[ "$ROUNDS" =~ ^[1-9][0-9]*$ ]] || { echo "ROUNDS must be a whole number >= 1, not '$ROUNDS'" >&2; exit 2; }

WORK=$(mktemp -d /tmp/bench-rounds.XXXXXX)
trap 'rm -rf "$WORK"' EXIT
for ((r = 1; r <= ROUNDS; r++)); do
  echo "==> round $r of $ROUNDS" >&2
  scripts/bench-e2e.sh >"$WORK/round-$r.out"
  cat "$WORK/round-$r.out" >&2
  grep '^{' "$WORK/round-$r.out" | tail -n 1 >"$WORK/round-$r.json"
done

python3 - "$WORK" "$ROUNDS" <<'EOF'
import json, statistics, sys
work, rounds = sys.argv[1], int(sys.argv[2])
runs = [json.load(open(f"{work}/round-{r}.json")) for r in range(1, rounds + 1)]

def col(key, case):
    return [r.get(key, {}).get(case) for r in runs]

def med(vals):
    v = [x for x in vals if isinstance(x, (int, float))]
    return statistics.median(v) if v else None

def fmt(x, spec):
    width = int(spec.split(".")[0] or 0)
    return "-".rjust(width) if x is None else format(x, spec)

def r3(x):
    return None if x is None else round(x, 3)

cases = []
for r in runs:
    for c in r.get("gbps_1_stream", {}):
        if c not in cases:
            cases.append(c)
summary = {}
wire = runs[0].get("wire", "veth")
print(f"medians over {rounds} round(s) of scripts/bench-e2e.sh, wire {wire} (every round: new namespaces and daemons); ratio min-max over the rounds")
def per_round_ratio(key, c, base):
    out = []
    for r in runs:
        v, b = r.get(key, {}).get(c), r.get(key, {}).get(base)
        out.append(v / b if isinstance(v, (int, float)) and isinstance(b, (int, float)) and b else None)
    return out

def reference(c):
    """The kernel case a row is measured against, in the same round."""
    if c.endswith("_uso"):
        return "kernel_vxlan_uso"
    if c.startswith(("l2_", "kernel_l2")):
        return "kernel_l2_vxlan"
    if "vxlan6" in c:
        return "kernel_vxlan6"
    return "kernel_vxlan"

def span(vals):
    v = [x for x in vals if isinstance(x, (int, float))]
    return f"{min(v):.2f}-{max(v):.2f}" if v else "-"

print(f"{'case':<24} {'1-stream':>9} {'4-stream':>9} {'ratio':>7} {'min-max':>11} {'ratio 4':>8} {'ping Δ µs':>10} {'CPU s/GiB':>10} {'machine':>8} {'vs kernel':>9}   1-stream per round")
for c in cases:
    g1, g4 = col("gbps_1_stream", c), col("gbps_4_streams", c)
    base = reference(c)
    ratio = med(per_round_ratio("gbps_1_stream", c, base))
    ratio4 = med(per_round_ratio("gbps_4_streams", c, base))
    delta = med(col("latency_delta_us", c) if c in runs[0].get("latency_delta_us", {})
                else col("l2_latency_delta_us", c))
    cpu = med(col("overlayd_cpu_s_per_gib", c))
    ratios = per_round_ratio("gbps_1_stream", c, base)
    machine = med(col("machine_cpu_s_per_gib", c))
    machine_ratio = med(per_round_ratio("machine_cpu_s_per_gib", c, base))
    summary[c] = {"g1": r3(med(g1)), "g4": r3(med(g4)), "ratio": r3(ratio), "ratio_4": r3(ratio4),
                  "ping_delta_us": r3(delta), "cpu_s_per_gib": r3(cpu),
                  "ratio_rounds": [r3(x) for x in ratios], "machine_cpu_s_per_gib": r3(machine),
                  "machine_cpu_vs_kernel": r3(machine_ratio),
                  "g1_rounds": g1, "g4_rounds": g4}
    per = " ".join(fmt(x, ".2f") for x in g1)
    print(f"{c:<24} {fmt(med(g1), '9.2f')} {fmt(med(g4), '9.2f')} {fmt(ratio, '7.2f')} {span(ratios):>11} {fmt(ratio4, '8.2f')} "
          f"{fmt(delta, '10.0f')} {fmt(cpu, '10.2f')} {fmt(machine, '8.2f')} {fmt(machine_ratio, '9.2f')}   {per}")
print(json.dumps({"rounds": rounds, "wire": wire, "cases": summary}, separators=(",", ":")))
EOF
