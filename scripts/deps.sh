#!/usr/bin/env bash
# Ensure what building broker-bridge needs besides the Rust toolchain: a C toolchain,
# make and perl for the vendored librdkafka, and the OpenSSL and zlib headers it links
# (TLS and SASL/SCRAM for Kafka). For tests/systemd.rs: systemd-analyze (package
# systemd), and /bin/kill (procps), which the unit's ExecReload names and verify checks.
# Idempotent: installs only what is missing (Debian).
set -euo pipefail

missing=()
command -v cc >/dev/null 2>&1 || missing+=(gcc)
command -v c++ >/dev/null 2>&1 || missing+=(g++)
command -v make >/dev/null 2>&1 || missing+=(make)
command -v perl >/dev/null 2>&1 || missing+=(perl)
command -v pkg-config >/dev/null 2>&1 || missing+=(pkg-config)
dpkg-query -W -f='${Status}' libssl-dev 2>/dev/null | grep -q "ok installed" || missing+=(libssl-dev)
dpkg-query -W -f='${Status}' zlib1g-dev 2>/dev/null | grep -q "ok installed" || missing+=(zlib1g-dev)
command -v systemd-analyze >/dev/null 2>&1 || missing+=(systemd)
[[ -x /bin/kill ]] || missing+=(procps)
((${#missing[@]})) || exit 0

echo "deps.sh: installing ${missing[*]}" >&2
as_root=()
[[ $EUID -eq 0 ]] || as_root=(sudo -E)
export DEBIAN_FRONTEND=noninteractive
"${as_root[@]}" apt-get update -qq >&2
"${as_root[@]}" apt-get install -y -qq "${missing[@]}" >&2
