//! systemd's notify protocol (`sd_notify`), for `Type=notify` units: `READY=1`,
//! `RELOADING=1`, `STOPPING=1`, `STATUS=` and `WATCHDOG=1` datagrams to the socket named
//! by `$NOTIFY_SOCKET`. Without that variable (not started by systemd) every call does
//! nothing. Failures are logged at debug and never stop the daemon.

use std::io;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::bridge::State;

/// How often the `STATUS=` line is recomputed (it is sent only when it changed).
pub const STATUS_INTERVAL: Duration = Duration::from_secs(5);

/// How many failing bridges the status line names before it says "...".
const NAMED_FAILURES: usize = 3;

/// The service manager's notification socket, or nothing.
#[derive(Debug, Default)]
pub struct Notifier {
    target: Option<Target>,
    /// The last `STATUS=` text sent, so unchanged ones are not repeated.
    last_status: Mutex<Option<String>>,
    /// Set by `stopping`: no more status refreshes after it.
    stopping: AtomicBool,
}

#[derive(Debug)]
struct Target {
    socket: UnixDatagram,
    address: SocketAddr,
    /// `$NOTIFY_SOCKET` as given, for log lines.
    name: String,
}

impl Notifier {
    /// From `$NOTIFY_SOCKET`; disabled when it is unset or empty. The variable stays in
    /// the environment (broker-bridge starts no child processes that could misuse it).
    pub fn from_env() -> Notifier {
        match std::env::var_os("NOTIFY_SOCKET") {
            Some(value) if !value.is_empty() => {
                let value = value.to_string_lossy().into_owned();
                Notifier::to_socket(&value).unwrap_or_else(|error| {
                    tracing::debug!(socket = %value, %error, "NOTIFY_SOCKET unusable; not notifying systemd");
                    Notifier::disabled()
                })
            }
            _ => Notifier::disabled(),
        }
    }

    /// A notifier that sends nothing.
    pub fn disabled() -> Notifier {
        Notifier::default()
    }

    /// Notifies the socket `name`: a path, or with a leading `@` a name in the abstract
    /// namespace (as `$NOTIFY_SOCKET` gives them).
    pub fn to_socket(name: &str) -> io::Result<Notifier> {
        let address = match name.strip_prefix('@') {
            Some(abstract_name) => {
                use std::os::linux::net::SocketAddrExt;
                SocketAddr::from_abstract_name(abstract_name.as_bytes())?
            }
            None if name.starts_with('/') => SocketAddr::from_pathname(name)?,
            None => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "neither an absolute path nor an abstract name (@...)",
                ));
            }
        };
        let socket = UnixDatagram::unbound()?;
        // A receiver that does not read must never block the runtime: such a datagram is
        // dropped (and logged) instead.
        socket.set_nonblocking(true)?;
        Ok(Notifier {
            target: Some(Target {
                socket,
                address,
                name: name.to_owned(),
            }),
            last_status: Mutex::new(None),
            stopping: AtomicBool::new(false),
        })
    }

    pub fn is_enabled(&self) -> bool {
        self.target.is_some()
    }

    /// Sends one datagram of `KEY=value` lines.
    pub fn notify(&self, message: &str) {
        let Some(target) = &self.target else { return };
        match target
            .socket
            .send_to_addr(message.as_bytes(), &target.address)
        {
            Ok(_) => tracing::trace!(socket = %target.name, message, "notified systemd"),
            Err(error) => {
                tracing::debug!(socket = %target.name, %error, message, "cannot notify systemd")
            }
        }
    }

    /// `READY=1`, with the current status line.
    pub fn ready(&self, status: &str) {
        self.notify(&format!("READY=1\n{}", self.status_field(status)));
    }

    /// `RELOADING=1` with the `MONOTONIC_USEC=` newer systemd versions want with it.
    pub fn reloading(&self) {
        self.notify(&format!(
            "RELOADING=1\nMONOTONIC_USEC={}\nSTATUS=reloading the config",
            monotonic_usec()
        ));
        *self.last_status.lock().expect("status lock") = Some("reloading the config".into());
    }

    /// `STOPPING=1`: shutdown has begun (bridges drain now).
    pub fn stopping(&self) {
        self.stopping.store(true, Ordering::Relaxed);
        let status = "shutting down: draining bridges";
        self.notify(&format!("STOPPING=1\nSTATUS={status}"));
        *self.last_status.lock().expect("status lock") = Some(status.into());
    }

    /// `STATUS=` when the text differs from the last one sent (and shutdown has not
    /// begun).
    pub fn status(&self, status: &str) {
        if self.stopping.load(Ordering::Relaxed) {
            return;
        }
        let status = one_line(status);
        let mut last = self.last_status.lock().expect("status lock");
        if last.as_deref() != Some(status.as_str()) {
            self.notify(&format!("STATUS={status}"));
            *last = Some(status);
        }
    }

    pub fn watchdog(&self) {
        self.notify("WATCHDOG=1");
    }

    /// A `STATUS=` field, remembered as the last status sent.
    fn status_field(&self, status: &str) -> String {
        let status = one_line(status);
        let field = format!("STATUS={status}");
        *self.last_status.lock().expect("status lock") = Some(status);
        field
    }

    /// Pings the watchdog at half of `$WATCHDOG_USEC` (when systemd asked for it) from a
    /// task on the current runtime, so a wedged runtime stops the pings and systemd
    /// restarts the service.
    pub fn spawn_watchdog(self: &Arc<Self>) {
        if !self.is_enabled() {
            return;
        }
        let Some(timeout) = watchdog_timeout() else {
            return;
        };
        let period = timeout / 2;
        tracing::debug!(?timeout, ?period, "systemd watchdog enabled");
        let notifier = self.clone();
        tokio::spawn(async move {
            let mut ticks = tokio::time::interval(period);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticks.tick().await;
                notifier.watchdog();
            }
        });
    }

    /// Refreshes the `STATUS=` line from `status` every `STATUS_INTERVAL` (sent only when
    /// it changed).
    pub fn spawn_status(self: &Arc<Self>, status: impl Fn() -> String + Send + 'static) {
        if !self.is_enabled() {
            return;
        }
        let notifier = self.clone();
        tokio::spawn(async move {
            let mut ticks = tokio::time::interval(STATUS_INTERVAL);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            ticks.tick().await;
            loop {
                ticks.tick().await;
                if notifier.stopping.load(Ordering::Relaxed) {
                    break;
                }
                notifier.status(&status());
            }
        });
    }
}

/// The watchdog timeout systemd set for this process: `$WATCHDOG_USEC`, when
/// `$WATCHDOG_PID` is unset or names this process.
pub fn watchdog_timeout() -> Option<Duration> {
    watchdog_timeout_from(
        std::env::var("WATCHDOG_USEC").ok().as_deref(),
        std::env::var("WATCHDOG_PID").ok().as_deref(),
        std::process::id(),
    )
}

fn watchdog_timeout_from(usec: Option<&str>, pid: Option<&str>, own_pid: u32) -> Option<Duration> {
    if let Some(pid) = pid
        && pid.trim().parse::<u32>().ok() != Some(own_pid)
    {
        return None;
    }
    let usec: u64 = usec?.trim().parse().ok()?;
    (usec > 0).then(|| Duration::from_micros(usec))
}

/// `CLOCK_MONOTONIC` in microseconds, the clock systemd compares `MONOTONIC_USEC=` with.
pub fn monotonic_usec() -> u64 {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `now` is a valid, writable timespec; CLOCK_MONOTONIC always exists on Linux.
    let result = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut now) };
    if result != 0 {
        return 0;
    }
    now.tv_sec as u64 * 1_000_000 + now.tv_nsec as u64 / 1_000
}

/// The `STATUS=` line from its parts (`Shared::status_line`). "Failing" is a bridge that is reconnecting (its source
/// failed), as `/readyz` reports it.
pub fn summarize(
    bridges: &[(String, State)],
    exchange_connected: bool,
    reload_failed: bool,
) -> String {
    let count = |state: State| bridges.iter().filter(|(_, s)| *s == state).count();
    let mut line = match bridges.len() {
        0 => "no bridges".to_owned(),
        1 => "1 bridge: ".to_owned(),
        n => format!("{n} bridges: "),
    };
    if !bridges.is_empty() {
        let mut parts = vec![format!("{} running", count(State::Running))];
        let failing: Vec<&str> = bridges
            .iter()
            .filter(|(_, s)| *s == State::Reconnecting)
            .map(|(name, _)| name.as_str())
            .collect();
        if !failing.is_empty() {
            let mut names = failing
                .iter()
                .take(NAMED_FAILURES)
                .copied()
                .collect::<Vec<_>>()
                .join(", ");
            if failing.len() > NAMED_FAILURES {
                names.push_str(", ...");
            }
            parts.push(format!("{} failing ({names})", failing.len()));
        }
        for (state, word) in [
            (State::Connecting, "connecting"),
            (State::Restarting, "restarting after a panic"),
            (State::Failed, "failed (see /bridges)"),
            (State::Draining, "draining"),
            (State::Stopped, "stopped"),
        ] {
            let n = count(state);
            if n > 0 {
                parts.push(format!("{n} {word}"));
            }
        }
        line.push_str(&parts.join(", "));
    }
    line.push_str(if exchange_connected {
        "; exchange connected"
    } else {
        "; exchange not connected"
    });
    if reload_failed {
        line.push_str("; last config reload failed (old config runs)");
    }
    line
}

/// `STATUS=` takes one line.
fn one_line(text: &str) -> String {
    text.replace(['\n', '\r'], " ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bridges(states: &[(&str, State)]) -> Vec<(String, State)> {
        states.iter().map(|(n, s)| (n.to_string(), *s)).collect()
    }

    #[test]
    fn summary_counts_and_names_failing_bridges() {
        use State::*;
        assert_eq!(
            summarize(&[], true, false),
            "no bridges; exchange connected"
        );
        assert_eq!(
            summarize(&bridges(&[("a", Running)]), true, false),
            "1 bridge: 1 running; exchange connected"
        );
        assert_eq!(
            summarize(
                &bridges(&[
                    ("a", Running),
                    ("b", Running),
                    ("c", Running),
                    ("d", Running),
                    ("orders", Reconnecting)
                ]),
                true,
                false
            ),
            "5 bridges: 4 running, 1 failing (orders); exchange connected"
        );
        assert_eq!(
            summarize(
                &bridges(&[
                    ("a", Reconnecting),
                    ("b", Reconnecting),
                    ("c", Reconnecting),
                    ("d", Reconnecting),
                    ("e", Connecting)
                ]),
                false,
                true
            ),
            "5 bridges: 0 running, 4 failing (a, b, c, ...), 1 connecting; exchange not connected; \
             last config reload failed (old config runs)"
        );
    }

    #[test]
    fn watchdog_only_for_this_process() {
        let ten = Some(Duration::from_secs(10));
        assert_eq!(watchdog_timeout_from(Some("10000000"), None, 7), ten);
        assert_eq!(watchdog_timeout_from(Some("10000000"), Some("7"), 7), ten);
        assert_eq!(watchdog_timeout_from(Some("10000000"), Some("8"), 7), None);
        assert_eq!(watchdog_timeout_from(Some("0"), None, 7), None);
        assert_eq!(watchdog_timeout_from(Some("soon"), None, 7), None);
        assert_eq!(watchdog_timeout_from(None, Some("7"), 7), None);
    }

    #[test]
    fn monotonic_clock_advances() {
        let first = monotonic_usec();
        std::thread::sleep(Duration::from_millis(2));
        let second = monotonic_usec();
        assert!(first > 0 && second > first, "{first} then {second}");
    }

    fn receive(socket: &UnixDatagram) -> String {
        let mut buffer = [0u8; 4096];
        let n = socket.recv(&mut buffer).unwrap();
        String::from_utf8(buffer[..n].to_vec()).unwrap()
    }

    #[test]
    fn sends_to_a_path_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let receiver = UnixDatagram::bind(&path).unwrap();
        receiver
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let notifier = Notifier::to_socket(path.to_str().unwrap()).unwrap();
        assert!(notifier.is_enabled());
        notifier.ready("1 bridge: 1 running\nsecond line");
        assert_eq!(
            receive(&receiver),
            "READY=1\nSTATUS=1 bridge: 1 running second line"
        );
        // An unchanged status is not sent again.
        notifier.status("1 bridge: 1 running second line");
        notifier.status("no bridges");
        assert_eq!(receive(&receiver), "STATUS=no bridges");
        notifier.reloading();
        let reloading = receive(&receiver);
        assert!(
            reloading.starts_with("RELOADING=1\nMONOTONIC_USEC="),
            "{reloading}"
        );
        notifier.stopping();
        assert!(receive(&receiver).starts_with("STOPPING=1\n"));
    }

    #[test]
    fn sends_to_an_abstract_socket() {
        use std::os::linux::net::SocketAddrExt;
        let name = format!(
            "broker-bridge-test-{}-{}",
            std::process::id(),
            monotonic_usec()
        );
        let receiver =
            UnixDatagram::bind_addr(&SocketAddr::from_abstract_name(name.as_bytes()).unwrap())
                .unwrap();
        receiver
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let notifier = Notifier::to_socket(&format!("@{name}")).unwrap();
        notifier.watchdog();
        assert_eq!(receive(&receiver), "WATCHDOG=1");
    }

    #[test]
    fn nothing_without_a_socket() {
        let notifier = Notifier::disabled();
        assert!(!notifier.is_enabled());
        notifier.ready("ignored");
        assert!(Notifier::to_socket("relative/path").is_err());
    }

    #[test]
    fn a_missing_receiver_is_not_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let notifier = Notifier::to_socket(dir.path().join("gone").to_str().unwrap()).unwrap();
        notifier.ready("nobody listens");
    }
}
