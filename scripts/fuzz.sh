#!/usr/bin/env bash
# Runs every fuzz target in fuzz/ for N seconds each (default 20), bounded, on a scratch copy
# of the checked-in seed corpus (fuzz/corpus/ is never written). Installs cargo-fuzz if it is
# missing. Exit status 1 if any target failed, with the reason on the lines before:
#
#   crash        the input that made it panic (path, size and bytes in hex), copied to
#                fuzz/regressions/<target>/ to be committed with the fix
#   timeout      one input ran longer than -timeout (LIBFUZZER_TIMEOUT s), with that input
#   out-of-memory  past -rss_limit_mb (FUZZ_RSS_MB), with the input when libFuzzer names one
#   time limit   the run outlived this script's own bound (the fuzzer hung)
#
# Before fuzzing, every input under fuzz/regressions/<target>/ is replayed once: a crash found
# once stays a test. The limits are far above what one of these tiny inputs needs (a few ms),
# so a loaded machine slows the run down but does not fail it.
#
#   scripts/fuzz.sh [SECONDS] [TARGET...]
#
# Environment: FUZZ_TARGET_DIR (default fuzz/target; the build uses sanitizers, so keep it apart
# from the main target dir), LIBFUZZER_TIMEOUT (default 60), FUZZ_RSS_MB (default 4096),
# FUZZ_WRAPPER_SECS (default SECONDS + LIBFUZZER_TIMEOUT + 180), FUZZ_SEED (libFuzzer's -seed:
# unset, a fresh random seed each run, for exploring; set, the same inputs in the same order, so
# that a run reproduces: scripts/test.sh sets it).
set -euo pipefail

secs=${1:-20}
shift || true
case $secs in '' | *[!0-9]*) echo "usage: $0 [SECONDS] [TARGET...]" >&2; exit 2 ;; esac
unit_timeout=${LIBFUZZER_TIMEOUT:-60}
rss_mb=${FUZZ_RSS_MB:-4096}
# The wrapper's bound: the run, plus one input hanging up to the unit timeout, plus start-up
# and the final corpus merge on a slow machine.
wrapper=${FUZZ_WRAPPER_SECS:-$((secs + unit_timeout + 180))}
seed_arg=()
if [ -n "${FUZZ_SEED:-}" ]; then
    case $FUZZ_SEED in *[!0-9]*) echo "FUZZ_SEED must be a number, not '$FUZZ_SEED'" >&2; exit 2 ;; esac
    seed_arg=(-seed="$FUZZ_SEED")
fi

root=$(cd "$(dirname "$0")/.." && pwd)
if ! command -v cargo-fuzz >/dev/null 2>&1; then
    echo "installing cargo-fuzz" >&2
    cargo install --locked cargo-fuzz
fi
# cargo-fuzz passes -Z flags (sanitizers); RUSTC_BOOTSTRAP lets a stable toolchain accept them.
export RUSTC_BOOTSTRAP=1
export CARGO_TARGET_DIR=${FUZZ_TARGET_DIR:-$root/fuzz/target}

cd "$root/fuzz"
if [ $# -gt 0 ]; then targets=("$@"); else mapfile -t targets < <(cargo fuzz list); fi
cargo fuzz build

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# Prints path, size and the first 256 bytes (hex) of a reproducer.
show_input() {
    local f=$1
    [ -f "$f" ] || return 0
    printf '    input: %s (%s bytes)\n' "$f" "$(stat -c %s "$f")"
    od -An -tx1 -v -N256 "$f" | sed 's/^/      /'
}

# Why a run failed, from its exit status and log; keeps a new crashing input as a regression.
explain() {
    local t=$1 rc=$2 log=$3 input
    # The input at fault: the unit libFuzzer wrote, or (replaying files) the last one it ran.
    input=$(sed -n 's/.*Test unit written to \([^ ]*\).*/\1/p' "$log" | tail -n1)
    [ -n "$input" ] || input=$(sed -n 's/^Running: \(.*\)$/\1/p' "$log" | tail -n1)
    if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then
        echo "  reason: time limit: still running after ${wrapper}s (-max_total_time=${secs}, -timeout=${unit_timeout}); the fuzzer hung. Last lines:"
        tail -n 15 "$log" | sed 's/^/    /'
    elif grep -q 'libFuzzer: timeout' "$log"; then
        echo "  reason: timeout: one input ran longer than ${unit_timeout}s"
        show_input "$input"
    elif grep -qE 'libFuzzer: out-of-memory|rss limit exhausted' "$log"; then
        echo "  reason: out-of-memory: more than ${rss_mb} MB"
        grep -m1 -E 'out-of-memory' "$log" | sed 's/^/    /'
        show_input "$input"
    elif grep -qE 'panicked at|deadly signal|ERROR: AddressSanitizer|libFuzzer: crash' "$log"; then
        echo "  reason: crash"
        # The panic's location and message (the line after it).
        grep -m1 -A1 'panicked at' "$log" | sed 's/^/    /' || true
        grep -m1 -E 'ERROR: AddressSanitizer' "$log" | sed 's/^/    /' || true
        show_input "$input"
        case $input in
            regressions/* | */regressions/*) ;;
            *)
                if [ -f "$input" ]; then
                    mkdir -p "regressions/$t"
                    cp "$input" "regressions/$t/"
                    echo "    kept as fuzz/regressions/$t/$(basename "$input"): commit it with the fix"
                fi
                ;;
        esac
    else
        echo "  reason: exit status $rc without a libFuzzer report. Last lines:"
        tail -n 30 "$log" | sed 's/^/    /'
    fi
}

failed=()
for t in "${targets[@]}"; do
    log="$work/$t.log"
    # Regressions: each kept input once.
    if compgen -G "regressions/$t/*" >/dev/null; then
        rc=0
        timeout --kill-after=10 "$wrapper" cargo fuzz run "$t" regressions/"$t"/* -- \
            -runs=1 -timeout="$unit_timeout" -rss_limit_mb="$rss_mb" >"$log" 2>&1 || rc=$?
        n=$(find "regressions/$t" -type f | wc -l)
        if [ "$rc" -eq 0 ]; then
            printf '%-12s ok    %s regression input(s) replayed\n' "$t" "$n"
        else
            printf '%-12s FAIL  replaying fuzz/regressions/%s/\n' "$t" "$t"
            explain "$t" "$rc" "$log"
            failed+=("$t")
            continue
        fi
    fi
    mkdir -p "$work/$t"
    rc=0
    timeout --kill-after=10 "$wrapper" \
        cargo fuzz run "$t" "$work/$t" "corpus/$t" -- \
        -max_total_time="$secs" -timeout="$unit_timeout" -rss_limit_mb="$rss_mb" "${seed_arg[@]}" \
        >"$log" 2>&1 || rc=$?
    if [ "$rc" -eq 0 ]; then
        printf '%-12s ok    %s\n' "$t" "$(grep -E '^#[0-9]+.*DONE' "$log" | tail -n1)"
    else
        printf '%-12s FAIL  (exit %s)\n' "$t" "$rc"
        explain "$t" "$rc" "$log"
        failed+=("$t")
    fi
done
if [ ${#failed[@]} -gt 0 ]; then
    echo "fuzz: failed: ${failed[*]} (reasons above)" >&2
    exit 1
fi
