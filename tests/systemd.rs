//! Running under systemd: the unit in `deploy/` passes `systemd-analyze verify`, and the
//! daemon speaks the notify protocol (`READY=1`, `STATUS=`, `WATCHDOG=1`,
//! `RELOADING=1`/`READY=1`, `STOPPING=1`) to a `$NOTIFY_SOCKET` the test opens.

mod common;

use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::process::Command;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::{AMQP_URL, Daemon, NATS_URL, config_text, http_get, unique};

const BINARY: &str = env!("CARGO_BIN_EXE_broker-bridge");
const UNIT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/broker-bridge.service");
const PATIENCE: Duration = Duration::from_secs(20);

// ---------------------------------------------------------------------------------------
// The unit file

/// `systemd-analyze verify` on a copy of the unit: exit status and stderr.
fn verify(unit_text: &str) -> (Option<i32>, String) {
    let dir = tempfile::tempdir().unwrap();
    let unit = dir.path().join("broker-bridge.service");
    std::fs::write(&unit, unit_text).unwrap();
    let output = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&unit)
        .output()
        .unwrap_or_else(|error| {
            panic!(
                "cannot run systemd-analyze ({error}): run scripts/deps.sh, which installs systemd"
            )
        });
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// The unit with its ExecStart/ExecReload pointing at the binary under test (verify
/// refuses commands that do not exist, and /usr/local/bin/broker-bridge does not here).
fn unit_for_test() -> String {
    let text = std::fs::read_to_string(UNIT).unwrap();
    assert!(
        text.contains("/usr/local/bin/broker-bridge run -c"),
        "{text}"
    );
    text.replace("/usr/local/bin/broker-bridge", BINARY)
}

/// What verify said about our unit. It may also talk about other units or the host
/// (not booted with systemd); our unit's lines name it, or its binary.
fn lines_about_unit(stderr: &str) -> Vec<&str> {
    stderr
        .lines()
        .filter(|line| line.contains("broker-bridge"))
        .collect()
}

#[test]
fn unit_passes_systemd_analyze_verify() {
    let (code, stderr) = verify(&unit_for_test());
    assert_eq!(code, Some(0), "systemd-analyze verify failed:\n{stderr}");
    assert!(
        lines_about_unit(&stderr).is_empty(),
        "systemd-analyze verify complains about the unit:\n{stderr}"
    );
    // The check above notices mistakes: verify only warns about an unknown key.
    let broken = unit_for_test().replace("[Service]\n", "[Service]\nFrobnicate=yes\n");
    let (_, stderr) = verify(&broken);
    assert!(
        lines_about_unit(&stderr)
            .iter()
            .any(|l| l.contains("Frobnicate")),
        "an unknown key should be reported: {stderr}"
    );
}

#[test]
fn unit_is_a_notify_service_with_watchdog_and_reload_check() {
    let text = std::fs::read_to_string(UNIT).unwrap();
    let service: Vec<&str> = text
        .lines()
        .filter(|l| !l.starts_with('#') && l.contains('='))
        .collect();
    for wanted in [
        "Type=notify",
        "NotifyAccess=main",
        "WatchdogSec=30s",
        "ExecReload=/usr/local/bin/broker-bridge check -c /etc/broker-bridge/config.toml",
        "ExecReload=/bin/kill -HUP $MAINPID",
        "StateDirectory=broker-bridge",
        "ConfigurationDirectory=broker-bridge",
        "RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX",
    ] {
        assert!(service.contains(&wanted), "the unit lacks {wanted}");
    }
    // The check runs before the signal.
    let check = text
        .find("ExecReload=/usr/local/bin/broker-bridge check")
        .unwrap();
    let hangup = text.find("ExecReload=/bin/kill -HUP").unwrap();
    assert!(check < hangup);
    assert!(text.contains("#LoadCredential="));
    assert!(text.contains("${CREDENTIALS_DIRECTORY}"));
}

// ---------------------------------------------------------------------------------------
// The notify protocol

/// One datagram the daemon sent, and whether `/healthz` answered right after it came.
struct Notification {
    text: String,
    healthy: bool,
}

/// The test's end of `$NOTIFY_SOCKET`: a thread receives every datagram.
struct NotifySocket {
    received: mpsc::Receiver<Notification>,
    /// Everything taken so far, for failure messages.
    seen: Vec<String>,
}

impl NotifySocket {
    /// Receives on `socket` once the daemon's admin port is known; on `READY=1` it asks
    /// that port's `/healthz` at once.
    fn listen(socket: UnixDatagram, admin_port: mpsc::Receiver<u16>) -> NotifySocket {
        socket
            .set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        let (sender, received) = mpsc::channel();
        std::thread::spawn(move || {
            let Ok(admin_port) = admin_port.recv() else {
                return;
            };
            let mut buffer = vec![0u8; 8192];
            loop {
                let n = match socket.recv(&mut buffer) {
                    Ok(n) => n,
                    Err(error)
                        if matches!(
                            error.kind(),
                            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                        ) =>
                    {
                        // Stop once the test has dropped its end.
                        if sender
                            .send(Notification {
                                text: String::new(),
                                healthy: false,
                            })
                            .is_err()
                        {
                            return;
                        }
                        continue;
                    }
                    Err(error) => panic!("notify socket: {error}"),
                };
                let text = String::from_utf8_lossy(&buffer[..n]).into_owned();
                let healthy = text.lines().any(|l| l == "READY=1")
                    && http_get(admin_port, "/healthz").is_some_and(|(code, _)| code == 200);
                if sender.send(Notification { text, healthy }).is_err() {
                    return;
                }
            }
        });
        NotifySocket {
            received,
            seen: Vec::new(),
        }
    }

    /// The next datagram before `deadline`, skipping the listener's empty keep-alives.
    fn next(&mut self, deadline: Instant) -> Option<Notification> {
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let notification = self.received.recv_timeout(left).ok()?;
            if !notification.text.is_empty() {
                self.seen.push(notification.text.clone());
                return Some(notification);
            }
        }
    }

    /// The next datagram with a line that starts with `wanted`, skipping others. Blocks:
    /// the daemon is another process, and nothing else runs on this test's runtime.
    fn wait_for(&mut self, wanted: &str) -> Notification {
        let deadline = Instant::now() + PATIENCE;
        loop {
            match self.next(deadline) {
                Some(n) if n.text.lines().any(|l| l.starts_with(wanted)) => return n,
                Some(_) => {}
                None => panic!("no {wanted} within {PATIENCE:?}; got {:#?}", self.seen),
            }
        }
    }

    /// Every datagram that arrives within `span`.
    fn collect(&mut self, span: Duration) -> Vec<String> {
        let deadline = Instant::now() + span;
        std::iter::from_fn(|| self.next(deadline))
            .map(|n| n.text)
            .collect()
    }
}

/// The value of the `KEY=` line of a datagram.
fn field<'a>(text: &'a str, key: &str) -> Option<&'a str> {
    text.lines()
        .find_map(|line| line.strip_prefix(key)?.strip_prefix('='))
}

fn monotonic_usec() -> u64 {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    assert_eq!(
        unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut now) },
        0
    );
    now.tv_sec as u64 * 1_000_000 + now.tv_nsec as u64 / 1_000
}

fn nats_bridge(name: &str, subject: &str) -> String {
    format!(
        "[[bridge]]\nname = \"{name}\"\nkind = \"nats\"\nurl = \"{NATS_URL}\"\nsubject = \"{subject}\"\n"
    )
}

/// Starts the daemon with `NOTIFY_SOCKET=notify_socket` (and `env`) on its own exchange,
/// and the test's listener on `socket`, which is bound already, so nothing is lost.
async fn start_notified(
    socket: UnixDatagram,
    notify_socket: &str,
    bridges: &str,
    env: &[(&str, &str)],
) -> (Daemon, NotifySocket) {
    let (port_sender, admin_port) = mpsc::channel();
    let notifications = NotifySocket::listen(socket, admin_port);
    let exchange = unique("systemd");
    let mut all_env = vec![("NOTIFY_SOCKET", notify_socket)];
    all_env.extend_from_slice(env);
    let daemon = Daemon::start_with_text_and_env(
        tempfile::tempdir().unwrap(),
        AMQP_URL,
        &exchange,
        |port| {
            port_sender.send(port).unwrap();
            config_text(AMQP_URL, &exchange, port, bridges)
        },
        &all_env,
    )
    .await;
    (daemon, notifications)
}

#[tokio::test]
async fn speaks_the_notify_protocol() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("notify.sock");
    let socket = UnixDatagram::bind(&path).unwrap();
    let subject = format!("{}.readings", unique("t").replace('-', "_"));
    let bridge = nats_bridge("readings", &subject);
    let (mut daemon, mut notifications) = start_notified(
        socket,
        path.to_str().unwrap(),
        &bridge,
        &[("WATCHDOG_USEC", "400000")],
    )
    .await;

    // READY=1 only once /healthz answers, with a status line.
    let ready = notifications.wait_for("READY=1");
    assert!(ready.healthy, "READY=1 before /healthz answered");
    let status = field(&ready.text, "STATUS").expect("READY=1 comes with STATUS=");
    assert!(status.starts_with("1 bridge: "), "{status}");

    // The status line follows the bridge and the exchange (refreshed every 5 s, sent
    // when it changed).
    daemon.wait_ready().await;
    let running = "1 bridge: 1 running; exchange connected";
    if status != running {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let Some(n) = notifications.next(deadline) else {
                panic!("no STATUS={running}: {:#?}", notifications.seen);
            };
            if field(&n.text, "STATUS") == Some(running) {
                break;
            }
        }
    }

    // WATCHDOG_USEC=400000: a ping every 200 ms.
    let pings = notifications
        .collect(Duration::from_secs(2))
        .iter()
        .filter(|t| t.as_str() == "WATCHDOG=1")
        .count();
    assert!(pings >= 3, "{pings} watchdog pings in 2 s");

    // SIGHUP: RELOADING=1 with the monotonic time, then READY=1 with the status.
    let before = monotonic_usec();
    daemon.signal(libc::SIGHUP);
    let reloading = notifications.wait_for("RELOADING=1");
    let stamp: u64 = field(&reloading.text, "MONOTONIC_USEC")
        .expect("MONOTONIC_USEC= with RELOADING=1")
        .parse()
        .unwrap();
    assert!(
        stamp >= before && stamp <= monotonic_usec(),
        "MONOTONIC_USEC={stamp} is not CLOCK_MONOTONIC now"
    );
    let ready = notifications.wait_for("READY=1");
    assert!(
        field(&ready.text, "STATUS")
            .unwrap()
            .starts_with("1 bridge: ")
    );

    // A file change is a reload too: here one more bridge.
    let second = nats_bridge("more", &format!("{subject}.more"));
    daemon.write_bridges(&format!("{bridge}\n{second}"));
    notifications.wait_for("RELOADING=1");
    let ready = notifications.wait_for("READY=1");
    let status = field(&ready.text, "STATUS").unwrap();
    assert!(status.starts_with("2 bridges: "), "{status}");

    // A refused reload still ends with READY=1, and the status says so.
    daemon.write_raw("this is not TOML [");
    notifications.wait_for("RELOADING=1");
    let ready = notifications.wait_for("READY=1");
    let status = field(&ready.text, "STATUS").unwrap();
    assert!(
        status.starts_with("2 bridges: ") && status.contains("last config reload failed"),
        "{status}"
    );

    // SIGTERM: STOPPING=1, then the drain and exit 0.
    assert_eq!(daemon.terminate(), Some(0), "log: {}", daemon.log());
    notifications.wait_for("STOPPING=1");
}

#[tokio::test]
async fn notifies_an_abstract_socket_and_respects_watchdog_pid() {
    use std::os::linux::net::SocketAddrExt;
    let name = unique("broker-bridge-notify");
    let socket =
        UnixDatagram::bind_addr(&SocketAddr::from_abstract_name(name.as_bytes()).unwrap()).unwrap();
    // The watchdog is meant for another process (pid 1): no pings.
    let (mut daemon, mut notifications) = start_notified(
        socket,
        &format!("@{name}"),
        "",
        &[("WATCHDOG_USEC", "100000"), ("WATCHDOG_PID", "1")],
    )
    .await;
    let ready = notifications.wait_for("READY=1");
    assert!(ready.healthy);
    let status = field(&ready.text, "STATUS").unwrap();
    assert!(status.starts_with("no bridges; "), "{status}");
    let texts = notifications.collect(Duration::from_secs(1));
    assert!(
        !texts.iter().any(|t| t.contains("WATCHDOG=1")),
        "pings for another pid: {texts:?}"
    );
    assert_eq!(daemon.terminate(), Some(0), "log: {}", daemon.log());
    notifications.wait_for("STOPPING=1");
}
