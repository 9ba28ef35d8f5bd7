//! Secrets never shown: the `Secret` type that config values such as passwords, tokens,
//! keys and URLs with user info are held in, `redact_url` for any text that may carry a
//! URL, and `scrub`, which also removes every secret value the config loaded, for every
//! error, status and log line (a client library may echo a value it was given).

use std::fmt;
use std::sync::{Mutex, PoisonError};

use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize, Serializer};

/// What `Debug`, `Display` and `Serialize` show instead of a secret.
pub const REDACTED: &str = "[redacted]";

/// What replaces a password or token inside a text.
const MASK: &str = "***";

/// A secret config value. Its value is shown nowhere: `Debug`, `Display` and
/// `Serialize` give `[redacted]`; `expose` is for the client library that needs it.
#[derive(Clone, Default)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    /// The value, for the client library that needs it. Never format it into a message.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// For messages: a URL with its user info redacted (`scheme://user:***@host`), any
    /// other secret as `[redacted]`.
    pub fn redacted(&self) -> String {
        if self.0.contains("://") {
            redact_url(&self.0)
        } else {
            REDACTED.to_owned()
        }
    }
}

impl From<&str> for Secret {
    fn from(value: &str) -> Self {
        Secret(value.to_owned())
    }
}

impl From<String> for Secret {
    fn from(value: String) -> Self {
        Secret(value)
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(REDACTED)
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(REDACTED)
    }
}

/// Compares the real values (a reload restarts a bridge whose secret changed), in time
/// that does not depend on where they differ.
impl PartialEq for Secret {
    fn eq(&self, other: &Self) -> bool {
        constant_time_eq(self.0.as_bytes(), other.0.as_bytes())
    }
}

impl Eq for Secret {}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    use subtle::ConstantTimeEq;
    a.ct_eq(b).into()
}

impl Serialize for Secret {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(REDACTED)
    }
}

/// From a string only. Its errors never repeat the value: serde's own "invalid type:
/// integer `12345`" would print a secret written without quotes.
impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct SecretVisitor;

        fn refuse<E: de::Error>(what: &str) -> E {
            E::custom(format!(
                "invalid type: {what}, expected a string (the value is not shown: it is a secret)"
            ))
        }

        impl<'de> Visitor<'de> for SecretVisitor {
            type Value = Secret;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Secret, E> {
                Ok(Secret(v.to_owned()))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<Secret, E> {
                Ok(Secret(v))
            }
            fn visit_bool<E: de::Error>(self, _: bool) -> Result<Secret, E> {
                Err(refuse("a boolean"))
            }
            fn visit_i64<E: de::Error>(self, _: i64) -> Result<Secret, E> {
                Err(refuse("a number"))
            }
            fn visit_i128<E: de::Error>(self, _: i128) -> Result<Secret, E> {
                Err(refuse("a number"))
            }
            fn visit_u64<E: de::Error>(self, _: u64) -> Result<Secret, E> {
                Err(refuse("a number"))
            }
            fn visit_u128<E: de::Error>(self, _: u128) -> Result<Secret, E> {
                Err(refuse("a number"))
            }
            fn visit_f64<E: de::Error>(self, _: f64) -> Result<Secret, E> {
                Err(refuse("a number"))
            }
            fn visit_char<E: de::Error>(self, v: char) -> Result<Secret, E> {
                Ok(Secret(v.to_string()))
            }
            fn visit_bytes<E: de::Error>(self, _: &[u8]) -> Result<Secret, E> {
                Err(refuse("bytes"))
            }
            fn visit_none<E: de::Error>(self) -> Result<Secret, E> {
                Err(refuse("nothing"))
            }
            fn visit_unit<E: de::Error>(self) -> Result<Secret, E> {
                Err(refuse("nothing"))
            }
            fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Secret, D::Error> {
                Secret::deserialize(d)
            }
            fn visit_newtype_struct<D: Deserializer<'de>>(self, d: D) -> Result<Secret, D::Error> {
                Secret::deserialize(d)
            }
            fn visit_seq<A: de::SeqAccess<'de>>(self, _: A) -> Result<Secret, A::Error> {
                Err(refuse("a list"))
            }
            fn visit_map<A: de::MapAccess<'de>>(self, _: A) -> Result<Secret, A::Error> {
                Err(refuse("a table"))
            }
            fn visit_enum<A: de::EnumAccess<'de>>(self, _: A) -> Result<Secret, A::Error> {
                Err(refuse("an enum"))
            }
        }

        // `deserialize_any`, not `deserialize_str`: a self-describing deserializer (the
        // config's JSON tree) would otherwise build the "invalid type" error itself, with
        // the value in it.
        deserializer.deserialize_any(SecretVisitor)
    }
}

/// Replaces the password of every URL in `text` that carries user info:
/// `scheme://user:pass@host` becomes `scheme://user:***@host`, and a token-only
/// `scheme://token@host` becomes `scheme://***@host`. The user info is taken up to the
/// last `@` before the end of the URL (whitespace, a quote or the next `scheme://`), so
/// a password holding an unencoded `/`, `?`, `#` or `,` is hidden whole.
pub fn redact_url(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(found) = rest.find("://") {
        let after = found + 3;
        let tail = &rest[after..];
        let segment = &tail[..url_end(tail)];
        let has_scheme = rest[..found]
            .chars()
            .next_back()
            .is_some_and(is_scheme_char);
        out.push_str(&rest[..after]);
        match segment.rfind('@') {
            Some(at) if has_scheme => {
                match segment[..at].split_once(':') {
                    Some((user, _)) => {
                        out.push_str(user);
                        out.push(':');
                        out.push_str(MASK);
                    }
                    None => out.push_str(MASK),
                }
                rest = &tail[at..];
            }
            _ => rest = tail,
        }
    }
    out.push_str(rest);
    out
}

fn is_scheme_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.')
}

/// Where the URL that starts `tail` (just after its `://`) ends: at whitespace, a quote,
/// `<`, `>`, `\`, or where the next `scheme://` begins.
fn url_end(tail: &str) -> usize {
    let mut end = tail
        .find(|c: char| c.is_whitespace() || matches!(c, '"' | '\'' | '`' | '<' | '>' | '\\'))
        .unwrap_or(tail.len());
    if let Some(next) = tail[..end].find("://") {
        let scheme_start = tail[..next]
            .rfind(|c: char| !is_scheme_char(c))
            .map_or(0, |i| i + 1);
        end = end.min(scheme_start);
    }
    end
}

/// The passwords (or tokens) in the user info of the URLs in `text`.
pub fn url_passwords(text: &str) -> Vec<&str> {
    let mut found = Vec::new();
    let mut rest = text;
    while let Some(position) = rest.find("://") {
        let tail = &rest[position + 3..];
        let segment = &tail[..url_end(tail)];
        if let Some(at) = segment.rfind('@') {
            let userinfo = &segment[..at];
            found.push(userinfo.split_once(':').map_or(userinfo, |(_, pass)| pass));
        }
        rest = tail;
    }
    found
}

/// Secret values shorter than this are not scrubbed from texts: they would mask ordinary
/// words, and hide nothing worth hiding.
const MIN_SCRUBBED_CHARS: usize = 4;

/// How many secret values `scrub` remembers.
const MAX_REMEMBERED: usize = 1024;

/// The secret values the config loaded, longest first, each with its JSON-escaped form
/// (for `--log-format json`).
static REMEMBERED: Mutex<Vec<(String, String)>> = Mutex::new(Vec::new());

/// Remembers a secret's value, so that `scrub` removes it from any text. For a URL
/// (`is_url`), the passwords or tokens of its user info; a URL without user info holds
/// no secret.
pub fn remember(value: &str, is_url: bool) {
    let mut values: Vec<String> = Vec::new();
    if is_url && value.contains("://") {
        for password in url_passwords(value) {
            values.push(password.to_owned());
            if let Some(decoded) = password
                .contains('%')
                .then(|| crate::short_string::percent_decode(password))
                .flatten()
            {
                values.push(decoded);
            }
        }
    } else if !is_url || value.contains('@') {
        values.push(value.to_owned());
    }
    let mut remembered = REMEMBERED.lock().unwrap_or_else(PoisonError::into_inner);
    for value in values {
        if value.chars().count() < MIN_SCRUBBED_CHARS
            || remembered.iter().any(|(known, _)| *known == value)
        {
            continue;
        }
        let escaped = serde_json::to_string(&value).unwrap_or_default();
        let escaped = escaped
            .strip_prefix('"')
            .and_then(|e| e.strip_suffix('"'))
            .unwrap_or_default()
            .to_owned();
        if remembered.len() >= MAX_REMEMBERED {
            // Full (many reloads with changing secrets): drop the shortest.
            remembered.pop();
        }
        let at = remembered.partition_point(|(known, _)| known.len() >= value.len());
        remembered.insert(at, (value, escaped));
    }
}

/// `redact_url`, and every remembered secret value replaced by `***`. For every error,
/// status text and log line.
pub fn scrub(text: &str) -> String {
    let mut text = redact_url(text);
    let remembered = REMEMBERED.lock().unwrap_or_else(PoisonError::into_inner);
    for (value, escaped) in remembered.iter() {
        if text.contains(value.as_str()) {
            text = text.replace(value.as_str(), MASK);
        }
        if escaped != value && !escaped.is_empty() && text.contains(escaped.as_str()) {
            text = text.replace(escaped.as_str(), MASK);
        }
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_secret_never_prints_its_value() {
        let secret = Secret::new("hunter2-value");
        assert_eq!(format!("{secret}"), REDACTED);
        assert_eq!(format!("{secret:?}"), REDACTED);
        assert_eq!(format!("{:?}", Some(&secret)), "Some([redacted])");
        assert_eq!(serde_json::to_string(&secret).unwrap(), "\"[redacted]\"");
        assert_eq!(secret.expose(), "hunter2-value");
        assert_eq!(secret.redacted(), REDACTED);
    }

    #[test]
    fn secrets_compare_their_real_values() {
        assert_eq!(Secret::new("abc"), Secret::new("abc"));
        assert_ne!(Secret::new("abc"), Secret::new("abd"));
        assert_ne!(Secret::new("abc"), Secret::new("abcd"));
        assert_ne!(Secret::new(""), Secret::new("a"));
    }

    #[test]
    fn deserialize_errors_never_repeat_the_value() {
        let secret: Secret = serde_json::from_value(serde_json::json!("p4ss")).unwrap();
        assert_eq!(secret.expose(), "p4ss");
        for value in [
            serde_json::json!(918273645),
            serde_json::json!(-918273645),
            serde_json::json!(9182.73645),
            serde_json::json!(true),
            serde_json::json!(["918273645"]),
            serde_json::json!({"x": "918273645"}),
        ] {
            let error = serde_json::from_value::<Secret>(value.clone())
                .unwrap_err()
                .to_string();
            assert!(!error.contains("918273645"), "{error}");
            assert!(!error.contains("9182"), "{error}");
            assert!(error.contains("expected a string"), "{error}");
        }
        #[derive(Deserialize, Debug)]
        #[allow(dead_code)]
        struct Keys {
            password: Option<Secret>,
        }
        let keys: Keys = serde_json::from_value(serde_json::json!({})).unwrap();
        assert!(keys.password.is_none());
        let keys: Keys = serde_json::from_value(serde_json::json!({"password": null})).unwrap();
        assert!(keys.password.is_none());
        let error = serde_json::from_value::<Keys>(serde_json::json!({"password": 4455667788u64}))
            .unwrap_err()
            .to_string();
        assert!(!error.contains("4455667788"), "{error}");
    }

    #[test]
    fn urls_lose_their_passwords() {
        for (text, redacted) in [
            (
                "amqp://user:pass@host:5672/%2f",
                "amqp://user:***@host:5672/%2f",
            ),
            ("nats://tok3n@host:4222", "nats://***@host:4222"),
            ("amqp://host:5672/%2f", "amqp://host:5672/%2f"),
            (
                "cannot connect to amqp://u:p@h:1/v: refused",
                "cannot connect to amqp://u:***@h:1/v: refused",
            ),
            (
                "nats://a:pa@ss@h1:4222,nats://b:q/w#e@h2:4222 down",
                "nats://a:***@h1:4222,nats://b:***@h2:4222 down",
            ),
            ("amqp://u:pa/ss?x#y@h/v", "amqp://u:***@h/v"),
            ("url `amqps://u:p@h`", "url `amqps://u:***@h`"),
            ("\"amqp://u:p@h\"", "\"amqp://u:***@h\""),
            ("://x@y", "://x@y"),
            ("no url here", "no url here"),
            ("http://[::1]:80/a", "http://[::1]:80/a"),
            (
                "two amqp://u:p@a and http://v@b.",
                "two amqp://u:***@a and http://***@b.",
            ),
        ] {
            assert_eq!(redact_url(text), redacted, "{text}");
        }
        assert_eq!(
            Secret::new("amqp://guest:guest@127.0.0.1:5672/%2f").redacted(),
            "amqp://guest:***@127.0.0.1:5672/%2f"
        );
    }

    #[test]
    fn scrub_removes_remembered_values_wherever_they_appear() {
        remember("Zq8-remembered-token", false);
        remember("amqp://user:Pw%2Fscrub-7731@host/%2f", true);
        remember("nats://127.0.0.1:4222", true);
        remember("abc", false);
        let text = scrub(
            "token Zq8-remembered-token, decoded Pw/scrub-7731, encoded Pw%2Fscrub-7731, abc, 127.0.0.1:4222",
        );
        assert_eq!(
            text,
            "token ***, decoded ***, encoded ***, abc, 127.0.0.1:4222"
        );
        remember("quote\"d-secret-5521", false);
        assert_eq!(scrub(r#"{"e":"quote\"d-secret-5521"}"#), r#"{"e":"***"}"#);
    }
}
