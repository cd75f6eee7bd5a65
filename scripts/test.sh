#!/usr/bin/env bash
# THE test command (CI runs it through .ci/run). Installs missing tools, builds the static
# release binaries and the container image, runs the whole test suite (nextest if installed, else cargo test), and removes any
# test namespaces (ovt-*) before and after, whatever happens. Exit status: non-zero on failure.
#
# Extra arguments go to the test runner, e.g. `scripts/test.sh harness_selftest`.
# The namespace tests need root; without it they are skipped (loudly), not failed.
set -euo pipefail
cd "$(dirname "$0")/.."

export RUST_BACKTRACE=${RUST_BACKTRACE:-1}
TEST_TIMEOUT=${TEST_TIMEOUT:-40m}   # hard cap on the test run itself (the build comes before)
FUZZ_SECONDS=${FUZZ_SECONDS:-10}    # per fuzz target after the tests; 0 skips fuzzing

scripts/install-deps.sh
scripts/cleanup-netns.sh ovt-
trap 'scripts/cleanup-netns.sh ovt- || true' EXIT
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

echo "==> tests"
if cargo nextest --version >/dev/null 2>&1; then
  timeout --signal=TERM --kill-after=30s "$TEST_TIMEOUT" \
    cargo nextest run --no-fail-fast "$@"
else
  echo "(cargo-nextest not installed: using cargo test)"
  timeout --signal=TERM --kill-after=30s "$TEST_TIMEOUT" \
    cargo test --no-fail-fast "$@"
fi

if [ "$FUZZ_SECONDS" -gt 0 ]; then
  echo "==> fuzz: build every target, run each for ${FUZZ_SECONDS}s on the seed corpus"
  scripts/fuzz.sh "$FUZZ_SECONDS"
fi
