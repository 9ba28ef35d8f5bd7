//! Secrets never leak: unique values are planted in every secret key and every
//! `<secret>_file`, each failure that could echo one is provoked (wrong password,
//! unreachable broker with credentials in the URL, a URL a client library refuses, TOML
//! syntax error on the secret's line, an invalid value next to it, refused reloads,
//! `check`, `tail`, `probe`), and every output is searched: stdout, stderr (the daemon
//! log), `/bridges`, `/readyz`, `/metrics`, events and dead letters. Each test also
//! checks that its failures did happen, so that finding nothing means something.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{AMQP_URL, Daemon, Rabbit, free_port, unique};

/// How many characters of a planted value's random part make a telling fragment.
const FRAGMENT: usize = 12;

/// The planted secrets: where each went, its value, and its random parts.
#[derive(Default)]
struct Planted(Vec<(String, String, Vec<String>)>);

fn random_hex(chars: usize) -> String {
    let mut text = String::new();
    while text.len() < chars {
        text.push_str(&format!("{:016x}", rand::random::<u64>()));
    }
    text.truncate(chars);
    text
}

impl Planted {
    /// A new secret, `<label><24 hex digits>` (letters and digits only, so it fits a URL,
    /// a TOML string and a path unchanged).
    fn plant(&mut self, label: &str) -> String {
        let random = random_hex(24);
        let value = format!("{label}{random}");
        self.0.push((label.to_owned(), value.clone(), vec![random]));
        value
    }

    /// A secret with an unencoded `/` inside: a URL parser takes what follows it for a
    /// path, so pieces of it are what a careless error message would show.
    fn plant_with_slash(&mut self, label: &str) -> String {
        let (first, second) = (random_hex(16), random_hex(16));
        let value = format!("{first}/{second}");
        self.0
            .push((label.to_owned(), value.clone(), vec![first, second]));
        value
    }

    /// Digits only, to be written as a TOML number (a mistake serde would quote).
    fn plant_digits(&mut self, label: &str) -> String {
        let digits: String = (0..18)
            .map(|_| char::from(b'1' + rand::random::<u8>() % 9))
            .collect();
        self.0
            .push((label.to_owned(), digits.clone(), vec![digits.clone()]));
        digits
    }

    /// Neither a planted value nor any `FRAGMENT`-long piece of its random part is in
    /// `text`.
    fn assert_absent(&self, what: &str, text: &str) {
        for (label, value, parts) in &self.0 {
            assert!(
                !text.contains(value.as_str()),
                "{what} shows the secret planted as {label}:\n{text}"
            );
            for part in parts {
                for start in 0..=part.len().saturating_sub(FRAGMENT) {
                    let piece = &part[start..start + FRAGMENT];
                    assert!(
                        !text.contains(piece),
                        "{what} shows a piece ({piece}) of the secret planted as {label}:\n{text}"
                    );
                }
            }
        }
    }
}

/// Writes a file readable by its owner only.
fn write_private(path: &Path, text: &str) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
}

/// Writes a file readable by everyone.
fn write_public(path: &Path, text: &str) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o644)).unwrap();
}

/// A GET on the admin listener with the `[admin]` token: `(status, body)`.
async fn admin_get(daemon: &Daemon, token: &str, path: &str) -> (u16, String) {
    let authorization = format!("Bearer {token}");
    let reply = common::http_request(
        daemon.admin_port,
        "GET",
        path,
        &[("Authorization", authorization.as_str())],
        b"",
    )
    .await
    .unwrap_or_else(|| panic!("admin listener answers {path}"));
    (reply.status, reply.body)
}

async fn bridges(daemon: &Daemon, token: &str) -> serde_json::Value {
    let (status, body) = admin_get(daemon, token, "/bridges").await;
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

fn last_error(bridges: &serde_json::Value, name: &str) -> Option<String> {
    bridges["bridges"]
        .as_array()?
        .iter()
        .find(|b| b["name"] == name)?["status"]["last_error"]
        .as_str()
        .map(str::to_owned)
}

/// Every text the daemon shows: `/bridges`, `/readyz`, `/metrics` and its log.
async fn everything_shown(daemon: &Daemon, token: &str) -> String {
    let mut shown = String::new();
    for path in ["/bridges", "/readyz", "/metrics", "/healthz"] {
        let (status, body) = admin_get(daemon, token, path).await;
        shown.push_str(&format!("--- {path} ({status})\n{body}\n"));
    }
    shown.push_str("--- log\n");
    shown.push_str(&daemon.log());
    shown
}

/// The config of `a_running_daemon_shows_no_secret_whatever_fails`, with the lines
/// `replace` names swapped for others (to provoke refused reloads).
struct FailingConfig {
    /// Chosen by `Daemon::start_with_text`.
    admin_port: std::cell::Cell<u16>,
    webhook_port: u16,
    dead_port: u16,
    exchange: String,
    queue: String,
    bucket: String,
    lines: Vec<(String, String)>,
}

impl FailingConfig {
    fn text(&self, replace: &[(&str, &str)]) -> String {
        let mut text = String::new();
        for (key, line) in &self.lines {
            let line = replace
                .iter()
                .find(|(k, _)| k == key)
                .map_or(line.as_str(), |(_, l)| l);
            text.push_str(line);
            text.push('\n');
        }
        text.replace("{admin_port}", &self.admin_port.get().to_string())
            .replace("{webhook_port}", &self.webhook_port.to_string())
            .replace("{dead_port}", &self.dead_port.to_string())
            .replace("{exchange}", &self.exchange)
            .replace("{queue}", &self.queue)
            .replace("{bucket}", &self.bucket)
    }
}

/// A daemon whose every secret is wrong or whose broker is unreachable: the exchange
/// (RabbitMQ refuses the password), AMQP sources (wrong password, in the URL and from a
/// file), NATS (credentials in the URL, from a file, a URL async-nats refuses, token,
/// password, NKey), MQTT and Kafka passwords (unreachable), S3 keys (a missing bucket),
/// webhook tokens and the admin token. Then reloads that are refused: a TOML syntax
/// error on a secret's line, a secret written as a number, a password with an unencoded
/// `/`, a bad `${` in a secret, a malformed exchange URL. Nothing shows a secret; every
/// failure shows in `/bridges`.
#[tokio::test]
async fn a_running_daemon_shows_no_secret_whatever_fails() {
    let mut planted = Planted::default();
    let dir = tempfile::tempdir().unwrap();
    let admin_token = planted.plant("AdminToken");
    write_private(&dir.path().join("admin-token"), &admin_token);
    let amqp_file_password = planted.plant("AmqpPwFile");
    write_private(&dir.path().join("amqp-password"), &amqp_file_password);
    let nats_url_file = planted.plant("NatsUrlFile");
    write_private(
        &dir.path().join("nats-url"),
        &format!("nats://fileuser:{nats_url_file}@127.0.0.1:{{dead_port}}\n"),
    );
    let nats_token = planted.plant("NatsTokenFile");
    write_private(&dir.path().join("nats-token"), &nats_token);
    let mqtt_password = planted.plant("MqttPwFile");
    write_private(&dir.path().join("mqtt-password"), &mqtt_password);
    let s3_secret = planted.plant("S3SecretFile");
    write_private(&dir.path().join("s3-secret"), &s3_secret);
    let bearer = planted.plant("BearerFile");
    write_private(&dir.path().join("bearer"), &bearer);

    let exchange_password = planted.plant("ExchangeUrl");
    let amqp_url_password = planted.plant("AmqpUrl");
    let nats_url_password = planted.plant("NatsUrl");
    let nats_bad_url_password = planted.plant("NatsBadUrl");
    let nats_password = planted.plant("NatsPassword");
    let nkey = planted.plant("Nkey");
    let kafka_password = planted.plant("KafkaPassword");
    let kafka_property = planted.plant("KafkaSslKeyPassword");
    let s3_key_id = planted.plant("S3KeyId");
    let s3_session = planted.plant("S3Session");
    let path_token = planted.plant("PathToken");
    let hmac_secret = planted.plant("HmacSecret");

    let dead_port = free_port();
    let line = |key: &str, text: String| (key.to_owned(), text);
    let config = FailingConfig {
        admin_port: std::cell::Cell::new(0),
        webhook_port: free_port(),
        dead_port,
        exchange: unique("ex"),
        queue: unique("q"),
        bucket: unique("missing-bucket"),
        lines: vec![
            line("exchange", "[exchange]".into()),
            line(
                "exchange.url",
                format!("url = \"amqp://guest:{exchange_password}@127.0.0.1:5672/%2f\""),
            ),
            line("exchange.name", "name = \"{exchange}\"".into()),
            line(
                "exchange.rest",
                "confirm_timeout = \"5s\"\nbackoff = { initial = \"100ms\", max = \"1s\" }\n".into(),
            ),
            line(
                "admin",
                "[admin]\nlisten = \"127.0.0.1:{admin_port}\"\ntoken_file = \"admin-token\"\n"
                    .into(),
            ),
            line(
                "webhook",
                "[webhook]\nlisten = \"127.0.0.1:{webhook_port}\"\n".into(),
            ),
            line(
                "defaults",
                "[defaults]\ntenant = \"acme\"\nshutdown_timeout = \"2s\"\nbackoff = { initial = \"200ms\", max = \"1s\" }\n".into(),
            ),
            line(
                "amqp-url",
                format!(
                    "[[bridge]]\nname = \"amqp-url\"\nkind = \"amqp\"\nqueue = \"{{queue}}\"\nurl = \"amqp://guest:{amqp_url_password}@127.0.0.1:5672/%2f\"\n"
                ),
            ),
            line(
                "amqp-file",
                "[[bridge]]\nname = \"amqp-file\"\nkind = \"amqp\"\nqueue = \"{queue}\"\nurl = \"amqp://127.0.0.1:5672/%2f\"\nuser = \"guest\"\npassword_file = \"amqp-password\"\n".into(),
            ),
            line(
                "nats-url",
                format!(
                    "[[bridge]]\nname = \"nats-url\"\nkind = \"nats\"\nsubject = \"x\"\nurl = \"nats://natsuser:{nats_url_password}@127.0.0.1:{{dead_port}}\"\n"
                ),
            ),
            line(
                "nats-bad-url",
                format!(
                    "[[bridge]]\nname = \"nats-bad-url\"\nkind = \"nats\"\nsubject = \"x\"\nurl = \"http://natsuser:{nats_bad_url_password}@127.0.0.1:{{dead_port}}\"\n"
                ),
            ),
            line(
                "nats-url-file",
                "[[bridge]]\nname = \"nats-url-file\"\nkind = \"nats\"\nsubject = \"x\"\nurl_file = \"nats-url\"\n".into(),
            ),
            line(
                "nats-token",
                "[[bridge]]\nname = \"nats-token\"\nkind = \"nats\"\nsubject = \"x\"\nurl = \"nats://127.0.0.1:{dead_port}\"\ntoken_file = \"nats-token\"\n".into(),
            ),
            line("nats-password.head", "[[bridge]]\nname = \"nats-password\"\nkind = \"jetstream\"\nstream = \"s\"\nurl = \"nats://127.0.0.1:{dead_port}\"\nuser = \"u\"".into()),
            line(
                "nats-password.password",
                format!("password = \"{nats_password}\""),
            ),
            line(
                "nats-password.tail",
                "max_in_flight = 10\n".into(),
            ),
            line(
                "nats-nkey",
                format!(
                    "[[bridge]]\nname = \"nats-nkey\"\nkind = \"nats\"\nsubject = \"x\"\nurl = \"nats://127.0.0.1:{{dead_port}}\"\nnkey = \"SU{nkey}\"\n"
                ),
            ),
            line(
                "mqtt",
                "[[bridge]]\nname = \"mqtt-password\"\nkind = \"mqtt\"\ntopics = [\"x\"]\nurl = \"mqtt://127.0.0.1:{dead_port}\"\nuser = \"u\"\npassword_file = \"mqtt-password\"\n".into(),
            ),
            line(
                "kafka",
                format!(
                    "[[bridge]]\nname = \"kafka-password\"\nkind = \"kafka\"\ntopics = [\"x\"]\nbrokers = \"127.0.0.1:{{dead_port}}\"\nsecurity = \"sasl_plaintext\"\nsasl_mechanism = \"PLAIN\"\nuser = \"u\"\npassword = \"{kafka_password}\"\nproperties = {{ \"ssl.key.password\" = \"{kafka_property}\" }}\n"
                ),
            ),
            line(
                "s3",
                format!(
                    "[[bridge]]\nname = \"s3-keys\"\nkind = \"s3\"\nbucket = \"{{bucket}}\"\nendpoint_url = \"http://127.0.0.1:9000\"\naccess_key_id = \"{s3_key_id}\"\nsecret_access_key_file = \"s3-secret\"\nsession_token = \"{s3_session}\"\n"
                ),
            ),
            line(
                "webhook-tokens",
                format!(
                    "[[bridge]]\nname = \"webhook-tokens\"\nkind = \"webhook\"\npath_token = \"{path_token}\"\nbearer_token_file = \"bearer\"\n"
                ),
            ),
            line(
                "webhook-hmac",
                format!(
                    "[[bridge]]\nname = \"webhook-hmac\"\nkind = \"webhook\"\nhmac_secret = \"{hmac_secret}\"\n"
                ),
            ),
        ],
    };
    // `nats-url` holds `{dead_port}` literally: the port is only known now.
    let nats_url_path = dir.path().join("nats-url");
    let text = std::fs::read_to_string(&nats_url_path).unwrap();
    write_private(
        &nats_url_path,
        &text.replace("{dead_port}", &dead_port.to_string()),
    );
    let exchange = config.exchange.clone();
    let daemon = Daemon::start_with_text(dir, AMQP_URL, &exchange, |port| {
        config.admin_port.set(port);
        config.text(&[])
    })
    .await;

    // Every failure happened and shows, without its secret.
    let expected = [
        "amqp-url",
        "amqp-file",
        "nats-url",
        "nats-bad-url",
        "nats-url-file",
        "nats-token",
        "nats-password",
        "nats-nkey",
        "mqtt-password",
        "kafka-password",
        "s3-keys",
    ];
    let deadline = Instant::now() + Duration::from_secs(45);
    loop {
        let status = bridges(&daemon, &admin_token).await;
        let missing: Vec<&str> = expected
            .iter()
            .copied()
            .filter(|name| last_error(&status, name).is_none())
            .collect();
        let exchange_failed = status["exchange"]["last_error"].is_string();
        if missing.is_empty() && exchange_failed {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "failures not shown yet: bridges {missing:?}, exchange failed: {exchange_failed}\n{status:#}\nlog: {}",
            daemon.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let status = bridges(&daemon, &admin_token).await;
    let exchange_error = status["exchange"]["last_error"].as_str().unwrap();
    assert!(
        exchange_error.contains("ACCESS_REFUSED") || exchange_error.contains("refused"),
        "{exchange_error}"
    );
    assert_eq!(status["exchange"]["connected"], false);
    let bad_url = last_error(&status, "nats-bad-url").unwrap();
    assert!(
        bad_url.contains("http://natsuser:***@127.0.0.1"),
        "the refused URL shows, redacted: {bad_url}"
    );
    let amqp = last_error(&status, "amqp-url").unwrap();
    assert!(amqp.contains("127.0.0.1:5672"), "{amqp}");

    // Webhook requests with a wrong bearer token (the path token right) and a wrong
    // signature are refused, and what the listener logs of them shows no secret.
    let webhook_port = config.webhook_port;
    let wrong_bearer = common::http_request(
        webhook_port,
        "POST",
        &format!("/hooks/webhook-tokens/{path_token}"),
        &[("Authorization", "Bearer not-the-token")],
        b"{}",
    )
    .await
    .expect("webhook listener answers");
    assert_ne!(wrong_bearer.status, 200);
    planted.assert_absent("a refused webhook answer", &wrong_bearer.body);
    let wrong_signature = common::http_request(
        webhook_port,
        "POST",
        "/hooks/webhook-hmac",
        &[("X-Hub-Signature-256", "sha256=00")],
        b"{}",
    )
    .await
    .expect("webhook listener answers");
    assert_ne!(wrong_signature.status, 200);
    planted.assert_absent("a refused webhook answer", &wrong_signature.body);

    // The admin token guards `/bridges`, and a wrong one is told nothing of it.
    let (status_code, body) = admin_get(&daemon, "wrong", "/bridges").await;
    assert_eq!(status_code, 401, "{body}");
    planted.assert_absent("a refused /bridges", &body);

    // Reloads that are refused: each error shows in `/bridges`, without the secret.
    let syntax_secret = planted.plant("ReloadSyntax");
    let bearer_syntax_secret = planted.plant("ReloadBearerSyntax");
    let number_secret = planted.plant_digits("ReloadNumber");
    let slash_secret = planted.plant_with_slash("ReloadSlash");
    let interpolated_secret = planted.plant("ReloadInterpolated");
    let malformed_secret = planted.plant("ReloadMalformedUrl");
    let next_to_secret = planted.plant("ReloadNextTo");
    let syntax_line = format!("password = \"{syntax_secret}");
    let bearer_syntax_lines = format!(
        "[[bridge]]\nname = \"webhook-tokens\"\nkind = \"webhook\"\npath_token = \"{path_token}\"\nbearer_token = \"{bearer_syntax_secret}\n"
    );
    let number_line = format!("password = {number_secret}");
    let slash_line = format!(
        "[[bridge]]\nname = \"amqp-url\"\nkind = \"amqp\"\nqueue = \"{{queue}}\"\nurl = \"amqp://guest:{slash_secret}@127.0.0.1:5672/%2f\"\n"
    );
    let interpolated_line = format!("password = \"a${{{interpolated_secret}-x}}\"");
    let malformed_line = format!("url = \"amqp:guest:{malformed_secret}@127.0.0.1\"");
    let next_to_line = format!("password = \"{next_to_secret}\"");
    /// What is wrong, the lines replaced (`<bridge>.<key>` → text), and what the refusal
    /// must say.
    type Reload<'a> = (&'a str, Vec<(&'a str, &'a str)>, &'a [&'a str]);
    let reloads: Vec<Reload> = vec![
        (
            "a TOML syntax error on the secret's line",
            vec![("nats-password.password", &syntax_line)],
            &[
                "TOML syntax error at line",
                "column",
                "the line is not shown",
            ],
        ),
        (
            "a TOML syntax error on a bearer_token line",
            vec![("webhook-tokens", &bearer_syntax_lines)],
            &[
                "TOML syntax error at line",
                "column",
                "the line is not shown",
            ],
        ),
        (
            "a secret written as a number",
            vec![("nats-password.password", &number_line)],
            &["key `password`", "invalid type"],
        ),
        (
            "an invalid value next to a secret",
            vec![
                ("nats-password.password", &next_to_line),
                ("nats-password.tail", "max_in_flight = \"many\"\n"),
            ],
            &["max_in_flight"],
        ),
        (
            "a password with an unencoded `/`",
            vec![("amqp-url", &slash_line)],
            &["key `url`", "percent-encode"],
        ),
        (
            "a bad `${` in a secret",
            vec![("nats-password.password", &interpolated_line)],
            &["key `password`", "does not name an environment variable"],
        ),
        (
            "a malformed exchange URL",
            vec![("exchange.url", &malformed_line)],
            &["exchange.url", "not an AMQP URL"],
        ),
    ];
    let mut previous = None;
    for (what, replace, fragments) in &reloads {
        daemon.write_raw(&config.text(replace));
        let deadline = Instant::now() + Duration::from_secs(20);
        let error = loop {
            let status = bridges(&daemon, &admin_token).await;
            let error = status["config"]["last_error"].as_str().map(str::to_owned);
            if let Some(error) = error.filter(|error| Some(error) != previous.as_ref()) {
                break error;
            }
            assert!(
                Instant::now() < deadline,
                "reload with {what} not refused: {status:#}\nlog: {}",
                daemon.log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        for fragment in *fragments {
            assert!(error.contains(fragment), "{what}: {error}");
        }
        planted.assert_absent(&format!("the refused reload with {what}"), &error);
        previous = Some(error);
    }

    let shown = everything_shown(&daemon, &admin_token).await;
    assert!(
        shown.contains("config reload failed"),
        "the log shows the refused reloads:\n{shown}"
    );
    planted.assert_absent("the daemon's outputs", &shown);
}

fn broker_bridge(args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_broker-bridge"));
    // Overrides from the environment running the tests must not reach the configs.
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("BROKER_BRIDGE__") {
            command.env_remove(name);
        }
    }
    command
        .args(args)
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    command
}

/// Runs a command with a time limit: `(exit code, stdout, stderr)`.
fn run(command: &mut Command, limit: Duration) -> (Option<i32>, String, String) {
    let mut child = command.spawn().expect("start broker-bridge");
    let deadline = Instant::now() + limit;
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let output = child.wait_with_output().unwrap();
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// `check` (offline and `--online`), `tail` and `probe` with planted secrets: their
/// failures show, the secrets do not, and `check` warns about every file that holds a
/// secret and is readable by others (without changing its exit status).
#[test]
fn check_tail_and_probe_show_no_secret() {
    let mut planted = Planted::default();
    let dir = tempfile::tempdir().unwrap();
    let path = |name: &str| dir.path().join(name);
    let exchange_password = planted.plant("CheckExchange");
    let amqp_password = planted.plant("CheckAmqp");
    let nats_password = planted.plant("CheckNats");
    let included_token = planted.plant("CheckIncluded");
    let file_password = planted.plant("CheckFile");
    let private_password = planted.plant("CheckPrivate");
    let admin_token = planted.plant("CheckAdmin");
    write_public(&path("public-password"), &file_password);
    write_private(&path("private-password"), &private_password);
    write_private(&path("admin-token"), &admin_token);
    let dead_port = free_port();
    let exchange = unique("ex");
    let queue = unique("q");
    let config = format!(
        r#"include = ["bridges/*.toml"]

[exchange]
url = "amqp://guest:{exchange_password}@127.0.0.1:5672/%2f"
name = "{exchange}"

[admin]
token_file = "admin-token"

[[bridge]]
name = "amqp-wrong-password"
kind = "amqp"
queue = "{queue}"
url = "amqp://guest:{amqp_password}@127.0.0.1:5672/%2f"

[[bridge]]
name = "jetstream-unreachable"
kind = "jetstream"
stream = "s"
url = "nats://natsuser:{nats_password}@127.0.0.1:{dead_port}"

[[bridge]]
name = "mqtt-public-file"
kind = "mqtt"
topics = ["x"]
user = "u"
password_file = "public-password"

[[bridge]]
name = "mqtt-private-file"
kind = "mqtt"
topics = ["y"]
user = "u"
password_file = "private-password"
"#
    );
    write_public(&path("config.toml"), &config);
    std::fs::create_dir(path("bridges")).unwrap();
    write_public(
        &path("bridges/webhook.toml"),
        &format!(
            "[[bridge]]\nname = \"hook\"\nkind = \"webhook\"\nbearer_token = \"{included_token}\"\n"
        ),
    );
    write_public(
        &path("bridges/no-secret.toml"),
        "[[bridge]]\nname = \"open-hook\"\nkind = \"webhook\"\nallow_unauthenticated = true\n",
    );
    let config_path = path("config.toml");
    let config_arg = config_path.to_str().unwrap();

    let (code, stdout, stderr) = run(
        &mut broker_bridge(&["check", "-c", config_arg]),
        Duration::from_secs(20),
    );
    assert_eq!(code, Some(0), "{stdout}\n{stderr}");
    assert!(
        stdout.contains("amqp://guest:***@127.0.0.1:5672/%2f"),
        "the exchange URL shows, redacted:\n{stdout}"
    );
    let warned = |file: &PathBuf| {
        let file = std::fs::canonicalize(file).unwrap();
        stderr.contains(&format!(
            "warning: {} holds secrets and is readable by others (mode 0644); chmod 600 {}",
            file.display(),
            file.display()
        ))
    };
    assert!(warned(&config_path), "{stderr}");
    assert!(warned(&path("public-password")), "{stderr}");
    assert!(warned(&path("bridges/webhook.toml")), "{stderr}");
    for quiet in ["private-password", "admin-token", "no-secret.toml"] {
        assert!(
            !stderr.lines().any(|line| line.contains(quiet)),
            "no warning for {quiet}:\n{stderr}"
        );
    }
    planted.assert_absent("check", &format!("{stdout}\n{stderr}"));

    // --online: the brokers are asked, and refuse or do not answer.
    let (code, stdout, stderr) = run(
        &mut broker_bridge(&["check", "--online", "-c", config_arg]),
        Duration::from_secs(30),
    );
    assert_eq!(code, Some(0), "{stdout}\n{stderr}");
    assert!(
        stdout.contains("bridge `amqp-wrong-password`: source not verified"),
        "{stdout}"
    );
    assert!(
        stdout.contains("bridge `jetstream-unreachable`: source not verified"),
        "{stdout}"
    );
    planted.assert_absent("check --online", &format!("{stdout}\n{stderr}"));

    // Config errors: a syntax error on the secret's line, a secret written as a number,
    // a password with an unencoded `/`.
    let syntax_secret = planted.plant("CheckSyntax");
    let number_secret = planted.plant_digits("CheckNumber");
    let slash_secret = planted.plant_with_slash("CheckSlash");
    for (what, broken, fragment) in [
        (
            "a syntax error on the secret's line",
            config.replace(
                &format!("\"amqp://guest:{amqp_password}@127.0.0.1:5672/%2f\""),
                &format!("\"amqp://guest:{syntax_secret}@127.0.0.1:5672/%2f"),
            ),
            "the line is not shown",
        ),
        (
            "a secret written as a number",
            config.replace(
                "password_file = \"private-password\"",
                &format!("password = {number_secret}"),
            ),
            "invalid type",
        ),
        (
            "a password with an unencoded `/`",
            config.replace(&amqp_password, &slash_secret),
            "percent-encode",
        ),
    ] {
        write_private(&path("broken.toml"), &broken);
        let (code, stdout, stderr) = run(
            &mut broker_bridge(&["check", "-c", path("broken.toml").to_str().unwrap()]),
            Duration::from_secs(20),
        );
        assert_eq!(code, Some(1), "{what}: {stdout}\n{stderr}");
        assert!(stderr.contains(fragment), "{what}: {stderr}");
        planted.assert_absent(&format!("check of {what}"), &format!("{stdout}\n{stderr}"));
    }

    // tail: RabbitMQ refuses the password; an unreachable broker is not reached.
    let (code, stdout, stderr) = run(
        &mut broker_bridge(&["tail", "-c", config_arg, "--count", "1"]),
        Duration::from_secs(30),
    );
    assert_eq!(code, Some(1), "{stdout}\n{stderr}");
    assert!(stderr.contains("connecting to the exchange"), "{stderr}");
    planted.assert_absent("tail (wrong password)", &format!("{stdout}\n{stderr}"));
    let unreachable_password = planted.plant("TailUnreachable");
    write_private(
        &path("unreachable.toml"),
        &format!(
            "[exchange]\nurl = \"amqp://guest:{unreachable_password}@127.0.0.1:{dead_port}/%2f\"\n"
        ),
    );
    let (code, stdout, stderr) = run(
        &mut broker_bridge(&[
            "tail",
            "-c",
            path("unreachable.toml").to_str().unwrap(),
            "--count",
            "1",
        ]),
        Duration::from_secs(30),
    );
    assert_eq!(code, Some(1), "{stdout}\n{stderr}");
    assert!(stderr.contains("connecting to the exchange"), "{stderr}");
    planted.assert_absent("tail (unreachable)", &format!("{stdout}\n{stderr}"));

    // probe: credentials in the URL are refused, and not repeated.
    let probe_password = planted.plant("Probe");
    let (code, stdout, stderr) = run(
        &mut broker_bridge(&[
            "probe",
            &format!("http://probeuser:{probe_password}@127.0.0.1:{dead_port}/healthz"),
        ]),
        Duration::from_secs(10),
    );
    assert_eq!(code, Some(1), "{stdout}\n{stderr}");
    assert!(
        stderr.contains("http://probeuser:***@127.0.0.1"),
        "the URL shows, redacted: {stderr}"
    );
    planted.assert_absent("probe", &format!("{stdout}\n{stderr}"));
}

/// Sources connected with planted credentials (NATS and Mosquitto on the test machine
/// accept them, as they accept anonymous clients): events and dead letters carry no
/// secret, nor does anything the daemon shows.
#[tokio::test]
async fn events_and_dead_letters_carry_no_secret() {
    let mut planted = Planted::default();
    let nats_password = planted.plant("DeadLetterNats");
    let mqtt_password = planted.plant("DeadLetterMqtt");
    let admin_token = planted.plant("DeadLetterAdmin");
    let rabbit = Rabbit::connect().await;
    let exchange = unique("ex");
    let nats_bridge = unique("nats");
    let mqtt_bridge = unique("mqtt");
    let subject = format!("{}.readings", unique("t").replace('-', "_"));
    let topic = format!("{}/readings", unique("t"));
    let events = rabbit.bind(&exchange, "event.#").await;
    let dead = rabbit.bind(&exchange, "deadletter.#").await;
    let bridges_text = format!(
        r#"
[[bridge]]
name = "{nats_bridge}"
kind = "nats"
subject = "{subject}"
url = "nats://planted:{nats_password}@127.0.0.1:4222"
format = "json"

[[bridge]]
name = "{mqtt_bridge}"
kind = "mqtt"
topics = ["{topic}"]
user = "planted"
password = "{mqtt_password}"
format = "json"
"#
    );
    let daemon =
        Daemon::start_with_text(tempfile::tempdir().unwrap(), AMQP_URL, &exchange, |port| {
            common::config_text(AMQP_URL, &exchange, port, &bridges_text).replace(
                "[admin]\n",
                &format!("[admin]\ntoken = \"{admin_token}\"\n"),
            )
        })
        .await;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let status = bridges(&daemon, &admin_token).await;
        let running = |name: &str| {
            status["bridges"]
                .as_array()
                .unwrap()
                .iter()
                .any(|b| b["name"] == name && b["status"]["state"] == "running")
        };
        if running(&nats_bridge) && running(&mqtt_bridge) && status["exchange"]["connected"] == true
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "bridges not running: {status:#}\nlog: {}",
            daemon.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let nats = common::nats().await;
    nats.publish(subject.clone(), br#"{"ok": true}"#.to_vec().into())
        .await
        .unwrap();
    nats.publish(subject.clone(), b"not json at all".to_vec().into())
        .await
        .unwrap();
    nats.flush().await.unwrap();
    let mut options = rumqttc::MqttOptions::new(unique("pub"), "127.0.0.1", 1883);
    options.set_keep_alive(Duration::from_secs(5));
    let (client, mut eventloop) = rumqttc::AsyncClient::new(options, 10);
    let driver = tokio::spawn(async move { while eventloop.poll().await.is_ok() {} });
    client
        .publish(
            &topic,
            rumqttc::QoS::AtLeastOnce,
            false,
            br#"{"ok": true}"#.to_vec(),
        )
        .await
        .unwrap();
    client
        .publish(
            &topic,
            rumqttc::QoS::AtLeastOnce,
            false,
            b"not json either".to_vec(),
        )
        .await
        .unwrap();

    let received = rabbit.take(&events, 2, Duration::from_secs(20)).await;
    assert_eq!(received.len(), 2, "log: {}", daemon.log());
    let letters = rabbit.take(&dead, 2, Duration::from_secs(20)).await;
    assert_eq!(letters.len(), 2, "log: {}", daemon.log());
    driver.abort();
    for letter in &letters {
        assert_eq!(
            letter.header("x-bridge-reason").as_deref(),
            Some("invalid_json")
        );
    }
    for message in received.iter().chain(&letters) {
        let text = format!(
            "{} {:?} {}",
            message.routing_key,
            message.properties,
            String::from_utf8_lossy(&message.body)
        );
        planted.assert_absent("an event or a dead letter", &text);
    }
    let sources: Vec<String> = received
        .iter()
        .map(|event| {
            event.json()["source"]
                .as_str()
                .unwrap_or_default()
                .to_owned()
        })
        .collect();
    assert!(
        sources.iter().any(|s| s.contains("127.0.0.1:4222")),
        "events name their server without credentials: {sources:?}"
    );
    let shown = everything_shown(&daemon, &admin_token).await;
    planted.assert_absent("the daemon's outputs", &shown);
}
