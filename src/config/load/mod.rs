//! Loading: the main TOML file and its `include` globs through the `config` crate,
//! `BROKER_BRIDGE__SECTION__KEY` environment overrides (typed by the schema's defaults),
//! `${VAR}` / `${VAR:-default}` interpolation, `<key>_file` secrets and other `*_file`
//! paths (relative to the file that holds them), then the typed schema and its checks.

use std::path::{Path, PathBuf};

use serde_json::Value;

use super::{Config, KindCatalog, TopLevel, fields};
use crate::secret;

mod build;
mod env;
mod secrets;

use env::resolve_files;
use secrets::{holds_literal_secret, note_secret_files, remember_secrets, secret_lines};

pub use env::{ENV_PREFIX, apply_env_overrides, interpolate};
pub use secrets::{Schema, is_secret_key};

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
    let config = build::build(schema, top)?;
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
pub(super) fn bridge_label(raw: &Value, index: usize) -> String {
    raw.get("name")
        .and_then(Value::as_str)
        .map(str::to_owned)
        .unwrap_or_else(|| format!("#{} (no name)", index + 1))
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

#[cfg(test)]
mod tests;
