#!/usr/bin/env bash
# Quickstart: ensure the brokers config.example.toml uses (RabbitMQ and NATS, through
# scripts/brokers.sh), then run broker-bridge with it. Extra arguments go to `run`.
set -euo pipefail
cd "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/.."

scripts/deps.sh
scripts/brokers.sh rabbitmq nats
exec cargo run --release -- run -c config.example.toml "$@"
