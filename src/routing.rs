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

/// The words, each made a topic-exchange word, joined with dots.
fn join(words: &[&str]) -> String {
    words.iter().map(|w| word(w)).collect::<Vec<_>>().join(".")
}

fn join_capped(words: &[&str]) -> String {
    let mut key = join(words);
    // Sanitised keys are ASCII, so any byte index is a char boundary.
    key.truncate(MAX_ROUTING_KEY_BYTES);
    while key.ends_with('.') {
        key.pop();
    }
    key
}

/// `event.<tenant>.<source>.<type>`. A key over 255 bytes is an error, never cut: a cut
/// key could route the event where its full key would not.
pub fn event_key(tenant: &str, source_name: &str, event_type: &str) -> Result<String, String> {
    let key = join(&["event", tenant, source_name, event_type]);
    if key.len() > MAX_ROUTING_KEY_BYTES {
        return Err(format!(
            "the routing key would be {} bytes (type `{}`); AMQP allows at most {MAX_ROUTING_KEY_BYTES}",
            key.len(),
            crate::short_string::preview(event_type)
        ));
    }
    Ok(key)
}

/// `deadletter.<tenant>.<source>`, capped at 255 bytes: a dead letter must go somewhere,
/// and `deadletter.#` bindings still catch a cut key.
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
    fn words_are_sanitised() {
        assert_eq!(
            event_key("acme", "github", "com.github.push").unwrap(),
            "event.acme.github.com_github_push"
        );
        assert_eq!(event_key("a b", "x*y", "#.é").unwrap(), "event.a_b.x_y.___");
        assert_eq!(event_key("t", "s", "").unwrap(), "event.t.s._");
        assert_eq!(deadletter_key("acme", "orders"), "deadletter.acme.orders");
        assert_eq!(
            event_pattern(Some("acme"), "or.ders"),
            "event.acme.or_ders.*"
        );
        assert_eq!(event_pattern(None, "or.ders"), "event.*.or_ders.*");
        assert_eq!(deadletter_pattern(None, "s"), "deadletter.*.s");
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
    fn event_keys_over_255_bytes_are_errors_and_deadletter_keys_are_capped() {
        let fits = "x".repeat(255 - "event.acme.src.".len());
        assert_eq!(event_key("acme", "src", &fits).unwrap().len(), 255);
        let error = event_key("acme", "src", &format!("{fits}x")).unwrap_err();
        assert!(error.contains("256 bytes"), "{error}");
        // A cut that lands on a dot never leaves an empty trailing word.
        let tenant = "t".repeat(249);
        let key = deadletter_key(&tenant, "source");
        assert!(
            !key.ends_with('.') && key.len() <= MAX_ROUTING_KEY_BYTES,
            "{key}"
        );
    }
}
