//! The HTTP listeners against hostile and ordinary clients, on the real daemon: slow
//! clients are cut off by `header_timeout` while an ordinary webhook is answered 200 and
//! `/healthz` answers, and no file descriptor is left behind; connections over
//! `max_connections` are closed without starving the admin listener; a trickled body is
//! cut by `body_timeout`; a kept-alive connection waits `idle_timeout` (not
//! `header_timeout`) for its next request; HTTPS with a certificate made at test time,
//! replaced without a restart; the admin token and the `Host` check.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::{AMQP_URL, Daemon, Rabbit, eventually, eventually_async, free_port, http_request};
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const TOKEN: &str = "listener-test-bearer-token";
const HOOK_PATH: &str = "/hooks/hook";

/// Raises this process's soft open-file limit to the hard one: the tests hold hundreds
/// of connections.
fn raise_open_file_limit() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit), 0);
        limit.rlim_cur = limit.rlim_max;
        assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &limit), 0);
    }
    assert!(
        limit.rlim_cur >= 1200,
        "the tests need about 1,000 open files; the hard limit is {}",
        limit.rlim_cur
    );
}

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("the daemon's /proc/<pid>/fd")
        .count()
}

/// A daemon with one webhook bridge (`hook`, bearer token) on a listener of its own,
/// with `webhook_keys` added to `[webhook]`; ready, with the exchange connected.
async fn start_hook(webhook_keys: &str) -> (Daemon, u16) {
    let port = free_port();
    let exchange = common::unique("listeners");
    let bridges = format!(
        "[webhook]\nlisten = \"127.0.0.1:{port}\"\n{webhook_keys}\n\n[[bridge]]\nname = \"hook\"\nkind = \"webhook\"\nbearer_token = \"{TOKEN}\"\n"
    );
    let daemon = Daemon::start(AMQP_URL, &exchange, &bridges).await;
    daemon.wait_ready().await;
    (daemon, port)
}

async fn post_hook(port: u16, body: &[u8]) -> Option<u16> {
    let authorization = format!("Bearer {TOKEN}");
    http_request(
        port,
        "POST",
        HOOK_PATH,
        &[
            ("Authorization", &authorization),
            ("Content-Type", "application/json"),
        ],
        body,
    )
    .await
    .map(|reply| reply.status)
}

fn listener_metric(daemon: &Daemon, name: &str, labels: &[(&str, &str)]) -> f64 {
    daemon
        .metrics()
        .get(name, labels)
        .unwrap_or_else(|| panic!("{name}{labels:?} in /metrics"))
}

fn open_connections(daemon: &Daemon, listener: &str) -> f64 {
    listener_metric(
        daemon,
        "bridge_listener_connections",
        &[("listener", listener)],
    )
}

fn refused(daemon: &Daemon, listener: &str, reason: &str) -> f64 {
    listener_metric(
        daemon,
        "bridge_listener_connections_refused_total",
        &[("listener", listener), ("reason", reason)],
    )
}

/// Reads until the server closes the connection (EOF or reset); what it sent.
async fn read_until_closed(reader: &mut (impl AsyncReadExt + Unpin)) -> Vec<u8> {
    let mut received = Vec::new();
    let mut buffer = [0u8; 1024];
    loop {
        match reader.read(&mut buffer).await {
            Ok(0) | Err(_) => return received,
            Ok(n) => received.extend_from_slice(&buffer[..n]),
        }
    }
}

/// Sends half a request line, then one more byte of the path every 2 to 3 seconds, up
/// to 20 times. How long after connecting the server closed the connection, or `None`
/// when it never did.
async fn slow_client(port: u16, index: usize, connected: Arc<AtomicUsize>) -> Option<Duration> {
    let stream = TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect");
    let started = Instant::now();
    let (mut reader, mut writer) = stream.into_split();
    writer.write_all(b"POST /hooks/").await.expect("write");
    connected.fetch_add(1, Ordering::SeqCst);
    let trickle = async {
        for step in 0..20 {
            let pause = 2000 + ((index * 37 + step * 101) % 1000) as u64;
            tokio::time::sleep(Duration::from_millis(pause)).await;
            if writer.write_all(b"a").await.is_err() {
                // Cut: the read side reports it.
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        _ = read_until_closed(&mut reader) => Some(started.elapsed()),
        () = trickle => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn slow_clients_are_cut_off_while_ordinary_requests_are_answered() {
    raise_open_file_limit();
    const CLIENTS: usize = 500;
    let header_timeout = Duration::from_secs(5);
    let (daemon, port) = start_hook("header_timeout = \"5s\"\nmax_connections = 600").await;
    let rabbit = Rabbit::connect().await;
    let queue = rabbit.bind(&daemon.exchange, "event.#").await;
    // One ordinary request first, so whatever the first one sets up is in the baseline.
    assert_eq!(post_hook(port, b"{\"warm\":true}").await, Some(200));
    assert_eq!(
        rabbit.take(&queue, 1, Duration::from_secs(10)).await.len(),
        1
    );
    eventually(
        Duration::from_secs(10),
        "the first connection closed",
        || open_connections(&daemon, "webhook") == 0.0,
    )
    .await;
    let pid = daemon.child.id();
    let baseline = open_fds(pid);

    let connected = Arc::new(AtomicUsize::new(0));
    let clients: Vec<_> = (0..CLIENTS)
        .map(|index| tokio::spawn(slow_client(port, index, connected.clone())))
        .collect();
    eventually(
        Duration::from_secs(10),
        "every slow client connected",
        || connected.load(Ordering::SeqCst) == CLIENTS,
    )
    .await;
    eventually(
        Duration::from_secs(3),
        "the daemon holding every slow client",
        || open_connections(&daemon, "webhook") >= CLIENTS as f64,
    )
    .await;

    // While they are all connected: an ordinary hook is published and answered, and the
    // admin listener answers.
    assert_eq!(post_hook(port, b"{\"ordinary\":true}").await, Some(200));
    let published = rabbit.take(&queue, 1, Duration::from_secs(10)).await;
    assert_eq!(published.len(), 1);
    assert_eq!(published[0].json()["data"]["ordinary"], true);
    assert_eq!(
        common::http_get(daemon.admin_port, "/healthz").map(|(code, _)| code),
        Some(200)
    );

    let mut cut_after = Vec::new();
    for client in clients {
        cut_after.push(client.await.unwrap());
    }
    let never_cut = cut_after.iter().filter(|cut| cut.is_none()).count();
    assert_eq!(never_cut, 0, "{never_cut} slow clients were never cut off");
    // Never before the timeout (the server's clock starts after the client's connect);
    // and long before a client that trickles for up to a minute would be done.
    let bound = header_timeout + Duration::from_secs(8);
    for elapsed in cut_after.into_iter().flatten() {
        assert!(
            elapsed >= header_timeout - Duration::from_millis(100) && elapsed <= bound,
            "a slow client was cut after {elapsed:?} (header_timeout {header_timeout:?})"
        );
    }
    assert!(refused(&daemon, "webhook", "header_timeout") >= CLIENTS as f64);

    // Nothing is left behind.
    eventually(
        Duration::from_secs(10),
        "no webhook connection left open",
        || open_connections(&daemon, "webhook") == 0.0,
    )
    .await;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let now = open_fds(pid);
        if now <= baseline {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the daemon holds {now} file descriptors, {baseline} before the slow clients"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_over_the_limit_are_closed_and_the_admin_listener_still_answers() {
    raise_open_file_limit();
    const LIMIT: usize = 5;
    let (daemon, port) = start_hook("header_timeout = \"60s\"\nmax_connections = 5").await;
    let mut held = Vec::new();
    for _ in 0..LIMIT {
        let mut stream = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        stream.write_all(b"POST /hooks/").await.unwrap();
        held.push(stream);
    }
    eventually(Duration::from_secs(10), "the listener full", || {
        open_connections(&daemon, "webhook") == LIMIT as f64
    })
    .await;

    // One more is closed at once, without an answer.
    let mut extra = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let answer = tokio::time::timeout(Duration::from_secs(10), read_until_closed(&mut extra))
        .await
        .expect("a connection over the limit is closed");
    assert!(answer.is_empty(), "{}", String::from_utf8_lossy(&answer));
    assert_eq!(post_hook(port, b"{}").await, None);
    assert!(refused(&daemon, "webhook", "limit") >= 2.0);

    // The admin listener has a limit of its own.
    assert_eq!(
        common::http_get(daemon.admin_port, "/healthz").map(|(code, _)| code),
        Some(200)
    );
    assert_eq!(open_connections(&daemon, "webhook"), LIMIT as f64);

    // Room again once the held connections go.
    drop(held);
    eventually(
        Duration::from_secs(10),
        "the held connections closed",
        || open_connections(&daemon, "webhook") == 0.0,
    )
    .await;
    assert_eq!(post_hook(port, b"{}").await, Some(200));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_trickled_slower_than_body_timeout_is_cut() {
    let body_timeout = Duration::from_secs(2);
    let (daemon, port) = start_hook("body_timeout = \"2s\"").await;
    let stream = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let (mut reader, mut writer) = stream.into_split();
    let head = format!(
        "POST {HOOK_PATH} HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {TOKEN}\r\nContent-Type: application/json\r\nContent-Length: 64\r\n\r\n{{"
    );
    writer.write_all(head.as_bytes()).await.unwrap();
    let started = Instant::now();
    let trickle = async {
        // 40 bytes at 2 a second: 20 s, and still short of the 64 announced.
        for _ in 0..40 {
            tokio::time::sleep(Duration::from_millis(500)).await;
            if writer.write_all(b" ").await.is_err() {
                std::future::pending::<()>().await;
            }
        }
    };
    let answer = tokio::select! {
        answer = read_until_closed(&mut reader) => answer,
        () = trickle => panic!("a body trickled for 20 s was not cut (body_timeout 2s)"),
    };
    let elapsed = started.elapsed();
    assert!(
        elapsed >= body_timeout - Duration::from_millis(100)
            && elapsed <= body_timeout + Duration::from_secs(8),
        "cut after {elapsed:?}"
    );
    assert!(
        answer.is_empty(),
        "cut without an answer: {}",
        String::from_utf8_lossy(&answer)
    );
    assert!(refused(&daemon, "webhook", "body_timeout") >= 1.0);
    // A whole body in time is fine.
    assert_eq!(post_hook(port, b"{\"in\":\"time\"}").await, Some(200));
}

/// Reads one answer with a `Content-Length` body from a kept-alive connection: its status.
async fn read_answer(stream: &mut TcpStream) -> u16 {
    let mut received = Vec::new();
    let mut buffer = [0u8; 1024];
    loop {
        let text = String::from_utf8_lossy(&received).into_owned();
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let length: usize = head
                .lines()
                .find_map(|line| {
                    let (name, value) = line.split_once(':')?;
                    name.eq_ignore_ascii_case("content-length")
                        .then(|| value.trim().parse().ok())?
                })
                .unwrap_or_else(|| panic!("no Content-Length in {head:?}"));
            if body.len() >= length {
                return head.split_whitespace().nth(1).unwrap().parse().unwrap();
            }
        }
        let n = stream.read(&mut buffer).await.expect("read");
        assert!(n > 0, "closed before a whole answer: {text:?}");
        received.extend_from_slice(&buffer[..n]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kept_alive_connection_waits_idle_timeout_for_its_next_request() {
    let idle_timeout = Duration::from_secs(3);
    let (daemon, port) = start_hook("header_timeout = \"1s\"\nidle_timeout = \"3s\"").await;
    let mut stream = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let body = b"{\"kept\":\"alive\"}";
    let request = format!(
        "POST {HOOK_PATH} HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {TOKEN}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{}",
        body.len(),
        String::from_utf8_lossy(body)
    );
    for round in 0..2 {
        if round > 0 {
            // Longer than header_timeout: waiting for the next request is idle time.
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
        stream.write_all(request.as_bytes()).await.unwrap();
        assert_eq!(read_answer(&mut stream).await, 200, "request {round}");
    }
    let idle_since = Instant::now();
    let rest = tokio::time::timeout(Duration::from_secs(20), read_until_closed(&mut stream))
        .await
        .expect("an idle connection is closed");
    assert!(rest.is_empty(), "{}", String::from_utf8_lossy(&rest));
    let elapsed = idle_since.elapsed();
    assert!(
        elapsed >= idle_timeout - Duration::from_millis(100)
            && elapsed <= idle_timeout + Duration::from_secs(8),
        "closed after {elapsed:?} idle (idle_timeout {idle_timeout:?})"
    );
    // Closing an idle connection is no refusal.
    assert_eq!(refused(&daemon, "webhook", "header_timeout"), 0.0);
}

// ---------------------------------------------------------------------------------------
// TLS

struct TestCa {
    issuer: rcgen::CertifiedIssuer<'static, rcgen::KeyPair>,
}

/// A certificate for `localhost` and its key, PEM, and the certificate's DER.
struct Leaf {
    cert_pem: String,
    key_pem: String,
    der: CertificateDer<'static>,
}

impl TestCa {
    fn new() -> TestCa {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "broker-bridge test CA");
        let key = rcgen::KeyPair::generate().unwrap();
        TestCa {
            issuer: rcgen::CertifiedIssuer::self_signed(params, key).unwrap(),
        }
    }

    fn leaf(&self) -> Leaf {
        let key = rcgen::KeyPair::generate().unwrap();
        let params = rcgen::CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        Leaf {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            der: cert.der().clone(),
        }
    }

    fn connector(&self) -> tokio_rustls::TlsConnector {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.issuer.der().clone()).unwrap();
        let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
        // A resumed session shows the certificate of the session it resumes: every
        // handshake here is a full one.
        config.resumption = rustls::client::Resumption::disabled();
        tokio_rustls::TlsConnector::from(Arc::new(config))
    }
}

/// Writes the certificate and key the way renewal tools do: new files renamed over the
/// old ones.
fn install(dir: &std::path::Path, leaf: &Leaf) {
    for (name, text) in [("hooks.key", &leaf.key_pem), ("hooks.crt", &leaf.cert_pem)] {
        let temporary = dir.join(format!("{name}.new"));
        std::fs::write(&temporary, text).unwrap();
        std::fs::rename(&temporary, dir.join(name)).unwrap();
    }
}

/// One HTTPS POST to the hook on its own connection: the certificate the server
/// presented and the status of the answer.
async fn https_post(
    port: u16,
    connector: &tokio_rustls::TlsConnector,
    body: &[u8],
) -> (CertificateDer<'static>, Option<u16>) {
    let tcp = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let name = ServerName::try_from("localhost").unwrap();
    let mut tls = connector
        .connect(name, tcp)
        .await
        .expect("TLS handshake with a certificate of the test CA");
    let presented = tls.get_ref().1.peer_certificates().unwrap()[0].clone();
    let head = format!(
        "POST {HOOK_PATH} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nAuthorization: Bearer {TOKEN}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    tls.write_all(head.as_bytes()).await.unwrap();
    tls.write_all(body).await.unwrap();
    let answer = tokio::time::timeout(Duration::from_secs(20), read_until_closed(&mut tls))
        .await
        .expect("an answer");
    let text = String::from_utf8_lossy(&answer);
    let status = text
        .lines()
        .next()
        .and_then(|line| line.split_whitespace().nth(1))
        .and_then(|code| code.parse().ok());
    (presented, status)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_with_a_certificate_replaced_without_a_restart() {
    let ca = TestCa::new();
    let first = ca.leaf();
    let dir = tempfile::tempdir().unwrap();
    install(dir.path(), &first);
    let port = free_port();
    let exchange = common::unique("listeners-tls");
    // Relative paths: relative to the config file.
    let bridges = format!(
        "[webhook]\nlisten = \"127.0.0.1:{port}\"\ntls = {{ cert = \"hooks.crt\", key = \"hooks.key\" }}\n\n[[bridge]]\nname = \"hook\"\nkind = \"webhook\"\nbearer_token = \"{TOKEN}\"\n"
    );
    let daemon = Daemon::start_with_text(dir, AMQP_URL, &exchange, |admin| {
        common::config_text(AMQP_URL, &exchange, admin, &bridges)
    })
    .await;
    daemon.wait_ready().await;
    let rabbit = Rabbit::connect().await;
    let queue = rabbit.bind(&exchange, "event.#").await;
    let connector = ca.connector();

    let (presented, status) = https_post(port, &connector, b"{\"over\":\"tls\"}").await;
    assert_eq!(presented, first.der);
    assert_eq!(status, Some(200));
    let published = rabbit.take(&queue, 1, Duration::from_secs(10)).await;
    assert_eq!(published.len(), 1);
    assert_eq!(published[0].json()["data"]["over"], "tls");
    // Plain HTTP on the TLS port is no request.
    assert_eq!(post_hook(port, b"{}").await, None);

    // `webhook-url` says https.
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_broker-bridge"))
        .args(["webhook-url", "-c"])
        .arg(&daemon.config_path)
        .arg("hook")
        .output()
        .unwrap();
    let url = String::from_utf8_lossy(&output.stdout);
    assert!(
        url.starts_with(&format!("https://127.0.0.1:{port}/hooks/hook")),
        "{url} {}",
        String::from_utf8_lossy(&output.stderr)
    );

    // A renewed certificate is served on new connections, without a restart.
    let second = ca.leaf();
    install(daemon.dir.path(), &second);
    eventually_async(
        Duration::from_secs(10),
        "the new certificate presented",
        || async { https_post(port, &connector, b"{}").await.0 == second.der },
    )
    .await;
    let (_, status) = https_post(port, &connector, b"{\"after\":\"renewal\"}").await;
    assert_eq!(status, Some(200));

    // Files that do not load leave the certificate in use.
    std::fs::write(daemon.dir.path().join("hooks.crt"), "not a certificate\n").unwrap();
    for _ in 0..2 {
        // More than the check interval apart, so that the second handshake looks.
        tokio::time::sleep(Duration::from_millis(1100)).await;
        let (presented, status) = https_post(port, &connector, b"{}").await;
        assert_eq!(presented, second.der);
        assert_eq!(status, Some(200));
    }
    eventually(
        Duration::from_secs(5),
        "a warning about the bad file",
        || daemon.log().contains("[webhook] tls.cert"),
    )
    .await;
    assert!(refused(&daemon, "webhook", "tls_handshake") >= 1.0);
}

#[test]
fn a_certificate_that_cannot_be_read_is_a_config_error_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.toml");
    let check = |text: &str| {
        std::fs::write(&config, text).unwrap();
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_broker-bridge"))
            .args(["check", "-c"])
            .arg(&config)
            .output()
            .unwrap();
        assert!(!output.status.success());
        String::from_utf8_lossy(&output.stderr).into_owned()
    };
    let error = check("[webhook]\ntls = { cert = \"missing.crt\", key = \"missing.key\" }\n");
    assert!(error.contains("webhook.tls.cert"), "{error}");
    assert!(error.contains("missing.crt"), "{error}");

    let ca = TestCa::new();
    let leaf = ca.leaf();
    let other = ca.leaf();
    std::fs::write(dir.path().join("hooks.crt"), &leaf.cert_pem).unwrap();
    std::fs::write(dir.path().join("other.key"), &other.key_pem).unwrap();
    let error = check("[webhook]\ntls = { cert = \"hooks.crt\", key = \"other.key\" }\n");
    assert!(error.contains("webhook.tls.key"), "{error}");
    assert!(!error.contains("PRIVATE KEY"), "{error}");
    let error = check("[webhook]\nmax_connections = 0\n");
    assert!(error.contains("webhook.max_connections"), "{error}");
}

// ---------------------------------------------------------------------------------------
// Admin token and Host check

/// One GET with the given `Host` (none: HTTP/1.0 without one) and `Authorization`.
async fn get(
    port: u16,
    path: &str,
    host: Option<&str>,
    authorization: Option<&str>,
) -> (u16, String) {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let mut head = match host {
        Some(host) => format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n"),
        None => format!("GET {path} HTTP/1.0\r\n"),
    };
    if let Some(authorization) = authorization {
        head.push_str(&format!("Authorization: {authorization}\r\n"));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes()).await.unwrap();
    let answer = tokio::time::timeout(Duration::from_secs(10), read_until_closed(&mut stream))
        .await
        .expect("an answer");
    let text = String::from_utf8_lossy(&answer).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("no status in {text:?}"));
    (status, text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_token_guards_bridges_and_the_host_check_refuses_other_names() {
    let admin_token = common::unique("admin-token");
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("admin.token"), format!("{admin_token}\n")).unwrap();
    let exchange = common::unique("listeners-admin");
    // A bridge that never connects (nothing listens on port 1), so /readyz has a reason
    // to give.
    let unready = "[[bridge]]\nname = \"unready\"\nkind = \"nats\"\nurl = \"nats://127.0.0.1:1\"\nsubject = \"x\"\n";
    let daemon = Daemon::start_with_text(dir, AMQP_URL, &exchange, |admin| {
        common::config_text(AMQP_URL, &exchange, admin, unready).replace(
            "[admin]\n",
            "[admin]\ntoken_file = \"admin.token\"\nallowed_hosts = [\"status.example.com\"]\n",
        )
    })
    .await;
    let port = daemon.admin_port;
    let own = format!("127.0.0.1:{port}");
    let bearer = format!("Bearer {admin_token}");

    // The token guards /bridges only.
    let (status, text) = get(port, "/bridges", Some(&own), None).await;
    assert_eq!(status, 401, "{text}");
    assert!(
        text.to_ascii_lowercase()
            .contains("www-authenticate: bearer")
    );
    let wrong = format!("Bearer {admin_token}x");
    assert_eq!(get(port, "/bridges", Some(&own), Some(&wrong)).await.0, 401);
    let (status, text) = get(port, "/bridges", Some(&own), Some(&bearer)).await;
    assert_eq!(status, 200, "{text}");
    assert!(text.contains("\"bridges\""));
    assert!(!text.contains(&admin_token), "the token in /bridges");
    for path in ["/metrics", "/healthz"] {
        assert_eq!(get(port, path, Some(&own), None).await.0, 200, "{path}");
    }
    // /readyz answers anyone, but says why only to who shows the token.
    let (status, text) = get(port, "/readyz", Some(&own), None).await;
    assert_eq!(status, 503, "{text}");
    assert!(
        !text.contains("unready") && !text.contains("127.0.0.1:1"),
        "{text}"
    );
    let (status, text) = get(port, "/readyz", Some(&own), Some(&bearer)).await;
    assert_eq!(status, 503, "{text}");
    assert!(text.contains("unready"), "{text}");

    // Host: the listen address, localhost (on loopback) and allowed_hosts; nothing else.
    for host in [
        own.as_str(),
        &format!("localhost:{port}"),
        "status.example.com",
    ] {
        let (status, text) = get(port, "/bridges", Some(host), Some(&bearer)).await;
        assert_eq!(status, 200, "Host: {host}: {text}");
    }
    for host in [
        format!("evil.example:{port}"),
        "evil.example".to_owned(),
        format!("status.example.com.evil.example:{port}"),
    ] {
        for path in ["/bridges", "/healthz"] {
            let (status, text) = get(port, path, Some(&host), Some(&bearer)).await;
            assert_eq!(status, 421, "Host: {host} {path}: {text}");
            assert!(!text.contains("\"bridges\""));
        }
    }
    // HTTP/1.0 without Host: not a browser, served.
    assert_eq!(get(port, "/healthz", None, None).await.0, 200);
    assert_eq!(get(port, "/bridges", None, Some(&bearer)).await.0, 200);
}
