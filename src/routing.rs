//! Routing keys on the topic exchange: `event.<tenant>.<source>.<type>` and
//! `deadletter.<tenant>.<source>`.

/// The longest routing key AMQP 0-9-1 allows (a short string).
pub const MAX_ROUTING_KEY_BYTES: usize = 255;

/// Makes one topic-exchange word: everything outside `[A-Za-z0-9_-]` (dots, `*`, `#`,
/// spaces, non-ASCII) becomes `_`, so a word can never split or act as a wildcard.
pub fn word(text: &str) -> String {
    if text.is_empty() {
        return "_".into();
    }
    text.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

fn join_capped(words: &[&str]) -> String {
    let mut key = words.iter().map(|w| word(w)).collect::<Vec<_>>().join(".");
    // Sanitised keys are ASCII, so any byte index is a char boundary.
    key.truncate(MAX_ROUTING_KEY_BYTES);
    while key.ends_with('.') {
        key.pop();
    }
    key
}

/// `event.<tenant>.<source>.<type>`, capped at 255 bytes (the type word is cut first).
pub fn event_key(tenant: &str, source_name: &str, event_type: &str) -> String {
    join_capped(&["event", tenant, source_name, event_type])
}

/// `deadletter.<tenant>.<source>`.
pub fn deadletter_key(tenant: &str, source_name: &str) -> String {
    join_capped(&["deadletter", tenant, source_name])
}

/// The binding pattern that matches everything a bridge publishes, for `check` output.
/// `None`: the tenant varies per message (a tenant template).
pub fn event_pattern(tenant: Option<&str>, source_name: &str) -> String {
    match tenant {
        Some(tenant) => format!("{}.*", join_capped(&["event", tenant, source_name])),
        None => format!("event.*.{}.*", word(source_name)),
    }
}

/// The dead-letter key of a bridge, or its pattern when the tenant varies per message.
pub fn deadletter_pattern(tenant: Option<&str>, source_name: &str) -> String {
    match tenant {
        Some(tenant) => deadletter_key(tenant, source_name),
        None => format!("deadletter.*.{}", word(source_name)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_are_sanitised() {
        assert_eq!(
            event_key("acme", "github", "com.github.push"),
            "event.acme.github.com_github_push"
        );
        assert_eq!(event_key("a b", "x*y", "#.é"), "event.a_b.x_y.___");
        assert_eq!(event_key("t", "s", ""), "event.t.s._");
        assert_eq!(deadletter_key("acme", "orders"), "deadletter.acme.orders");
        assert_eq!(
            event_pattern(Some("acme"), "or.ders"),
            "event.acme.or_ders.*"
        );
        assert_eq!(event_pattern(None, "or.ders"), "event.*.or_ders.*");
        assert_eq!(deadletter_pattern(None, "s"), "deadletter.*.s");
    }

    #[test]
    fn keys_are_capped_at_255_bytes() {
        let long_type = "x".repeat(400);
        let key = event_key("acme", "src", &long_type);
        assert_eq!(key.len(), MAX_ROUTING_KEY_BYTES);
        assert!(key.starts_with("event.acme.src.xxx"));
        // A cut that lands on a dot never leaves an empty trailing word.
        let tenant = "t".repeat(249);
        let key = event_key(&tenant, "s", "type");
        assert!(
            !key.ends_with('.') && key.len() <= MAX_ROUTING_KEY_BYTES,
            "{key}"
        );
    }
}
