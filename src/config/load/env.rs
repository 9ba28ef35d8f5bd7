//! `BROKER_BRIDGE__SECTION__KEY` environment overrides, `${VAR}` interpolation, and
//! `<key>_file` values read from their files.

use std::path::Path;

use serde_json::Value;

use super::ConfigError;
use super::secrets::{Schema, is_secret_key};

/// Prefix of environment overrides: `BROKER_BRIDGE__EXCHANGE__URL` sets `exchange.url`.
pub const ENV_PREFIX: &str = "BROKER_BRIDGE";

/// Applies `BROKER_BRIDGE__SECTION__KEY=value` overrides (nested tables with more `__`).
/// Values are text; a key whose default is a number or a boolean gets one parsed from
/// the text, so `BROKER_BRIDGE__DEFAULTS__TENANT=4711` stays the text it is.
pub fn apply_env_overrides(
    root: &mut Value,
    vars: impl IntoIterator<Item = (String, String)>,
) -> Result<(), ConfigError> {
    let defaults = serde_json::json!({
        "exchange": crate::config::ExchangeConfig::default(),
        "admin": crate::config::AdminConfig::default(),
        "webhook": crate::config::WebhookConfig::default(),
        "defaults": crate::config::Defaults::default(),
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
pub(super) fn interpolate_str(
    text: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<String, String> {
    interpolate_value(text, env, false)
}

/// `interpolate_str`; for the value of a secret key (`secret`), errors do not quote
/// what is between `${` and `}`, which may be part of the secret.
pub(super) fn interpolate_value(
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
pub(super) fn resolve_files(
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
