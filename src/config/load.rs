//! Loading: the main TOML file and its `include` globs through the `config` crate,
//! `BROKER_BRIDGE__SECTION__KEY` environment overrides (typed by the schema's defaults),
//! `${VAR}` / `${VAR:-default}` interpolation, `<key>_file` secrets and other `*_file`
//! paths (relative to the file that holds them), then the typed schema and its checks.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use serde_json::Value;

use super::{BridgeSpec, CommonKeys, Config, KindCatalog, PayloadFormat, TopLevel, fields};
use crate::short_string::MAX_SHORT_STRING;

use crate::routing;
use crate::secret;
use crate::template::Template;

/// Secret keys of config's own sections (`exchange.url`, `admin.token`); each kind
/// names its own (`SourceKind::SECRET_KEYS`). Any of them may be given as `<key>_file`: a
/// path whose contents (trailing newline removed) become the value.
const OWN_SECRET_KEYS: [&str; 2] = ["url", "token"];

/// What loading knows about the kinds of this build: the catalog, and every secret key.
pub struct Schema<'a> {
    kinds: &'a dyn KindCatalog,
    secret_keys: Vec<&'static str>,
}

impl<'a> Schema<'a> {
    pub fn new(kinds: &'a dyn KindCatalog) -> Self {
        let mut secret_keys = kinds.secret_keys();
        secret_keys.extend(OWN_SECRET_KEYS);
        secret_keys.sort_unstable();
        secret_keys.dedup();
        Schema { kinds, secret_keys }
    }

    /// Keys that hold a secret, own and of every kind.
    pub fn secret_keys(&self) -> &[&'static str] {
        &self.secret_keys
    }
}

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
    /// Files that hold secrets, for `check`'s warning about their permissions: config
    /// files that hold a secret value as it stands, every `<secret>_file`, and the
    /// `key_file` and `creds_file` of the bridges.
    pub secret_files: Vec<PathBuf>,
}

/// Reads one TOML file. A syntax error is reported by line and column, with the line
/// only when it holds no secret: the `config` crate's own message quotes the line.
fn read_toml(schema: &Schema, path: &Path) -> Result<Value, ConfigError> {
    let file_error = |message: String| ConfigError::File {
        path: path.to_owned(),
        message,
    };
    let text =
        std::fs::read_to_string(path).map_err(|e| file_error(format!("cannot be read: {e}")))?;
    if let Err(error) = toml::from_str::<toml::Table>(&text) {
        return Err(file_error(toml_syntax_error(schema, &text, &error)));
    }
    config::Config::builder()
        .add_source(config::File::from_str(&text, config::FileFormat::Toml))
        .build()
        .and_then(|c| c.try_deserialize::<Value>())
        .map_err(|e| file_error(secret::scrub(&e.to_string())))
}

/// `TOML syntax error at line L, column C: <what>`, and the line unless it (or the
/// multi-line string it is part of) belongs to a secret key.
fn toml_syntax_error(schema: &Schema, text: &str, error: &toml::de::Error) -> String {
    let what = error
        .message()
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ");
    let Some(span) = error.span() else {
        return format!("TOML syntax error: {what}");
    };
    let start = span.start.min(text.len());
    let before = &text[..start];
    let line_number = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let column = before[line_start..].chars().count() + 1;
    let line = text[line_start..].lines().next().unwrap_or("");
    let place = format!("TOML syntax error at line {line_number}, column {column}: {what}");
    if secret_lines(schema, text).contains(&line_number) {
        format!("{place} (the line is not shown: it holds a secret)")
    } else {
        let line = line.trim();
        let line: String = line.chars().take(200).collect();
        format!("{place}: `{}`", secret::redact_url(&line))
    }
}

/// Whether a config key holds a secret: one of `SECRET_KEYS`, or a passed-through
/// property named like one (`ssl.key.password`, `sasl.oauthbearer.client.secret`).
pub fn is_secret_key(schema: &Schema, key: &str) -> bool {
    let last = key.rsplit('.').next().unwrap_or(key);
    !last.ends_with("_file")
        && (schema.secret_keys.contains(&last)
            || last.contains("password")
            || last.contains("secret")
            // An inline private key (Kafka's `ssl.key.pem`).
            || last == "pem")
}

/// The numbers (from 1) of the lines of a TOML text that assign a secret key, and of
/// the lines of multi-line strings such a line opens.
fn secret_lines(schema: &Schema, text: &str) -> Vec<usize> {
    let mut lines = Vec::new();
    // The delimiter of the multi-line string being read, and whether its key is secret.
    let mut open: Option<(&str, bool)> = None;
    for (index, line) in text.lines().enumerate() {
        let number = index + 1;
        if let Some((delimiter, secret)) = open {
            if secret {
                lines.push(number);
            }
            if line.contains(delimiter) {
                open = None;
            }
            continue;
        }
        let secret = assigns_secret(schema, line);
        if secret {
            lines.push(number);
        }
        for delimiter in ["\"\"\"", "'''"] {
            if line.matches(delimiter).count() % 2 == 1 {
                open = Some((delimiter, secret));
                break;
            }
        }
    }
    lines
}

/// Whether a TOML line assigns a secret key (`password = `, `tls = { password = `,
/// `"bearer_token" =`, `exchange.url =`).
fn assigns_secret(schema: &Schema, line: &str) -> bool {
    line.match_indices('=').any(|(at, _)| {
        // The last part of a dotted, quoted or spaced key: `a."token"`, `a . token`.
        let key = line[..at]
            .rsplit(['{', ',', '[', '.'])
            .next()
            .unwrap_or("")
            .trim()
            .trim_matches(['"', '\''])
            .trim();
        !key.is_empty() && is_secret_key(schema, key)
    })
}

/// Loads and validates the configuration at `path`. Its errors hold no secret value:
/// the config's secrets are remembered (`secret::remember`) as soon as they are read,
/// and scrubbed from the message. `kinds` are the source kinds of this build
/// (`sources::KINDS`).
pub fn load(path: &Path, kinds: &dyn KindCatalog) -> Result<Loaded, ConfigError> {
    load_unscrubbed(&Schema::new(kinds), path).map_err(|error| match error {
        ConfigError::File { path, message } => ConfigError::File {
            path,
            message: secret::scrub(&message),
        },
        ConfigError::Key { key, message } => ConfigError::Key {
            key,
            message: secret::scrub(&message),
        },
        ConfigError::Bridge { bridge, message } => ConfigError::Bridge {
            bridge,
            message: secret::scrub(&message),
        },
    })
}

fn load_unscrubbed(schema: &Schema, path: &Path) -> Result<Loaded, ConfigError> {
    // The directory made canonical, so watched directories and relative paths do not
    // depend on the working directory (`-c config.toml` has an empty parent) and match
    // the paths file events carry. The file itself may stay a symlink.
    let file_error = |message: String| ConfigError::File {
        path: path.to_owned(),
        message,
    };
    let parent = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    let base = std::fs::canonicalize(parent)
        .map_err(|e| file_error(format!("its directory cannot be read: {e}")))?;
    let path = &base.join(
        path.file_name()
            .ok_or_else(|| file_error("is not a file name".into()))?,
    );
    let mut root = read_toml(schema, path)?;
    let mut secret_files = Vec::new();
    if holds_literal_secret(schema, &root) {
        secret_files.push(path.to_owned());
    }
    apply_env_overrides(&mut root, std::env::vars())?;
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
    let main_bridges: Vec<Value> = match table.remove("bridge") {
        None => Vec::new(),
        Some(Value::Array(items)) => items,
        Some(_) => {
            return Err(ConfigError::Key {
                key: "bridge".into(),
                message: "must be an array of tables ([[bridge]])".into(),
            });
        }
    };
    prepare(schema, &mut root, &base, &mut secret_files)?;
    let mut bridges = Vec::with_capacity(main_bridges.len());
    for raw in main_bridges {
        bridges.push(prepare_bridge(
            schema,
            raw,
            &base,
            bridges.len(),
            &mut secret_files,
        )?);
    }
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
            let file_base = file.parent().unwrap_or(&base).to_owned();
            let raw_bridges = read_include(schema, &file)?;
            if raw_bridges
                .iter()
                .any(|item| holds_literal_secret(schema, item))
            {
                secret_files.push(file.clone());
            }
            for raw in raw_bridges {
                bridges.push(prepare_bridge(
                    schema,
                    raw,
                    &file_base,
                    bridges.len(),
                    &mut secret_files,
                )?);
            }
            files.push(file);
        }
    }
    root.as_object_mut()
        .expect("checked above")
        .insert("bridge".into(), Value::Array(bridges));

    let mut top: TopLevel = fields::parse(root).map_err(key_error)?;
    // Like every path in the config, a relative state_dir is relative to the file.
    top.defaults.state_dir = base.join(&top.defaults.state_dir);
    if let Some(tls) = &mut top.webhook.tls {
        tls.cert = base.join(&tls.cert);
        tls.key = base.join(&tls.key);
    }
    let config = build(schema, top)?;
    watch_dirs.sort();
    watch_dirs.dedup();
    secret_files.sort();
    secret_files.dedup();
    Ok(Loaded {
        config,
        files,
        watch_dirs,
        secret_files,
    })
}

/// Interpolates `${VAR}` and resolves `*_file` keys of one file's tables, with paths
/// relative to that file's directory; notes the files that hold secrets, and remembers
/// the secret values for `secret::scrub`.
fn prepare(
    schema: &Schema,
    value: &mut Value,
    base: &Path,
    secret_files: &mut Vec<PathBuf>,
) -> Result<(), ConfigError> {
    interpolate(schema, value, &mut String::new(), &|name| {
        std::env::var(name).ok()
    })?;
    note_secret_files(schema, value, base, secret_files);
    resolve_files(schema, value, base, &mut String::new())?;
    remember_secrets(schema, value, "");
    Ok(())
}

/// Whether a file's tables hold a secret as it stands (not only `${VAR}` references):
/// a secret key's text, or the password or token of a URL's user info.
fn holds_literal_secret(schema: &Schema, value: &Value) -> bool {
    fn without_references(text: &str) -> String {
        let mut out = String::new();
        let mut rest = text;
        while let Some(start) = rest.find("${") {
            out.push_str(&rest[..start]);
            match rest[start..].find('}') {
                Some(end) => rest = &rest[start + end + 1..],
                None => {
                    rest = "";
                }
            }
        }
        out.push_str(rest);
        out
    }
    match value {
        Value::Object(table) => table.iter().any(|(key, item)| match item {
            Value::String(text) if is_secret_key(schema, key) => {
                let literal = without_references(text);
                if key.rsplit('.').next() == Some("url") {
                    secret::url_passwords(&literal)
                        .iter()
                        .any(|password| !password.is_empty())
                } else {
                    !literal.is_empty()
                }
            }
            other => holds_literal_secret(schema, other),
        }),
        Value::Array(items) => items.iter().any(|item| holds_literal_secret(schema, item)),
        _ => false,
    }
}

/// Adds the files named by `<secret>_file`, `key_file` and `creds_file` keys.
fn note_secret_files(schema: &Schema, value: &Value, base: &Path, secret_files: &mut Vec<PathBuf>) {
    match value {
        Value::Object(table) => {
            for (key, item) in table {
                match item {
                    Value::String(file)
                        if key == "key_file"
                            || key == "creds_file"
                            // `[webhook] tls.key`, the only other `key` holding a path.
                            || key == "key"
                            || key
                                .strip_suffix("_file")
                                .is_some_and(|secret| schema.secret_keys.contains(&secret)) =>
                    {
                        secret_files.push(base.join(file));
                    }
                    other => note_secret_files(schema, other, base, secret_files),
                }
            }
        }
        Value::Array(items) => {
            for item in items {
                note_secret_files(schema, item, base, secret_files);
            }
        }
        _ => {}
    }
}

/// `secret::remember`s the value of every secret key.
fn remember_secrets(schema: &Schema, value: &Value, key: &str) {
    match value {
        Value::String(text) if is_secret_key(schema, key) => {
            secret::remember(text, key.rsplit('.').next() == Some("url"));
        }
        Value::Object(table) => {
            for (key, item) in table {
                remember_secrets(schema, item, key);
            }
        }
        Value::Array(items) => {
            for item in items {
                remember_secrets(schema, item, key);
            }
        }
        _ => {}
    }
}

/// `prepare` for one `[[bridge]]` table; errors name the bridge.
fn prepare_bridge(
    schema: &Schema,
    mut raw: Value,
    base: &Path,
    index: usize,
    secret_files: &mut Vec<PathBuf>,
) -> Result<Value, ConfigError> {
    prepare(schema, &mut raw, base, secret_files).map_err(|error| match error {
        ConfigError::Key { key, message } => ConfigError::Bridge {
            bridge: bridge_label(&raw, index),
            message: format!("key `{key}`: {message}"),
        },
        other => other,
    })?;
    Ok(raw)
}

/// A bridge's name for error messages, or its position when it has none.
fn bridge_label(raw: &Value, index: usize) -> String {
    raw.get("name")
        .and_then(Value::as_str)
        .map(str::to_owned)
        .unwrap_or_else(|| format!("#{} (no name)", index + 1))
}

/// Applies `BROKER_BRIDGE__SECTION__KEY=value` overrides (nested tables with more `__`).
/// Values are text; a key whose default is a number or a boolean gets one parsed from
/// the text, so `BROKER_BRIDGE__DEFAULTS__TENANT=4711` stays the text it is.
pub fn apply_env_overrides(
    root: &mut Value,
    vars: impl IntoIterator<Item = (String, String)>,
) -> Result<(), ConfigError> {
    let defaults = serde_json::json!({
        "exchange": super::ExchangeConfig::default(),
        "admin": super::AdminConfig::default(),
        "webhook": super::WebhookConfig::default(),
        "defaults": super::Defaults::default(),
    });
    let prefix = format!("{ENV_PREFIX}__");
    for (name, text) in vars {
        let Some(rest) = name.strip_prefix(&prefix) else {
            continue;
        };
        let path: Vec<String> = rest.split("__").map(str::to_ascii_lowercase).collect();
        let key = path.join(".");
        let error = |message: String| ConfigError::Key {
            key: key.clone(),
            message: format!("from the environment variable {name}: {message}"),
        };
        if path.iter().any(String::is_empty) || defaults.get(&path[0]).is_none() {
            return Err(error(
                "overrides name a key of [exchange], [admin], [webhook] or [defaults], e.g. BROKER_BRIDGE__EXCHANGE__URL".into(),
            ));
        }
        let pointer = format!("/{}", path.join("/"));
        let value = match defaults.pointer(&pointer) {
            Some(Value::Number(_)) => serde_json::from_str::<serde_json::Number>(text.trim())
                .map(Value::Number)
                .map_err(|_| error(format!("`{text}` is not a number")))?,
            Some(Value::Bool(_)) => match text.trim() {
                "true" => Value::Bool(true),
                "false" => Value::Bool(false),
                _ => return Err(error(format!("`{text}` is not true or false"))),
            },
            _ => Value::String(text),
        };
        let (last, parents) = path.split_last().expect("at least the section");
        let mut table = root
            .as_object_mut()
            .ok_or_else(|| error("the config must be a TOML table".into()))?;
        for part in parents {
            table = table
                .entry(part.clone())
                .or_insert_with(|| Value::Object(Default::default()))
                .as_object_mut()
                .ok_or_else(|| error(format!("`{part}` is not a table in the file")))?;
        }
        table.insert(last.clone(), value);
    }
    Ok(())
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

fn read_include(schema: &Schema, path: &Path) -> Result<Vec<Value>, ConfigError> {
    let value = read_toml(schema, path)?;
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
    schema: &Schema,
    value: &mut Value,
    path: &mut String,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<(), ConfigError> {
    match value {
        Value::String(text) if text.contains('$') => {
            let secret = is_secret_key(schema, path);
            *text = interpolate_value(text, env, secret).map_err(|message| ConfigError::Key {
                key: path.clone(),
                message,
            })?;
        }
        Value::Array(items) => {
            for (index, item) in items.iter_mut().enumerate() {
                let len = path.len();
                path.push_str(&format!("[{index}]"));
                interpolate(schema, item, path, env)?;
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
                interpolate(schema, item, path, env)?;
                path.truncate(len);
            }
        }
        _ => {}
    }
    Ok(())
}

#[cfg(test)]
fn interpolate_str(text: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<String, String> {
    interpolate_value(text, env, false)
}

/// `interpolate_str`; for the value of a secret key (`secret`), errors do not quote
/// what is between `${` and `}`, which may be part of the secret.
fn interpolate_value(
    text: &str,
    env: &dyn Fn(&str) -> Option<String>,
    secret: bool,
) -> Result<String, String> {
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
            if !valid && secret {
                return Err(
                    "a `${...}` in the value does not name an environment variable (not shown: the value is a secret; write `$${` for a literal `${`)"
                        .into(),
                );
            }
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

/// Replaces every `<secret>_file = "path"` with `<secret> = <file contents>`, and makes
/// every other `*_file` path (creds, TLS) absolute: relative paths are relative to the
/// file that holds them, not to wherever the daemon was started.
fn resolve_files(
    schema: &Schema,
    value: &mut Value,
    base: &Path,
    path: &mut String,
) -> Result<(), ConfigError> {
    match value {
        Value::Object(table) => {
            for secret in schema.secret_keys.clone() {
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
                if key.ends_with("_file")
                    && let Value::String(file) = item
                {
                    *file = base.join(&*file).to_string_lossy().into_owned();
                    continue;
                }
                let len = path.len();
                if !path.is_empty() {
                    path.push('.');
                }
                path.push_str(key);
                resolve_files(schema, item, base, path)?;
                path.truncate(len);
            }
        }
        Value::Array(items) => {
            for (index, item) in items.iter_mut().enumerate() {
                let len = path.len();
                path.push_str(&format!("[{index}]"));
                resolve_files(schema, item, base, path)?;
                path.truncate(len);
            }
        }
        _ => {}
    }
    Ok(())
}

fn build(schema: &Schema, top: TopLevel) -> Result<Config, ConfigError> {
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
    for (key, name) in [
        ("name", Some(&exchange.name)),
        ("deadletter", exchange.deadletter.as_ref()),
        ("alternate_exchange", exchange.alternate_exchange.as_ref()),
    ] {
        if let Some(name) = name
            && name.len() > MAX_SHORT_STRING
        {
            return Err(exchange_error(
                key,
                &format!(
                    "is {} bytes; AMQP exchange names hold at most {MAX_SHORT_STRING}",
                    name.len()
                ),
            ));
        }
    }
    let url = exchange.url.expose();
    if let Err(e) = url.parse::<lapin::uri::AMQPUri>() {
        // lapin's message may quote the URL, password included.
        let e = e.replace(url, "<url>");
        return Err(exchange_error("url", &format!("not an AMQP URL: {e}")));
    }
    // A dead letter carries its sample plus bounded headers (DEADLETTER_HEADROOM).
    let deadletter_size = top
        .defaults
        .deadletter_sample_bytes
        .saturating_add(super::DEADLETTER_HEADROOM);
    if deadletter_size > exchange.max_message_size {
        return Err(ConfigError::Key {
            key: "defaults.deadletter_sample_bytes".into(),
            message: format!(
                "a dead letter of {deadletter_size} bytes (the sample and its headers) would not fit `exchange.max_message_size` = {}",
                exchange.max_message_size
            ),
        });
    }
    if let Err(message) = tenant_template(&top.defaults.tenant) {
        return Err(ConfigError::Key {
            key: "defaults.tenant".into(),
            message,
        });
    }
    let mut names = HashSet::new();
    let mut bridges = Vec::with_capacity(top.bridge.len());
    for (index, raw) in top.bridge.into_iter().enumerate() {
        let spec = build_bridge(schema, raw, index, &top.defaults, exchange.max_message_size)?;
        spec.source
            .check(&spec, &exchange)
            .map_err(|message| ConfigError::Bridge {
                bridge: spec.name.clone(),
                message,
            })?;
        if !names.insert(spec.name.clone()) {
            return Err(ConfigError::Bridge {
                bridge: spec.name,
                message: "key `name`: another bridge has the same name".into(),
            });
        }
        bridges.push(spec);
    }
    schema
        .kinds
        .check_bridges(&bridges)
        .map_err(|(bridge, message)| ConfigError::Bridge { bridge, message })?;
    if let Some(url) = &top.webhook.public_url
        && !(url.starts_with("http://") || url.starts_with("https://"))
    {
        return Err(ConfigError::Key {
            key: "webhook.public_url".into(),
            message: format!("`{url}` must be an http:// or https:// URL"),
        });
    }
    top.admin.validate()?;
    top.webhook.validate()?;
    Ok(Config {
        exchange,
        admin: top.admin,
        webhook: top.webhook,
        defaults: top.defaults,
        bridges,
    })
}

fn build_bridge(
    schema: &Schema,
    raw: Value,
    index: usize,
    defaults: &super::Defaults,
    exchange_max_message_size: usize,
) -> Result<BridgeSpec, ConfigError> {
    let label = bridge_label(&raw, index);
    let Value::Object(mut table) = raw else {
        return Err(ConfigError::Key {
            key: format!("bridge[{index}]"),
            message: "must be a table".into(),
        });
    };
    let error = |message: String| ConfigError::Bridge {
        bridge: label.clone(),
        message,
    };
    let common: CommonKeys =
        fields::parse(Value::Object(fields::take::<CommonKeys>(&mut table))).map_err(&error)?;
    let source = schema.kinds.parse(&common.kind, table).map_err(&error)?;

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
    // The `<source>` word is used as it stands, like the tenant: never rewritten.
    let source_name = match &common.source_name {
        Some(source_name) => {
            routing::check_source(source_name).map_err(|e| key_error("source_name", e))?;
            source_name.clone()
        }
        None if !routing::is_valid_word(&common.name) => {
            return Err(key_error(
                "source_name",
                format!(
                    "the default, the bridge name, is not a valid <source> word ({}): set `source_name`",
                    routing::WORD_RULE
                ),
            ));
        }
        None => common.name.clone(),
    };
    let bucket_tenants = common.bucket_tenants;
    if let Some(bucket_tenants) = &bucket_tenants {
        if common.format != PayloadFormat::S3Notification {
            return Err(key_error(
                "bucket_tenants",
                "applies only to `format = \"s3-notification\"`".into(),
            ));
        }
        if common.tenant.is_some() {
            return Err(key_error(
                "bucket_tenants",
                "set either `tenant` or `bucket_tenants`: with `bucket_tenants` each record's tenant is its bucket's".into(),
            ));
        }
        if bucket_tenants.is_empty() {
            return Err(key_error(
                "bucket_tenants",
                "must map at least one bucket to its tenant".into(),
            ));
        }
        for (bucket, tenant) in bucket_tenants {
            routing::check_tenant(tenant)
                .map_err(|e| key_error(&format!("bucket_tenants.{bucket}"), e))?;
        }
    }
    let tenant = common.tenant.unwrap_or_else(|| defaults.tenant.clone());
    let tenant_template = tenant_template(&tenant).map_err(|e| key_error("tenant", e))?;
    let type_template = match &common.event_type {
        Some(text) => Some(Template::parse(text).map_err(|e| key_error("type", e.to_string()))?),
        None => None,
    };
    // `event.<tenant>.<source>.<type>`: refuse settings whose every key is too long
    // rather than dead-letter every message. Every value holds its template's literal
    // text, and escaping is byte by byte, so that text's word is a lower bound.
    let shortest_tenant = match bucket_tenants
        .as_ref()
        .and_then(|tenants| tenants.values().map(String::len).min())
    {
        Some(shortest) => shortest,
        None => tenant_template.literal_text().len().max(1),
    };
    let shortest_type = type_template.as_ref().map_or(1, |template| {
        routing::type_word(&template.literal_text()).len().max(1)
    });
    let shortest_key = "event...".len() + shortest_tenant + source_name.len() + shortest_type;
    if shortest_key > MAX_SHORT_STRING {
        return Err(key_error(
            "type",
            format!(
                "with this tenant and source_name every routing key would be at least {shortest_key} bytes; AMQP allows at most {MAX_SHORT_STRING}"
            ),
        ));
    }
    if let Some(content_type) = &common.content_type
        && content_type.len() > MAX_SHORT_STRING
    {
        return Err(key_error(
            "content_type",
            format!("must be at most {MAX_SHORT_STRING} bytes"),
        ));
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
    let max_in_flight_bytes = common
        .max_in_flight_bytes
        .unwrap_or(defaults.max_in_flight_bytes);
    if max_in_flight_bytes == 0 || max_in_flight_bytes > u32::MAX as usize {
        return Err(key_error(
            "max_in_flight_bytes",
            format!("must be 1 to {} (4 GiB)", u32::MAX),
        ));
    }
    let max_message_bytes = common
        .max_message_bytes
        .unwrap_or(defaults.max_message_bytes);
    if max_message_bytes == 0 {
        return Err(key_error("max_message_bytes", "must be at least 1".into()));
    }
    if max_message_bytes > exchange_max_message_size {
        return Err(key_error(
            "max_message_bytes",
            format!(
                "is larger than `exchange.max_message_size` = {exchange_max_message_size}, the largest message the exchange takes"
            ),
        ));
    }
    Ok(BridgeSpec {
        source_name,
        name: common.name,
        tenant,
        bucket_tenants,
        source_uri: common.source_uri,
        event_type: common.event_type,
        time_field: common.time_field,
        format: common.format,
        content_type: common.content_type,
        max_in_flight,
        max_in_flight_bytes,
        max_message_bytes,
        shutdown_timeout: common.shutdown_timeout.unwrap_or(defaults.shutdown_timeout),
        backoff: common.backoff.unwrap_or_else(|| defaults.backoff.clone()),
        state_dir: defaults.state_dir.clone(),
        deadletter_sample_bytes: defaults.deadletter_sample_bytes,
        source,
    })
}

/// Checks a `tenant` setting (a bridge's or `[defaults]`): fixed text must be a valid
/// tenant as it stands; a template may take the transport's subject and headers, never
/// the payload, and its literal text must be tenant characters, or no message could
/// ever get a valid tenant.
fn tenant_template(text: &str) -> Result<Template, String> {
    let template = Template::parse(text).map_err(|e| e.to_string())?;
    if template.needs_json() {
        return Err(
            "comes from configuration, the transport's subject or a header, never from the payload (`{json:...}`)"
                .into(),
        );
    }
    if template.is_fixed() {
        routing::check_tenant(text)?;
    } else {
        let literal = template.literal_text();
        if !literal.is_empty() && !routing::is_valid_word(&literal) {
            return Err(format!(
                "the fixed text `{}` of template `{text}` can never be part of a valid tenant ({})",
                crate::short_string::preview(&literal),
                routing::WORD_RULE
            ));
        }
    }
    Ok(template)
}

#[cfg(test)]
mod tests {
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
                error.contains("bridge `b`")
                    && error.contains("key `tenant`")
                    && error.contains(says),
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
        let config =
            load_bridge("", &format!("name = \"{long}\"\nsource_name = \"short\"")).unwrap();
        assert_eq!(config.bridges[0].source_name, "short");
    }

    #[test]
    fn bucket_tenants_map_buckets_to_valid_tenants_for_notifications_only() {
        let notifications = "name = \"b\"\nformat = \"s3-notification\"";
        let config = load_bridge(
            "",
            &format!("{notifications}\nbucket_tenants = {{ uploads = \"acme\", \"photos.eu\" = \"globex\" }}"),
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
}
