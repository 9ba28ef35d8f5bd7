use super::env::interpolate_str;
use super::secrets::{assigns_secret, holds_literal_secret};
use super::*;

fn schema() -> Schema<'static> {
    Schema::new(&crate::sources::KINDS)
}

fn env(name: &str) -> Option<String> {
    match name {
        "HOST" => Some("rabbit".into()),
        "EMPTY" => Some(String::new()),
        _ => None,
    }
}

#[test]
fn interpolates_variables_defaults_and_escapes() {
    assert_eq!(
        interpolate_str("amqp://${HOST}:5672", &env).unwrap(),
        "amqp://rabbit:5672"
    );
    assert_eq!(
        interpolate_str("${MISSING:-x}/${EMPTY:-y}", &env).unwrap(),
        "x/y"
    );
    assert_eq!(
        interpolate_str("cost $5 $${HOST}", &env).unwrap(),
        "cost $5 ${HOST}"
    );
    let err = interpolate_str("${MISSING}", &env).unwrap_err();
    assert!(err.contains("MISSING"), "{err}");
    assert!(interpolate_str("${1BAD}", &env).is_err());
    assert!(interpolate_str("${OPEN", &env).is_err());
}

#[test]
fn interpolation_errors_name_the_key() {
    let mut value = serde_json::json!({"exchange": {"url": "${MISSING}"}});
    let err = interpolate(&schema(), &mut value, &mut String::new(), &env).unwrap_err();
    assert!(
        matches!(err, ConfigError::Key { ref key, .. } if key == "exchange.url"),
        "{err}"
    );
}

fn vars(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[test]
fn env_overrides_take_their_type_from_the_schema() {
    let mut root = serde_json::json!({"exchange": {"name": "file"}});
    apply_env_overrides(
        &mut root,
        vars(&[
            ("BROKER_BRIDGE__EXCHANGE__NAME", "123"),
            ("BROKER_BRIDGE__DEFAULTS__TENANT", "4711"),
            ("BROKER_BRIDGE__DEFAULTS__MAX_IN_FLIGHT", "10"),
            ("BROKER_BRIDGE__EXCHANGE__DURABLE", "false"),
            ("BROKER_BRIDGE__EXCHANGE__BACKOFF__MAX", "5s"),
            ("OTHER__EXCHANGE__NAME", "ignored"),
        ]),
    )
    .unwrap();
    assert_eq!(
        root,
        serde_json::json!({
            "exchange": {"name": "123", "durable": false, "backoff": {"max": "5s"}},
            "defaults": {"tenant": "4711", "max_in_flight": 10},
        })
    );
}

#[test]
fn bad_env_overrides_name_the_key_and_the_variable() {
    for (name, value, key) in [
        (
            "BROKER_BRIDGE__DEFAULTS__MAX_IN_FLIGHT",
            "many",
            "defaults.max_in_flight",
        ),
        (
            "BROKER_BRIDGE__EXCHANGE__DURABLE",
            "yes",
            "exchange.durable",
        ),
        ("BROKER_BRIDGE__BRIDGE__NAME", "x", "bridge.name"),
        ("BROKER_BRIDGE__EXCHANGE____URL", "x", "exchange..url"),
    ] {
        let mut root = serde_json::json!({});
        let err = apply_env_overrides(&mut root, vars(&[(name, value)])).unwrap_err();
        let text = err.to_string();
        assert!(text.contains(key) && text.contains(name), "{text}");
    }
}

#[test]
fn file_paths_are_relative_to_the_file_that_names_them() {
    let mut value = serde_json::json!({
        "creds_file": "bridge.creds",
        "tls": {"ca_file": "certs/ca.pem", "key_file": "/abs/key.pem"},
    });
    resolve_files(
        &schema(),
        &mut value,
        Path::new("/etc/bb/bridges"),
        &mut String::new(),
    )
    .unwrap();
    assert_eq!(
        value,
        serde_json::json!({
            "creds_file": "/etc/bb/bridges/bridge.creds",
            "tls": {"ca_file": "/etc/bb/bridges/certs/ca.pem", "key_file": "/abs/key.pem"},
        })
    );
}

/// Loads a config of `[defaults]` lines and one NATS bridge with `bridge` lines.
fn load_bridge(defaults: &str, bridge: &str) -> Result<Config, ConfigError> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.toml");
    std::fs::write(
        &path,
        format!(
            "[defaults]\n{defaults}\n[[bridge]]\nkind = \"nats\"\nsubject = \"in.>\"\n{bridge}\n"
        ),
    )
    .unwrap();
    load(&path, &crate::sources::KINDS).map(|loaded| loaded.config)
}

fn bridge_error(bridge: &str) -> String {
    load_bridge("", bridge).unwrap_err().to_string()
}

#[test]
fn tenants_are_valid_words_or_templates_of_the_transport() {
    for (tenant, says) in [
        ("acme.eu", "is not valid"),
        ("acme eu", "is not valid"),
        ("", "is not valid"),
        ("_", "reserved"),
        ("{json:/tenant}", "never from the payload"),
        ("t.{subject[1]}", "can never be part of a valid tenant"),
    ] {
        let error = bridge_error(&format!("name = \"b\"\ntenant = \"{tenant}\""));
        assert!(
            error.contains("bridge `b`") && error.contains("key `tenant`") && error.contains(says),
            "{tenant}: {error}"
        );
    }
    let error = load_bridge("tenant = \"acme.eu\"", "name = \"b\"")
        .unwrap_err()
        .to_string();
    assert!(error.contains("key `defaults.tenant`"), "{error}");
    let config = load_bridge("", "name = \"b\"\ntenant = \"acme_eu-1\"").unwrap();
    assert_eq!(config.bridges[0].fixed_tenant(), Some("acme_eu-1"));
    let config = load_bridge("", "name = \"b\"\ntenant = \"t-{subject[1]}\"").unwrap();
    assert_eq!(config.bridges[0].routing_pattern(), "event.*.b.*");
}

#[test]
fn source_words_are_valid_as_they_stand() {
    let error = bridge_error("name = \"b\"\nsource_name = \"or.ders\"");
    assert!(error.contains("key `source_name`"), "{error}");
    let long = "n".repeat(65);
    let error = bridge_error(&format!("name = \"{long}\""));
    assert!(
        error.contains("key `source_name`") && error.contains("set `source_name`"),
        "{error}"
    );
    let config = load_bridge("", &format!("name = \"{long}\"\nsource_name = \"short\"")).unwrap();
    assert_eq!(config.bridges[0].source_name, "short");
}

#[test]
fn bucket_tenants_map_buckets_to_valid_tenants_for_notifications_only() {
    let notifications = "name = \"b\"\nformat = \"s3-notification\"";
    let config = load_bridge(
        "",
        &format!(
            "{notifications}\nbucket_tenants = {{ uploads = \"acme\", \"photos.eu\" = \"globex\" }}"
        ),
    )
    .unwrap();
    let bridge = &config.bridges[0];
    assert_eq!(
        bridge.bucket_tenants.as_ref().unwrap()["photos.eu"],
        "globex"
    );
    assert_eq!(bridge.fixed_tenant(), None);
    assert_eq!(bridge.deadletter_pattern(), "deadletter.*.b");
    assert_eq!(
        bridge.tenant_setting(),
        "by bucket: photos.eu = globex, uploads = acme"
    );
    for (bridge, says) in [
        (
            "name = \"b\"\nbucket_tenants = { uploads = \"acme\" }".to_owned(),
            "applies only to `format = \"s3-notification\"`",
        ),
        (
            format!(
                "{notifications}\ntenant = \"acme\"\nbucket_tenants = {{ uploads = \"acme\" }}"
            ),
            "set either `tenant` or `bucket_tenants`",
        ),
        (
            format!("{notifications}\nbucket_tenants = {{}}"),
            "at least one bucket",
        ),
        (
            format!("{notifications}\nbucket_tenants = {{ uploads = \"acme.eu\" }}"),
            "key `bucket_tenants.uploads`: tenant `acme.eu` is not valid",
        ),
    ] {
        let error = bridge_error(&bridge);
        assert!(
            error.contains("bridge `b`") && error.contains(says),
            "{error}"
        );
    }
}

#[test]
fn glob_roots() {
    assert_eq!(
        glob_root(Path::new("/etc/bb/bridges/*.toml")),
        Some(PathBuf::from("/etc/bb/bridges"))
    );
    assert_eq!(
        glob_root(Path::new("/etc/bb/one.toml")),
        Some(PathBuf::from("/etc/bb"))
    );
}
fn syntax_error(text: &str) -> String {
    let error = toml::from_str::<toml::Table>(text).unwrap_err();
    toml_syntax_error(&schema(), text, &error)
}

#[test]
fn syntax_errors_give_line_and_column_and_hide_secret_lines() {
    let shown = syntax_error("[exchange]\nname = \"events\nkind = \"topic\"\n");
    assert!(
        shown.starts_with("TOML syntax error at line 2, column "),
        "{shown}"
    );
    assert!(shown.contains("name = \"events"), "{shown}");
    for text in [
        "[[bridge]]\nname = \"a\"\nbearer_token = \"tok-SECRET-1\n",
        "[[bridge]]\nname = \"a\"\nbearer_token = \"tok-SECRET-1\" x\n",
        "[[bridge]]\ntls = { password = \"tok-SECRET-1 }\n",
        "[exchange]\n\"url\" = \"amqp://u:tok-SECRET-1@h\" ]\n",
        "exchange.url = 'amqp://u:tok-SECRET-1@h\n",
        "[[bridge]]\nproperties = { \"ssl.key.password\" = \"tok-SECRET-1 }\n",
        "[[bridge]]\nhmac_secret = \"\"\"\nfirst\ntok-SECRET-1\\q\n\"\"\"\n",
    ] {
        let hidden = syntax_error(text);
        assert!(hidden.contains("TOML syntax error at line "), "{hidden}");
        assert!(hidden.contains("the line is not shown"), "{text}: {hidden}");
        assert!(!hidden.contains("SECRET"), "{text}: {hidden}");
    }
    // A `_file` key holds a path, which is fine to show.
    let shown = syntax_error("[[bridge]]\npassword_file = \"/run/pw\" x\n");
    assert!(shown.contains("/run/pw"), "{shown}");
}

#[test]
fn secret_keys_are_recognised_in_any_spelling() {
    for key in [
        "url",
        "exchange.url",
        "password",
        "ssl.key.password",
        "sasl.oauthbearer.client.secret",
        "hmac_secret",
    ] {
        assert!(is_secret_key(&schema(), key), "{key}");
    }
    for key in ["password_file", "url_file", "user", "queue", "public_url"] {
        assert!(!is_secret_key(&schema(), key), "{key}");
    }
    assert!(assigns_secret(
        &schema(),
        "  tls = { ca_file = \"x\", password = \"p\" }"
    ));
    assert!(!assigns_secret(&schema(), "user = \"password\""));
    for spelled in [
        "admin.\"token\" = \"abc",
        "admin . token = \"abc",
        "properties = { \"ssl.key.pem\" = \"-----BEGIN",
    ] {
        assert!(assigns_secret(&schema(), spelled), "{spelled}");
    }
}

#[test]
fn literal_secrets_are_told_from_references() {
    let holds = |value: serde_json::Value| holds_literal_secret(&schema(), &value);
    assert!(holds(
        serde_json::json!({"exchange": {"url": "amqp://u:p@h"}})
    ));
    assert!(holds(serde_json::json!({"bridge": [{"token": "t0k"}]})));
    assert!(holds(serde_json::json!({"url": "nats://t0k@h"})));
    assert!(!holds(
        serde_json::json!({"exchange": {"url": "amqp://h:5672/%2f"}})
    ));
    assert!(!holds(serde_json::json!({"url": "amqp://u:${PW}@h"})));
    assert!(!holds(serde_json::json!({"password": "${PW}"})));
    assert!(!holds(serde_json::json!({"password_file": "pw"})));
}

#[test]
fn interpolation_errors_do_not_quote_a_secret() {
    let mut value = serde_json::json!({"bridge": {"password": "ab${c-SECRET-2}"}});
    let error = interpolate(&schema(), &mut value, &mut String::new(), &env)
        .unwrap_err()
        .to_string();
    assert!(error.contains("bridge.password"), "{error}");
    assert!(!error.contains("SECRET"), "{error}");
    let mut value = serde_json::json!({"queue": "ab${c-SHOWN}"});
    let error = interpolate(&schema(), &mut value, &mut String::new(), &env)
        .unwrap_err()
        .to_string();
    assert!(error.contains("c-SHOWN"), "{error}");
}
