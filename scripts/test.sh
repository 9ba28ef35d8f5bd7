#!/usr/bin/env bash
# The test command: ensure the local test brokers (scripts/brokers.sh), then, without
# arguments, the hygiene checks (formatting, clippy on every target and on each kind's
# feature alone, the benches compile), then the whole test suite. Arguments go to
# `cargo test` and skip the hygiene checks, e.g.
#   scripts/test.sh kafka -- --nocapture
# Everything shares one target directory, so the checks reuse the test build's work.
set -euo pipefail
cd "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/.."

scripts/deps.sh
scripts/brokers.sh

if (($# == 0)); then
    step() { printf 'test.sh: %s\n' "$*" >&2; }
    step "cargo fmt --check"
    cargo fmt --all --check
    step "clippy, all targets and features"
    cargo clippy --locked --all-targets --all-features -- -D warnings
    # Each kind's feature alone (every feature of Cargo.toml but `default`), so a kind
    # never depends on another by accident.
    kinds=$(sed -n '/^\[features\]/,/^\[/s/^\([a-z0-9-]*\) = .*/\1/p' Cargo.toml | grep -vx default)
    for kind in $kinds; do
        step "clippy, --no-default-features --features $kind"
        cargo clippy --locked --no-default-features --features "$kind" -- -D warnings
    done
    # The benches built as tests (dev profile, the same artifacts), not run.
    step "the benches compile"
    cargo test --locked --features test-kinds --benches --no-run
fi

# Unit and integration tests, with the test-only kinds (tests/dummy.rs). No doc tests:
# there are none, and their empty summary would be the run's last line.
exec cargo test --locked --features test-kinds --lib --bins --tests "$@"
