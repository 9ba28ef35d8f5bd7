//! Which config keys hold secrets, and what loading does with them: hides the lines that
//! assign them from syntax errors, remembers their values for `secret::scrub`, and notes
//! the files that hold them for `check`.

use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::config::KindCatalog;
use crate::secret;

/// Secret keys of config's own sections (`exchange.url`, `admin.token`); each kind
/// names its own (`SourceKind::SECRET_KEYS`). Any of them may be given as `<key>_file`: a
/// path whose contents (trailing newline removed) become the value.
const OWN_SECRET_KEYS: [&str; 2] = ["url", "token"];

/// What loading knows about the kinds of this build: the catalog, and every secret key.
pub struct Schema<'a> {
    pub(super) kinds: &'a dyn KindCatalog,
    pub(super) secret_keys: Vec<&'static str>,
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

/// Whether a config key holds a secret: a secret key of config or of a kind, or one
/// named like one (`ssl.key.password`, `sasl.oauthbearer.client.secret`).
pub fn is_secret_key(schema: &Schema, key: &str) -> bool {
    let last = key.rsplit('.').next().unwrap_or(key);
    !last.ends_with("_file")
        && (schema.secret_keys.contains(&last)
            || last.contains("password")
            || last.contains("secret")
            // Secret keys of kinds this build may lack (`bearer_token`, `access_key_id`
            // in a build without webhook or s3): a config shared between builds still
            // never has them quoted.
            || last.contains("token")
            || last.starts_with("access_key")
            // An inline private key (Kafka's `ssl.key.pem`).
            || last == "pem")
}

/// The numbers (from 1) of the lines of a TOML text that assign a secret key, and of
/// the lines of multi-line strings such a line opens.
pub(super) fn secret_lines(schema: &Schema, text: &str) -> Vec<usize> {
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
pub(super) fn assigns_secret(schema: &Schema, line: &str) -> bool {
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

/// Whether a file's tables hold a secret as it stands (not only `${VAR}` references):
/// a secret key's text, or the password or token of a URL's user info.
pub(super) fn holds_literal_secret(schema: &Schema, value: &Value) -> bool {
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
pub(super) fn note_secret_files(
    schema: &Schema,
    value: &Value,
    base: &Path,
    secret_files: &mut Vec<PathBuf>,
) {
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
pub(super) fn remember_secrets(schema: &Schema, value: &Value, key: &str) {
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
