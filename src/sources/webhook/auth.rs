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
use std::sync::{Arc, Mutex};
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
    /// What a replay of this request repeats: the signed delivery id where the scheme
    /// has one, else the signature itself where the scheme signs a timestamp (a
    /// replay carries the same one); `None` for `plain`.
    pub replay_key: Option<String>,
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
                Ok(Verified { replay_key: None })
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
                Ok(Verified {
                    replay_key: Some(format!("slack:{}", given.trim())),
                })
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
                Ok(Verified {
                    replay_key: Some(format!("stripe:{}", given.trim())),
                })
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
                    replay_key: Some(id.to_owned()),
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

/// Replay keys (delivery ids, signatures) of requests published within the window, so
/// a repeat is answered without being published again. A key is claimed when its
/// request passed its checks and settled when the exchange confirmed it: a repeat of a
/// settled key is a duplicate; one of a key still in flight is asked to come back (the
/// first copy may yet fail); a claim dropped unsettled (refused, not taken by the
/// bridge, dead-lettered) frees the key for the sender's retry. Bounded: at most
/// `capacity` settled keys (each a 32-byte digest); when full, the oldest goes first.
pub struct ReplayGuard {
    window: Duration,
    capacity: usize,
    seen: Mutex<Seen>,
}

#[derive(Default)]
struct Seen {
    /// `None` while in flight, else when it was settled.
    keys: HashMap<[u8; 32], Option<Instant>>,
    /// Settled keys, oldest first.
    order: VecDeque<([u8; 32], Instant)>,
}

/// How many delivery ids a webhook bridge remembers at most (about 6 MiB).
pub const REPLAY_CAPACITY: usize = 65_536;

/// What a request's replay key says.
pub enum Claim {
    /// First seen: publish it, and settle the ticket once confirmed.
    New(ClaimTicket),
    /// Published within the window: answer it without publishing again.
    Duplicate,
    /// Another copy is in flight: ask the sender to try again later.
    InFlight,
}

/// A claimed key; dropping it unsettled frees the key.
pub struct ClaimTicket {
    guard: Arc<ReplayGuard>,
    key: [u8; 32],
    settled: bool,
}

impl ClaimTicket {
    /// The request was published: a repeat within the window is a duplicate.
    pub fn settle(mut self) {
        self.settled = true;
        let now = Instant::now();
        let guard = self.guard.clone();
        let mut seen = guard.seen.lock().expect("replay guard lock");
        seen.keys.insert(self.key, Some(now));
        seen.order.push_back((self.key, now));
        while seen.order.len() > guard.capacity {
            let Some((oldest, at)) = seen.order.pop_front() else {
                break;
            };
            if seen.keys.get(&oldest) == Some(&Some(at)) {
                seen.keys.remove(&oldest);
            }
        }
    }
}

impl Drop for ClaimTicket {
    fn drop(&mut self) {
        if !self.settled {
            let mut seen = self.guard.seen.lock().expect("replay guard lock");
            if seen.keys.get(&self.key) == Some(&None) {
                seen.keys.remove(&self.key);
            }
        }
    }
}

impl ReplayGuard {
    /// `window`: how long a settled key is remembered.
    pub fn new(window: Duration, capacity: usize) -> Arc<Self> {
        Arc::new(Self {
            window,
            capacity: capacity.max(1),
            seen: Mutex::default(),
        })
    }

    /// Claims `key` (a delivery id or a signature) at `now`.
    pub fn claim(self: &Arc<Self>, key: &str, now: Instant) -> Claim {
        let digest: [u8; 32] = Sha256::digest(key.as_bytes()).into();
        let mut seen = self.seen.lock().expect("replay guard lock");
        self.expire(&mut seen, now);
        match seen.keys.get(&digest) {
            Some(Some(_)) => Claim::Duplicate,
            Some(None) => Claim::InFlight,
            None => {
                seen.keys.insert(digest, None);
                Claim::New(ClaimTicket {
                    guard: self.clone(),
                    key: digest,
                    settled: false,
                })
            }
        }
    }

    fn expire(&self, seen: &mut Seen, now: Instant) {
        while let Some(&(key, at)) = seen.order.front() {
            if now.saturating_duration_since(at) <= self.window {
                break;
            }
            seen.order.pop_front();
            // Only the settlement this entry records (the key may be in flight again).
            if seen.keys.get(&key) == Some(&Some(at)) {
                seen.keys.remove(&key);
            }
        }
    }

    #[cfg(test)]
    fn settled(&self) -> usize {
        let seen = self.seen.lock().unwrap();
        seen.keys.values().filter(|at| at.is_some()).count()
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
            Ok(Verified {
                replay_key: Some(format!("slack:{signature}"))
            }),
            "a replay repeats the signature"
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
                replay_key: Some("msg_p5jXN8AQM9LWM0D4loKWxJek".into())
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
        let Claim::New(ticket) = guard.claim("a", Instant::now()) else {
            panic!("first sight")
        };
        ticket.settle();
        // `settle` stamps the real clock; look from there.
        let settled = Instant::now();
        assert!(matches!(
            guard.claim("a", settled + Duration::from_secs(299)),
            Claim::Duplicate
        ));
        let Claim::New(again) = guard.claim("a", settled + Duration::from_secs(301)) else {
            panic!("forgotten after the window")
        };
        drop(again);
        for id in ["b", "c", "d", "e"] {
            let Claim::New(ticket) = guard.claim(id, Instant::now()) else {
                panic!("{id}")
            };
            ticket.settle();
        }
        assert_eq!(guard.settled(), 3, "bounded");
        assert!(
            matches!(guard.claim("e", Instant::now()), Claim::Duplicate),
            "the newest stays"
        );
        assert!(
            matches!(guard.claim("b", Instant::now()), Claim::New(_)),
            "the oldest went first"
        );
    }

    #[test]
    fn a_copy_in_flight_waits_and_an_unsettled_claim_frees_its_key() {
        let guard = ReplayGuard::new(Duration::from_secs(300), 10);
        let now = Instant::now();
        let Claim::New(first) = guard.claim("k", now) else {
            panic!("first")
        };
        assert!(
            matches!(guard.claim("k", now), Claim::InFlight),
            "a concurrent copy is not answered 200 before the first is published"
        );
        drop(first);
        let Claim::New(retry) = guard.claim("k", now) else {
            panic!("a refused or failed first copy frees the key for the retry")
        };
        retry.settle();
        assert!(matches!(guard.claim("k", Instant::now()), Claim::Duplicate));
    }
}
