#!/usr/bin/env bash
# The benchmark: ensure the local brokers (scripts/brokers.sh), then print end-to-end
# events/s, p50/p99 latency and peak RSS for each bridge kind (webhooks under wrk), with the exchange
# ceiling measured in the same run. BENCH_EVENTS sets the burst size (default 20000).
set -euo pipefail
cd "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/.."

scripts/deps.sh
scripts/brokers.sh
# The HTTP load generator of the webhook figures (Debian's wrk).
if ! command -v wrk >/dev/null 2>&1; then
    as_root=()
    [[ $EUID -eq 0 ]] || as_root=(sudo -E)
    DEBIAN_FRONTEND=noninteractive "${as_root[@]}" apt-get install -y -qq wrk >&2 ||
        { "${as_root[@]}" apt-get update -qq >&2 && DEBIAN_FRONTEND=noninteractive "${as_root[@]}" apt-get install -y -qq wrk >&2; }
fi
cargo bench --locked --bench pipeline "$@"
exec cargo bench --locked --bench s3_listing
