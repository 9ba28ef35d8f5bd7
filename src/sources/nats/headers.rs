//! NATS message headers as the `(name, value)` pairs of `Metadata`.

pub(super) fn headers_of(headers: Option<&async_nats::HeaderMap>) -> Vec<(String, String)> {
    let Some(headers) = headers else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for (name, values) in headers.iter() {
        for value in values {
            out.push((name.to_string(), value.as_str().to_owned()));
        }
    }
    out
}
