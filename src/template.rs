//! Attribute templates such as `type = "com.github.{header:X-GitHub-Event}"`.
//!
//! Placeholders: `{subject}` (the NATS subject, MQTT topic, routing key...),
//! `{subject[N]}` (its N-th token, 0-based, split on `.` and `/`), `{header:NAME}`
//! (case-insensitive) and `{json:/pointer}` (a JSON pointer into the payload).
//! Templates are parsed once when a bridge starts; resolving one does no parsing.

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

    /// The fewest characters a resolved value has: its literal text (placeholders may
    /// add more), at least one. A routing word keeps one byte per character.
    pub fn min_chars(&self) -> usize {
        let literal: usize = self
            .parts
            .iter()
            .map(|part| match part {
                Part::Literal(text) => text.chars().count(),
                _ => 0,
            })
            .sum();
        literal.max(1)
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
                        .and_then(|s| s.split(['.', '/']).nth(*index))
                        .filter(|token| !token.is_empty())
                        .ok_or_else(unresolved)?,
                ),
                Part::Header(name) => out.push_str(
                    crate::normalize::find_header(input.headers, name)
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
            subject: Some("sensors.kitchen/temp"),
            headers: &headers,
            json: Some(&json),
        };
        let cases = [
            ("fixed.type", "fixed.type"),
            ("{subject}", "sensors.kitchen/temp"),
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
