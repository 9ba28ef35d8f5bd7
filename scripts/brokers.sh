#!/usr/bin/env bash
# Ensure the test brokers of DESIGN.md "Test brokers" listen on loopback:
#
#   RabbitMQ          127.0.0.1:5672  guest/guest   Debian rabbitmq-server
#   NATS + JetStream  127.0.0.1:4222                Debian nats-server
#   Mosquitto         127.0.0.1:1883  anonymous     Debian mosquitto
#   Kafka (tansu)     127.0.0.1:9092                cargo install tansu
#   S3 (moto)         127.0.0.1:9000                pip install 'moto[server]'
#
# Idempotent: a broker whose port already accepts connections is reused and
# never restarted. Missing software is installed (apt-get update runs at most
# once per run, and only when something must be installed). Brokers started
# here run in their own session and outlive this script.
#
# Usage: scripts/brokers.sh [NAME...]   (default: all of rabbitmq nats mosquitto moto tansu)
#
# Prints one line per broker on stdout: "<name> <address> reused|started".
# Progress and errors go to stderr.
#
# Environment:
#   BROKER_BRIDGE_BROKER_DIR      logs and pid files (/tmp/broker-bridge-brokers)
#   BROKER_BRIDGE_BROKER_TIMEOUT  seconds to wait for each broker (120)
#   BROKER_BRIDGE_MOTO_VENV       venv for moto when the system python is
#                                 externally managed (PEP 668, e.g. Debian 12)
#                                 (~/.local/share/broker-bridge/moto-venv)
#   BROKER_BRIDGE_MOSQUITTO_CONF  config for a Mosquitto started here
#                                 (/etc/mosquitto/mosquitto.conf; Debian's
#                                 default runs in "local only mode": 127.0.0.1
#                                 and ::1 port 1883, anonymous clients allowed,
#                                 persistence on)
set -euo pipefail

STATE_DIR="${BROKER_BRIDGE_BROKER_DIR:-/tmp/broker-bridge-brokers}"
TIMEOUT="${BROKER_BRIDGE_BROKER_TIMEOUT:-120}"
CARGO_BIN_DIR="${CARGO_HOME:-$HOME/.cargo}/bin"
MOTO_VENV="${BROKER_BRIDGE_MOTO_VENV:-${XDG_DATA_HOME:-$HOME/.local/share}/broker-bridge/moto-venv}"
MOSQUITTO_CONF="${BROKER_BRIDGE_MOSQUITTO_CONF:-/etc/mosquitto/mosquitto.conf}"
NATS_STORE_DIR=/var/lib/nats-server
NATS_LOG=/var/log/nats-server.log
APT_LOG="$STATE_DIR/apt.log"

export DEBIAN_FRONTEND=noninteractive

msg() { printf 'brokers.sh: %s\n' "$*" >&2; }
die() {
    msg "ERROR: $*"
    exit 1
}

# Run a command as root (directly, or through sudo when not root).
as_root() {
    if [[ $EUID -eq 0 ]]; then
        "$@"
    elif command -v sudo >/dev/null 2>&1; then
        sudo -E "$@"
    else
        die "need root to run: $*"
    fi
}

# True when something accepts TCP connections on 127.0.0.1:$1.
port_open() {
    # shellcheck disable=SC2016 # $1 is expanded by the inner bash
    timeout 3 bash -c 'exec 3<>"/dev/tcp/127.0.0.1/$1"' _ "$1" >/dev/null 2>&1
}

# wait_port NAME PORT LOG [PID]: wait up to $TIMEOUT seconds for the port;
# fails early when PID (the broker we started) has exited.
wait_port() {
    local name=$1 port=$2 log=$3 pid=${4:-}
    local deadline=$((SECONDS + TIMEOUT))
    until port_open "$port"; do
        if [[ -n $pid ]] && ! kill -0 "$pid" 2>/dev/null; then
            show_log "$log"
            die "$name exited before listening on 127.0.0.1:$port; see $log"
        fi
        if ((SECONDS >= deadline)); then
            show_log "$log"
            die "$name is not listening on 127.0.0.1:$port after ${TIMEOUT}s; see $log"
        fi
        sleep 1
    done
}

show_log() {
    if [[ -r $1 ]]; then
        msg "last lines of $1:"
        tail -n 20 "$1" >&2 || true
    fi
}

# Start a long-running command in its own session, detached from this
# script's stdin/stdout and from the lock (fd 9), logging to $1; sets $! .
spawn() {
    local log=$1
    shift
    setsid nohup "$@" </dev/null >>"$log" 2>&1 9>&- &
}

status_line() { printf '%-9s %-15s %s\n' "$1" "$2" "$3"; }

# ---------------------------------------------------------------------------
# apt

APT_UPDATED=0
POLICY_RC_D=/usr/sbin/policy-rc.d
POLICY_RC_D_OURS=0

cleanup() {
    if ((POLICY_RC_D_OURS)); then
        as_root rm -f "$POLICY_RC_D" || true
    fi
}
trap cleanup EXIT

apt_install() {
    command -v apt-get >/dev/null 2>&1 ||
        die "must install $* but apt-get is missing; install it by hand"
    # Without systemd, package maintainer scripts would try to start the
    # services through invoke-rc.d/init.d and may fail the install. Forbid
    # that for the duration of the install (unless a policy already exists);
    # this script starts the brokers itself.
    if [[ ! -e $POLICY_RC_D ]]; then
        printf '#!/bin/sh\n# temporary, from broker-bridge scripts/brokers.sh\nexit 101\n' |
            as_root tee "$POLICY_RC_D" >/dev/null
        as_root chmod 755 "$POLICY_RC_D"
        POLICY_RC_D_OURS=1
    fi
    if ((!APT_UPDATED)); then
        msg "apt-get update (log: $APT_LOG)"
        as_root apt-get update >>"$APT_LOG" 2>&1 ||
            die "apt-get update failed; see $APT_LOG"
        APT_UPDATED=1
    fi
    msg "apt-get install $* (log: $APT_LOG)"
    as_root apt-get install -y "$@" >>"$APT_LOG" 2>&1 ||
        die "apt-get install $* failed; see $APT_LOG"
    cleanup
    POLICY_RC_D_OURS=0
}

# ---------------------------------------------------------------------------
# RabbitMQ

RABBIT_LOG="$STATE_DIR/rabbitmq.log"
RABBITMQCTL=(rabbitmqctl)

start_rabbitmq() {
    # RabbitMQ's node name is rabbit@<short hostname>; when that name does not
    # resolve (some containers), fall back to rabbit@localhost.
    local host
    host=$(uname -n)
    host=${host%%.*}
    local env=(RABBITMQ_NODE_IP_ADDRESS=127.0.0.1 ERL_EPMD_ADDRESS=127.0.0.1)
    if ! getent hosts "$host" >/dev/null 2>&1; then
        env+=(RABBITMQ_NODENAME=rabbit@localhost)
        RABBITMQCTL=(rabbitmqctl -n rabbit@localhost)
    fi
    msg "starting RabbitMQ (log: $RABBIT_LOG, /var/log/rabbitmq/)"
    # -detached daemonizes; the Debian wrapper switches to the rabbitmq user.
    as_root env "${env[@]}" setsid rabbitmq-server -detached \
        </dev/null >>"$RABBIT_LOG" 2>&1 9>&- ||
        die "rabbitmq-server -detached failed; see $RABBIT_LOG and /var/log/rabbitmq/"
}

wait_rabbitmq() {
    wait_port RabbitMQ 5672 "$RABBIT_LOG"
    # The AMQP port opens late in the boot, but wait for the whole app.
    as_root "${RABBITMQCTL[@]}" -q await_startup --timeout "$TIMEOUT" \
        </dev/null >>"$RABBIT_LOG" 2>&1 9>&- ||
        die "RabbitMQ did not finish starting within ${TIMEOUT}s; see $RABBIT_LOG and /var/log/rabbitmq/"
}

# ---------------------------------------------------------------------------
# NATS

NATS_BIN=/usr/sbin/nats-server

start_nats() {
    [[ -x $NATS_BIN ]] || NATS_BIN=$(command -v nats-server) ||
        die "nats-server not found"
    as_root mkdir -p "$NATS_STORE_DIR"
    msg "starting NATS (log: $NATS_LOG)"
    # --pidfile: only a nats-server started from here counts as "running";
    # another nats-server on another port must not make this a no-op.
    as_root start-stop-daemon --start --oknodo --background \
        --pidfile "$STATE_DIR/nats-server.pid" --make-pidfile \
        --exec "$NATS_BIN" -- \
        -a 127.0.0.1 -p 4222 -js -sd "$NATS_STORE_DIR" -l "$NATS_LOG" \
        </dev/null >>"$STATE_DIR/nats-server.out" 2>&1 9>&- ||
        die "starting nats-server failed; see $STATE_DIR/nats-server.out"
}

wait_nats() {
    local pid
    pid=$(cat "$STATE_DIR/nats-server.pid" 2>/dev/null || true)
    wait_port NATS 4222 "$NATS_LOG" "$pid"
}

# ---------------------------------------------------------------------------
# Mosquitto

MOSQUITTO_OUT="$STATE_DIR/mosquitto.out"

start_mosquitto() {
    [[ -r $MOSQUITTO_CONF ]] || die "Mosquitto config $MOSQUITTO_CONF is missing"
    # Debian's config keeps its pid file in /run/mosquitto, which must exist
    # (and belong to the user mosquitto drops privileges to).
    as_root mkdir -p /run/mosquitto
    if id mosquitto >/dev/null 2>&1; then
        as_root chown mosquitto: /run/mosquitto
    fi
    msg "starting Mosquitto with $MOSQUITTO_CONF (log: /var/log/mosquitto/mosquitto.log, $MOSQUITTO_OUT)"
    as_root mosquitto -d -c "$MOSQUITTO_CONF" \
        </dev/null >>"$MOSQUITTO_OUT" 2>&1 9>&- ||
        die "mosquitto -d failed; see $MOSQUITTO_OUT and /var/log/mosquitto/mosquitto.log"
}

wait_mosquitto() {
    wait_port Mosquitto 1883 /var/log/mosquitto/mosquitto.log
}

# ---------------------------------------------------------------------------
# tansu (Kafka API)

TANSU_LOG="$STATE_DIR/tansu.log"
TANSU=""

find_tansu() {
    if TANSU=$(command -v tansu 2>/dev/null); then
        return 0
    elif [[ -x $CARGO_BIN_DIR/tansu ]]; then
        TANSU=$CARGO_BIN_DIR/tansu
        return 0
    fi
    return 1
}

start_tansu() {
    if ! find_tansu; then
        command -v cargo >/dev/null 2>&1 || die "tansu is missing and cargo is not on PATH"
        msg "installing tansu: cargo install tansu --locked --features dynostore"
        msg "(about 20 minutes on 2 cores; log: $STATE_DIR/tansu-install.log)"
        cargo install tansu --locked --features dynostore 9>&- 2>&1 |
            tee -a "$STATE_DIR/tansu-install.log" >&2 ||
            die "cargo install tansu failed; see $STATE_DIR/tansu-install.log"
        find_tansu || die "tansu installed but found neither on PATH nor in $CARGO_BIN_DIR"
    fi
    msg "starting tansu $TANSU (log: $TANSU_LOG)"
    # tansu reads a .env from its working directory (and parents) and takes
    # most options from the environment too: run it from its own directory,
    # without inherited settings, with the in-memory storage engine.
    mkdir -p "$STATE_DIR/tansu"
    (
        cd "$STATE_DIR/tansu"
        unset CLUSTER_ID LISTENER_URL ADVERTISED_LISTENER_URL STORAGE_ENGINE \
            SCHEMA_REGISTRY OTEL_EXPORTER_OTLP_ENDPOINT DATA_LAKE
        spawn "$TANSU_LOG" "$TANSU" broker \
            --listener-url tcp://127.0.0.1:9092 \
            --advertised-listener-url tcp://127.0.0.1:9092 \
            --storage-engine memory://tansu/
        echo $! >"$STATE_DIR/tansu.pid"
    )
}

wait_tansu() {
    wait_port tansu 9092 "$TANSU_LOG" "$(cat "$STATE_DIR/tansu.pid")"
}

# ---------------------------------------------------------------------------
# moto (S3 API)

MOTO_LOG="$STATE_DIR/moto.log"
MOTO=()

find_moto() {
    # A pyenv shim exists even when the selected Python lacks moto, so try it.
    if command -v moto_server >/dev/null 2>&1 && moto_server --help >/dev/null 2>&1; then
        MOTO=(moto_server)
    elif command -v python3 >/dev/null 2>&1 && python3 -c 'import moto.server' >/dev/null 2>&1; then
        MOTO=(python3 -m moto.server)
    elif [[ -x $MOTO_VENV/bin/moto_server ]]; then
        MOTO=("$MOTO_VENV/bin/moto_server")
    else
        return 1
    fi
}

python_externally_managed() {
    python3 -c 'import os, sys, sysconfig
sys.exit(0 if os.path.exists(os.path.join(sysconfig.get_path("stdlib"), "EXTERNALLY-MANAGED")) else 1)'
}

install_moto() {
    command -v python3 >/dev/null 2>&1 || apt_install python3
    if ! python_externally_managed && python3 -m pip --version >/dev/null 2>&1; then
        msg "installing moto: python3 -m pip install 'moto[server]' (log: $STATE_DIR/moto-install.log)"
        if python3 -m pip install 'moto[server]' >>"$STATE_DIR/moto-install.log" 2>&1; then
            if command -v pyenv >/dev/null 2>&1; then
                pyenv rehash >/dev/null 2>&1 || true
            fi
            find_moto && return 0
        fi
        msg "pip install into python3 failed; using a venv instead"
    fi
    # PEP 668 (Debian's python3): install into a venv of our own.
    msg "installing moto into the venv $MOTO_VENV (log: $STATE_DIR/moto-install.log)"
    if [[ ! -x $MOTO_VENV/bin/pip ]]; then
        rm -rf "$MOTO_VENV"
        mkdir -p "$(dirname "$MOTO_VENV")"
        if ! python3 -m venv "$MOTO_VENV" >>"$STATE_DIR/moto-install.log" 2>&1; then
            rm -rf "$MOTO_VENV"
            apt_install python3-venv
            python3 -m venv "$MOTO_VENV" >>"$STATE_DIR/moto-install.log" 2>&1 ||
                die "python3 -m venv $MOTO_VENV failed; see $STATE_DIR/moto-install.log"
        fi
    fi
    "$MOTO_VENV/bin/pip" install 'moto[server]' >>"$STATE_DIR/moto-install.log" 2>&1 ||
        die "pip install 'moto[server]' failed; see $STATE_DIR/moto-install.log"
    find_moto || die "moto installed but moto_server not found; see $STATE_DIR/moto-install.log"
}

start_moto() {
    find_moto || install_moto
    msg "starting moto: ${MOTO[*]} (log: $MOTO_LOG)"
    spawn "$MOTO_LOG" "${MOTO[@]}" -H 127.0.0.1 -p 9000
    echo $! >"$STATE_DIR/moto.pid"
}

wait_moto() {
    wait_port moto 9000 "$MOTO_LOG" "$(cat "$STATE_DIR/moto.pid")"
}

# ---------------------------------------------------------------------------

mkdir -p "$STATE_DIR"
# Serialize concurrent runs (e.g. two test runs at once). Every process
# started above closes fd 9 so that the lock dies with this script.
exec 9>"$STATE_DIR/lock"
flock -w 3600 9 || die "another scripts/brokers.sh holds $STATE_DIR/lock"

# name, port, Debian package providing the program (empty: not from apt),
# program whose absence means the package must be installed.
BROKERS=(
    "rabbitmq 5672 rabbitmq-server rabbitmq-server"
    "nats 4222 nats-server nats-server"
    "mosquitto 1883 mosquitto mosquitto"
    "moto 9000 - -"
    "tansu 9092 - -"
)

has_program() {
    command -v "$1" >/dev/null 2>&1 || [[ -x /usr/sbin/$1 || -x /sbin/$1 ]]
}

# Only the brokers named on the command line, when any are.
selected=()
for entry in "${BROKERS[@]}"; do
    read -r name _ <<<"$entry"
    if (($# == 0)) || [[ " $* " == *" $name "* ]]; then
        selected+=("$entry")
    fi
done
for wanted in "$@"; do
    [[ " ${BROKERS[*]} " == *" $wanted "* ]] || die "unknown broker '$wanted' (known: rabbitmq nats mosquitto moto tansu)"
done

pending=()
packages=()
for entry in "${selected[@]}"; do
    read -r name port package program <<<"$entry"
    if port_open "$port"; then
        status_line "$name" "127.0.0.1:$port" reused
        continue
    fi
    pending+=("$name $port")
    if [[ $package != - ]] && ! has_program "$program"; then
        packages+=("$package")
    fi
done

# Programs the tests run themselves: the MQTT TLS test starts a private Mosquitto with
# certificates made by openssl and a password file made by mosquitto_passwd.
# "program package" pairs, needed whenever Mosquitto is selected.
if [[ " ${selected[*]} " == *" mosquitto "* ]]; then
    for tool in "openssl openssl" "mosquitto mosquitto" "mosquitto_passwd mosquitto"; do
        read -r program package <<<"$tool"
        if ! has_program "$program" && [[ " ${packages[*]-} " != *" $package "* ]]; then
            packages+=("$package")
        fi
    done
fi

if ((${#packages[@]})); then
    apt_install "${packages[@]}"
fi

# Start everything first (tansu last: it may need a long install), then wait.
for entry in "${pending[@]}"; do
    read -r name port <<<"$entry"
    if port_open "$port"; then
        continue # started by a package's maintainer script after all
    fi
    "start_$name"
done
for entry in "${pending[@]}"; do
    read -r name port <<<"$entry"
    "wait_$name"
    status_line "$name" "127.0.0.1:$port" started
done
