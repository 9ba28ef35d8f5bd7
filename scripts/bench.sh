#!/usr/bin/env bash
# The benchmark: ensure the local brokers (scripts/brokers.sh), then print end-to-end
# events/s, p50/p99 latency and peak RSS for each bridge kind, with the exchange
# ceiling measured in the same run. BENCH_EVENTS sets the burst size (default 20000).
set -euo pipefail
cd "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/.."

scripts/deps.sh
scripts/brokers.sh
cargo bench --locked --bench pipeline "$@"
exec cargo bench --locked --bench s3_listing
