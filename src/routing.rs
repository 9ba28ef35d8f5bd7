//! Routing keys on the topic exchange: `event.<tenant>.<source>.<type>` and
//! `deadletter.<tenant>.<source>`.
//!
//! Two different values never share a word. Tenant and source words are used as they
//! stand and must be valid (`is_valid_word`); a tenant that is not is dead-lettered
//! (`invalid_tenant`), never rewritten. The type is escaped by a reversible scheme
//! (`type_word`, undone by `type_from_word`).

use std::fmt::Write;

/// The longest routing key AMQP 0-9-1 allows (a short string).
pub const MAX_ROUTING_KEY_BYTES: usize = 255;

/// The longest tenant or source word. Two of them and the fixed words leave at least
/// 119 bytes of a key for the type.
pub const MAX_WORD_CHARS: usize = 64;

/// The tenant word of a dead letter whose tenant is unknown (did not resolve or is not
/// valid). Not a valid tenant itself, so no tenant can be mistaken for it.
pub const UNKNOWN_TENANT: &str = "_";

/// The rule for tenant and source words, for messages and docs.
pub const WORD_RULE: &str = "1 to 64 characters from A-Z a-z 0-9 _ -";

/// Whether `text` is a tenant or source word as it stands: 1 to 64 characters from
/// `[A-Za-z0-9_-]`. Nothing else can split a key or act as a wildcard.
pub fn is_valid_word(text: &str) -> bool {
    (1..=MAX_WORD_CHARS).contains(&text.len())
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// Checks a tenant: a valid word, and not `_` (the tenant word of dead letters whose
/// tenant is unknown). The error says why, for `x-bridge-error` and config errors.
pub fn check_tenant(tenant: &str) -> Result<(), String> {
    if tenant == UNKNOWN_TENANT {
        return Err(format!(
            "tenant `{UNKNOWN_TENANT}` is reserved for dead letters whose tenant is unknown"
        ));
    }
    check_word("tenant", tenant)
}

/// Checks a `<source>` word.
pub fn check_source(source_name: &str) -> Result<(), String> {
    check_word("source", source_name)
}

fn check_word(what: &str, text: &str) -> Result<(), String> {
    if is_valid_word(text) {
        return Ok(());
    }
    let shown = crate::short_string::preview(text);
    Err(format!(
        "{what} `{shown}` is not valid: it must be {WORD_RULE}"
    ))
}

/// The `<type>` word of a CloudEvent type, by a reversible escape: `A-Z a-z 0-9 -` stay,
/// `.` becomes `_` (so `com.github.push` routes as `com_github_push`), and every other
/// byte of the UTF-8 text, `_` and `~` included, becomes `~` and two upper-case hex
/// digits (`pull_request` -> `pull~5Frequest`, `a b` -> `a~20b`, `*` -> `~2A`).
pub fn type_word(event_type: &str) -> String {
    let mut word = String::with_capacity(event_type.len());
    for byte in event_type.bytes() {
        match byte {
            b'.' => word.push('_'),
            b if b.is_ascii_alphanumeric() || b == b'-' => word.push(char::from(b)),
            b => write!(word, "~{b:02X}").expect("writing to a String"),
        }
    }
    word
}

/// The type a `<type>` word was made from; `None` for a word `type_word` never makes.
pub fn type_from_word(word: &str) -> Option<String> {
    let bytes = word.as_bytes();
    let mut text = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'_' => text.push(b'.'),
            b'~' => {
                let hex = bytes.get(i + 1..i + 3)?;
                if !hex
                    .iter()
                    .all(|b| b.is_ascii_digit() || (b'A'..=b'F').contains(b))
                {
                    return None;
                }
                text.push(u8::from_str_radix(std::str::from_utf8(hex).ok()?, 16).ok()?);
                i += 2;
            }
            b if b.is_ascii_alphanumeric() || b == b'-' => text.push(b),
            _ => return None,
        }
        i += 1;
    }
    let text = String::from_utf8(text).ok()?;
    // Only the one spelling `type_word` makes (`~41` is not `A`).
    (type_word(&text) == word).then_some(text)
}

/// `event.<tenant>.<source>.<type>`. The tenant and source must be valid words (they
/// are checked, never rewritten); the type is escaped. A key over 255 bytes is an error,
/// never cut: a cut key could route the event where its full key would not.
pub fn event_key(tenant: &str, source_name: &str, event_type: &str) -> Result<String, String> {
    check_tenant(tenant)?;
    check_source(source_name)?;
    if event_type.is_empty() {
        return Err("the type is empty".into());
    }
    let key = format!("event.{tenant}.{source_name}.{}", type_word(event_type));
    if key.len() > MAX_ROUTING_KEY_BYTES {
        return Err(format!(
            "the routing key would be {} bytes (type `{}`); AMQP allows at most {MAX_ROUTING_KEY_BYTES}",
            key.len(),
            crate::short_string::preview(event_type)
        ));
    }
    Ok(key)
}

/// `deadletter.<tenant>.<source>`; `deadletter._.<source>` when the tenant is unknown or
/// not valid, so a dead letter never carries the text that was refused. Tenant and
/// source words are at most 64 characters, so the key always fits.
pub fn deadletter_key(tenant: Option<&str>, source_name: &str) -> String {
    let tenant = tenant
        .filter(|tenant| check_tenant(tenant).is_ok())
        .unwrap_or(UNKNOWN_TENANT);
    format!("deadletter.{tenant}.{source_name}")
}

/// The binding pattern that matches everything a bridge publishes, for `check` output.
/// `None`: the tenant varies per message (a tenant template, `bucket_tenants`).
pub fn event_pattern(tenant: Option<&str>, source_name: &str) -> String {
    format!("event.{}.{source_name}.*", tenant.unwrap_or("*"))
}

/// The dead-letter key of a bridge, or its pattern when the tenant varies per message.
pub fn deadletter_pattern(tenant: Option<&str>, source_name: &str) -> String {
    match tenant {
        Some(tenant) => deadletter_key(Some(tenant), source_name),
        None => format!("deadletter.*.{source_name}"),
    }
}

/// Whether a topic-exchange binding `pattern` matches the routing key `key` (`*`: exactly
/// one word, `#`: zero or more words; every word of `key` is literal).
pub fn topic_matches(pattern: &str, key: &str) -> bool {
    let key: Vec<&str> = topic_words(key).collect();
    let key: Vec<Word<'_>> = key.into_iter().map(Word::Literal).collect();
    overlap(&pattern_words(pattern), &key)
}

/// Whether some routing key matches both topic patterns, e.g. a binding key and the
/// pattern of everything a bridge publishes (`event.acme.orders.*`). Used to refuse a
/// bridge that would consume its own events.
pub fn patterns_overlap(a: &str, b: &str) -> bool {
    overlap(&pattern_words(a), &pattern_words(b))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Word<'a> {
    Literal(&'a str),
    /// `*`
    One,
    /// `#`
    Any,
}

fn topic_words(text: &str) -> impl Iterator<Item = &str> {
    // RabbitMQ treats the empty key as having no words.
    text.split('.').filter(move |_| !text.is_empty())
}

fn pattern_words(pattern: &str) -> Vec<Word<'_>> {
    topic_words(pattern)
        .map(|w| match w {
            "*" => Word::One,
            "#" => Word::Any,
            literal => Word::Literal(literal),
        })
        .collect()
}

/// Is there a word sequence both `a` and `b` match? Dynamic programming over the two
/// suffixes. Where both start with `#`, letting one of them match nothing loses no
/// solution: the words both `#`s would share can be dropped from the common key.
fn overlap(a: &[Word<'_>], b: &[Word<'_>]) -> bool {
    // reachable[i][j]: a[i..] and b[j..] have a common match. Filled from the end.
    let mut reachable = vec![vec![false; b.len() + 1]; a.len() + 1];
    for i in (0..=a.len()).rev() {
        for j in (0..=b.len()).rev() {
            reachable[i][j] = match (a.get(i), b.get(j)) {
                (None, None) => true,
                (Some(Word::Any), _) if reachable[i + 1][j] => true,
                (_, Some(Word::Any)) if reachable[i][j + 1] => true,
                // `#` takes the next word of the other side and stays.
                (Some(Word::Any), Some(Word::Literal(_) | Word::One)) => reachable[i][j + 1],
                (Some(Word::Literal(_) | Word::One), Some(Word::Any)) => reachable[i + 1][j],
                // Both `#`: one of them matching nothing was tried above.
                (Some(Word::Any), Some(Word::Any)) => false,
                (Some(Word::Any), None) | (None, Some(Word::Any)) => false,
                (Some(x), Some(y)) => {
                    let same_word = match (x, y) {
                        (Word::Literal(x), Word::Literal(y)) => x == y,
                        _ => true,
                    };
                    same_word && reachable[i + 1][j + 1]
                }
                (Some(_), None) | (None, Some(_)) => false,
            };
        }
    }
    reachable[0][0]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_use_valid_words_as_they_stand_and_escape_the_type() {
        assert_eq!(
            event_key("acme", "github", "com.github.push").unwrap(),
            "event.acme.github.com_github_push"
        );
        assert_eq!(
            event_key("acme_eu", "git-hub", "pull_request").unwrap(),
            "event.acme_eu.git-hub.pull~5Frequest"
        );
        assert_eq!(
            deadletter_key(Some("acme"), "orders"),
            "deadletter.acme.orders"
        );
        assert_eq!(event_pattern(Some("acme"), "orders"), "event.acme.orders.*");
        assert_eq!(event_pattern(None, "orders"), "event.*.orders.*");
        assert_eq!(deadletter_pattern(None, "s"), "deadletter.*.s");
        assert_eq!(deadletter_pattern(Some("t"), "s"), "deadletter.t.s");
    }

    #[test]
    fn invalid_tenants_and_sources_are_refused_never_rewritten() {
        for tenant in ["acme.eu", "a b", "*", "#", "", "é", "_", &"t".repeat(65)] {
            assert!(event_key(tenant, "s", "t").is_err(), "{tenant:?}");
            assert_eq!(
                deadletter_key(Some(tenant), "s"),
                "deadletter._.s",
                "{tenant:?}"
            );
        }
        assert!(event_key(&"t".repeat(64), "s", "t").is_ok());
        assert_eq!(deadletter_key(None, "s"), "deadletter._.s");
        for source in ["or.ders", "", "x*y", &"s".repeat(65)] {
            assert!(event_key("acme", source, "t").is_err(), "{source:?}");
        }
        assert!(event_key("acme", "s", "").is_err());
        let error = check_tenant("acme.eu").unwrap_err();
        assert!(
            error.contains("acme.eu") && error.contains(WORD_RULE),
            "{error}"
        );
    }

    #[test]
    fn type_words_escape_reversibly() {
        for (event_type, word) in [
            ("com.github.push", "com_github_push"),
            ("pull_request", "pull~5Frequest"),
            ("a b", "a~20b"),
            ("*", "~2A"),
            ("#", "~23"),
            ("~", "~7E"),
            ("é", "~C3~A9"),
            ("s3:ObjectCreated:Put", "s3~3AObjectCreated~3APut"),
            (
                "broker-bridge.webhook.request",
                "broker-bridge_webhook_request",
            ),
            ("..", "__"),
        ] {
            assert_eq!(type_word(event_type), word, "{event_type}");
            assert_eq!(type_from_word(word).as_deref(), Some(event_type), "{word}");
        }
        // Distinct types that the old lossy words merged stay distinct.
        assert_ne!(type_word("a.b"), type_word("a_b"));
        assert_ne!(type_word("a b"), type_word("a_b"));
        // Spellings `type_word` never makes do not decode.
        for word in ["~41", "~2a", "~2", "~", "a.b", "a*", "~C3", "~zz"] {
            assert_eq!(type_from_word(word), None, "{word}");
        }
    }

    #[test]
    fn topic_patterns_match_like_rabbitmq() {
        for (pattern, key, expected) in [
            ("event.#", "event.acme.orders.created", true),
            ("event.#", "event", true),
            ("#", "", true),
            ("#", "a.b", true),
            ("*", "", false),
            ("*", "a", true),
            ("*", "a.b", false),
            ("event.*.orders.*", "event.acme.orders.created", true),
            ("event.*.orders.*", "event.acme.orders", false),
            ("event.*.orders.*", "event.acme.orders.a.b", false),
            ("a.#.z", "a.z", true),
            ("a.#.z", "a.b.c.z", true),
            ("a.#.z", "a.b.c", false),
            ("#.z", "z", true),
            ("a.#.#.z", "a.z", true),
            ("order.#", "orders.new", false),
            ("a.b", "a.b", true),
            ("a.b", "a.c", false),
        ] {
            assert_eq!(
                topic_matches(pattern, key),
                expected,
                "{pattern} against {key}"
            );
        }
    }

    #[test]
    fn pattern_overlap_finds_a_common_key() {
        for (a, b, expected) in [
            ("event.#", "event.acme.orders.*", true),
            ("#", "deadletter.acme.orders", true),
            ("event.*.orders.#", "event.*.orders.*", true),
            ("event.acme.#", "event.*.orders.*", true),
            ("event.globex.#", "event.acme.orders.*", false),
            ("event.*.*", "event.acme.orders.*", false),
            ("event.*.*.*.#", "event.acme.orders.*", true),
            ("event.*.other.*", "event.acme.orders.*", false),
            ("legacy.#", "event.acme.orders.*", false),
            ("*.acme.#", "event.acme.orders.*", true),
            ("#.created", "event.acme.orders.*", true),
            ("#.x", "#.y", false),
            ("#.x.#", "#.x", true),
            ("a.#", "#.b", true),
            ("a.#.c", "#.b.#", true),
            ("a.*", "#.b.c", false),
            ("deadletter.*.orders", "deadletter.acme.orders", true),
            ("deadletter.#", "event.acme.orders.*", false),
        ] {
            assert_eq!(patterns_overlap(a, b), expected, "{a} and {b}");
            assert_eq!(patterns_overlap(b, a), expected, "{b} and {a}");
        }
    }

    #[test]
    fn event_keys_over_255_bytes_are_errors() {
        let fits = "x".repeat(255 - "event.acme.src.".len());
        assert_eq!(event_key("acme", "src", &fits).unwrap().len(), 255);
        let error = event_key("acme", "src", &format!("{fits}x")).unwrap_err();
        assert!(error.contains("256 bytes"), "{error}");
        // Escapes count: 82 spaces are a type word of 246 bytes.
        assert!(
            event_key("t", "s", &" ".repeat(82))
                .unwrap_err()
                .contains("256 bytes")
        );
        let longest = deadletter_key(Some(&"t".repeat(64)), &"s".repeat(64));
        assert!(longest.len() <= MAX_ROUTING_KEY_BYTES, "{longest}");
    }
}
