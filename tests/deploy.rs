//! The deployment files, checked without Docker and without brokers:
//! - docker-compose.yml against the Compose specification's JSON schema, and against
//!   the config it mounts into broker-bridge (every broker address is a service on a
//!   port it serves, that broker-bridge waits for; MinIO's notifications reach the
//!   queue of the recipe; the config passes `check` under the compose environment);
//! - deploy/Dockerfile's health check;
//! - deploy/prometheus.yml and deploy/alerts.yml with promtool (scripts/deps.sh installs
//!   it), and the alerts and deploy/grafana-dashboard.json against the metric and label
//!   names that src/metrics.rs exports.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use broker_bridge::metrics::Registry;
use serde_json::Value;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");
const BINARY: &str = env!("CARGO_BIN_EXE_broker-bridge");

fn repo(relative: &str) -> PathBuf {
    Path::new(ROOT).join(relative)
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

fn yaml(relative: &str) -> Value {
    serde_yaml_ng::from_str(&read(&repo(relative)))
        .unwrap_or_else(|e| panic!("{relative} is not YAML: {e}"))
}

fn toml_value(path: &Path) -> Value {
    toml::from_str(&read(path)).unwrap_or_else(|e| panic!("{} is not TOML: {e}", path.display()))
}

/// A YAML scalar as text, as Compose reads environment values.
fn text(value: &Value) -> String {
    match value {
        Value::String(text) => text.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

fn fail_on(problems: Vec<String>) {
    assert!(problems.is_empty(), "\n{}\n", problems.join("\n"));
}

// ---------------------------------------------------------------------------------------
// docker-compose.yml

struct Compose(Value);

impl Compose {
    fn load() -> Compose {
        Compose(yaml("docker-compose.yml"))
    }

    fn services(&self) -> &serde_json::Map<String, Value> {
        self.0["services"]
            .as_object()
            .expect("docker-compose.yml has services")
    }

    fn service(&self, name: &str) -> &Value {
        self.services().get(name).unwrap_or_else(|| {
            panic!(
                "no service `{name}` in docker-compose.yml; it has {:?}",
                self.services().keys().collect::<Vec<_>>()
            )
        })
    }
}

/// A service's `environment`, as a mapping or as a list of `NAME=value`.
fn environment(service: &Value) -> BTreeMap<String, String> {
    match service.get("environment") {
        None => BTreeMap::new(),
        Some(Value::Object(map)) => map.iter().map(|(k, v)| (k.clone(), text(v))).collect(),
        Some(Value::Array(items)) => items
            .iter()
            .map(|item| {
                let item = text(item);
                match item.split_once('=') {
                    Some((name, value)) => (name.to_owned(), value.to_owned()),
                    None => (item, String::new()),
                }
            })
            .collect(),
        Some(other) => panic!("environment is neither a mapping nor a list: {other}"),
    }
}

/// `5672`, `"5672/tcp"` or `"9000-9001"`.
fn port_range(spec: &str) -> Vec<u16> {
    let spec = spec.split('/').next().unwrap_or_default();
    let port = |p: &str| {
        p.parse::<u16>()
            .unwrap_or_else(|_| panic!("`{spec}` is not a port"))
    };
    match spec.split_once('-') {
        Some((first, last)) => (port(first)..=port(last)).collect(),
        None => vec![port(spec)],
    }
}

/// The container ports a service declares it serves: `expose`, and the container side
/// of `ports`.
fn container_ports(service: &Value) -> BTreeSet<u16> {
    let mut ports = BTreeSet::new();
    for item in service["expose"].as_array().into_iter().flatten() {
        ports.extend(port_range(&text(item)));
    }
    for item in service["ports"].as_array().into_iter().flatten() {
        match item {
            Value::Object(long) => ports.extend(port_range(&text(&long["target"]))),
            short => {
                let short = text(short);
                ports.extend(port_range(short.rsplit(':').next().unwrap_or_default()));
            }
        }
    }
    ports
}

/// The host side of `ports` (`ip:port`), to find two services publishing the same one.
fn published_ports(service: &Value) -> Vec<String> {
    let mut published = Vec::new();
    for item in service["ports"].as_array().into_iter().flatten() {
        if let Value::String(short) = item {
            let parts: Vec<&str> = short.split(':').collect();
            match parts.len() {
                3 => published.push(format!("{}:{}", parts[0], parts[1])),
                2 => published.push(format!("0.0.0.0:{}", parts[0])),
                _ => {}
            }
        }
    }
    published
}

/// Bind mounts: (host path, container path). Named volumes are left out.
fn bind_mounts(service: &Value) -> Vec<(PathBuf, String)> {
    let mut mounts = Vec::new();
    for item in service["volumes"].as_array().into_iter().flatten() {
        let (source, target) = match item {
            Value::Object(long) if long.get("type").map(text).as_deref() == Some("bind") => {
                (text(&long["source"]), text(&long["target"]))
            }
            Value::Object(_) => continue,
            short => {
                let short = text(short);
                let mut parts = short.split(':');
                let source = parts.next().unwrap_or_default().to_owned();
                let Some(target) = parts.next() else { continue };
                (source, target.to_owned())
            }
        };
        if source.starts_with('.') || source.starts_with('/') {
            let host = Path::new(ROOT).join(source.trim_start_matches("./"));
            mounts.push((host, target));
        }
    }
    mounts
}

/// The host file or folder behind a path in the container, through the bind mounts.
fn host_path(mounts: &[(PathBuf, String)], container: &str) -> Option<PathBuf> {
    mounts
        .iter()
        .filter_map(|(host, target)| {
            if container == target {
                Some((target.len(), host.clone()))
            } else {
                container
                    .strip_prefix(&format!("{}/", target.trim_end_matches('/')))
                    .map(|rest| (target.len(), host.join(rest)))
            }
        })
        .max_by_key(|(length, _)| *length)
        .map(|(_, host)| host)
}

/// `depends_on` as service -> condition (a plain list means `service_started`).
fn depends_on(service: &Value) -> BTreeMap<String, String> {
    match service.get("depends_on") {
        None => BTreeMap::new(),
        Some(Value::Array(names)) => names
            .iter()
            .map(|name| (text(name), "service_started".to_owned()))
            .collect(),
        Some(Value::Object(map)) => map
            .iter()
            .map(|(name, spec)| (name.clone(), text(&spec["condition"])))
            .collect(),
        Some(other) => panic!("depends_on is neither a list nor a mapping: {other}"),
    }
}

/// True when a service has a health check: its own, or its image's (for services built
/// from deploy/Dockerfile).
fn has_health_check(service: &Value) -> bool {
    if let Some(check) = service.get("healthcheck") {
        return check.get("test").is_some() && check.get("disable") != Some(&Value::Bool(true));
    }
    service.get("build").is_some() && runtime_stage().iter().any(|(k, _)| k == "HEALTHCHECK")
}

/// Compose's own formats of the schema, as docker compose checks them.
fn is_duration(value: &str) -> bool {
    // Go durations: one or more <number><unit>, e.g. 1m30s, 500ms, 10s.
    let mut rest = value;
    if rest.is_empty() {
        return false;
    }
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        if digits == 0 {
            return false;
        }
        rest = &rest[digits..];
        let Some(unit) = ["ns", "us", "µs", "ms", "s", "m", "h"]
            .iter()
            .find(|unit| rest.starts_with(**unit))
        else {
            return false;
        };
        rest = &rest[unit.len()..];
    }
    true
}

fn is_port_spec(value: &str) -> bool {
    // [ip:][host port[-range]:]container port[-range][/protocol]
    let (spec, protocol) = match value.split_once('/') {
        Some((spec, protocol)) => (spec, Some(protocol)),
        None => (value, None),
    };
    if protocol.is_some_and(|p| !matches!(p, "tcp" | "udp" | "sctp")) {
        return false;
    }
    let range = |part: &str| {
        !part.is_empty()
            && part
                .split('-')
                .all(|p| !p.is_empty() && p.parse::<u16>().is_ok())
    };
    let parts: Vec<&str> = spec.split(':').collect();
    match parts.as_slice() {
        [container] => range(container),
        [host, container] => range(host) && range(container),
        [ip, host, container] => {
            ip.parse::<std::net::IpAddr>().is_ok()
                && (host.is_empty() || range(host))
                && range(container)
        }
        _ => false,
    }
}

#[test]
fn compose_file_follows_the_compose_specification() {
    let schema: Value = serde_json::from_str(&read(&repo("tests/data/compose-spec.json")))
        .expect("tests/data/compose-spec.json is JSON");
    let validator = jsonschema::options()
        .should_validate_formats(true)
        .with_format("duration", is_duration)
        .with_format("ports", is_port_spec)
        .with_format("expose", is_port_spec)
        .build(&schema)
        .expect("the Compose schema compiles");
    let compose = Compose::load();
    let problems: Vec<String> = validator
        .iter_errors(&compose.0)
        .map(|error| format!("docker-compose.yml at {}: {error}", error.instance_path()))
        .collect();
    fail_on(problems);
    // The schema must not be a pushover: a misspelt key and a bad duration fail.
    let mut broken = compose.0.clone();
    broken["services"]["nats"]["helthcheck"] = Value::Bool(true);
    broken["services"]["rabbitmq"]["healthcheck"]["interval"] = "10 seconds".into();
    assert_eq!(validator.iter_errors(&broken).count(), 2);
}

#[test]
fn compose_dependencies_can_be_met_and_published_ports_do_not_clash() {
    let compose = Compose::load();
    let mut problems = Vec::new();
    let mut published: BTreeMap<String, String> = BTreeMap::new();
    for (name, service) in compose.services() {
        for (dependency, condition) in depends_on(service) {
            let Some(target) = compose.services().get(&dependency) else {
                problems.push(format!(
                    "{name} depends on `{dependency}`, which is no service"
                ));
                continue;
            };
            match condition.as_str() {
                "service_healthy" if !has_health_check(target) => problems.push(format!(
                    "{name} waits for `{dependency}` to be healthy, which has no health check"
                )),
                "service_completed_successfully"
                    if target
                        .get("restart")
                        .is_some_and(|r| text(r) != "no" && text(r) != "on-failure") =>
                {
                    problems.push(format!(
                        "{name} waits for `{dependency}` to complete, which restarts"
                    ))
                }
                "service_healthy" | "service_completed_successfully" | "service_started" => {}
                other => problems.push(format!("{name}: unknown condition {other}")),
            }
        }
        for port in published_ports(service) {
            if let Some(other) = published.insert(port.clone(), name.clone()) {
                problems.push(format!("{name} and {other} both publish {port}"));
            }
        }
    }
    fail_on(problems);
}

// ---------------------------------------------------------------------------------------
// deploy/Dockerfile

/// The instructions of the Dockerfile's last stage (the runtime image): (INSTRUCTION,
/// arguments), continuation lines joined, comments left out.
fn runtime_stage() -> Vec<(String, String)> {
    let text = read(&repo("deploy/Dockerfile"));
    let mut joined = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        let trimmed = line.trim();
        if trimmed.starts_with('#') || (trimmed.is_empty() && current.is_empty()) {
            continue;
        }
        match trimmed.strip_suffix('\\') {
            Some(part) => {
                current.push_str(part);
                current.push(' ');
            }
            None => {
                current.push_str(trimmed);
                joined.push(std::mem::take(&mut current));
            }
        }
    }
    let instructions: Vec<(String, String)> = joined
        .iter()
        .filter_map(|line| {
            let (keyword, rest) = line.split_once(char::is_whitespace)?;
            Some((keyword.to_uppercase(), rest.trim().to_owned()))
        })
        .collect();
    let last_from = instructions
        .iter()
        .rposition(|(k, _)| k == "FROM")
        .expect("the Dockerfile has a FROM");
    instructions[last_from..].to_vec()
}

/// `ENV NAME=value NAME=value` of the runtime image.
fn image_env() -> BTreeMap<String, String> {
    runtime_stage()
        .iter()
        .filter(|(k, _)| k == "ENV")
        .flat_map(|(_, rest)| {
            rest.split_whitespace()
                .filter_map(|pair| pair.split_once('='))
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect::<Vec<_>>()
        })
        .collect()
}

/// The JSON array of an exec-form instruction, e.g. `CMD ["run", "-c", "..."]`.
fn exec_form(arguments: &str) -> Vec<String> {
    let start = arguments.find('[').expect("exec form");
    serde_json::from_str(&arguments[start..]).expect("an exec-form JSON array")
}

fn listen_port(listen: &str) -> u16 {
    listen
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("`{listen}` has no port"))
}

/// The config path of the container: `-c` of the service's command, else the image's.
fn container_config_path(service: &Value) -> String {
    let command: Vec<String> = match service.get("command") {
        Some(Value::Array(items)) => items.iter().map(text).collect(),
        Some(other) => panic!("broker-bridge's command should be a list: {other}"),
        None => {
            let stage = runtime_stage();
            let (_, cmd) = stage
                .iter()
                .find(|(k, _)| k == "CMD")
                .expect("the image has a CMD");
            exec_form(cmd)
        }
    };
    let at = command
        .iter()
        .position(|a| a == "-c" || a == "--config")
        .expect("the command names its config with -c");
    command[at + 1].clone()
}

#[test]
fn the_image_runs_unprivileged_and_probes_its_admin_listener() {
    let stage = runtime_stage();
    let env = image_env();
    let admin = listen_port(&env["BROKER_BRIDGE__ADMIN__LISTEN"]);
    let webhook = listen_port(&env["BROKER_BRIDGE__WEBHOOK__LISTEN"]);
    let instruction = |name: &str| {
        stage
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, rest)| rest.clone())
            .unwrap_or_else(|| panic!("the runtime stage has no {name}"))
    };
    let health = instruction("HEALTHCHECK");
    let (options, command) = health.split_once("CMD").expect("HEALTHCHECK ... CMD");
    assert_eq!(
        exec_form(command),
        [
            "broker-bridge",
            "probe",
            &format!("http://127.0.0.1:{admin}/healthz")
        ],
        "the health check probes the admin listener the image configures"
    );
    // probe gives up after 3s; Docker's timeout must leave it that time.
    let timeout = options
        .split_whitespace()
        .find_map(|o| o.strip_prefix("--timeout="))
        .expect("HEALTHCHECK --timeout");
    assert!(
        timeout.trim_end_matches('s').parse::<u32>().unwrap() > 3,
        "{timeout}"
    );
    let exposed: BTreeSet<u16> = instruction("EXPOSE")
        .split_whitespace()
        .flat_map(port_range)
        .collect();
    assert_eq!(exposed, BTreeSet::from([admin, webhook]));
    let user = instruction("USER");
    assert!(user != "root" && user != "0", "runs as {user}");
    for (keyword, rest) in &stage {
        assert!(
            !(keyword == "RUN" && (rest.contains("curl") || rest.contains("wget"))),
            "the runtime image needs no HTTP client: {rest}"
        );
    }
    // The compose service reaches both listeners the image opens.
    let compose = Compose::load();
    let ports = container_ports(compose.service("broker-bridge"));
    assert!(
        ports.contains(&admin) && ports.contains(&webhook),
        "{ports:?}"
    );
}

// ---------------------------------------------------------------------------------------
// The config broker-bridge runs in docker-compose.yml

/// A broker address in the config.
#[derive(Debug)]
struct Endpoint {
    /// Where it was found, for messages.
    origin: String,
    host: String,
    port: u16,
    /// A Kafka bootstrap address: the broker must also advertise it.
    kafka: bool,
    /// AMQP user and password (`guest`/`guest` when the config gives none).
    amqp_login: Option<(String, String)>,
}

fn default_port(scheme: &str) -> u16 {
    match scheme {
        "amqp" => 5672,
        "amqps" => 5671,
        "nats" | "tls" => 4222,
        "mqtt" | "tcp" => 1883,
        "mqtts" | "ssl" => 8883,
        "http" => 80,
        "https" => 443,
        other => panic!("no default port known for {other}://"),
    }
}

/// `scheme://[user[:password]@]host[:port][/...]`.
fn url_endpoint(origin: &str, url: &str) -> Endpoint {
    let (scheme, rest) = url
        .split_once("://")
        .unwrap_or_else(|| panic!("{origin}: `{url}` is not a URL"));
    let authority = rest.split(['/', '?']).next().unwrap_or_default();
    let (login, address) = match authority.rsplit_once('@') {
        Some((login, address)) => (Some(login), address),
        None => (None, authority),
    };
    let (host, port) = match address.rsplit_once(':') {
        Some((host, port)) => (host, port.parse().expect("a port number")),
        None => (address, default_port(scheme)),
    };
    let amqp_login = scheme.starts_with("amqp").then(|| match login {
        Some(login) => {
            let (user, password) = login.split_once(':').unwrap_or((login, ""));
            (user.to_owned(), password.to_owned())
        }
        None => ("guest".to_owned(), "guest".to_owned()),
    });
    Endpoint {
        origin: origin.to_owned(),
        host: host.to_owned(),
        port,
        kafka: false,
        amqp_login,
    }
}

/// broker-bridge's config as the container sees it: the main file and the files it
/// includes, read from the repository through the service's bind mounts, with the
/// image's and the service's environment applied as the daemon applies it.
struct ComposeConfig {
    env: BTreeMap<String, String>,
    /// The main file's tables, overrides and `${...}` applied.
    main: Value,
    /// Every `[[bridge]]` table, `${...}` applied, with the file it came from.
    bridges: Vec<(PathBuf, Value)>,
}

impl ComposeConfig {
    fn load(compose: &Compose) -> ComposeConfig {
        use broker_bridge::config::load::{Schema, apply_env_overrides, interpolate};
        let schema = Schema::new(&broker_bridge::sources::KINDS);
        let service = compose.service("broker-bridge");
        let mut env = image_env();
        env.extend(environment(service));
        let mounts = bind_mounts(service);
        let config_path = container_config_path(service);
        let main_file = host_path(&mounts, &config_path)
            .unwrap_or_else(|| panic!("{config_path} is not mounted into broker-bridge"));
        let lookup = |name: &str| env.get(name).cloned();
        let prepare = |value: &mut Value, file: &Path| {
            interpolate(&schema, value, &mut String::new(), &lookup)
                .unwrap_or_else(|e| panic!("{}: {e}", file.display()))
        };

        let mut main = toml_value(&main_file);
        apply_env_overrides(&mut main, env.clone()).expect("the overrides apply");
        let mut bridges = Vec::new();
        let own = main
            .as_object_mut()
            .unwrap()
            .remove("bridge")
            .unwrap_or(Value::Array(Vec::new()));
        prepare(&mut main, &main_file);
        for mut bridge in own.as_array().cloned().unwrap_or_default() {
            prepare(&mut bridge, &main_file);
            bridges.push((main_file.clone(), bridge));
        }
        let container_dir = Path::new(&config_path).parent().unwrap();
        for pattern in main["include"].as_array().into_iter().flatten() {
            let pattern = container_dir.join(text(pattern));
            let host_pattern =
                host_path(&mounts, &pattern.to_string_lossy()).unwrap_or_else(|| {
                    panic!(
                        "include {} is not mounted into broker-bridge",
                        pattern.display()
                    )
                });
            let mut files: Vec<PathBuf> = glob::glob(&host_pattern.to_string_lossy())
                .unwrap()
                .map(Result::unwrap)
                .collect();
            files.sort();
            assert!(
                !files.is_empty(),
                "{} matches no file",
                host_pattern.display()
            );
            for file in files {
                let included = toml_value(&file);
                for mut bridge in included["bridge"].as_array().cloned().unwrap_or_default() {
                    prepare(&mut bridge, &file);
                    bridges.push((file.clone(), bridge));
                }
            }
        }
        ComposeConfig { env, main, bridges }
    }

    /// Every broker address: the exchange's and each bridge's `url` (several,
    /// comma-separated, for NATS), `brokers` (Kafka) and `endpoint_url` (S3).
    fn endpoints(&self) -> Vec<Endpoint> {
        let exchange_url = self.main["exchange"]["url"]
            .as_str()
            .map(str::to_owned)
            .unwrap_or_else(|| {
                broker_bridge::config::ExchangeConfig::default()
                    .url
                    .expose()
                    .to_owned()
            });
        let mut endpoints = vec![url_endpoint("[exchange] url", &exchange_url)];
        for (file, bridge) in &self.bridges {
            let name = text(&bridge["name"]);
            let file = file.file_name().unwrap().to_string_lossy();
            let origin = |key: &str| format!("{file}: bridge `{name}` {key}");
            for key in ["url_file", "brokers_file", "endpoint_url_file"] {
                assert!(
                    bridge.get(key).is_none(),
                    "{}: this test cannot follow *_file addresses",
                    origin(key)
                );
            }
            if let Some(urls) = bridge.get("url").map(text) {
                for url in urls.split(',').map(str::trim).filter(|u| !u.is_empty()) {
                    let mut endpoint = url_endpoint(&origin("url"), url);
                    if let (Some(login), Some(user)) =
                        (&mut endpoint.amqp_login, bridge.get("user"))
                    {
                        *login = (
                            text(user),
                            bridge.get("password").map(text).unwrap_or_default(),
                        );
                    }
                    endpoints.push(endpoint);
                }
            }
            if let Some(brokers) = bridge.get("brokers") {
                let list: Vec<String> = match brokers {
                    Value::Array(items) => items.iter().map(text).collect(),
                    other => text(other)
                        .split(',')
                        .map(|b| b.trim().to_owned())
                        .collect(),
                };
                for broker in list {
                    let (host, port) = broker.rsplit_once(':').expect("host:port");
                    endpoints.push(Endpoint {
                        origin: origin("brokers"),
                        host: host.to_owned(),
                        port: port.parse().expect("a port number"),
                        kafka: true,
                        amqp_login: None,
                    });
                }
            }
            if let Some(url) = bridge.get("endpoint_url").map(text) {
                endpoints.push(url_endpoint(&origin("endpoint_url"), &url));
            }
        }
        endpoints
    }
}

/// RabbitMQ's definitions loaded at boot, if the service mounts them.
fn rabbitmq_definitions(compose: &Compose, service: &str) -> Option<Value> {
    let mounts = bind_mounts(compose.service(service));
    let file = host_path(&mounts, "/etc/rabbitmq/definitions.json")?;
    Some(serde_json::from_str(&read(&file)).expect("definitions.json is JSON"))
}

/// True when `password` matches a `rabbit_password_hashing_sha256` hash:
/// base64(salt[4] ++ sha256(salt ++ password)).
fn password_matches(hash: &str, password: &str) -> bool {
    use base64::Engine;
    use sha2::Digest;
    let Ok(raw) = base64::engine::general_purpose::STANDARD.decode(hash) else {
        return false;
    };
    raw.len() == 36 && {
        let (salt, digest) = raw.split_at(4);
        sha2::Sha256::new()
            .chain_update(salt)
            .chain_update(password.as_bytes())
            .finalize()
            .as_slice()
            == digest
    }
}

/// An AMQP login works against the definitions: the user exists with this password
/// and has permissions on a vhost.
fn check_amqp_login(
    definitions: &Value,
    (user, password): &(String, String),
    origin: &str,
    problems: &mut Vec<String>,
) {
    let users = definitions["users"].as_array().cloned().unwrap_or_default();
    match users.iter().find(|u| u["name"] == user.as_str()) {
        None => problems.push(format!(
            "{origin}: user `{user}` is not in deploy/rabbitmq/definitions.json"
        )),
        Some(entry) => {
            if !password_matches(
                entry["password_hash"].as_str().unwrap_or_default(),
                password,
            ) {
                problems.push(format!(
                    "{origin}: the password of `{user}` does not match definitions.json"
                ));
            }
            let permitted = definitions["permissions"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|p| p["user"] == user.as_str());
            if !permitted {
                problems.push(format!("{origin}: `{user}` has no permissions"));
            }
        }
    }
}

#[test]
fn every_broker_the_compose_config_uses_is_a_service_broker_bridge_waits_for() {
    let compose = Compose::load();
    let config = ComposeConfig::load(&compose);
    let waits_for = depends_on(compose.service("broker-bridge"));
    let endpoints = config.endpoints();
    let mut problems = Vec::new();
    for endpoint in &endpoints {
        let Endpoint {
            origin, host, port, ..
        } = endpoint;
        let Some(service) = compose.services().get(host) else {
            problems.push(format!(
                "{origin}: `{host}:{port}` is not a service of docker-compose.yml (is an environment variable missing from broker-bridge's `environment`?)"
            ));
            continue;
        };
        if !container_ports(service).contains(port) {
            problems.push(format!(
                "{origin}: service `{host}` does not serve port {port} (its expose/ports: {:?})",
                container_ports(service)
            ));
        }
        if endpoint.kafka {
            let advertised = environment(service)
                .get("KAFKA_ADVERTISED_LISTENERS")
                .cloned()
                .unwrap_or_default();
            if !advertised.contains(&format!("://{host}:{port}")) {
                problems.push(format!(
                    "{origin}: `{host}` does not advertise {host}:{port} ({advertised}), so clients are sent elsewhere"
                ));
            }
        }
        if let (Some(login), Some(definitions)) =
            (&endpoint.amqp_login, rabbitmq_definitions(&compose, host))
        {
            check_amqp_login(&definitions, login, origin, &mut problems);
        }
        match waits_for.get(host).map(String::as_str) {
            Some("service_healthy") => {}
            other => problems.push(format!(
                "{origin}: broker-bridge should wait for `{host}` with condition service_healthy, not {other:?}"
            )),
        }
    }
    fail_on(problems);
    // Every kind with a broker in the recipes is among them.
    for wanted in ["nats", "mosquitto", "kafka", "minio", "rabbitmq"] {
        assert!(
            endpoints.iter().any(|e| e.host == wanted),
            "no address points at {wanted}: {endpoints:#?}"
        );
    }
    assert!(
        config.env.contains_key("AMQP_URL"),
        "the exchange address comes from the compose environment"
    );
}

/// Copies a file, or a folder with everything in it.
fn copy_tree(from: &Path, to: &Path) {
    if from.is_dir() {
        std::fs::create_dir_all(to).unwrap();
        for entry in std::fs::read_dir(from).unwrap() {
            let entry = entry.unwrap();
            copy_tree(&entry.path(), &to.join(entry.file_name()));
        }
    } else {
        std::fs::create_dir_all(to.parent().unwrap()).unwrap();
        std::fs::copy(from, to).unwrap_or_else(|e| panic!("copying {}: {e}", from.display()));
    }
}

/// `broker-bridge check` on the files laid out as in the container, with only the
/// container's environment: the config the compose demo runs is valid, and includes
/// every recipe.
#[test]
fn the_compose_config_passes_check_with_the_compose_environment() {
    let compose = Compose::load();
    let service = compose.service("broker-bridge");
    let root = tempfile::tempdir().unwrap();
    for (host, container) in bind_mounts(service) {
        copy_tree(&host, &root.path().join(container.trim_start_matches('/')));
    }
    let config = root
        .path()
        .join(container_config_path(service).trim_start_matches('/'));
    let mut command = Command::new(BINARY);
    command
        .args(["check", "-c"])
        .arg(&config)
        .env_clear()
        .envs(image_env())
        .envs(environment(service));
    if let Some(path) = std::env::var_os("PATH") {
        command.env("PATH", path);
    }
    let output = command.output().expect("run broker-bridge check");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let bridges_dir = std::fs::canonicalize(config.parent().unwrap())
        .unwrap()
        .join("bridges");
    for recipe in glob::glob(&repo("bridges/*.toml").to_string_lossy()).unwrap() {
        let name = recipe.unwrap().file_name().unwrap().to_owned();
        let expected = format!("file {}", bridges_dir.join(&name).display());
        assert!(stdout.contains(&expected), "{expected} in:\n{stdout}");
    }
}

#[test]
fn minio_notifications_reach_the_queue_of_the_recipe() {
    let compose = Compose::load();
    let minio = environment(compose.service("minio"));
    let ids: Vec<&str> = minio
        .iter()
        .filter(|(_, value)| value.as_str() == "on")
        .filter_map(|(name, _)| name.strip_prefix("MINIO_NOTIFY_AMQP_ENABLE_"))
        .collect();
    let [id] = ids.as_slice() else {
        panic!("one enabled MinIO AMQP target expected: {ids:?}");
    };
    let setting = |name: &str| {
        minio
            .get(&format!("MINIO_NOTIFY_AMQP_{name}_{id}"))
            .cloned()
            .unwrap_or_else(|| panic!("MINIO_NOTIFY_AMQP_{name}_{id} is not set"))
    };

    let config = ComposeConfig::load(&compose);
    let (_, recipe) = config
        .bridges
        .iter()
        .find(|(file, _)| file.ends_with("minio-notifications-amqp.toml"))
        .expect("the recipe is included");
    assert_eq!(recipe["kind"], "amqp");
    assert_eq!(recipe["format"], "s3-notification");
    let exchange = setting("EXCHANGE");
    assert_eq!(
        recipe["bind_exchange"], exchange,
        "the recipe binds MinIO's exchange"
    );
    assert_ne!(
        exchange,
        text(&config.main["exchange"]["name"]),
        "MinIO must not publish to the routing exchange"
    );
    let routing_key = setting("ROUTING_KEY");
    assert!(
        recipe["binding_keys"]
            .as_array()
            .unwrap()
            .iter()
            .any(|k| *k == routing_key.as_str()),
        "the recipe binds MinIO's routing key {routing_key}"
    );
    assert_eq!(setting("DELIVERY_MODE"), "2", "persistent messages");

    // MinIO and the recipe meet on the same broker, which MinIO waits for.
    let minio_broker = url_endpoint("MinIO's AMQP target", &setting("URL"));
    let recipe_broker = url_endpoint("the recipe", &text(&recipe["url"]));
    assert_eq!(
        (&minio_broker.host, minio_broker.port),
        (&recipe_broker.host, recipe_broker.port)
    );
    assert_eq!(
        depends_on(compose.service("minio"))
            .get(&minio_broker.host)
            .map(String::as_str),
        Some("service_healthy")
    );

    // The exchange exists before the bridge binds to it, as MinIO declares it (a
    // different type or durability would make MinIO's declare fail).
    let definitions =
        rabbitmq_definitions(&compose, &minio_broker.host).expect("RabbitMQ loads definitions");
    let declared = definitions["exchanges"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == exchange.as_str())
        .unwrap_or_else(|| panic!("exchange {exchange} is not in definitions.json"));
    assert_eq!(declared["type"], setting("EXCHANGE_TYPE").as_str());
    assert_eq!(declared["durable"], setting("DURABLE") == "on");
    assert_eq!(declared["auto_delete"], false);
    let mut problems = Vec::new();
    check_amqp_login(
        &definitions,
        minio_broker.amqp_login.as_ref().unwrap(),
        "MinIO's AMQP target",
        &mut problems,
    );
    fail_on(problems);

    // The one-shot setup points the bucket's events at this target.
    let setup = compose.service("minio-setup");
    let script: String = setup["command"]
        .as_array()
        .map(|parts| parts.iter().map(text).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|| text(&setup["command"]));
    let arn = format!("arn:minio:sqs::{id}:amqp");
    assert!(
        script.contains("mc event add") && script.contains(&arn),
        "minio-setup adds events for {arn}: {script}"
    );
    assert_eq!(
        depends_on(setup).get("minio").map(String::as_str),
        Some("service_healthy")
    );
}

// ---------------------------------------------------------------------------------------
// Prometheus

/// Runs promtool in the repository; fails (never skips) when it is missing.
fn promtool(args: &[&str]) {
    let output = match Command::new("promtool")
        .args(args)
        .current_dir(ROOT)
        .output()
    {
        Ok(output) => output,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => panic!(
            "promtool is not installed: run scripts/deps.sh (it installs promtool from Debian's prometheus package)"
        ),
        Err(error) => panic!("running promtool: {error}"),
    };
    assert!(
        output.status.success(),
        "promtool {}:\n{}{}",
        args.join(" "),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn prometheus_config_and_alerts_pass_promtool() {
    // `check config` also loads the rule files, relative to the config's folder.
    promtool(&["check", "config", "deploy/prometheus.yml"]);
    promtool(&["check", "rules", "deploy/alerts.yml"]);
    promtool(&["test", "rules", "deploy/alerts.test.yml"]);
}

/// In the container, prometheus.yml finds its rule files where promtool finds them in
/// the repository, and scrapes broker-bridge's admin listener.
#[test]
fn prometheus_in_compose_loads_the_same_rules_and_scrapes_broker_bridge() {
    let compose = Compose::load();
    let service = compose.service("prometheus");
    let mounts = bind_mounts(service);
    // The image's default --config.file.
    let config_path = "/etc/prometheus/prometheus.yml";
    assert_eq!(
        host_path(&mounts, config_path),
        Some(repo("deploy/prometheus.yml"))
    );
    let prometheus = yaml("deploy/prometheus.yml");
    let rule_files = prometheus["rule_files"].as_array().expect("rule_files");
    assert!(!rule_files.is_empty());
    for rule_file in rule_files {
        let rule_file = text(rule_file);
        let in_container = Path::new(config_path).parent().unwrap().join(&rule_file);
        assert_eq!(
            host_path(&mounts, &in_container.to_string_lossy()),
            Some(repo("deploy").join(&rule_file)),
            "{rule_file} is mounted beside prometheus.yml"
        );
    }
    let admin = listen_port(&image_env()["BROKER_BRIDGE__ADMIN__LISTEN"]);
    let mut targets = Vec::new();
    for job in prometheus["scrape_configs"].as_array().unwrap() {
        for group in job["static_configs"].as_array().into_iter().flatten() {
            targets.extend(group["targets"].as_array().unwrap().iter().map(text));
        }
    }
    assert_eq!(targets, [format!("broker-bridge:{admin}")]);
    assert!(container_ports(compose.service("broker-bridge")).contains(&admin));
}

/// Metric and label names as `/metrics` shows them, for a webhook bridge (which has
/// the refusal counters) and one of another kind.
fn exported_names() -> (BTreeSet<String>, BTreeSet<String>) {
    let registry = Registry::default();
    registry.bridge("hook", "webhook");
    registry.bridge("orders", "kafka");
    let mut metrics = BTreeSet::new();
    let mut labels = BTreeSet::new();
    for line in registry.render().lines() {
        if line.starts_with('#') || line.is_empty() {
            continue;
        }
        let end = line.find(['{', ' ']).unwrap_or(line.len());
        metrics.insert(line[..end].to_owned());
        if let Some(inner) = line[end..]
            .strip_prefix('{')
            .and_then(|rest| rest.split_once('}'))
        {
            for pair in inner.0.split(',') {
                labels.insert(pair.split('=').next().unwrap().to_owned());
            }
        }
    }
    // Added by the scrape.
    labels.extend(["job".to_owned(), "instance".to_owned()]);
    (metrics, labels)
}

/// A PromQL expression without its string literals.
fn without_strings(expr: &str) -> String {
    let mut out = String::with_capacity(expr.len());
    let mut quote = None;
    let mut escaped = false;
    for c in expr.chars() {
        match quote {
            Some(q) => {
                if escaped {
                    escaped = false;
                } else if c == '\\' {
                    escaped = true;
                } else if c == q {
                    quote = None;
                    out.push(c);
                }
            }
            None => {
                if c == '"' || c == '\'' || c == '`' {
                    quote = Some(c);
                }
                out.push(c);
            }
        }
    }
    out
}

/// Metric names (identifiers starting with `bridge_`) and label names (in matchers and
/// in by/without lists) an expression uses.
fn names_in(expr: &str) -> (BTreeSet<String>, BTreeSet<String>) {
    let expr = without_strings(expr);
    let is_word = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == ':';
    let mut metrics = BTreeSet::new();
    let mut labels = BTreeSet::new();
    let mut words: Vec<(usize, &str)> = Vec::new();
    let mut start = None;
    for (at, c) in expr
        .char_indices()
        .chain(std::iter::once((expr.len(), ' ')))
    {
        match (is_word(c), start) {
            (true, None) => start = Some(at),
            (false, Some(from)) => {
                words.push((from, &expr[from..at]));
                start = None;
            }
            _ => {}
        }
    }
    for (at, word) in &words {
        let before = expr[..*at].chars().next_back();
        if word.starts_with("bridge_") && before != Some('$') {
            metrics.insert(word.to_string());
        }
    }
    // {label="..", label=~".."}
    let mut rest = expr.as_str();
    while let Some(open) = rest.find('{') {
        let close = rest[open..]
            .find('}')
            .map(|c| open + c)
            .unwrap_or(rest.len());
        for matcher in rest[open + 1..close].split(',') {
            let name = matcher.split(['=', '!']).next().unwrap().trim();
            if !name.is_empty() {
                labels.insert(name.to_owned());
            }
        }
        rest = &rest[close.min(rest.len())..];
        if rest.is_empty() {
            break;
        }
        rest = &rest[1..];
    }
    // by (a, b) / without (a, b)
    for (at, word) in &words {
        if *word == "by" || *word == "without" {
            let after = expr[at + word.len()..].trim_start();
            if let Some(list) = after.strip_prefix('(') {
                let list = &list[..list.find(')').unwrap_or(list.len())];
                labels.extend(
                    list.split(',')
                        .map(|l| l.trim().to_owned())
                        .filter(|l| !l.is_empty()),
                );
            }
        }
    }
    (metrics, labels)
}

/// Problems of an expression: names that broker-bridge does not export.
fn unknown_names(origin: &str, expr: &str, problems: &mut Vec<String>) -> BTreeSet<String> {
    let (exported_metrics, exported_labels) = exported_names();
    let (metrics, labels) = names_in(expr);
    for metric in &metrics {
        if !exported_metrics.contains(metric) {
            problems.push(format!(
                "{origin}: `{metric}` is not a metric broker-bridge exports"
            ));
        }
    }
    for label in &labels {
        if !exported_labels.contains(label) {
            problems.push(format!(
                "{origin}: label `{label}` is not one broker-bridge exports"
            ));
        }
    }
    metrics
}

#[test]
fn the_expression_scanner_finds_metric_and_label_names() {
    let (metrics, labels) = names_in(
        r#"histogram_quantile(0.99, sum by (bridge, le) (rate(bridge_end_to_end_seconds_bucket{bridge=~"$bridge", kind!="x{y}"}[$__rate_interval]))) and on(instance) bridge_up"#,
    );
    assert_eq!(
        metrics,
        BTreeSet::from([
            "bridge_end_to_end_seconds_bucket".to_owned(),
            "bridge_up".to_owned()
        ])
    );
    assert_eq!(
        labels,
        BTreeSet::from(["bridge".to_owned(), "kind".to_owned(), "le".to_owned()])
    );
    let mut problems = Vec::new();
    unknown_names(
        "test",
        r#"rate(bridge_events_published{result="x"}[5m])"#,
        &mut problems,
    );
    assert_eq!(problems.len(), 1, "{problems:?}");
    unknown_names(
        "test",
        r#"sum by (tenant) (bridge_in_flight)"#,
        &mut problems,
    );
    assert_eq!(problems.len(), 2, "{problems:?}");
}

#[test]
fn alerts_use_exported_metrics_and_name_the_bridge() {
    let alerts = yaml("deploy/alerts.yml");
    let mut problems = Vec::new();
    let mut names = Vec::new();
    for group in alerts["groups"].as_array().expect("groups") {
        for rule in group["rules"].as_array().expect("rules") {
            let name = text(&rule["alert"]);
            names.push(name.clone());
            let expr = text(&rule["expr"]);
            let metrics = unknown_names(&format!("alert {name}"), &expr, &mut problems);
            if metrics.is_empty() && !expr.contains("up{job=\"broker-bridge\"}") {
                problems.push(format!("alert {name}: uses no broker-bridge metric"));
            }
            if rule.get("for").is_none() {
                problems.push(format!("alert {name}: no `for`"));
            }
            let severity = text(&rule["labels"]["severity"]);
            if !matches!(severity.as_str(), "critical" | "warning") {
                problems.push(format!("alert {name}: severity `{severity}`"));
            }
            let summary = text(&rule["annotations"]["summary"]);
            let description = text(&rule["annotations"]["description"]);
            if summary.is_empty() || description.is_empty() {
                problems.push(format!("alert {name}: needs a summary and a description"));
            }
            // Per-bridge series: the annotations say which bridge.
            let per_bridge = metrics.iter().any(|m| {
                !matches!(
                    m.as_str(),
                    "bridge_exchange_up"
                        | "bridge_config_reloads_total"
                        | "bridge_config_last_reload_success_timestamp_seconds"
                )
            });
            if per_bridge
                && !(summary.contains("$labels.bridge") && description.contains("$labels.bridge"))
            {
                problems.push(format!(
                    "alert {name}: summary and description should name {{{{ $labels.bridge }}}}"
                ));
            }
        }
    }
    fail_on(problems);
    for wanted in [
        "BridgeDown",
        "BrokerBridgeExchangeDown",
        "BridgeDeadLetters",
        "BridgeUnroutableEvents",
        "BrokerBridgeConfigReloadFailed",
        "BridgeSourceLagGrowing",
        "BridgeWebhookRefusals",
    ] {
        assert!(names.iter().any(|n| n == wanted), "no alert {wanted}");
    }
}

/// Every query of the dashboard (panel targets, template variables).
fn dashboard_queries(value: &Value, path: &str, out: &mut Vec<(String, String)>) {
    match value {
        Value::Object(map) => {
            for (key, item) in map {
                let here = format!("{path}.{key}");
                match (key.as_str(), item) {
                    ("expr" | "definition" | "query", Value::String(query)) => {
                        out.push((here, query.clone()))
                    }
                    _ => dashboard_queries(item, &here, out),
                }
            }
        }
        Value::Array(items) => {
            for (index, item) in items.iter().enumerate() {
                dashboard_queries(item, &format!("{path}[{index}]"), out);
            }
        }
        _ => {}
    }
}

#[test]
fn grafana_dashboard_uses_exported_metrics_per_bridge() {
    let dashboard: Value = serde_json::from_str(&read(&repo("deploy/grafana-dashboard.json")))
        .expect("deploy/grafana-dashboard.json is JSON");
    let variables = dashboard["templating"]["list"]
        .as_array()
        .expect("variables");
    let variable = |name: &str| {
        variables
            .iter()
            .find(|v| v["name"] == name)
            .unwrap_or_else(|| panic!("no template variable `{name}`"))
    };
    assert_eq!(variable("datasource")["type"], "datasource");
    assert_eq!(variable("datasource")["query"], "prometheus");
    assert_eq!(variable("bridge")["type"], "query");

    let mut queries = Vec::new();
    dashboard_queries(&dashboard, "", &mut queries);
    let mut problems = Vec::new();
    let mut used = BTreeSet::new();
    for (path, query) in &queries {
        // The datasource variable's "prometheus" is a plugin id, not PromQL.
        if query == "prometheus" {
            continue;
        }
        used.extend(unknown_names(path, query, &mut problems));
    }
    fail_on(problems);
    for wanted in [
        "bridge_messages_received_total",
        "bridge_events_published_total",
        "bridge_events_dead_lettered_total",
        "bridge_events_unroutable_total",
        "bridge_end_to_end_seconds_bucket",
        "bridge_in_flight",
        "bridge_source_lag",
        "bridge_up",
        "bridge_config_reloads_total",
        "bridge_requests_refused_total",
    ] {
        assert!(used.contains(wanted), "the dashboard shows no {wanted}");
    }
    // Panels query the selected datasource and the selected bridges.
    for panel in dashboard["panels"].as_array().unwrap() {
        if panel["type"] == "row" {
            continue;
        }
        assert_eq!(
            panel["datasource"]["uid"], "${datasource}",
            "{}",
            panel["title"]
        );
        for target in panel["targets"].as_array().unwrap() {
            let expr = text(&target["expr"]);
            let (metrics, _) = names_in(&expr);
            let per_bridge = metrics.iter().any(|m| {
                !matches!(
                    m.as_str(),
                    "bridge_exchange_up" | "bridge_config_reloads_total"
                )
            });
            assert!(
                !per_bridge || expr.contains(r#"bridge=~"$bridge""#),
                "{}: {expr}",
                panel["title"]
            );
        }
    }
}
