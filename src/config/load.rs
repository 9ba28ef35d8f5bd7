//! Loading: the main TOML file and its `include` globs through the `config` crate,
//! `BROKER_BRIDGE__SECTION__KEY` environment overrides, `${VAR}` / `${VAR:-default}`
//! interpolation, `<key>_file` secrets, then the typed schema and its checks.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use serde_json::Value;

use super::{BridgeSpec, CommonKeys, Config, PayloadFormat, TopLevel, fields};
use crate::sources;
use crate::template::Template;

/// Keys that may be given as `<key>_file`: a path whose contents (trailing newline
/// removed) become the value. Keeps secrets out of the config file.
pub const SECRET_KEYS: [&str; 4] = ["url", "password", "token", "nkey"];

/// Prefix of environment overrides: `BROKER_BRIDGE__EXCHANGE__URL` sets `exchange.url`.
pub const ENV_PREFIX: &str = "BROKER_BRIDGE";

/// A configuration error. Every variant names where the mistake is.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("{}: {message}", path.display())]
    File { path: PathBuf, message: String },
    #[error("key `{key}`: {message}")]
    Key { key: String, message: String },
    #[error("bridge `{bridge}`: {message}")]
    Bridge { bridge: String, message: String },
}

/// A loaded config and the files it was read from (to watch them).
#[derive(Debug, Clone)]
pub struct Loaded {
    pub config: Config,
    /// The main file and every included file.
    pub files: Vec<PathBuf>,
    /// Directories to watch: those of the files and of every include pattern, so a new
    /// file matching a glob is noticed too.
    pub watch_dirs: Vec<PathBuf>,
}

fn read_toml(path: &Path, with_env: bool) -> Result<Value, ConfigError> {
    let mut builder = config::Config::builder().add_source(
        config::File::from(path)
            .format(config::FileFormat::Toml)
            .required(true),
    );
    if with_env {
        builder = builder.add_source(
            config::Environment::with_prefix(ENV_PREFIX)
                .prefix_separator("__")
                .separator("__")
                .try_parsing(true),
        );
    }
    builder
        .build()
        .and_then(|c| c.try_deserialize::<Value>())
        .map_err(|e| ConfigError::File {
            path: path.to_owned(),
            message: e.to_string(),
        })
}

/// Loads and validates the configuration at `path`.
pub fn load(path: &Path) -> Result<Loaded, ConfigError> {
    let base = path.parent().unwrap_or(Path::new(".")).to_owned();
    let mut root = read_toml(path, true)?;
    let table = root.as_object_mut().ok_or_else(|| ConfigError::File {
        path: path.to_owned(),
        message: "the config must be a TOML table".into(),
    })?;

    let mut files = vec![path.to_owned()];
    let mut watch_dirs = vec![base.clone()];
    let patterns: Vec<String> = match table.get("include") {
        None => Vec::new(),
        Some(value) => serde_json::from_value(value.clone()).map_err(|_| ConfigError::Key {
            key: "include".into(),
            message: "must be a list of file patterns".into(),
        })?,
    };
    let mut bridges: Vec<Value> = match table.remove("bridge") {
        None => Vec::new(),
        Some(Value::Array(items)) => items,
        Some(_) => {
            return Err(ConfigError::Key {
                key: "bridge".into(),
                message: "must be an array of tables ([[bridge]])".into(),
            });
        }
    };
    for pattern in &patterns {
        let absolute = base.join(pattern);
        let text = absolute.to_string_lossy().into_owned();
        if let Some(dir) = glob_root(&absolute) {
            watch_dirs.push(dir);
        }
        let mut matched: Vec<PathBuf> = glob::glob(&text)
            .map_err(|e| ConfigError::Key {
                key: "include".into(),
                message: format!("`{pattern}` is not a valid pattern: {e}"),
            })?
            .filter_map(Result::ok)
            .collect();
        matched.sort();
        for file in matched {
            bridges.extend(read_include(&file)?);
            files.push(file);
        }
    }
    table.insert("bridge".into(), Value::Array(bridges));

    interpolate(&mut root, &mut String::new(), &|name| {
        std::env::var(name).ok()
    })?;
    resolve_secret_files(&mut root, &base, &mut String::new())?;

    let top: TopLevel = fields::parse(root).map_err(key_error)?;
    let config = build(top)?;
    watch_dirs.sort();
    watch_dirs.dedup();
    Ok(Loaded {
        config,
        files,
        watch_dirs,
    })
}

/// Splits a `key `x`: message` from `fields::parse` into a `Key` error.
fn key_error(message: String) -> ConfigError {
    match message
        .strip_prefix("key `")
        .and_then(|rest| rest.split_once("`: "))
    {
        Some((key, rest)) => ConfigError::Key {
            key: key.to_owned(),
            message: rest.to_owned(),
        },
        None => ConfigError::Key {
            key: "(top level)".into(),
            message,
        },
    }
}

/// The directory part of a glob before its first wildcard.
fn glob_root(pattern: &Path) -> Option<PathBuf> {
    let mut root = PathBuf::new();
    for component in pattern.components() {
        let text = component.as_os_str().to_string_lossy();
        if text.contains(['*', '?', '[']) {
            break;
        }
        root.push(component);
    }
    if root == pattern {
        root.parent().map(Path::to_owned)
    } else {
        Some(root)
    }
}

fn read_include(path: &Path) -> Result<Vec<Value>, ConfigError> {
    let value = read_toml(path, false)?;
    let file_error = |message: String| ConfigError::File {
        path: path.to_owned(),
        message,
    };
    let Value::Object(mut table) = value else {
        return Err(file_error("must be a TOML table".into()));
    };
    let bridges = match table.remove("bridge") {
        Some(Value::Array(items)) => items,
        Some(_) => return Err(file_error("`bridge` must be [[bridge]] tables".into())),
        None => Vec::new(),
    };
    if let Some(key) = table.keys().next() {
        return Err(file_error(format!(
            "unknown key `{key}`: included files hold only [[bridge]] tables"
        )));
    }
    Ok(bridges)
}

/// Replaces `${NAME}` and `${NAME:-default}` in every string; `$${` is a literal `${`.
pub fn interpolate(
    value: &mut Value,
    path: &mut String,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<(), ConfigError> {
    match value {
        Value::String(text) if text.contains('$') => {
            *text = interpolate_str(text, env).map_err(|message| ConfigError::Key {
                key: path.clone(),
                message,
            })?;
        }
        Value::Array(items) => {
            for (index, item) in items.iter_mut().enumerate() {
                let len = path.len();
                path.push_str(&format!("[{index}]"));
                interpolate(item, path, env)?;
                path.truncate(len);
            }
        }
        Value::Object(table) => {
            for (key, item) in table.iter_mut() {
                let len = path.len();
                if !path.is_empty() {
                    path.push('.');
                }
                path.push_str(key);
                interpolate(item, path, env)?;
                path.truncate(len);
            }
        }
        _ => {}
    }
    Ok(())
}

fn interpolate_str(text: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<String, String> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find('$') {
        out.push_str(&rest[..start]);
        let after = &rest[start..];
        if let Some(escaped) = after.strip_prefix("$${") {
            out.push_str("${");
            rest = escaped;
        } else if let Some(body) = after.strip_prefix("${") {
            let end = body
                .find('}')
                .ok_or_else(|| "`${` is not closed by `}`".to_string())?;
            let expr = &body[..end];
            let (name, default) = match expr.split_once(":-") {
                Some((name, default)) => (name, Some(default)),
                None => (expr, None),
            };
            let valid = name
                .chars()
                .next()
                .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
                && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
            if !valid {
                return Err(format!(
                    "`${{{expr}}}` does not name an environment variable"
                ));
            }
            match (env(name).filter(|v| !v.is_empty()), default) {
                (Some(value), _) => out.push_str(&value),
                (None, Some(default)) => out.push_str(default),
                (None, None) => {
                    return Err(format!(
                        "environment variable `{name}` is not set (use `${{{name}:-default}}` for a default)"
                    ));
                }
            }
            rest = &body[end + 1..];
        } else {
            out.push('$');
            rest = &after[1..];
        }
    }
    out.push_str(rest);
    Ok(out)
}

/// Replaces every `<secret>_file = "path"` with `<secret> = <file contents>`.
fn resolve_secret_files(
    value: &mut Value,
    base: &Path,
    path: &mut String,
) -> Result<(), ConfigError> {
    match value {
        Value::Object(table) => {
            for secret in SECRET_KEYS {
                let file_key = format!("{secret}_file");
                let Some(file) = table.remove(&file_key) else {
                    continue;
                };
                let key = if path.is_empty() {
                    file_key.clone()
                } else {
                    format!("{path}.{file_key}")
                };
                let error = |message: String| ConfigError::Key {
                    key: key.clone(),
                    message,
                };
                if table.contains_key(secret) {
                    return Err(error(format!(
                        "set either `{secret}` or `{file_key}`, not both"
                    )));
                }
                let file = file
                    .as_str()
                    .ok_or_else(|| error("must be a file path".into()))?;
                let contents = std::fs::read_to_string(base.join(file))
                    .map_err(|e| error(format!("cannot read `{file}`: {e}")))?;
                let trimmed = contents.trim_end_matches(['\n', '\r']).to_owned();
                table.insert(secret.to_owned(), Value::String(trimmed));
            }
            for (key, item) in table.iter_mut() {
                let len = path.len();
                if !path.is_empty() {
                    path.push('.');
                }
                path.push_str(key);
                resolve_secret_files(item, base, path)?;
                path.truncate(len);
            }
        }
        Value::Array(items) => {
            for (index, item) in items.iter_mut().enumerate() {
                let len = path.len();
                path.push_str(&format!("[{index}]"));
                resolve_secret_files(item, base, path)?;
                path.truncate(len);
            }
        }
        _ => {}
    }
    Ok(())
}

fn build(top: TopLevel) -> Result<Config, ConfigError> {
    let exchange = top.exchange;
    let exchange_error = |key: &str, message: &str| ConfigError::Key {
        key: format!("exchange.{key}"),
        message: message.to_owned(),
    };
    if exchange.kind != "topic" {
        return Err(exchange_error(
            "kind",
            "only `topic` exchanges are supported (routing keys are event.<tenant>.<source>.<type>)",
        ));
    }
    if exchange.name.is_empty() {
        return Err(exchange_error("name", "must not be empty"));
    }
    if let Err(e) = exchange.url.parse::<lapin::uri::AMQPUri>() {
        return Err(exchange_error("url", &format!("not an AMQP URL: {e}")));
    }
    if top.defaults.tenant.is_empty() {
        return Err(ConfigError::Key {
            key: "defaults.tenant".into(),
            message: "must not be empty".into(),
        });
    }
    let mut names = HashSet::new();
    let mut bridges = Vec::with_capacity(top.bridge.len());
    for (index, raw) in top.bridge.into_iter().enumerate() {
        let spec = build_bridge(raw, index, &top.defaults)?;
        if !names.insert(spec.name.clone()) {
            return Err(ConfigError::Bridge {
                bridge: spec.name,
                message: "key `name`: another bridge has the same name".into(),
            });
        }
        bridges.push(spec);
    }
    Ok(Config {
        exchange,
        admin: top.admin,
        defaults: top.defaults,
        bridges,
    })
}

fn build_bridge(
    raw: Value,
    index: usize,
    defaults: &super::Defaults,
) -> Result<BridgeSpec, ConfigError> {
    let Value::Object(mut table) = raw else {
        return Err(ConfigError::Key {
            key: format!("bridge[{index}]"),
            message: "must be a table".into(),
        });
    };
    let label = table
        .get("name")
        .and_then(Value::as_str)
        .map(str::to_owned)
        .unwrap_or_else(|| format!("#{} (no name)", index + 1));
    let error = |message: String| ConfigError::Bridge {
        bridge: label.clone(),
        message,
    };
    let common: CommonKeys =
        fields::parse(Value::Object(fields::take::<CommonKeys>(&mut table))).map_err(&error)?;
    let source = sources::parse_spec(&common.kind, table).map_err(&error)?;

    let key_error = |key: &str, message: String| error(format!("key `{key}`: {message}"));
    if common.name.is_empty()
        || !common
            .name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    {
        return Err(key_error(
            "name",
            "must be non-empty and use only A-Z a-z 0-9 _ -".into(),
        ));
    }
    let tenant = common.tenant.unwrap_or_else(|| defaults.tenant.clone());
    if tenant.is_empty() {
        return Err(key_error("tenant", "must not be empty".into()));
    }
    if let Some(text) = &common.event_type {
        Template::parse(text).map_err(|e| key_error("type", e.to_string()))?;
    }
    if let Some(field) = &common.time_field
        && field.is_empty()
    {
        return Err(key_error(
            "time_field",
            "must name a payload field or a JSON pointer".into(),
        ));
    }
    if common.time_field.is_some() && common.format == PayloadFormat::Raw {
        return Err(key_error(
            "time_field",
            "needs JSON payloads, but `format = \"raw\"` never parses them".into(),
        ));
    }
    let max_in_flight = common.max_in_flight.unwrap_or(defaults.max_in_flight);
    if max_in_flight == 0 {
        return Err(key_error("max_in_flight", "must be at least 1".into()));
    }
    let max_message_bytes = common
        .max_message_bytes
        .unwrap_or(defaults.max_message_bytes);
    if max_message_bytes == 0 {
        return Err(key_error("max_message_bytes", "must be at least 1".into()));
    }
    Ok(BridgeSpec {
        source_name: common.source_name.unwrap_or_else(|| common.name.clone()),
        name: common.name,
        tenant,
        source_uri: common.source_uri,
        event_type: common.event_type,
        time_field: common.time_field,
        format: common.format,
        content_type: common.content_type,
        max_in_flight,
        max_message_bytes,
        shutdown_timeout: common.shutdown_timeout.unwrap_or(defaults.shutdown_timeout),
        backoff: common.backoff.unwrap_or_else(|| defaults.backoff.clone()),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let err = interpolate(&mut value, &mut String::new(), &env).unwrap_err();
        assert!(
            matches!(err, ConfigError::Key { ref key, .. } if key == "exchange.url"),
            "{err}"
        );
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
}
