//! AMQP 0-9-1 short strings (message id, content type, type, app id, header names,
//! routing keys, exchange names) hold at most 255 bytes, and lapin's `From` conversions
//! panic above that. Every short string made from data goes through here; a test keeps
//! `ShortString::from` and friends out of the rest of `src/`.

use lapin::types::ShortString;
use sha2::{Digest, Sha256};

/// The most bytes an AMQP short string holds.
pub const MAX_SHORT_STRING: usize = 255;

/// A value too long for an AMQP short string.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{what} is {len} bytes; AMQP allows at most {MAX_SHORT_STRING}")]
pub struct TooLong {
    pub what: &'static str,
    pub len: usize,
}

/// The checked constructor: `what` names the value in the error.
pub fn short_string(what: &'static str, value: &str) -> Result<ShortString, TooLong> {
    ShortString::try_new(value).map_err(|_| TooLong {
        what,
        len: value.len(),
    })
}

/// A short string of the program's own text (a header name, a close reason). Such text
/// is short by construction; one that were not would become empty rather than panic.
pub fn constant(value: &'static str) -> ShortString {
    ShortString::try_new(value).unwrap_or_default()
}

/// The longest prefix of `text` of at most `max` bytes that ends on a character
/// boundary: the one way outside text is cut to a bound.
pub fn cut(text: &str, max: usize) -> &str {
    let mut end = max.min(text.len());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// The start of a value from outside, for error texts: at most 64 bytes, with its full
/// length when cut.
pub fn preview(text: &str) -> String {
    const SHOWN: usize = 64;
    if text.len() <= SHOWN {
        return text.to_owned();
    }
    format!("{}… ({} bytes)", cut(text, SHOWN), text.len())
}

/// `%XX` sequences decoded (a URL's user info or path); `None` when a `%` is not
/// followed by two hex digits or the result is not UTF-8.
pub fn percent_decode(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            out.push(u8::from_str_radix(text.get(i + 1..i + 3)?, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// Whether `value` fits a short string.
pub fn fits(value: &str) -> bool {
    value.len() <= MAX_SHORT_STRING
}

/// An id that fits a short string: the id itself when it does, else `sha256:<hex>` of
/// it, so a redelivered message gets the same one.
pub fn fitting_id(id: &str) -> std::borrow::Cow<'_, str> {
    if fits(id) {
        return id.into();
    }
    format!("sha256:{}", lower_hex(&Sha256::digest(id.as_bytes()))).into()
}

/// Bytes as lower-case hex (digests in ids and headers).
pub fn lower_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Checks the attributes of an event that become short strings on the exchange in
/// either content mode: the message id, the content type (binary mode) and the `ce-`
/// header names of its extensions (binary mode).
pub fn check_event(event: &crate::cloudevent::CloudEvent) -> Result<(), TooLong> {
    short_string("the event id", &event.id)?;
    if let Some(content_type) = &event.datacontenttype {
        short_string("datacontenttype", content_type)?;
    }
    for name in event.extensions.keys() {
        if name.len() + BINARY_HEADER_PREFIX.len() > MAX_SHORT_STRING {
            return Err(TooLong {
                what: "an extension name with its `ce-` prefix",
                len: name.len() + BINARY_HEADER_PREFIX.len(),
            });
        }
    }
    Ok(())
}

/// The prefix of CloudEvent attribute headers in binary mode on the exchange.
pub const BINARY_HEADER_PREFIX: &str = "ce-";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percent_decoding_is_strict() {
        assert_eq!(percent_decode("%2f").as_deref(), Some("/"));
        assert_eq!(percent_decode("p%40ss%C3%A9").as_deref(), Some("p@ssé"));
        assert_eq!(percent_decode("plain").as_deref(), Some("plain"));
        assert_eq!(percent_decode("50%"), None);
        assert_eq!(percent_decode("%zz"), None);
        assert_eq!(percent_decode("%ff"), None, "not UTF-8");
    }

    #[test]
    fn too_long_values_are_errors_not_panics() {
        assert!(short_string("message id", &"a".repeat(255)).is_ok());
        let error = short_string("message id", &"a".repeat(256)).unwrap_err();
        assert_eq!(
            error.to_string(),
            "message id is 256 bytes; AMQP allows at most 255"
        );
        // Bytes, not characters: 128 two-byte characters are 256 bytes.
        assert!(short_string("type", &"é".repeat(128)).is_err());
    }

    /// The mechanical check that no later change brings back a conversion that can
    /// panic: outside this module, `src/` never names lapin's own constructors. (Clippy's
    /// `disallowed-methods` cannot single out one type's `From` impl.)
    #[test]
    fn no_unchecked_short_string_conversion_in_src() {
        let forbidden = [
            "ShortString::from",
            "ShortString::try_new",
            "ShortString::try_from",
            "ShortString>::from",
        ];
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let mut found = Vec::new();
        let mut stack = vec![root.clone()];
        while let Some(dir) = stack.pop() {
            for entry in std::fs::read_dir(&dir).unwrap() {
                let path = entry.unwrap().path();
                if path.is_dir() {
                    stack.push(path);
                    continue;
                }
                // A folder's unit tests in their own file (`<module>/tests.rs`) are
                // fixtures too.
                if path.extension().is_none_or(|e| e != "rs")
                    || path.ends_with("short_string.rs")
                    || path.ends_with("tests.rs")
                {
                    continue;
                }
                let text = std::fs::read_to_string(&path).unwrap();
                // Unit tests build fixtures with literals; only the program is checked.
                let program = text.split("#[cfg(test)]").next().unwrap_or("");
                // An argument of these lapin calls that is `.into()` converts to a
                // ShortString without a check.
                let short_string_calls = [
                    ".basic_publish(",
                    ".basic_consume(",
                    ".basic_cancel(",
                    ".queue_declare(",
                    ".queue_bind(",
                    ".queue_unbind(",
                    ".queue_delete(",
                    ".exchange_declare(",
                    ".close(",
                    ".with_message_id(",
                    ".with_content_type(",
                    ".with_content_encoding(",
                    ".with_type(",
                    ".with_app_id(",
                ];
                let mut in_call = 0;
                for (number, line) in program.lines().enumerate() {
                    let opens_call = short_string_calls.iter().any(|c| line.contains(c));
                    if opens_call {
                        in_call = 8;
                    }
                    // `.with_type("x".into())` on the call's line, or an argument line
                    // of its own ending in `.into(),`.
                    let unchecked_argument = (opens_call && line.contains(".into()"))
                        || (in_call > 0 && line.trim_end().ends_with(".into(),"));
                    in_call = i32::max(in_call - 1, 0);
                    if forbidden.iter().any(|f| line.contains(f)) || unchecked_argument {
                        found.push(format!(
                            "{}:{}: {}",
                            path.display(),
                            number + 1,
                            line.trim()
                        ));
                    }
                }
            }
        }
        assert!(
            found.is_empty(),
            "use crate::short_string (short_string, fitting_id, constant):\n{}",
            found.join("\n")
        );
    }

    #[test]
    fn long_ids_become_a_stable_digest() {
        assert_eq!(fitting_id("orders:7"), "orders:7");
        let long = "k".repeat(300);
        let id = fitting_id(&long);
        assert_eq!(id.len(), 71);
        assert!(id.starts_with("sha256:"));
        assert_eq!(id, fitting_id(&long), "deterministic");
        assert_ne!(id, fitting_id(&"k".repeat(301)));
        assert_eq!(
            fitting_id(&"a".repeat(256)),
            format!("sha256:{}", {
                let d = Sha256::digest("a".repeat(256).as_bytes());
                d.iter().map(|b| format!("{b:02x}")).collect::<String>()
            })
        );
    }
}
