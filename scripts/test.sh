#!/usr/bin/env bash
# The test command: ensure the local test brokers (scripts/brokers.sh), then
# run the whole test suite. Extra arguments go to `cargo test`, e.g.
#   scripts/test.sh kafka -- --nocapture
set -euo pipefail
cd "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/.."

scripts/deps.sh
scripts/brokers.sh
# Unit and integration tests. No doc tests: there are none, and their empty summary
# would be the run's last line.
exec cargo test --locked --lib --bins --tests "$@"
