//! Unit tests of the webhook kind: parsing, the checks of a route, the URLs.

use axum::http::{HeaderMap, HeaderValue};
use hmac::{Hmac, Mac};
use sha2::Sha256;
use tokio::sync::mpsc;

use super::request::{Route, RouteWiring};
use super::{DEFAULT_TYPE, Webhook, WebhookSpec, generate_token, hook_url};
use crate::config::WebhookConfig;
use crate::message::find_header;
use crate::metrics::Refusal;
use crate::sources::common::context::{ExchangeProbe, SourceMetrics};
use crate::sources::common::kind::SourceKind;

fn parse(text: &str) -> Result<WebhookSpec, String> {
    let table: toml::Table = toml::from_str(text).unwrap();
    let value = serde_json::to_value(table).unwrap();
    Webhook::parse(value.as_object().unwrap().clone())
}

fn route(spec: &WebhookSpec) -> Route {
    let (requests, _) = mpsc::channel(1);
    Route::new(
        spec,
        RouteWiring {
            bridge: "x".into(),
            source_uri: "http://hooks.example/hooks/x".into(),
            max_body: 1024,
            requests,
            exchange: ExchangeProbe::default(),
            metrics: SourceMetrics::default(),
        },
    )
    .unwrap()
}

fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
    let mut map = HeaderMap::new();
    for (name, value) in pairs {
        map.insert(*name, HeaderValue::from_str(value).unwrap());
    }
    map
}

fn sign(secret: &str, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

#[test]
fn a_bridge_without_authentication_is_refused_unless_allowed() {
    let error = parse("").unwrap_err();
    assert!(error.contains("path_token"), "{error}");
    assert!(parse("allow_unauthenticated = true").is_ok());
}

#[test]
fn config_mistakes_name_the_key() {
    for (text, key) in [
        ("path = \"hooks\"\nbearer_token = \"t\"", "path"),
        ("path = \"/a/\"\nbearer_token = \"t\"", "path"),
        ("methods = []\nbearer_token = \"t\"", "methods"),
        ("methods = [\"PO ST\"]\nbearer_token = \"t\"", "methods"),
        ("path_token = \"a/b\"", "path_token"),
        ("bearer_token = \"\"", "bearer_token"),
        (
            "hmac_secret = \"s\"\nhmac_header = \"bad header\"",
            "hmac_header",
        ),
        (
            "bearer_token = \"t\"\nresponse_timeout = \"0s\"",
            "response_timeout",
        ),
        ("bearer_token = \"t\"\nsecret = \"x\"", "secret"),
        (
            "hmac_secret = \"s\"\ntimestamp_tolerance = \"0s\"",
            "timestamp_tolerance",
        ),
        (
            "bearer_token = \"t\"\nhmac_scheme = \"slack\"",
            "hmac_scheme",
        ),
        (
            "hmac_secret = \"whsec_!!\"\nhmac_scheme = \"standard-webhooks\"",
            "hmac_secret",
        ),
    ] {
        let error = parse(text).unwrap_err();
        assert!(error.contains(&format!("`{key}`")), "{text}: {error}");
    }
}

#[test]
fn methods_are_upper_case() {
    let spec = parse("methods = [\"post\", \"put\"]\nbearer_token = \"t\"").unwrap();
    assert_eq!(spec.methods, ["POST", "PUT"]);
}

#[test]
fn path_token_checks() {
    let spec = parse("path_token = \"s3cr3t\"").unwrap();
    let route = route(&spec);
    let none = HeaderMap::new();
    assert_eq!(route.authorize_path(None), Some(Refusal::MissingCredential));
    assert_eq!(
        route.authorize_path(Some("s3cr3")),
        Some(Refusal::WrongToken)
    );
    assert_eq!(route.authorize_path(Some("s3cr3t")), None);
    assert_eq!(
        route.authorize_bearer(&none),
        None,
        "no bearer token configured"
    );
}

#[test]
fn bearer_token_checks() {
    let spec = parse("bearer_token = \"abc\"").unwrap();
    let route = route(&spec);
    assert_eq!(
        route.authorize_bearer(&HeaderMap::new()),
        Some(Refusal::MissingCredential)
    );
    assert_eq!(
        route.authorize_bearer(&headers(&[("authorization", "Basic abc")])),
        Some(Refusal::MissingCredential)
    );
    assert_eq!(
        route.authorize_bearer(&headers(&[("authorization", "Bearer abd")])),
        Some(Refusal::WrongToken)
    );
    assert_eq!(
        route.authorize_bearer(&headers(&[("authorization", "bearer abc")])),
        None
    );
}

#[test]
fn hmac_signature_checks() {
    let spec = parse("hmac_secret = \"It's a Secret to Everybody\"").unwrap();
    let route = route(&spec);
    let body = b"Hello, World!";
    // GitHub's documented example of X-Hub-Signature-256.
    let github = "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17";
    assert_eq!(sign("It's a Secret to Everybody", body), github);
    assert_eq!(
        route.authorize_body(&headers(&[("x-hub-signature-256", github)]), body),
        Ok(None)
    );
    assert_eq!(
        route.authorize_body(
            &headers(&[("x-hub-signature-256", github)]),
            b"Hello, World?"
        ),
        Err(Refusal::BadSignature)
    );
    assert_eq!(
        route.authorize_body(&headers(&[("x-hub-signature-256", "sha1=00")]), body),
        Err(Refusal::MalformedSignature)
    );
    assert_eq!(
        route.authorize_body(&HeaderMap::new(), body),
        Err(Refusal::MissingCredential)
    );
}

#[test]
fn hmac_header_and_prefix_are_configurable() {
    let spec =
        parse("hmac_secret = \"k\"\nhmac_header = \"X-Signature\"\nhmac_prefix = \"\"").unwrap();
    let route = route(&spec);
    let signature = sign("k", b"{}");
    let bare = signature.strip_prefix("sha256=").unwrap();
    assert_eq!(
        route.authorize_body(&headers(&[("x-signature", bare)]), b"{}"),
        Ok(None)
    );
}

#[test]
fn content_types() {
    let spec = parse("bearer_token = \"t\"").unwrap();
    let strict = route(&spec);
    for accepted in [
        "application/json",
        "application/json; charset=utf-8",
        "application/vnd.github+json",
        "application/cloudevents+json; charset=UTF-8",
    ] {
        assert!(
            strict.accepts(&headers(&[("content-type", accepted)])),
            "{accepted}"
        );
    }
    for refused in [
        "text/plain",
        "application/x-www-form-urlencoded",
        crate::cloudevent::BATCH_CONTENT_TYPE,
    ] {
        assert!(
            !strict.accepts(&headers(&[("content-type", refused)])),
            "{refused}"
        );
    }
    assert!(!strict.accepts(&HeaderMap::new()));
    assert!(strict.accepts(&headers(&[
        ("content-type", "text/plain"),
        ("ce-specversion", "1.0")
    ])));
    let raw = route(&parse("bearer_token = \"t\"\nraw_bodies = true").unwrap());
    assert!(raw.accepts(&headers(&[("content-type", "text/plain")])));
    assert!(raw.accepts(&HeaderMap::new()));
}

#[test]
fn metadata_hides_credentials_and_takes_the_delivery_id() {
    let spec = parse("hmac_secret = \"k\"\nid_header = \"X-GitHub-Delivery\"").unwrap();
    let route = route(&spec);
    let meta = route.metadata(&headers(&[
        ("authorization", "Bearer x"),
        ("x-hub-signature-256", "sha256=00"),
        ("x-github-delivery", "72d3162e-cc78-11e3-81ab-4c9367dc0958"),
        ("x-github-event", "push"),
        ("content-type", "application/json"),
    ]));
    assert_eq!(
        meta.id.as_deref(),
        Some("72d3162e-cc78-11e3-81ab-4c9367dc0958")
    );
    assert_eq!(meta.content_type.as_deref(), Some("application/json"));
    assert_eq!(find_header(&meta.headers, "X-GitHub-Event"), Some("push"));
    assert!(find_header(&meta.headers, "authorization").is_none());
    assert!(find_header(&meta.headers, "x-hub-signature-256").is_none());
    assert_eq!(meta.default_type.as_deref(), Some(DEFAULT_TYPE));
}

#[test]
fn hook_urls() {
    let spec = parse("path = \"/wh/acme\"\npath_token = \"tok\"").unwrap();
    let config = WebhookConfig {
        listen: "127.0.0.1:8080".parse().unwrap(),
        public_url: Some("https://hooks.example.com/".into()),
        ..WebhookConfig::default()
    };
    assert_eq!(
        hook_url(&config, "gh", &spec),
        "https://hooks.example.com/wh/acme/tok"
    );
    let local = WebhookConfig {
        listen: "[::1]:9000".parse().unwrap(),
        public_url: None,
        ..WebhookConfig::default()
    };
    let spec = parse("bearer_token = \"t\"").unwrap();
    assert_eq!(hook_url(&local, "gh", &spec), "http://[::1]:9000/hooks/gh");
}

#[test]
fn tokens_are_long_random_and_path_safe() {
    let a = generate_token();
    assert_eq!(a.len(), 43);
    assert_ne!(a, generate_token());
    assert!(parse(&format!("path_token = \"{a}\"")).is_ok());
}
