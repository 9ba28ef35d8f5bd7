#!/usr/bin/env bash
# Quickstart: ensure the local brokers (scripts/brokers.sh), then run
# broker-bridge with config.example.toml. Extra arguments go to `run`.
set -euo pipefail
cd "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/.."

scripts/brokers.sh
exec cargo run --release -- run -c config.example.toml "$@"
