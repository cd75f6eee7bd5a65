#!/usr/bin/env bash
# THE test command (CI runs it through .ci/run). Installs missing tools, builds the static
# release binaries and the container image, runs the whole test suite (nextest if installed, else cargo test), and removes any
# test namespaces (ovt-*) before and after, whatever happens. Exit status: non-zero on failure.
#
# Extra arguments go to the test runner, e.g. `scripts/test.sh harness_selftest`.
# The namespace tests need root; without it they are skipped (loudly), not failed. Every skip
# (no root, a kernel feature or a tool missing) appends `SKIP <test>: <reason>` to the file
# named by OVERLAYD_SKIP_LOG (tests/common/skip.rs); the list is printed after the tests, since
# the test runner counts a skipped test as passed.
set -euo pipefail
cd "$(dirname "$0")/.."

export RUST_BACKTRACE=${RUST_BACKTRACE:-1}
TEST_TIMEOUT=${TEST_TIMEOUT:-40m}   # hard cap on the test run itself (the build comes before)
FUZZ_SECONDS=${FUZZ_SECONDS:-10}    # per fuzz target after the tests; 0 skips fuzzing
# The gate fuzzes from a fixed seed, so that a result reproduces: a random seed made the same
# commit pass one run and fail the next on a new input. Exploring is `scripts/fuzz.sh` without
# FUZZ_SEED (a fresh seed each run), for longer; what it finds goes to fuzz/regressions/.
export FUZZ_SEED=${FUZZ_SEED:-1}
# A one-off build from a fresh clone gains nothing from incremental state (GiBs of it).
export CARGO_INCREMENTAL=${CARGO_INCREMENTAL:-0}

SKIP_LOG=$(mktemp "${TMPDIR:-/tmp}/overlayd-skips.XXXXXX")
export OVERLAYD_SKIP_LOG=$SKIP_LOG

scripts/install-deps.sh
scripts/cleanup-netns.sh ovt-

# The build, the tests and the fuzz targets take ~6 GiB here: say so before a compiler dies of
# ENOSPC halfway through with an LLVM error.
need_gib=${TEST_NEED_GIB:-8}
free_gib=$(df -Pk . | awk 'NR == 2 { print int($4 / 1048576) }')
if [ "$free_gib" -lt "$need_gib" ]; then
  echo "scripts/test.sh: only ${free_gib} GiB free on $(df -P . | awk 'NR == 2 { print $6 }'); the build and tests need about ${need_gib} GiB (set TEST_NEED_GIB to change the check)" >&2
  exit 1
fi
trap 'scripts/cleanup-netns.sh ovt- || true; rm -f "$SKIP_LOG"' EXIT
# Ctrl-C / TERM: stop, then the EXIT trap cleans up.
trap 'exit 130' INT
trap 'exit 143' TERM

if [ "$(id -u)" -ne 0 ]; then
  echo "!!! scripts/test.sh: not root: every network-namespace test will be SKIPPED !!!" >&2
else
  # Let the first `ip netns add` set up /run/netns now, not in several parallel tests at once.
  ip netns add "ovt-init-$$" && ip netns del "ovt-init-$$"
fi

echo "==> cargo fmt --check, cargo clippy -D warnings"
cargo fmt --all -- --check
cargo clippy --all-targets -- -D warnings

echo "==> dependencies: every declared crate is used, test-only crates are dev-dependencies"
cargo test -q --test dependencies

echo "==> release build (static) and the container image: scripts/build-image.sh"
# The image's release build is the project's release build: statically linked, target
# x86_64-unknown-linux-gnu (tests/image.rs then only re-stages it, in seconds).
scripts/build-image.sh

# The skips the test run recorded: "N test(s) skipped:" and their lines, or "0 tests skipped".
report_skips() {
  local n
  n=$(sort -u "$SKIP_LOG" | grep -c '^SKIP ' || true)
  if [ "$n" -eq 0 ]; then
    echo "0 tests skipped"
  else
    echo "$n test(s) skipped:"
    sort -u "$SKIP_LOG"
  fi
}

echo "==> tests"
: >"$SKIP_LOG"   # only the test run's skips count
status=0
if cargo nextest --version >/dev/null 2>&1; then
  timeout --signal=TERM --kill-after=30s "$TEST_TIMEOUT" \
    cargo nextest run --no-fail-fast "$@" || status=$?
else
  echo "(cargo-nextest not installed: using cargo test)"
  timeout --signal=TERM --kill-after=30s "$TEST_TIMEOUT" \
    cargo test --no-fail-fast "$@" || status=$?
fi
report_skips
if [ "$status" -ne 0 ]; then
  exit "$status"
fi

if [ "$FUZZ_SECONDS" -gt 0 ]; then
  echo "==> fuzz: build every target, run each for ${FUZZ_SECONDS}s on the seed corpus (seed $FUZZ_SEED)"
  scripts/fuzz.sh "$FUZZ_SECONDS"
fi
