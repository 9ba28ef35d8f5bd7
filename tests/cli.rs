//! The command line (`check`, `emit`, `tail`) and hot reload of included bridge files,
//! run as the real binary against the real brokers on loopback.

mod common;

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use base64::Engine;
use common::{AMQP_URL, Daemon, NATS_URL, Rabbit, config_text, free_port, unique};

const BINARY: &str = env!("CARGO_BIN_EXE_broker-bridge");
const EXAMPLE_CONFIG: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/config.example.toml");
const PATIENCE: Duration = Duration::from_secs(20);

/// What one finished `broker-bridge` command left behind.
#[derive(Debug)]
struct Finished {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl Finished {
    fn assert_ok(&self) {
        assert_eq!(self.code, Some(0), "expected success: {self:#?}");
    }

    /// Exit status 1 and an error naming every one of `fragments`.
    fn assert_rejected(&self, fragments: &[&str]) {
        assert_eq!(self.code, Some(1), "expected exit status 1: {self:#?}");
        for fragment in fragments {
            assert!(
                self.stderr.contains(fragment),
                "the error should name {fragment}: {}",
                self.stderr
            );
        }
    }
}

/// A `broker-bridge` command with these arguments.
fn broker_bridge(args: &[&str]) -> Command {
    let mut command = Command::new(BINARY);
    command.args(args).stdin(Stdio::null());
    // Overrides from the environment running the tests must not leak into the configs
    // under test.
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("BROKER_BRIDGE__") {
            command.env_remove(name);
        }
    }
    command
}

fn finish(command: &mut Command) -> Finished {
    let output = command.output().expect("run broker-bridge");
    Finished {
        code: output.status.code(),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// `finish` off the async runtime's thread, which also drives the test's AMQP client.
async fn finish_async(mut command: Command) -> Finished {
    tokio::task::spawn_blocking(move || finish(&mut command))
        .await
        .unwrap()
}

fn check(config: &Path) -> Command {
    let mut command = broker_bridge(&["check", "-c"]);
    command.arg(config);
    command
}

/// The `bridge `name`:` line of `check` output with its indented detail lines.
fn bridge_listing(stdout: &str, name: &str) -> String {
    let header = format!("bridge `{name}`:");
    let mut lines = stdout.lines().skip_while(|line| !line.starts_with(&header));
    let first = lines
        .next()
        .unwrap_or_else(|| panic!("bridge {name} is not listed:\n{stdout}"));
    std::iter::once(first)
        .chain(lines.take_while(|line| line.starts_with(' ')))
        .collect::<Vec<_>>()
        .join("\n")
}

/// A temporary directory holding a config and the files next to it.
struct ConfigDir(tempfile::TempDir);

impl ConfigDir {
    fn new() -> ConfigDir {
        ConfigDir(tempfile::tempdir().unwrap())
    }

    /// Writes `text` to `relative` (creating its folders) and returns the path.
    fn write(&self, relative: &str, text: &str) -> PathBuf {
        let path = self.0.path().join(relative);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, text).unwrap();
        path
    }
}

fn nats_bridge(name: &str, subject: &str, extra: &str) -> String {
    format!(
        "[[bridge]]\nname = \"{name}\"\nkind = \"nats\"\nurl = \"{NATS_URL}\"\nsubject = \"{subject}\"\n{extra}\n"
    )
}

// ---------------------------------------------------------------------------------------
// check

#[test]
fn check_lists_the_example_bridges_with_routing_keys() {
    let run = finish(&mut check(Path::new(EXAMPLE_CONFIG)));
    run.assert_ok();
    let nats = bridge_listing(&run.stdout, "demo-nats");
    for expected in [
        "kind nats",
        "tenant `demo`",
        "event.demo.demo-nats.*",
        "at-most-once",
    ] {
        assert!(nats.contains(expected), "{expected} in:\n{nats}");
    }
    let jetstream = bridge_listing(&run.stdout, "demo-jetstream");
    for expected in [
        "kind jetstream",
        "tenant `demo`",
        "event.demo.demo-jetstream.*",
        "at-least-once",
    ] {
        assert!(jetstream.contains(expected), "{expected} in:\n{jetstream}");
    }
    assert!(!jetstream.contains("at-most-once"), "{jetstream}");
    let amqp = bridge_listing(&run.stdout, "demo-amqp");
    for expected in [
        "kind amqp",
        "event.demo.demo-amqp.*",
        "queue `demo-amqp`",
        "bound to `amq.topic`",
        "at-least-once",
    ] {
        assert!(amqp.contains(expected), "{expected} in:\n{amqp}");
    }
    let tables = std::fs::read_to_string(EXAMPLE_CONFIG)
        .unwrap()
        .lines()
        .filter(|line| line.trim() == "[[bridge]]")
        .count();
    assert!(
        run.stdout.contains(&format!("ok: {tables} bridge(s)")),
        "{}",
        run.stdout
    );
}

#[test]
fn check_rejects_an_unknown_bridge_key_naming_key_and_bridge() {
    let dir = ConfigDir::new();
    let config = dir.write(
        "broker-bridge.toml",
        &nats_bridge("painted", "cli.painted", "colour = \"red\""),
    );
    finish(&mut check(&config)).assert_rejected(&["`colour`", "`painted`"]);
}

#[test]
fn check_rejects_an_unknown_exchange_key_naming_it() {
    let dir = ConfigDir::new();
    let config = dir.write("broker-bridge.toml", "[exchange]\ncolour = 1\n");
    finish(&mut check(&config)).assert_rejected(&["`exchange.colour`"]);
}

/// Values that end up in AMQP short strings are refused at load, naming the key, rather
/// than failing (or, before, panicking) on every publish.
#[test]
fn check_rejects_names_and_keys_longer_than_amqp_allows() {
    let dir = ConfigDir::new();
    let long = "x".repeat(300);
    for (key, text) in [
        (
            "`exchange.name`",
            format!("[exchange]\nname = \"{long}\"\n"),
        ),
        (
            "`exchange.deadletter`",
            format!("[exchange]\ndeadletter = \"{long}\"\n"),
        ),
        (
            "`exchange.alternate_exchange`",
            format!("[exchange]\nalternate_exchange = \"{long}\"\n"),
        ),
        (
            "`type`",
            nats_bridge("long-type", "cli.long", &format!("type = \"{long}\"")),
        ),
        (
            "`content_type`",
            nats_bridge("long-ct", "cli.long", &format!("content_type = \"{long}\"")),
        ),
    ] {
        let config = dir.write("broker-bridge.toml", &text);
        finish(&mut check(&config)).assert_rejected(&[key, "255"]);
    }
    // A type template that only may grow long is fine: messages that make it too long
    // are dead-lettered one by one (too_long).
    let config = dir.write(
        "broker-bridge.toml",
        &nats_bridge("templated", "cli.long", "type = \"{subject}\""),
    );
    let finished = finish(&mut check(&config));
    assert_eq!(finished.code, Some(0), "{}", finished.stderr);
}

/// Nothing bigger than the exchange takes is ever configured: a bridge's
/// `max_message_bytes`, or a dead letter's sample and headers.
#[test]
fn check_rejects_sizes_the_exchange_would_refuse() {
    let dir = ConfigDir::new();
    let config = dir.write(
        "broker-bridge.toml",
        &format!(
            "[exchange]\nmax_message_size = 100000\n\n{}",
            nats_bridge("big", "cli.big", "max_message_bytes = 200000")
        ),
    );
    finish(&mut check(&config)).assert_rejected(&["`max_message_bytes`", "`big`", "100000"]);
    let config = dir.write(
        "broker-bridge.toml",
        "[exchange]\nmax_message_size = 1000\n",
    );
    finish(&mut check(&config)).assert_rejected(&["`defaults.deadletter_sample_bytes`"]);
}

#[test]
fn emit_refuses_an_id_longer_than_amqp_allows() {
    let finished = finish(&mut broker_bridge(&[
        "emit",
        "--type",
        "t",
        "--id",
        &"i".repeat(300),
    ]));
    assert_eq!(finished.code, Some(1), "{}", finished.stdout);
    assert!(
        finished.stderr.contains("--id") && finished.stderr.contains("300 bytes"),
        "{}",
        finished.stderr
    );
}

#[test]
fn check_rejects_an_unknown_kind_naming_the_bridge() {
    let dir = ConfigDir::new();
    let config = dir.write(
        "broker-bridge.toml",
        "[[bridge]]\nname = \"by-air\"\nkind = \"carrier-pigeon\"\n",
    );
    finish(&mut check(&config)).assert_rejected(&["`by-air`", "carrier-pigeon"]);
}

#[test]
fn check_rejects_a_duplicate_bridge_name() {
    let dir = ConfigDir::new();
    let text = nats_bridge("twice", "cli.one", "") + &nats_bridge("twice", "cli.two", "");
    let config = dir.write("broker-bridge.toml", &text);
    finish(&mut check(&config)).assert_rejected(&["`twice`", "same name"]);
}

#[test]
fn check_rejects_a_nats_bridge_without_subject() {
    let dir = ConfigDir::new();
    let config = dir.write(
        "broker-bridge.toml",
        &format!("[[bridge]]\nname = \"no-subject\"\nkind = \"nats\"\nurl = \"{NATS_URL}\"\n"),
    );
    finish(&mut check(&config)).assert_rejected(&["`no-subject`", "subject"]);
}

#[test]
fn check_lists_bridges_from_included_files() {
    let dir = ConfigDir::new();
    let config = dir.write(
        "broker-bridge.toml",
        &format!(
            "include = [\"bridges/*.toml\"]\n\n{}",
            nats_bridge("in-main", "cli.main", "")
        ),
    );
    dir.write(
        "bridges/a.toml",
        &nats_bridge("from-a", "cli.a", "tenant = \"tenant-a\""),
    );
    dir.write(
        "bridges/b.toml",
        &format!(
            "[[bridge]]\nname = \"from-b\"\nkind = \"jetstream\"\nurl = \"{NATS_URL}\"\nstream = \"CLI\"\n"
        ),
    );
    // Does not match the pattern, so it is not read (it would fail if it were).
    dir.write("bridges/notes.txt", "not toml at all [[");

    let run = finish(&mut check(&config));
    run.assert_ok();
    assert!(bridge_listing(&run.stdout, "in-main").contains("kind nats"));
    let a = bridge_listing(&run.stdout, "from-a");
    assert!(
        a.contains("tenant `tenant-a`") && a.contains("event.tenant-a.from-a.*"),
        "{a}"
    );
    assert!(bridge_listing(&run.stdout, "from-b").contains("kind jetstream"));
    assert!(run.stdout.contains("ok: 3 bridge(s)"), "{}", run.stdout);
}

/// Every recipe in `bridges/` passes `check`, included as the example config suggests,
/// so no recipe rots when the schema changes.
#[test]
fn check_accepts_every_bridge_recipe() {
    let recipes = concat!(env!("CARGO_MANIFEST_DIR"), "/bridges");
    let mut names: Vec<PathBuf> = std::fs::read_dir(recipes)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|e| e == "toml"))
        .collect();
    names.sort();
    assert!(!names.is_empty(), "no recipes in {recipes}");
    let dir = ConfigDir::new();
    let config = dir.write(
        "broker-bridge.toml",
        &format!("include = [\"{recipes}/*.toml\"]\n"),
    );
    // The secrets the recipes read from the environment.
    let run = finish(
        check(&config)
            .env("GITHUB_WEBHOOK_SECRET", "recipe-check-secret")
            .env("GITHUB_HOOK_TOKEN", "recipe-check-token"),
    );
    run.assert_ok();
    for recipe in &names {
        assert!(
            run.stdout.contains(&format!("file {}", recipe.display())),
            "{} not read: {}",
            recipe.display(),
            run.stdout
        );
    }
}

#[test]
fn check_rejects_an_unknown_key_in_an_included_file() {
    let dir = ConfigDir::new();
    let config = dir.write("broker-bridge.toml", "include = [\"bridges/*.toml\"]\n");
    dir.write(
        "bridges/painted.toml",
        &nats_bridge("painted-included", "cli.painted", "colour = \"red\""),
    );
    finish(&mut check(&config)).assert_rejected(&["`colour`", "`painted-included`"]);
}

#[test]
fn check_applies_environment_overrides() {
    let dir = ConfigDir::new();
    let config = dir.write("broker-bridge.toml", "[exchange]\nname = \"from-file\"\n");

    let plain = finish(&mut check(&config));
    plain.assert_ok();
    assert!(plain.stdout.contains("exchange `from-file`"), "{plain:#?}");

    let overridden = finish(check(&config).env("BROKER_BRIDGE__EXCHANGE__NAME", "from-env"));
    overridden.assert_ok();
    assert!(
        overridden.stdout.contains("exchange `from-env`"),
        "{overridden:#?}"
    );
}

/// Tenants are often customer numbers; an override must not turn `4711` into an integer
/// the string-typed key then refuses.
#[test]
fn check_keeps_a_numeric_environment_override_as_text() {
    let dir = ConfigDir::new();
    let config = dir.write("broker-bridge.toml", &nats_bridge("numbered", "cli.n", ""));
    let run = finish(check(&config).env("BROKER_BRIDGE__DEFAULTS__TENANT", "4711"));
    run.assert_ok();
    assert!(
        bridge_listing(&run.stdout, "numbered").contains("tenant `4711`"),
        "{run:#?}"
    );
}

#[test]
fn check_interpolates_environment_variables_and_defaults() {
    let dir = ConfigDir::new();
    let text = nats_bridge("from-var", "cli.v", "tenant = \"${CLI_TEST_TENANT}\"")
        + &nats_bridge(
            "from-default",
            "cli.d",
            "tenant = \"${CLI_TEST_UNSET_TENANT:-fallback}\"",
        );
    let config = dir.write("broker-bridge.toml", &text);
    let run = finish(
        check(&config)
            .env("CLI_TEST_TENANT", "interpolated")
            .env_remove("CLI_TEST_UNSET_TENANT"),
    );
    run.assert_ok();
    assert!(
        bridge_listing(&run.stdout, "from-var").contains("event.interpolated.from-var.*"),
        "{run:#?}"
    );
    assert!(
        bridge_listing(&run.stdout, "from-default").contains("event.fallback.from-default.*"),
        "{run:#?}"
    );
}

#[test]
fn check_rejects_an_unset_variable_without_default() {
    let dir = ConfigDir::new();
    let config = dir.write(
        "broker-bridge.toml",
        &nats_bridge("needs-var", "cli.v", "tenant = \"${CLI_TEST_MISSING}\""),
    );
    finish(check(&config).env_remove("CLI_TEST_MISSING"))
        .assert_rejected(&["tenant`", "CLI_TEST_MISSING"]);
}

#[test]
fn check_reads_secret_files_relative_to_the_config() {
    let dir = ConfigDir::new();
    let config = dir.write(
        "broker-bridge.toml",
        &nats_bridge(
            "with-secret",
            "cli.s",
            "user = \"bridge\"\npassword_file = \"secret.txt\"",
        ),
    );
    dir.write("secret.txt", "s3cr3t-from-file\n");
    // Another working directory, so only the config's own folder can resolve the path.
    let run = finish(check(&config).current_dir("/"));
    run.assert_ok();
    bridge_listing(&run.stdout, "with-secret");
    assert!(
        !run.stdout.contains("s3cr3t-from-file"),
        "check must not print secrets: {}",
        run.stdout
    );
}

#[test]
fn secret_files_of_included_bridges_are_relative_to_their_own_file() {
    let dir = ConfigDir::new();
    let config = dir.write("broker-bridge.toml", "include = [\"bridges/*.toml\"]\n");
    dir.write("bridges/nats-password.txt", "s3cret\n");
    dir.write(
        "bridges/secured.toml",
        &nats_bridge(
            "secured",
            "cli.secured",
            "user = \"bridge\"\npassword_file = \"nats-password.txt\"",
        ),
    );
    let run = finish(&mut check(&config));
    run.assert_ok();
    assert!(!run.stdout.contains("s3cret"), "secrets are never printed");
}

#[test]
fn check_rejects_a_missing_secret_file_naming_the_key() {
    let dir = ConfigDir::new();
    let config = dir.write(
        "broker-bridge.toml",
        &nats_bridge("with-secret", "cli.s", "password_file = \"secret.txt\""),
    );
    finish(&mut check(&config)).assert_rejected(&["password_file", "secret.txt"]);
}

// ---------------------------------------------------------------------------------------
// emit

/// A config using the test's own exchange and no bridges.
fn exchange_config(dir: &ConfigDir, exchange: &str) -> PathBuf {
    dir.write(
        "broker-bridge.toml",
        &config_text(AMQP_URL, exchange, free_port(), ""),
    )
}

fn emit(config: &Path, args: &[&str]) -> Command {
    let mut command = broker_bridge(&["emit", "-c"]);
    command.arg(config).args(args);
    command
}

/// The `data` member exactly as it appears in the body.
fn raw_data(body: &[u8]) -> String {
    #[derive(serde::Deserialize)]
    struct Event<'a> {
        #[serde(borrow)]
        data: &'a serde_json::value::RawValue,
    }
    serde_json::from_slice::<Event>(body)
        .expect("a structured event with data")
        .data
        .get()
        .to_owned()
}

#[tokio::test]
async fn emit_publishes_a_structured_json_event() {
    let rabbit = Rabbit::connect().await;
    let exchange = unique("ex");
    let queue = rabbit.bind(&exchange, "event.#").await;
    let dir = ConfigDir::new();
    let config = exchange_config(&dir, &exchange);

    let run = finish_async(emit(
        &config,
        &[
            "--type",
            "com.example.thing",
            "--tenant",
            "acme",
            "--source-name",
            "cli",
            "--data",
            r#"{"a":1}"#,
        ],
    ))
    .await;
    run.assert_ok();

    let received = rabbit.take(&queue, 1, PATIENCE).await;
    assert_eq!(received.len(), 1, "{run:#?}");
    let message = &received[0];
    assert_eq!(message.routing_key, "event.acme.cli.com_example_thing");
    assert_eq!(
        message
            .properties
            .content_type()
            .as_ref()
            .map(|c| c.as_str()),
        Some("application/cloudevents+json; charset=utf-8")
    );
    // An independent parser accepts it.
    let _: cloudevents::Event = serde_json::from_slice(&message.body).expect("a CloudEvent");
    let event = message.json();
    assert_eq!(event["specversion"], "1.0");
    let id = event["id"].as_str().unwrap();
    uuid::Uuid::parse_str(id).expect("the default id is a UUID");
    assert_eq!(
        message.properties.message_id().as_ref().map(|m| m.as_str()),
        Some(id)
    );
    assert_eq!(event["type"], "com.example.thing");
    assert_eq!(event["tenant"], "acme");
    assert_eq!(event["datacontenttype"], "application/json");
    assert!(event.get("data_base64").is_none(), "JSON is never base64");
    assert_eq!(raw_data(&message.body), r#"{"a":1}"#);
    // emit reports what it published.
    assert_eq!(
        run.stdout.trim(),
        format!("event.acme.cli.com_example_thing {id}")
    );
}

#[tokio::test]
async fn emit_sends_binary_file_data_as_base64_with_given_id_and_subject() {
    use rand::Rng;
    let rabbit = Rabbit::connect().await;
    let exchange = unique("ex");
    let queue = rabbit.bind(&exchange, "event.#").await;
    let dir = ConfigDir::new();
    let config = exchange_config(&dir, &exchange);
    let mut bytes = vec![0u8; 512];
    rand::rng().fill(&mut bytes[..]);
    bytes[0] = 0xff; // never valid UTF-8, so never JSON
    let data_file = dir.0.path().join("payload.bin");
    std::fs::write(&data_file, &bytes).unwrap();
    let id = unique("evt");

    let mut command = emit(
        &config,
        &[
            "--type",
            "com.example.blob",
            "--tenant",
            "acme",
            "--source-name",
            "cli",
            "--id",
            &id,
            "--subject",
            "orders/42",
            "--data-file",
        ],
    );
    command.arg(&data_file);
    finish_async(command).await.assert_ok();

    let received = rabbit.take(&queue, 1, PATIENCE).await;
    assert_eq!(received.len(), 1);
    let message = &received[0];
    assert_eq!(message.routing_key, "event.acme.cli.com_example_blob");
    let event = message.json();
    assert_eq!(event["id"], id.as_str());
    assert_eq!(
        message.properties.message_id().as_ref().map(|m| m.as_str()),
        Some(id.as_str())
    );
    assert_eq!(event["subject"], "orders/42");
    assert_eq!(event["datacontenttype"], "application/octet-stream");
    assert!(event.get("data").is_none(), "{event}");
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(event["data_base64"].as_str().expect("data_base64"))
        .unwrap();
    assert_eq!(decoded, bytes, "data survives byte for byte");
}

#[tokio::test]
async fn emit_refuses_non_json_data_declared_as_json() {
    let rabbit = Rabbit::connect().await;
    let exchange = unique("ex");
    let queue = rabbit.bind(&exchange, "event.#").await;
    let dir = ConfigDir::new();
    let config = exchange_config(&dir, &exchange);

    let run = finish_async(emit(
        &config,
        &[
            "--type",
            "com.example.thing",
            "--content-type",
            "application/json",
            "--data",
            "not { json",
        ],
    ))
    .await;
    run.assert_rejected(&["not JSON"]);
    let published = rabbit.take(&queue, 1, Duration::from_secs(1)).await;
    assert!(published.is_empty(), "nothing is published: {published:?}");
}

// ---------------------------------------------------------------------------------------
// probe (the container health check)

/// Serves one connection on a listener of the test's own: reads the request head, then
/// answers `reply`, or with `None` answers nothing and holds the connection until the
/// client closes it. The thread returns the request head.
fn serve_once(reply: Option<&'static str>) -> (u16, std::thread::JoinHandle<String>) {
    use std::io::Write;
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = std::thread::spawn(move || {
        let (mut stream, _) = listener.accept().unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            match stream.read(&mut byte) {
                Ok(1) => head.push(byte[0]),
                _ => break,
            }
        }
        match reply {
            Some(reply) => stream.write_all(reply.as_bytes()).unwrap(),
            None => {
                let _ = stream.read(&mut byte);
            }
        }
        String::from_utf8_lossy(&head).into_owned()
    });
    (port, server)
}

fn probe(url: &str) -> Finished {
    finish(&mut broker_bridge(&["probe", url]))
}

#[test]
fn probe_exits_0_on_a_2xx_answer_after_a_plain_get() {
    let (port, server) = serve_once(Some(
        "HTTP/1.1 204 No Content\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
    ));
    let run = probe(&format!("http://127.0.0.1:{port}/healthz?deep=1"));
    run.assert_ok();
    assert!(run.stdout.contains("204 No Content"), "{run:#?}");
    let head = server.join().unwrap();
    assert!(
        head.starts_with("GET /healthz?deep=1 HTTP/1.1\r\n"),
        "{head}"
    );
    assert!(
        head.contains(&format!("\r\nHost: 127.0.0.1:{port}\r\n")),
        "{head}"
    );
}

#[test]
fn probe_exits_1_on_an_error_status() {
    let (port, server) = serve_once(Some(
        "HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n",
    ));
    probe(&format!("http://127.0.0.1:{port}/readyz")).assert_rejected(&["503 Service Unavailable"]);
    server.join().unwrap();
}

#[test]
fn probe_exits_1_when_the_port_refuses() {
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    probe(&format!("http://127.0.0.1:{port}/healthz")).assert_rejected(&["connecting"]);
}

#[test]
fn probe_gives_up_after_3_seconds_without_an_answer() {
    let (port, server) = serve_once(None);
    let started = Instant::now();
    let run = probe(&format!("http://127.0.0.1:{port}/healthz"));
    let took = started.elapsed();
    run.assert_rejected(&["timed out"]);
    assert!(
        took >= Duration::from_millis(2900) && took < Duration::from_secs(6),
        "{took:?}"
    );
    server.join().unwrap();
}

#[test]
fn probe_refuses_what_is_not_a_plain_http_url() {
    probe("https://127.0.0.1:9180/healthz").assert_rejected(&["not an http:// URL"]);
}

#[tokio::test]
async fn probe_passes_on_the_health_endpoint_of_a_running_daemon() {
    let exchange = unique("ex");
    let daemon = Daemon::start(AMQP_URL, &exchange, "").await;
    let base = format!("http://127.0.0.1:{}", daemon.admin_port);
    let healthy = finish_async(broker_bridge(&["probe", &format!("{base}/healthz")])).await;
    healthy.assert_ok();
    let missing = finish_async(broker_bridge(&["probe", &format!("{base}/no-such-page")])).await;
    missing.assert_rejected(&["404"]);
}

// ---------------------------------------------------------------------------------------
// tail

/// A child process killed when the test ends, passed or not.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The lines of a child's output, read on their own thread so the test can time out.
fn lines_of(output: impl Read + Send + 'static) -> mpsc::Receiver<String> {
    let (sender, receiver) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(output).lines() {
            let Ok(line) = line else { break };
            if sender.send(line).is_err() {
                break;
            }
        }
    });
    receiver
}

/// Waits for a line containing `needle`; returns it.
fn wait_for_line(lines: &mpsc::Receiver<String>, needle: &str) -> String {
    let deadline = Instant::now() + PATIENCE;
    let mut seen = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match lines.recv_timeout(left) {
            Ok(line) if line.contains(needle) => return line,
            Ok(line) => seen.push(line),
            Err(error) => panic!("no line with {needle:?} ({error}); got: {seen:#?}"),
        }
    }
}

#[tokio::test]
async fn tail_prints_matching_events_and_stops_after_count() {
    let exchange = unique("ex");
    // tail binds to an existing exchange; it does not declare one.
    Rabbit::connect().await.declare_exchange(&exchange).await;
    let dir = ConfigDir::new();
    let config = exchange_config(&dir, &exchange);

    let mut command = broker_bridge(&["tail", "-c"]);
    command
        .arg(&config)
        .args(["event.acme.#", "--count", "1"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut tail = KillOnDrop(command.spawn().expect("start tail"));
    let stdout = lines_of(tail.0.stdout.take().unwrap());
    let stderr = lines_of(tail.0.stderr.take().unwrap());
    wait_for_line(&stderr, "tailing");

    // An event outside the pattern first: tail must skip it rather than count it.
    let elsewhere = finish_async(emit(
        &config,
        &["--type", "com.example.tailed", "--tenant", "other"],
    ))
    .await;
    elsewhere.assert_ok();
    let id = unique("evt");
    let emitted = finish_async(emit(
        &config,
        &[
            "--type",
            "com.example.tailed",
            "--tenant",
            "acme",
            "--source-name",
            "cli",
            "--id",
            &id,
            "--data",
            r#"{"n":1}"#,
        ],
    ))
    .await;
    emitted.assert_ok();

    let line = wait_for_line(&stdout, &id);
    assert!(
        line.starts_with("event.acme.cli.com_example_tailed "),
        "{line}"
    );
    let deadline = Instant::now() + PATIENCE;
    let status = loop {
        if let Some(status) = tail.0.try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "tail did not stop after --count 1"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "tail exited with {status}");
    assert!(
        stdout.try_iter().next().is_none(),
        "tail printed only the one matching event"
    );
}

// ---------------------------------------------------------------------------------------
// hot reload of included files

/// Waits until the bridge runs with this tenant.
async fn wait_for_tenant(daemon: &Daemon, bridge: &str, tenant: &str) {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let status = daemon.bridge_status(bridge);
        if status
            .as_ref()
            .is_some_and(|s| s["tenant"] == tenant && s["status"]["state"] == "running")
        {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "bridge {bridge} not running with tenant {tenant}: {status:?}\nlog: {}",
            daemon.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn publish_to_nats(subject: &str, payload: &[u8]) {
    let client = common::nats().await;
    client
        .publish(subject.to_owned(), payload.to_vec().into())
        .await
        .unwrap();
    client.flush().await.unwrap();
}

#[tokio::test]
async fn included_bridge_files_are_added_changed_and_removed_live() {
    let rabbit = Rabbit::connect().await;
    let exchange = unique("ex");
    let bridge = unique("b");
    let subject = format!("{}.readings", unique("t").replace('-', "_"));
    let type_word = common::type_word(&subject);
    let queue = rabbit.bind(&exchange, &format!("event.*.{bridge}.#")).await;
    let dir = tempfile::tempdir().unwrap();
    // The include folder exists from the start, as a packaged install ships it.
    std::fs::create_dir(dir.path().join("bridges")).unwrap();
    let daemon = Daemon::start_with_text(dir, AMQP_URL, &exchange, |admin_port| {
        // `include` is a top-level key, so it must come before the first table.
        format!(
            "include = [\"bridges/*.toml\"]\n{}",
            config_text(AMQP_URL, &exchange, admin_port, "")
        )
    })
    .await;
    assert!(daemon.bridge_status(&bridge).is_none());
    let included = daemon.dir.path().join("bridges/new.toml");

    // A new file starts its bridge.
    std::fs::write(
        &included,
        nats_bridge(&bridge, &subject, "tenant = \"first\""),
    )
    .unwrap();
    wait_for_tenant(&daemon, &bridge, "first").await;
    publish_to_nats(&subject, br#"{"n":1}"#).await;
    let received = rabbit.take(&queue, 1, PATIENCE).await;
    assert_eq!(received.len(), 1, "log: {}", daemon.log());
    assert_eq!(
        received[0].routing_key,
        format!("event.first.{bridge}.{type_word}")
    );
    assert_eq!(received[0].json()["tenant"], "first");

    // An edit restarts it with the new spec. Written aside and renamed, as editors do.
    let temporary = daemon.dir.path().join("bridges/new.toml.partial");
    std::fs::write(
        &temporary,
        nats_bridge(&bridge, &subject, "tenant = \"second\""),
    )
    .unwrap();
    std::fs::rename(&temporary, &included).unwrap();
    wait_for_tenant(&daemon, &bridge, "second").await;
    assert_eq!(
        daemon.bridge_status(&bridge).unwrap()["counters"]["restarts"],
        1
    );
    publish_to_nats(&subject, br#"{"n":2}"#).await;
    let received = rabbit.take(&queue, 1, PATIENCE).await;
    assert_eq!(received.len(), 1, "log: {}", daemon.log());
    assert_eq!(
        received[0].routing_key,
        format!("event.second.{bridge}.{type_word}")
    );
    assert_eq!(received[0].json()["tenant"], "second");

    // Deleting the file stops the bridge and removes it from the status.
    std::fs::remove_file(&included).unwrap();
    common::eventually(PATIENCE, "the removed bridge to disappear", || {
        daemon.bridge_status(&bridge).is_none()
    })
    .await;
    publish_to_nats(&subject, br#"{"n":3}"#).await;
    let late = rabbit.take(&queue, 1, Duration::from_secs(1)).await;
    assert!(
        late.is_empty(),
        "a removed bridge publishes nothing: {late:?}"
    );
    assert!(
        daemon.bridges()["config"]["last_error"].is_null(),
        "every reload succeeded: {}",
        daemon.bridges()["config"]
    );
}

/// The include folder may be created after the daemon started (e.g. by config
/// management). Once a reload has read files from it, edits there must be noticed.
#[tokio::test]
async fn an_include_folder_created_later_is_watched_after_a_reload() {
    let exchange = unique("ex");
    let bridge = unique("b");
    let subject = format!("{}.readings", unique("t").replace('-', "_"));
    let daemon = Daemon::start_with_text(
        tempfile::tempdir().unwrap(),
        AMQP_URL,
        &exchange,
        |admin_port| {
            format!(
                "include = [\"bridges/*.toml\"]\n{}",
                config_text(AMQP_URL, &exchange, admin_port, "")
            )
        },
    )
    .await;
    let folder = daemon.dir.path().join("bridges");
    std::fs::create_dir(&folder).unwrap();
    let included = folder.join("new.toml");
    std::fs::write(
        &included,
        nats_bridge(&bridge, &subject, "tenant = \"first\""),
    )
    .unwrap();
    // The documented manual trigger picks up the new folder's file.
    daemon.signal(libc::SIGHUP);
    wait_for_tenant(&daemon, &bridge, "first").await;

    // From now on the folder is read on every reload, so it must be watched too.
    std::fs::write(
        &included,
        nats_bridge(&bridge, &subject, "tenant = \"second\""),
    )
    .unwrap();
    wait_for_tenant(&daemon, &bridge, "second").await;
}
