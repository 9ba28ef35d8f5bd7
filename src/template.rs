//! Attribute templates such as `type = "com.github.{header:X-GitHub-Event}"`.
//!
//! Placeholders: `{subject}` (the NATS subject, MQTT topic, routing key...),
//! `{subject[N]}` (its N-th token, 0-based, split on the separator of the bridge's
//! transport only: `.` for NATS, JetStream and AMQP routing keys, `/` for MQTT topics and
//! S3 keys, not at all for Kafka topics), `{header:NAME}` (case-insensitive) and
//! `{json:/pointer}` (a JSON pointer into the payload). Templates are parsed once when a
//! bridge starts; resolving one does no parsing.

use std::fmt;

use serde_json::Value;

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Literal(String),
    Subject,
    SubjectToken(usize),
    Header(String),
    JsonPointer(String),
}

/// A parsed template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    text: String,
    parts: Vec<Part>,
}

/// What a template is resolved against.
pub struct TemplateInput<'a> {
    pub subject: Option<&'a str>,
    /// What `{subject[N]}` splits the subject on; `None`: it is one token (a Kafka
    /// topic), so only `{subject[0]}` resolves.
    pub separator: Option<char>,
    pub headers: &'a [(String, String)],
    /// The payload parsed as JSON, when it is JSON.
    pub json: Option<&'a Value>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TemplateError {
    #[error("template `{template}`: {message}")]
    Syntax { template: String, message: String },
    #[error("template `{template}`: {placeholder} has no value in this message")]
    Unresolved {
        template: String,
        placeholder: String,
    },
}

impl Template {
    pub fn parse(text: &str) -> Result<Self, TemplateError> {
        let syntax = |message: String| TemplateError::Syntax {
            template: text.to_owned(),
            message,
        };
        let mut parts = Vec::new();
        let mut rest = text;
        while let Some(open) = rest.find('{') {
            if open > 0 {
                parts.push(Part::Literal(rest[..open].to_owned()));
            }
            let close = rest[open..]
                .find('}')
                .ok_or_else(|| syntax("a `{` is not closed".into()))?
                + open;
            let inner = &rest[open + 1..close];
            parts.push(Self::placeholder(inner).map_err(syntax)?);
            rest = &rest[close + 1..];
        }
        if rest.contains('}') {
            return Err(syntax("a `}` has no matching `{`".into()));
        }
        if !rest.is_empty() {
            parts.push(Part::Literal(rest.to_owned()));
        }
        Ok(Template {
            text: text.to_owned(),
            parts,
        })
    }

    fn placeholder(inner: &str) -> Result<Part, String> {
        if inner == "subject" {
            return Ok(Part::Subject);
        }
        if let Some(index) = inner
            .strip_prefix("subject[")
            .and_then(|s| s.strip_suffix(']'))
        {
            return index
                .parse()
                .map(Part::SubjectToken)
                .map_err(|_| format!("`{{{inner}}}`: the token index must be a number"));
        }
        if let Some(name) = inner.strip_prefix("header:") {
            if name.is_empty() {
                return Err("`{header:}` needs a header name".into());
            }
            return Ok(Part::Header(name.to_owned()));
        }
        if let Some(pointer) = inner.strip_prefix("json:") {
            if !pointer.is_empty() && !pointer.starts_with('/') {
                return Err(format!(
                    "`{{{inner}}}`: a JSON pointer starts with `/` (e.g. `/event/type`)"
                ));
            }
            return Ok(Part::JsonPointer(pointer.to_owned()));
        }
        Err(format!(
            "unknown placeholder `{{{inner}}}` (use subject, subject[N], header:NAME or json:/pointer)"
        ))
    }

    /// A template that is just this text.
    pub fn fixed(text: &str) -> Self {
        Template {
            text: text.to_owned(),
            parts: vec![Part::Literal(text.to_owned())],
        }
    }

    /// True when resolving needs the payload parsed as JSON.
    pub fn needs_json(&self) -> bool {
        self.parts
            .iter()
            .any(|part| matches!(part, Part::JsonPointer(_)))
    }

    /// The literal text of the template, placeholders left out: every resolved value
    /// holds it (in order), so it bounds how short a value, or its routing word, can be.
    pub fn literal_text(&self) -> String {
        self.parts
            .iter()
            .filter_map(|part| match part {
                Part::Literal(text) => Some(text.as_str()),
                _ => None,
            })
            .collect()
    }

    /// True when the template has no placeholder: the same value for every message.
    pub fn is_fixed(&self) -> bool {
        self.parts
            .iter()
            .all(|part| matches!(part, Part::Literal(_)))
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// Resolves the template; any placeholder without a value, or an empty result, fails.
    pub fn resolve(&self, input: &TemplateInput<'_>) -> Result<String, TemplateError> {
        if let [Part::Literal(text)] = self.parts.as_slice() {
            return Ok(text.clone());
        }
        let mut out = String::new();
        for part in &self.parts {
            let unresolved = || TemplateError::Unresolved {
                template: self.text.clone(),
                placeholder: describe(part),
            };
            match part {
                Part::Literal(text) => out.push_str(text),
                Part::Subject => out.push_str(input.subject.ok_or_else(unresolved)?),
                Part::SubjectToken(index) => out.push_str(
                    input
                        .subject
                        .and_then(|subject| match input.separator {
                            Some(separator) => subject.split(separator).nth(*index),
                            None => (*index == 0).then_some(subject),
                        })
                        .filter(|token| !token.is_empty())
                        .ok_or_else(unresolved)?,
                ),
                Part::Header(name) => out.push_str(
                    crate::message::find_header(input.headers, name)
                        .filter(|value| !value.is_empty())
                        .ok_or_else(unresolved)?,
                ),
                Part::JsonPointer(pointer) => {
                    match input.json.and_then(|json| json.pointer(pointer)) {
                        Some(Value::String(text)) if !text.is_empty() => out.push_str(text),
                        Some(value @ (Value::Number(_) | Value::Bool(_))) => {
                            out.push_str(&value.to_string())
                        }
                        _ => return Err(unresolved()),
                    }
                }
            }
        }
        if out.is_empty() {
            return Err(TemplateError::Unresolved {
                template: self.text.clone(),
                placeholder: "the whole template".into(),
            });
        }
        Ok(out)
    }
}

fn describe(part: &Part) -> String {
    match part {
        Part::Literal(text) => text.clone(),
        Part::Subject => "{subject}".into(),
        Part::SubjectToken(index) => format!("{{subject[{index}]}}"),
        Part::Header(name) => format!("{{header:{name}}}"),
        Part::JsonPointer(pointer) => format!("{{json:{pointer}}}"),
    }
}

impl fmt::Display for Template {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolves_every_placeholder_kind() {
        let json = serde_json::json!({"event": {"kind": "push", "n": 3}});
        let headers = vec![("X-GitHub-Event".to_string(), "ping".to_string())];
        let input = TemplateInput {
            subject: Some("sensors.kitchen.temp"),
            separator: Some('.'),
            headers: &headers,
            json: Some(&json),
        };
        let cases = [
            ("fixed.type", "fixed.type"),
            ("{subject}", "sensors.kitchen.temp"),
            ("room-{subject[1]}", "room-kitchen"),
            ("room-{subject[2]}", "room-temp"),
            ("gh.{header:x-github-event}", "gh.ping"),
            ("{json:/event/kind}.{json:/event/n}", "push.3"),
        ];
        for (template, expected) in cases {
            let template = Template::parse(template).unwrap();
            assert_eq!(template.resolve(&input).unwrap(), expected);
        }
    }

    #[test]
    fn missing_values_fail_to_resolve() {
        let json = serde_json::json!({"event": {"obj": {}}});
        let input = TemplateInput {
            subject: Some("a.b"),
            separator: Some('.'),
            headers: &[],
            json: Some(&json),
        };
        for template in [
            "{header:X}",
            "{json:/nope}",
            "{json:/event/obj}",
            "{subject[5]}",
        ] {
            let err = Template::parse(template)
                .unwrap()
                .resolve(&input)
                .unwrap_err();
            assert!(
                matches!(err, TemplateError::Unresolved { .. }),
                "{template}"
            );
        }
    }

    /// `{subject[N]}` splits on the transport's separator only: an MQTT topic `a.b/c`
    /// has the tokens `a.b` and `c`, a NATS subject `a.b/c` the tokens `a` and `b/c`, and
    /// a Kafka topic is one token.
    #[test]
    fn subject_tokens_split_on_the_transport_separator_only() {
        let resolve = |template: &str, separator: Option<char>| {
            let input = TemplateInput {
                subject: Some("a.b/c"),
                separator,
                headers: &[],
                json: None,
            };
            Template::parse(template).unwrap().resolve(&input).ok()
        };
        assert_eq!(resolve("{subject[0]}", Some('/')).as_deref(), Some("a.b"));
        assert_eq!(resolve("{subject[1]}", Some('/')).as_deref(), Some("c"));
        assert_eq!(resolve("{subject[2]}", Some('/')), None);
        assert_eq!(resolve("{subject[0]}", Some('.')).as_deref(), Some("a"));
        assert_eq!(resolve("{subject[1]}", Some('.')).as_deref(), Some("b/c"));
        assert_eq!(resolve("{subject[0]}", None).as_deref(), Some("a.b/c"));
        assert_eq!(resolve("{subject[1]}", None), None);
    }

    #[test]
    fn literal_text_and_fixed_templates() {
        let template = Template::parse("t-{subject[1]}.x{header:A}").unwrap();
        assert_eq!(template.literal_text(), "t-.x");
        assert!(!template.is_fixed());
        assert!(Template::parse("acme").unwrap().is_fixed());
        assert!(Template::fixed("a{b").is_fixed());
    }

    #[test]
    fn syntax_errors_are_reported() {
        for template in [
            "{nope}",
            "{json:event}",
            "a{subject",
            "a}b",
            "{subject[x]}",
            "{header:}",
        ] {
            assert!(Template::parse(template).is_err(), "{template}");
        }
    }
}
