#!/usr/bin/env bash
# Runs every fuzz target in fuzz/ for N seconds each (default 20), bounded, on a scratch copy
# of the checked-in seed corpus (fuzz/corpus/ is never written). Installs cargo-fuzz if it is
# missing. Crashes are saved by libFuzzer under fuzz/artifacts/<target>/; exit status 1 if any
# target failed.
#
#   scripts/fuzz.sh [SECONDS] [TARGET...]
#
# Environment: FUZZ_TARGET_DIR (default fuzz/target; the build uses sanitizers, so keep it apart
# from the main target dir).
set -euo pipefail

secs=${1:-20}
shift || true
case $secs in '' | *[!0-9]*) echo "usage: $0 [SECONDS] [TARGET...]" >&2; exit 2 ;; esac

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
failed=()
for t in "${targets[@]}"; do
    mkdir -p "$work/$t"
    log="$work/$t.log"
    # Hard bound in case libFuzzer hangs past -max_total_time (e.g. a slow unit).
    if timeout --kill-after=10 $((secs + 60)) \
        cargo fuzz run "$t" "$work/$t" "corpus/$t" -- \
        -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 \
        >"$log" 2>&1; then
        printf '%-12s ok    %s\n' "$t" "$(grep -E '^#[0-9]+.*DONE' "$log" | tail -n1)"
    else
        printf '%-12s FAIL  (see fuzz/artifacts/%s/)\n' "$t" "$t"
        grep -E 'panicked|ERROR|SUMMARY|Test unit written' "$log" | head -n 20 || tail -n 40 "$log"
        failed+=("$t")
    fi
done
if [ ${#failed[@]} -gt 0 ]; then
    echo "failed: ${failed[*]}" >&2
    exit 1
fi
