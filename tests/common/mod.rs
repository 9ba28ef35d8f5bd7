//! Test harness: runs the real `broker-bridge` binary against the real brokers on
//! loopback (see DESIGN.md "Test brokers"), with names unique to each test.
#![allow(dead_code)]

pub mod conformance;
pub mod poison;
pub mod proxy;

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use futures::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, ExchangeDeclareOptions, QueueBindOptions,
    QueueDeclareOptions,
};
use lapin::types::FieldTable;
use lapin::{Connection, ConnectionProperties, ExchangeKind};

pub const AMQP_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";
pub const NATS_URL: &str = "nats://127.0.0.1:4222";

/// A name no other test (or earlier run) uses.
pub fn unique(prefix: &str) -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!("{prefix}-{}-{n}-{nanos:x}", std::process::id())
}

/// The `<type>` word of a routing key, written again independently of
/// `routing::type_word`: `A-Z a-z 0-9 -` stay, `.` is `_`, every other byte is `~XX`.
pub fn type_word(event_type: &str) -> String {
    event_type
        .bytes()
        .map(|byte| match byte {
            b'.' => "_".to_owned(),
            b'-' | b'0'..=b'9' | b'A'..=b'Z' | b'a'..=b'z' => char::from(byte).to_string(),
            other => format!("~{other:02X}"),
        })
        .collect()
}

/// A free TCP port on loopback.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Waits until `check` is true, panicking with `what` after `timeout`.
pub async fn eventually<F: FnMut() -> bool>(timeout: Duration, what: &str, mut check: F) {
    let deadline = Instant::now() + timeout;
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `eventually` for checks that must talk to a broker. Never block on a future inside
/// `eventually`: the test's runtime also drives its proxy and clients.
pub async fn eventually_async<F, Fut>(timeout: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The config around the test's bridges: its own exchange and admin port.
pub fn config_text(exchange_url: &str, exchange: &str, admin_port: u16, bridges: &str) -> String {
    format!(
        r#"
[exchange]
url = "{exchange_url}"
name = "{exchange}"
confirm_timeout = "5s"
backoff = {{ initial = "100ms", max = "1s" }}

[admin]
listen = "127.0.0.1:{admin_port}"

[defaults]
tenant = "acme"
shutdown_timeout = "5s"
backoff = {{ initial = "100ms", max = "1s" }}

{bridges}
"#
    )
}

/// A running daemon. Killed (SIGKILL) when dropped.
pub struct Daemon {
    pub child: Child,
    pub dir: tempfile::TempDir,
    pub config_path: PathBuf,
    pub admin_port: u16,
    pub exchange: String,
    pub exchange_url: String,
    /// Extra environment variables of the process (also on `restart`).
    pub env: Vec<(String, String)>,
}

impl Daemon {
    /// Writes the config with these bridges and starts the daemon on it.
    pub async fn start(exchange_url: &str, exchange: &str, bridges: &str) -> Daemon {
        Daemon::start_with_text(
            tempfile::tempdir().unwrap(),
            exchange_url,
            exchange,
            |port| config_text(exchange_url, exchange, port, bridges),
        )
        .await
    }

    /// Starts the daemon in `dir` (which may already hold included files) on the whole
    /// config text that `text` makes for the admin port.
    pub async fn start_with_text(
        dir: tempfile::TempDir,
        exchange_url: &str,
        exchange: &str,
        text: impl FnOnce(u16) -> String,
    ) -> Daemon {
        Daemon::start_with_text_and_env(dir, exchange_url, exchange, text, &[]).await
    }

    /// `start_with_text` with extra environment variables for the process (kept for
    /// `restart`).
    pub async fn start_with_text_and_env(
        dir: tempfile::TempDir,
        exchange_url: &str,
        exchange: &str,
        text: impl FnOnce(u16) -> String,
        env: &[(&str, &str)],
    ) -> Daemon {
        let admin_port = free_port();
        let config_path = dir.path().join("broker-bridge.toml");
        std::fs::write(&config_path, text(admin_port)).unwrap();
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let mut daemon = Daemon {
            child: spawn(&config_path, dir.path(), &env),
            dir,
            config_path,
            admin_port,
            exchange: exchange.to_owned(),
            exchange_url: exchange_url.to_owned(),
            env,
        };
        daemon.wait_healthy().await;
        daemon
    }

    /// Starts a second process on the same config (after `kill`, or a replica).
    pub async fn restart(&mut self) {
        self.child = spawn(&self.config_path, self.dir.path(), &self.env);
        self.wait_healthy().await;
    }

    async fn wait_healthy(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!(
                    "broker-bridge exited early with {status}; log: {}",
                    self.log()
                );
            }
            if http_get(self.admin_port, "/healthz").is_some_and(|(code, _)| code == 200) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "daemon not healthy; log: {}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("daemon.log")).unwrap_or_default()
    }

    /// Rewrites the config with new bridges (same exchange and admin port).
    pub fn write_bridges(&self, bridges: &str) {
        let text = config_text(&self.exchange_url, &self.exchange, self.admin_port, bridges);
        // Write then rename, as editors and config management do.
        let temporary = self.dir.path().join("broker-bridge.toml.new");
        std::fs::write(&temporary, text).unwrap();
        std::fs::rename(&temporary, &self.config_path).unwrap();
    }

    pub fn write_raw(&self, text: &str) {
        std::fs::write(&self.config_path, text).unwrap();
    }

    pub fn signal(&self, signal: i32) {
        let result = unsafe { libc::kill(self.child.id() as i32, signal) };
        assert_eq!(result, 0, "kill failed");
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM and wait; returns the exit code.
    pub fn terminate(&mut self) -> Option<i32> {
        self.signal(libc::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.code();
            }
            assert!(Instant::now() < deadline, "daemon did not exit on SIGTERM");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn metrics_text(&self) -> String {
        let (code, body) = http_get(self.admin_port, "/metrics").expect("metrics reachable");
        assert_eq!(code, 200);
        body
    }

    /// Parsed `/metrics`: `(name, labels) -> value`.
    pub fn metrics(&self) -> Metrics {
        Metrics::parse(&self.metrics_text())
    }

    pub fn bridges(&self) -> serde_json::Value {
        let (code, body) = http_get(self.admin_port, "/bridges").expect("bridges reachable");
        assert_eq!(code, 200);
        serde_json::from_str(&body).unwrap()
    }

    pub fn bridge_status(&self, name: &str) -> Option<serde_json::Value> {
        self.bridges()["bridges"]
            .as_array()
            .unwrap()
            .iter()
            .find(|b| b["name"] == name)
            .cloned()
    }

    /// Waits until `/readyz` says ready: exchange connected and every bridge running.
    pub async fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if http_get(self.admin_port, "/readyz").is_some_and(|(code, _)| code == 200) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "daemon not ready: {:?}\nlog: {}",
                http_get(self.admin_port, "/readyz"),
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until the bridge reports `running`.
    pub async fn wait_running(&self, name: &str) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = self.bridge_status(name)
                && status["status"]["state"] == "running"
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "bridge {name} not running: {:?}\nlog: {}",
                self.bridge_status(name),
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill();
    }
}

fn spawn(config: &Path, dir: &Path, env: &[(String, String)]) -> Child {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("daemon.log"))
        .unwrap();
    let mut command = Command::new(env!("CARGO_BIN_EXE_broker-bridge"));
    // State files (cursors, what a bridge consumed) stay in the test's directory unless
    // the test chose a state_dir itself.
    let text = std::fs::read_to_string(config).unwrap_or_default();
    if !text.contains("state_dir") && !env.iter().any(|(k, _)| k.contains("STATE_DIR")) {
        command.env("BROKER_BRIDGE__DEFAULTS__STATE_DIR", dir.join("state"));
    }
    command
        .args(["run", "-c"])
        .arg(config)
        .env("RUST_LOG", "info,broker_bridge=debug")
        // Tests run under a service manager must not notify it for their daemons.
        .env_remove("NOTIFY_SOCKET")
        .env_remove("WATCHDOG_USEC")
        .env_remove("WATCHDOG_PID")
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log);
    command.spawn().expect("start broker-bridge")
}

/// A minimal HTTP/1.1 GET: `(status, body)`, or `None` when nothing listens.
pub fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response).ok()?;
    let text = String::from_utf8_lossy(&response).into_owned();
    let (head, body) = text.split_once("\r\n\r\n")?;
    let code = head.split_whitespace().nth(1)?.parse().ok()?;
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(body)
    } else {
        body.to_owned()
    };
    Some((code, body))
}

/// A reply to `http_request`.
#[derive(Debug)]
pub struct HttpReply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl HttpReply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(key, _)| key.eq_ignore_ascii_case(name))
            .map(|(_, value)| value.as_str())
    }
}

/// One HTTP/1.1 request on its own connection (`Connection: close`), for tests that
/// must not block their runtime; `None` when nothing listens or the reply is cut.
pub async fn http_request(
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Option<HttpReply> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .ok()?;
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes()).await.ok()?;
    stream.write_all(body).await.ok()?;
    let mut response = Vec::new();
    tokio::time::timeout(Duration::from_secs(30), stream.read_to_end(&mut response))
        .await
        .ok()?
        .ok()?;
    let text = String::from_utf8_lossy(&response).into_owned();
    let (head, body) = text.split_once("\r\n\r\n")?;
    let mut lines = head.lines();
    let status = lines.next()?.split_whitespace().nth(1)?.parse().ok()?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(name, value)| (name.trim().to_owned(), value.trim().to_owned()))
        .collect();
    let chunked = headers.iter().any(|(name, value)| {
        name.eq_ignore_ascii_case("transfer-encoding") && value.eq_ignore_ascii_case("chunked")
    });
    let body = if chunked {
        dechunk(body)
    } else {
        body.to_owned()
    };
    Some(HttpReply {
        status,
        headers,
        body,
    })
}

fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let size = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if size == 0 {
            break;
        }
        out.push_str(&rest[..size]);
        body = &rest[size + 2..];
    }
    out
}

/// `/metrics` parsed with an independent Prometheus text parser.
pub struct Metrics(HashMap<(String, Vec<(String, String)>), f64>);

impl Metrics {
    pub fn parse(text: &str) -> Metrics {
        let lines = text.lines().map(|l| Ok(l.to_owned()));
        let scrape = prometheus_parse::Scrape::parse(lines).expect("valid Prometheus text");
        let mut values = HashMap::new();
        for sample in scrape.samples {
            let value = match sample.value {
                prometheus_parse::Value::Counter(v)
                | prometheus_parse::Value::Gauge(v)
                | prometheus_parse::Value::Untyped(v) => v,
                prometheus_parse::Value::Histogram(buckets) => {
                    // Key histogram samples by their +Inf bucket (= count).
                    buckets.last().map(|b| b.count).unwrap_or(0.0)
                }
                prometheus_parse::Value::Summary(_) => continue,
            };
            let mut labels: Vec<(String, String)> = sample
                .labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            labels.sort();
            values.insert((sample.metric.clone(), labels), value);
        }
        Metrics(values)
    }

    /// The value of a series with exactly these labels.
    pub fn get(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let mut labels: Vec<(String, String)> = labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        labels.sort();
        self.0.get(&(name.to_owned(), labels)).copied()
    }

    /// A per-bridge series.
    pub fn bridge(&self, name: &str, bridge: &str, kind: &str) -> Option<f64> {
        self.get(name, &[("bridge", bridge), ("kind", kind)])
    }
}

/// RabbitMQ side of a test: its exchange and queues bound to it.
pub struct Rabbit {
    pub connection: Connection,
    pub channel: lapin::Channel,
}

/// One message taken from a test queue.
#[derive(Debug, Clone)]
pub struct Received {
    pub routing_key: String,
    pub body: Vec<u8>,
    pub properties: lapin::BasicProperties,
}

impl Received {
    /// The structured CloudEvent body as JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).expect("structured CloudEvent JSON")
    }

    pub fn header(&self, name: &str) -> Option<String> {
        let headers = self.properties.headers().as_ref()?;
        match headers.inner().get(name)? {
            lapin::types::AMQPValue::LongString(s) => Some(s.to_string()),
            other => Some(format!("{other:?}")),
        }
    }
}

impl Rabbit {
    pub async fn connect() -> Rabbit {
        let connection = Connection::connect(AMQP_URL, ConnectionProperties::default())
            .await
            .expect("RabbitMQ on 127.0.0.1:5672 (run scripts/brokers.sh)");
        let channel = connection.create_channel().await.unwrap();
        Rabbit {
            connection,
            channel,
        }
    }

    /// Declares the test's exchange the way the daemon does (so tests can bind first).
    pub async fn declare_exchange(&self, exchange: &str) {
        self.channel
            .exchange_declare(
                exchange.into(),
                ExchangeKind::Topic,
                ExchangeDeclareOptions {
                    durable: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .unwrap();
    }

    /// A new queue bound to `exchange` with `pattern`.
    pub async fn bind(&self, exchange: &str, pattern: &str) -> String {
        self.declare_exchange(exchange).await;
        let queue = unique("q");
        self.channel
            .queue_declare(
                queue.as_str().into(),
                QueueDeclareOptions::default(),
                expiring(),
            )
            .await
            .unwrap();
        self.channel
            .queue_bind(
                queue.as_str().into(),
                exchange.into(),
                pattern.into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .unwrap();
        queue
    }

    /// Takes messages from `queue` until `count` arrived or `timeout` passed.
    pub async fn take(&self, queue: &str, count: usize, timeout: Duration) -> Vec<Received> {
        let channel = self.connection.create_channel().await.unwrap();
        let mut consumer = channel
            .basic_consume(
                queue.into(),
                unique("c").as_str().into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .unwrap();
        let mut received = Vec::new();
        let deadline = tokio::time::Instant::now() + timeout;
        while received.len() < count {
            let next = tokio::time::timeout_at(deadline, consumer.next()).await;
            let Ok(Some(Ok(delivery))) = next else { break };
            delivery.ack(BasicAckOptions::default()).await.unwrap();
            received.push(Received {
                routing_key: delivery.routing_key.to_string(),
                body: delivery.data.clone(),
                properties: delivery.properties.clone(),
            });
        }
        let _ = channel.close(200, "done".into()).await;
        received
    }

    /// Like `take`, then waits `quiet` more to make sure nothing else arrives.
    pub async fn take_exactly(
        &self,
        queue: &str,
        count: usize,
        timeout: Duration,
    ) -> Vec<Received> {
        let mut received = self.take(queue, count, timeout).await;
        received.extend(self.take(queue, 1, Duration::from_millis(500)).await);
        received
    }
}

/// Queue arguments that make RabbitMQ delete a test queue ten minutes after its last use.
fn expiring() -> FieldTable {
    let mut arguments = FieldTable::default();
    arguments.insert(
        "x-expires".into(),
        lapin::types::AMQPValue::LongInt(600_000),
    );
    arguments
}

/// NATS client for publishing test messages (independent of the daemon).
pub async fn nats() -> async_nats::Client {
    async_nats::connect(NATS_URL)
        .await
        .expect("NATS on 127.0.0.1:4222 (run scripts/brokers.sh)")
}

/// Test payloads: JSON with odd spacing, UTF-8 text, random binary.
pub fn sample_payloads() -> Vec<(&'static str, Vec<u8>)> {
    use rand::Rng;
    let mut binary = vec![0u8; 300];
    rand::rng().fill(&mut binary[..]);
    binary[0] = 0xff; // never valid UTF-8 or JSON
    vec![
        (
            "json",
            br#"{ "order" : 42, "items": [1, 2.50, "x"], "nested": {"ok": true} }"#.to_vec(),
        ),
        ("text", "grüße from the edge: 21.5°C".as_bytes().to_vec()),
        ("binary", binary),
    ]
}
