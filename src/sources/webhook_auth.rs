//! Signature schemes of webhook senders, their timestamp check, and the replay guard
//! that keeps a delivery id from being published twice within the window.
//!
//! Every scheme is an HMAC-SHA256 over the raw body and, where the scheme has one, a
//! timestamp and delivery id the sender signs with it:
//!
//! | scheme              | headers                                                | signed text              |
//! |---------------------|--------------------------------------------------------|--------------------------|
//! | `plain` (GitHub...) | `hmac_header: <hmac_prefix><hex>`                      | body                     |
//! | `slack`             | `X-Slack-Signature: v0=<hex>`, `X-Slack-Request-Timestamp` | `v0:<ts>:<body>`     |
//! | `stripe`            | `Stripe-Signature: t=<ts>,v1=<hex>[,v1=<hex>]`         | `<ts>.<body>`            |
//! | `standard-webhooks` | `webhook-id`, `webhook-timestamp`, `webhook-signature: v1,<base64> ...` | `<id>.<ts>.<body>` |
//!
//! A timestamp further than `timestamp_tolerance` from now, either way, is refused, so a
//! captured request cannot be replayed later; within the window the replay guard answers
//! a repeated delivery id without publishing it again.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::http::HeaderMap;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::metrics::Refusal;

/// How the sender signs a request (`hmac_scheme`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SignatureScheme {
    /// `hmac_header` holds `hmac_prefix` and the hex HMAC of the body (GitHub, Gitea,
    /// GitLab-compatible senders); no timestamp.
    #[default]
    Plain,
    /// Slack's `v0` request signing.
    Slack,
    /// Stripe's `Stripe-Signature`.
    Stripe,
    /// The Standard Webhooks specification (Svix and others); the secret is the
    /// `whsec_<base64>` text the sender shows, or the raw key.
    StandardWebhooks,
}

impl SignatureScheme {
    /// The header naming the delivery, when the scheme signs one.
    pub fn delivery_id_header(self) -> Option<&'static str> {
        match self {
            SignatureScheme::StandardWebhooks => Some("webhook-id"),
            _ => None,
        }
    }

    /// The HMAC key: the secret as written, except a Standard Webhooks `whsec_` secret,
    /// whose key is the base64 after the prefix.
    pub fn key(self, secret: &str) -> Result<Vec<u8>, String> {
        if self != SignatureScheme::StandardWebhooks {
            return Ok(secret.as_bytes().to_vec());
        }
        match secret.strip_prefix("whsec_") {
            Some(encoded) => {
                use base64::Engine;
                base64::engine::general_purpose::STANDARD
                    .decode(encoded)
                    .map_err(|_| "a `whsec_` secret must be base64 after the prefix".into())
            }
            None => Ok(secret.as_bytes().to_vec()),
        }
    }
}

/// A configured signature check.
pub struct SignatureCheck {
    pub scheme: SignatureScheme,
    pub key: Vec<u8>,
    /// `plain` only: the header and the text before the hex.
    pub header: String,
    pub prefix: String,
    pub tolerance: Duration,
}

/// A request whose signature checked out.
#[derive(Debug, PartialEq, Eq)]
pub struct Verified {
    /// The signed delivery id, when the scheme has one.
    pub delivery_id: Option<String>,
}

fn header<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers.get(name).and_then(|value| value.to_str().ok())
}

impl SignatureCheck {
    /// Whether `name` is a header that carries the signature (kept out of events).
    pub fn is_signature_header(&self, name: &str) -> bool {
        let signature = match self.scheme {
            SignatureScheme::Plain => self.header.as_str(),
            SignatureScheme::Slack => "x-slack-signature",
            SignatureScheme::Stripe => "stripe-signature",
            SignatureScheme::StandardWebhooks => "webhook-signature",
        };
        name.eq_ignore_ascii_case(signature)
    }

    /// Checks the request's signature (and timestamp) at `now` (Unix seconds).
    pub fn verify(&self, headers: &HeaderMap, body: &[u8], now: i64) -> Result<Verified, Refusal> {
        match self.scheme {
            SignatureScheme::Plain => {
                let given = header(headers, &self.header).ok_or(Refusal::MissingCredential)?;
                let signature = given
                    .trim()
                    .strip_prefix(self.prefix.as_str())
                    .and_then(|text| hex::decode(text).ok())
                    .ok_or(Refusal::MalformedSignature)?;
                self.check(&[&signature], &[body])?;
                Ok(Verified { delivery_id: None })
            }
            SignatureScheme::Slack => {
                let given =
                    header(headers, "x-slack-signature").ok_or(Refusal::MissingCredential)?;
                let timestamp = header(headers, "x-slack-request-timestamp")
                    .ok_or(Refusal::MissingCredential)?;
                let signature = given
                    .trim()
                    .strip_prefix("v0=")
                    .and_then(|text| hex::decode(text).ok())
                    .ok_or(Refusal::MalformedSignature)?;
                self.fresh(timestamp, now)?;
                let timestamp = timestamp.trim();
                self.check(&[&signature], &[b"v0:", timestamp.as_bytes(), b":", body])?;
                Ok(Verified { delivery_id: None })
            }
            SignatureScheme::Stripe => {
                let given =
                    header(headers, "stripe-signature").ok_or(Refusal::MissingCredential)?;
                let mut timestamp = None;
                let mut signatures = Vec::new();
                for item in given.split(',') {
                    match item.trim().split_once('=') {
                        Some(("t", value)) => timestamp = Some(value),
                        Some(("v1", value)) => signatures
                            .push(hex::decode(value).map_err(|_| Refusal::MalformedSignature)?),
                        // Other schemes (v0 test signatures) are not ours to check.
                        Some(_) => {}
                        None => return Err(Refusal::MalformedSignature),
                    }
                }
                let timestamp = timestamp.ok_or(Refusal::MalformedSignature)?;
                if signatures.is_empty() {
                    return Err(Refusal::MalformedSignature);
                }
                self.fresh(timestamp, now)?;
                let signatures: Vec<&[u8]> = signatures.iter().map(Vec::as_slice).collect();
                self.check(&signatures, &[timestamp.as_bytes(), b".", body])?;
                Ok(Verified { delivery_id: None })
            }
            SignatureScheme::StandardWebhooks => {
                let id = header(headers, "webhook-id").ok_or(Refusal::MissingCredential)?;
                let timestamp =
                    header(headers, "webhook-timestamp").ok_or(Refusal::MissingCredential)?;
                let given =
                    header(headers, "webhook-signature").ok_or(Refusal::MissingCredential)?;
                use base64::Engine;
                let mut signatures = Vec::new();
                for item in given.split_whitespace() {
                    let (version, encoded) =
                        item.split_once(',').ok_or(Refusal::MalformedSignature)?;
                    // Asymmetric (v1a) signatures are for other verifiers.
                    if version == "v1" {
                        signatures.push(
                            base64::engine::general_purpose::STANDARD
                                .decode(encoded)
                                .map_err(|_| Refusal::MalformedSignature)?,
                        );
                    }
                }
                if signatures.is_empty() {
                    return Err(Refusal::MalformedSignature);
                }
                self.fresh(timestamp, now)?;
                let signatures: Vec<&[u8]> = signatures.iter().map(Vec::as_slice).collect();
                self.check(
                    &signatures,
                    &[id.as_bytes(), b".", timestamp.trim().as_bytes(), b".", body],
                )?;
                Ok(Verified {
                    delivery_id: Some(id.to_owned()),
                })
            }
        }
    }

    /// Some signature is the HMAC of the concatenated parts (compared in constant time).
    fn check(&self, signatures: &[&[u8]], parts: &[&[u8]]) -> Result<(), Refusal> {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.key).expect("HMAC takes any key length");
        for part in parts {
            mac.update(part);
        }
        // `verify_slice` compares in constant time; every signature is compared.
        let matched = signatures.iter().fold(false, |matched, signature| {
            mac.clone().verify_slice(signature).is_ok() | matched
        });
        if matched {
            Ok(())
        } else {
            Err(Refusal::BadSignature)
        }
    }

    /// The signed timestamp is within the tolerance of `now`, either way.
    fn fresh(&self, timestamp: &str, now: i64) -> Result<(), Refusal> {
        let timestamp: i64 = timestamp
            .trim()
            .parse()
            .map_err(|_| Refusal::MalformedSignature)?;
        let tolerance = i64::try_from(self.tolerance.as_secs()).unwrap_or(i64::MAX);
        if now.abs_diff(timestamp) > tolerance.unsigned_abs() {
            return Err(Refusal::StaleTimestamp);
        }
        Ok(())
    }
}

/// Delivery ids published within the window, so a repeated delivery is answered without
/// being published again. Bounded: at most `capacity` ids (each kept as a 32-byte
/// digest); when full, the oldest is forgotten early.
pub struct ReplayGuard {
    window: Duration,
    capacity: usize,
    seen: Mutex<Seen>,
}

#[derive(Default)]
struct Seen {
    at: HashMap<[u8; 32], Instant>,
    order: VecDeque<([u8; 32], Instant)>,
}

/// How many delivery ids a webhook bridge remembers at most (about 6 MiB).
pub const REPLAY_CAPACITY: usize = 65_536;

impl ReplayGuard {
    pub fn new(window: Duration, capacity: usize) -> Self {
        Self {
            window,
            capacity: capacity.max(1),
            seen: Mutex::default(),
        }
    }

    fn digest(id: &str) -> [u8; 32] {
        Sha256::digest(id.as_bytes()).into()
    }

    /// Whether `id` was published within the window.
    pub fn seen(&self, id: &str, now: Instant) -> bool {
        let mut seen = self.seen.lock().expect("replay guard lock");
        self.expire(&mut seen, now);
        seen.at.contains_key(&Self::digest(id))
    }

    /// Remembers a published `id`.
    pub fn remember(&self, id: &str, now: Instant) {
        let mut seen = self.seen.lock().expect("replay guard lock");
        self.expire(&mut seen, now);
        let key = Self::digest(id);
        if seen.at.insert(key, now).is_none() {
            seen.order.push_back((key, now));
        }
        while seen.at.len() > self.capacity {
            let Some((oldest, _)) = seen.order.pop_front() else {
                break;
            };
            seen.at.remove(&oldest);
        }
    }

    fn expire(&self, seen: &mut Seen, now: Instant) {
        while let Some(&(key, at)) = seen.order.front() {
            if now.saturating_duration_since(at) <= self.window {
                break;
            }
            seen.order.pop_front();
            // A later `remember` of the same id refreshed nothing (first time wins), so
            // the entry goes with its first sighting.
            seen.at.remove(&key);
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.seen.lock().unwrap().at.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.insert(*name, HeaderValue::from_str(value).unwrap());
        }
        map
    }

    fn hmac_hex(key: &[u8], text: &[u8]) -> String {
        let mut mac = Hmac::<Sha256>::new_from_slice(key).unwrap();
        mac.update(text);
        hex::encode(mac.finalize().into_bytes())
    }

    fn check(scheme: SignatureScheme, secret: &str) -> SignatureCheck {
        SignatureCheck {
            scheme,
            key: scheme.key(secret).unwrap(),
            header: "x-hub-signature-256".into(),
            prefix: "sha256=".into(),
            tolerance: Duration::from_secs(300),
        }
    }

    #[test]
    fn slack_signatures_and_their_timestamps() {
        // Slack's documented example.
        let secret = "8f742231b10e8888abcd99yyyzzz85a5";
        let body = b"token=xyzz0WbapA4vBCDEFasx0q6G&team_id=T1DC2JH3J&team_domain=testteamnow&channel_id=G8PSS9T3V&channel_name=foobar&user_id=U2CERLKJA&user_name=roadrunner&command=%2Fwebhook-collect&text=&response_url=https%3A%2F%2Fhooks.slack.com%2Fcommands%2FT1DC2JH3J%2F397700885554%2F96rGlfmibIGlgcZRskXaIFfN&trigger_id=398738663015.47445629121.803a0bc887a14d10d2c447fce8b6703c";
        let signature = "v0=a2114d57b48eac39b9ad189dd8316235a7b4a8d21a10bd27519666489c69b503";
        let check = check(SignatureScheme::Slack, secret);
        let signed = headers(&[
            ("x-slack-signature", signature),
            ("x-slack-request-timestamp", "1531420618"),
        ]);
        assert_eq!(
            check.verify(&signed, body, 1531420618 + 299),
            Ok(Verified { delivery_id: None })
        );
        assert_eq!(
            check.verify(&signed, body, 1531420618 + 301),
            Err(Refusal::StaleTimestamp),
            "an old request is refused even with a good signature"
        );
        assert_eq!(
            check.verify(&signed, b"token=other", 1531420618),
            Err(Refusal::BadSignature)
        );
        let tampered_time = headers(&[
            ("x-slack-signature", signature),
            ("x-slack-request-timestamp", "1531420619"),
        ]);
        assert_eq!(
            check.verify(&tampered_time, body, 1531420619),
            Err(Refusal::BadSignature),
            "the timestamp is signed"
        );
    }

    #[test]
    fn stripe_signatures() {
        let check = check(SignatureScheme::Stripe, "whsec_test");
        let body = br#"{"id":"evt_1"}"#;
        let now = 1_700_000_000;
        let good = hmac_hex(
            b"whsec_test",
            format!("{now}.{}", std::str::from_utf8(body).unwrap()).as_bytes(),
        );
        let header_value = format!("t={now},v1={},v0=abc", good);
        assert!(
            check
                .verify(&headers(&[("stripe-signature", &header_value)]), body, now)
                .is_ok()
        );
        // One of several v1 signatures (during a secret roll) is enough.
        let rolled = format!("t={now},v1={},v1={good}", "00".repeat(32));
        assert!(
            check
                .verify(&headers(&[("stripe-signature", &rolled)]), body, now)
                .is_ok()
        );
        assert_eq!(
            check.verify(
                &headers(&[("stripe-signature", &header_value)]),
                body,
                now + 3600
            ),
            Err(Refusal::StaleTimestamp)
        );
        assert_eq!(
            check.verify(
                &headers(&[("stripe-signature", &header_value)]),
                body,
                now - 3600
            ),
            Err(Refusal::StaleTimestamp),
            "a timestamp from the future is refused too"
        );
        for malformed in ["garbage", "t=1", &format!("v1={good}"), "t=x,v1=zz"] {
            assert_eq!(
                check.verify(&headers(&[("stripe-signature", malformed)]), body, now),
                Err(Refusal::MalformedSignature),
                "{malformed}"
            );
        }
        assert_eq!(
            check.verify(&HeaderMap::new(), body, now),
            Err(Refusal::MissingCredential)
        );
    }

    #[test]
    fn standard_webhooks_signatures_carry_the_delivery_id() {
        // The Standard Webhooks specification's example.
        let check = check(
            SignatureScheme::StandardWebhooks,
            "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
        );
        let body = br#"{"test": 2432232314}"#;
        let signed = headers(&[
            ("webhook-id", "msg_p5jXN8AQM9LWM0D4loKWxJek"),
            ("webhook-timestamp", "1614265330"),
            (
                "webhook-signature",
                "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=",
            ),
        ]);
        assert_eq!(
            check.verify(&signed, body, 1614265330),
            Ok(Verified {
                delivery_id: Some("msg_p5jXN8AQM9LWM0D4loKWxJek".into())
            })
        );
        assert_eq!(
            check.verify(&signed, body, 1614265330 + 301),
            Err(Refusal::StaleTimestamp)
        );
        let other_id = headers(&[
            ("webhook-id", "msg_other"),
            ("webhook-timestamp", "1614265330"),
            (
                "webhook-signature",
                "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=",
            ),
        ]);
        assert_eq!(
            check.verify(&other_id, body, 1614265330),
            Err(Refusal::BadSignature),
            "the delivery id is signed"
        );
        assert!(SignatureScheme::StandardWebhooks.key("whsec_***").is_err());
    }

    #[test]
    fn plain_signatures() {
        let check = check(SignatureScheme::Plain, "It's a Secret to Everybody");
        let body = b"Hello, World!";
        // GitHub's documented example of X-Hub-Signature-256.
        let github = "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17";
        let signed = headers(&[("x-hub-signature-256", github)]);
        assert!(check.verify(&signed, body, 0).is_ok());
        assert_eq!(
            check.verify(&signed, b"Hello?", 0),
            Err(Refusal::BadSignature)
        );
        assert_eq!(
            check.verify(&headers(&[("x-hub-signature-256", "sha1=00")]), body, 0),
            Err(Refusal::MalformedSignature)
        );
        assert_eq!(
            check.verify(&HeaderMap::new(), body, 0),
            Err(Refusal::MissingCredential)
        );
    }

    #[test]
    fn the_replay_guard_forgets_after_the_window_and_stays_bounded() {
        let guard = ReplayGuard::new(Duration::from_secs(300), 3);
        let start = Instant::now();
        assert!(!guard.seen("a", start));
        guard.remember("a", start);
        assert!(guard.seen("a", start + Duration::from_secs(299)));
        assert!(!guard.seen("a", start + Duration::from_secs(301)));
        for (i, id) in ["b", "c", "d", "e"].into_iter().enumerate() {
            guard.remember(id, start + Duration::from_secs(400 + i as u64));
        }
        assert_eq!(guard.len(), 3, "bounded");
        let later = start + Duration::from_secs(404);
        assert!(!guard.seen("b", later), "the oldest went first");
        assert!(guard.seen("e", later));
    }
}
