#!/usr/bin/env bash
# Ensure what building broker-bridge needs besides the Rust toolchain: a C toolchain,
# make and perl for the vendored librdkafka, and the OpenSSL and zlib headers it links
# (TLS and SASL/SCRAM for Kafka). Without --build, also what the tests need besides the
# brokers: promtool (tests/deploy.rs checks deploy/prometheus.yml and deploy/alerts.yml),
# systemd-analyze (package systemd) and /bin/kill (procps), which the unit's ExecReload
# names and tests/systemd.rs verifies. Idempotent: installs only what is missing (Debian).
#   scripts/deps.sh            build and test prerequisites
#   scripts/deps.sh --build    build prerequisites only (deploy/Dockerfile)
set -euo pipefail

tests=true
case "${1:-}" in
    "") ;;
    --build) tests=false ;;
    *) echo "usage: $0 [--build]" >&2; exit 2 ;;
esac

as_root=()
[[ $EUID -eq 0 ]] || as_root=(sudo -E)
export DEBIAN_FRONTEND=noninteractive
updated=false
apt_update() {
    $updated || "${as_root[@]}" apt-get update -qq >&2
    updated=true
}

missing=()
command -v cc >/dev/null 2>&1 || missing+=(gcc)
command -v c++ >/dev/null 2>&1 || missing+=(g++)
command -v make >/dev/null 2>&1 || missing+=(make)
command -v perl >/dev/null 2>&1 || missing+=(perl)
command -v pkg-config >/dev/null 2>&1 || missing+=(pkg-config)
dpkg-query -W -f='${Status}' libssl-dev 2>/dev/null | grep -q "ok installed" || missing+=(libssl-dev)
dpkg-query -W -f='${Status}' zlib1g-dev 2>/dev/null | grep -q "ok installed" || missing+=(zlib1g-dev)
if $tests; then
    command -v systemd-analyze >/dev/null 2>&1 || missing+=(systemd)
    [[ -x /bin/kill ]] || missing+=(procps)
fi
if ((${#missing[@]})); then
    echo "deps.sh: installing ${missing[*]}" >&2
    apt_update
    "${as_root[@]}" apt-get install -y -qq "${missing[@]}" >&2
fi

# promtool comes from Debian's `prometheus` package. Installing the package would also
# install (and, where services start on installation, start and enable) a Prometheus
# server; only promtool is wanted, so it is taken out of the package into
# /usr/local/bin. apt-get download checks the package against the signed archive.
if $tests && ! command -v promtool >/dev/null 2>&1; then
    echo "deps.sh: installing promtool (from Debian's prometheus package)" >&2
    apt_update
    work=$(mktemp -d)
    trap 'rm -rf "$work"' EXIT
    # As root, apt downloads as the user _apt, who may not write to the private folder.
    sandbox=()
    [[ $EUID -ne 0 ]] || sandbox=(-o APT::Sandbox::User=root)
    (cd "$work" && apt-get download -qq "${sandbox[@]}" prometheus >&2)
    dpkg-deb --fsys-tarfile "$work"/prometheus_*.deb | tar -x -C "$work" ./usr/bin/promtool
    "${as_root[@]}" install -m 0755 "$work/usr/bin/promtool" /usr/local/bin/promtool
fi
