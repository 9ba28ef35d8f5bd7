//! One connection's client, for either protocol version: the connect options (the
//! persistent session, credentials, TLS) and rumqttc's two clients and event loops
//! behind one shape.

use std::path::PathBuf;

use bytes::Bytes;
use rumqttc::v5;

use super::spec::{Endpoint, MqttSpec, Protocol};
use crate::message::SourceError;
use crate::secret::Secret;
use crate::sources::common::context::ConnectContext;

/// The largest MQTT packet (remaining length 268,435,455 plus the fixed header). We
/// accept every packet the protocol allows: refusing one would drop the connection, and
/// the broker would resend the same message forever. `max_message_bytes` dead-letters
/// large messages instead.
const MAX_PACKET_BYTES: usize = 268_435_460;

/// Requests (PUBACKs, SUBSCRIBE) queued to the event loop. PUBACKs are bounded by the
/// messages the broker lets us hold unacknowledged, at most 65535 in MQTT 5.
const REQUEST_CAPACITY: usize = 65_535 + 64;

/// Seconds to reach the broker and get its CONNACK.
const CONNECT_TIMEOUT_SECONDS: u64 = 10;

/// The TLS settings for rumqttc, reading the PEM files now so a renewed certificate is
/// picked up at the next connection.
fn tls_configuration(
    spec: &MqttSpec,
    endpoint: &Endpoint,
) -> Result<Option<rumqttc::TlsConfiguration>, SourceError> {
    if !endpoint.tls {
        return Ok(None);
    }
    crate::crypto::install_default_provider();
    let options = spec.tls.clone().unwrap_or_default();
    let read = |path: &PathBuf, what: &str| {
        std::fs::read(path).map_err(|e| {
            SourceError::Connect(format!("cannot read {what} {}: {e}", path.display()))
        })
    };
    let ca = match &options.ca_file {
        Some(path) => read(path, "tls.ca_file")?,
        None => system_ca_bundle().map_err(SourceError::Connect)?,
    };
    let client_auth = match (&options.cert_file, &options.key_file) {
        (Some(cert), Some(key)) => Some((read(cert, "tls.cert_file")?, read(key, "tls.key_file")?)),
        _ => None,
    };
    Ok(Some(rumqttc::TlsConfiguration::Simple {
        ca,
        alpn: None,
        client_auth,
    }))
}

/// The system's CA bundle, for `mqtts://` without a `ca_file`. Read from the usual
/// places instead of rumqttc's default (which panics when a system certificate does not
/// load).
fn system_ca_bundle() -> Result<Vec<u8>, String> {
    let mut candidates: Vec<PathBuf> = std::env::var_os("SSL_CERT_FILE")
        .map(PathBuf::from)
        .into_iter()
        .collect();
    candidates.extend(
        [
            "/etc/ssl/certs/ca-certificates.crt", // Debian, Ubuntu, Alpine
            "/etc/pki/tls/certs/ca-bundle.crt",   // Fedora, RHEL
            "/etc/ssl/ca-bundle.pem",             // openSUSE
            "/etc/ssl/cert.pem",                  // Alpine, BSDs, macOS
        ]
        .map(PathBuf::from),
    );
    for path in &candidates {
        if let Ok(bundle) = std::fs::read(path) {
            return Ok(bundle);
        }
    }
    Err(format!(
        "no system CA bundle found (looked at {}); set ca_file in [bridge.tls]",
        candidates
            .iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    ))
}

/// A message as either protocol version delivers it.
#[derive(Debug)]
pub(super) struct Arrived {
    pub(super) topic: String,
    pub(super) payload: Bytes,
    /// The packet id of a QoS 1 message, which needs a PUBACK; `None` for QoS 0.
    pub(super) pkid: Option<u16>,
    /// Set by the broker when it resends a message it delivered before.
    pub(super) dup: bool,
    pub(super) content_type: Option<String>,
    pub(super) user_properties: Vec<(String, String)>,
}

/// What the driver needs to know of the event loop's events.
#[derive(Debug)]
pub(super) enum Event {
    ConnAck {
        session_present: bool,
    },
    /// Per requested filter: the granted QoS, or why the broker refused it.
    SubAck(Vec<Result<u8, String>>),
    /// Per filter of an UNSUBSCRIBE: done, or why the broker refused it.
    UnsubAck(Vec<Result<(), String>>),
    Publish(Arrived),
    /// A PUBACK was written to the connection.
    PubAckWritten(u16),
    DisconnectWritten,
    Other,
}

pub(super) enum EventLoop {
    V311(Box<rumqttc::EventLoop>),
    V5(Box<v5::EventLoop>),
}

impl EventLoop {
    pub(super) async fn poll(&mut self) -> Result<Event, String> {
        match self {
            EventLoop::V311(events) => {
                use rumqttc::{Event as E, Outgoing, Packet};
                let event = events.poll().await.map_err(|e| e.to_string())?;
                Ok(match event {
                    E::Incoming(Packet::ConnAck(ack)) => Event::ConnAck {
                        session_present: ack.session_present,
                    },
                    E::Incoming(Packet::SubAck(ack)) => Event::SubAck(
                        ack.return_codes
                            .iter()
                            .map(|code| match code {
                                rumqttc::SubscribeReasonCode::Success(qos) => Ok(*qos as u8),
                                rumqttc::SubscribeReasonCode::Failure => {
                                    Err("refused (SUBACK failure; check the broker's ACL for this \
                                     client)"
                                        .to_owned())
                                }
                            })
                            .collect(),
                    ),
                    // 3.1.1 has no reason codes: an UNSUBACK means done.
                    E::Incoming(Packet::UnsubAck(_)) => Event::UnsubAck(vec![Ok(())]),
                    E::Incoming(Packet::Publish(publish)) => Event::Publish(Arrived {
                        pkid: (publish.qos != rumqttc::QoS::AtMostOnce).then_some(publish.pkid),
                        dup: publish.dup,
                        topic: publish.topic,
                        payload: publish.payload,
                        content_type: None,
                        user_properties: Vec::new(),
                    }),
                    E::Outgoing(Outgoing::PubAck(pkid)) => Event::PubAckWritten(pkid),
                    E::Outgoing(Outgoing::Disconnect) => Event::DisconnectWritten,
                    _ => Event::Other,
                })
            }
            EventLoop::V5(events) => {
                use rumqttc::Outgoing;
                use v5::mqttbytes::v5::{
                    DisconnectReasonCode, Packet, SubscribeReasonCode, UnsubAckReason,
                };
                use v5::{ConnectionError, Event as E, StateError};
                let event = events.poll().await.map_err(|error| match &error {
                    ConnectionError::MqttState(StateError::ServerDisconnect {
                        reason_code: DisconnectReasonCode::SessionTakenOver,
                        ..
                    }) => format!(
                        "{error} (another client connected with this client id; replicas \
                         need distinct client ids)"
                    ),
                    _ => error.to_string(),
                })?;
                Ok(match event {
                    E::Incoming(Packet::ConnAck(ack)) => Event::ConnAck {
                        session_present: ack.session_present,
                    },
                    E::Incoming(Packet::SubAck(ack)) => Event::SubAck(
                        ack.return_codes
                            .iter()
                            .map(|code| match code {
                                SubscribeReasonCode::Success(qos) => Ok(*qos as u8),
                                refused => Err(format!("refused ({refused:?})")),
                            })
                            .collect(),
                    ),
                    E::Incoming(Packet::UnsubAck(ack)) => Event::UnsubAck(
                        ack.reasons
                            .iter()
                            .map(|reason| match reason {
                                // Already gone is what we wanted.
                                UnsubAckReason::Success | UnsubAckReason::NoSubscriptionExisted => {
                                    Ok(())
                                }
                                refused => Err(format!("refused ({refused:?})")),
                            })
                            .collect(),
                    ),
                    E::Incoming(Packet::Publish(publish)) => {
                        let properties = publish.properties.unwrap_or_default();
                        Event::Publish(Arrived {
                            pkid: (publish.qos != v5::mqttbytes::QoS::AtMostOnce)
                                .then_some(publish.pkid),
                            dup: publish.dup,
                            topic: String::from_utf8_lossy(&publish.topic).into_owned(),
                            payload: publish.payload,
                            content_type: properties.content_type,
                            user_properties: properties.user_properties,
                        })
                    }
                    E::Outgoing(Outgoing::PubAck(pkid)) => Event::PubAckWritten(pkid),
                    E::Outgoing(Outgoing::Disconnect) => Event::DisconnectWritten,
                    _ => Event::Other,
                })
            }
        }
    }
}

#[derive(Clone)]
pub(super) enum Client {
    V311(rumqttc::AsyncClient),
    V5(v5::AsyncClient),
}

impl Client {
    /// Queues a PUBACK without waiting: it is called under the ordering lock.
    pub(super) fn try_ack(&self, pkid: u16) -> Result<(), String> {
        match self {
            Client::V311(client) => {
                let mut publish = rumqttc::Publish::new("", rumqttc::QoS::AtLeastOnce, "");
                publish.pkid = pkid;
                client.try_ack(&publish).map_err(|e| e.to_string())
            }
            Client::V5(client) => {
                let mut publish = v5::mqttbytes::v5::Publish::new(
                    "",
                    v5::mqttbytes::QoS::AtLeastOnce,
                    Bytes::new(),
                    None,
                );
                publish.pkid = pkid;
                client.try_ack(&publish).map_err(|e| e.to_string())
            }
        }
    }

    pub(super) fn try_subscribe(&self, filters: &[(String, u8)]) -> Result<(), String> {
        match self {
            Client::V311(client) => client
                .try_subscribe_many(filters.iter().map(|(filter, qos)| {
                    rumqttc::SubscribeFilter::new(filter.clone(), v4_qos(*qos))
                }))
                .map_err(|e| e.to_string()),
            Client::V5(client) => client
                .try_subscribe_many(filters.iter().map(|(filter, qos)| {
                    let mut filter = v5::mqttbytes::v5::Filter::new(filter.clone(), v5_qos(*qos));
                    // A SUBSCRIBE that replaces an existing subscription must not send
                    // the retained messages again (they would be bridged twice).
                    filter.retain_forward_rule =
                        v5::mqttbytes::v5::RetainForwardRule::OnNewSubscribe;
                    filter
                }))
                .map_err(|e| e.to_string()),
        }
    }

    pub(super) fn try_unsubscribe(&self, filter: &str) -> Result<(), String> {
        match self {
            Client::V311(client) => client.try_unsubscribe(filter).map_err(|e| e.to_string()),
            Client::V5(client) => client.try_unsubscribe(filter).map_err(|e| e.to_string()),
        }
    }

    pub(super) fn try_disconnect(&self) -> Result<(), String> {
        match self {
            Client::V311(client) => client.try_disconnect().map_err(|e| e.to_string()),
            Client::V5(client) => client.try_disconnect().map_err(|e| e.to_string()),
        }
    }
}

fn v4_qos(qos: u8) -> rumqttc::QoS {
    if qos == 0 {
        rumqttc::QoS::AtMostOnce
    } else {
        rumqttc::QoS::AtLeastOnce
    }
}

fn v5_qos(qos: u8) -> v5::mqttbytes::QoS {
    if qos == 0 {
        v5::mqttbytes::QoS::AtMostOnce
    } else {
        v5::mqttbytes::QoS::AtLeastOnce
    }
}

pub(super) fn new_client(
    spec: &MqttSpec,
    endpoint: &Endpoint,
    client_id: String,
    context: &ConnectContext,
) -> Result<(Client, EventLoop), SourceError> {
    let transport = tls_configuration(spec, endpoint)?.map(rumqttc::Transport::tls_with_config);
    let credentials = spec.user.as_ref().map(|user| {
        let password = spec
            .password
            .as_ref()
            .map(Secret::expose)
            .unwrap_or_default();
        (user.clone(), password.to_owned())
    });
    Ok(match spec.protocol {
        Protocol::V311 => {
            let mut options = rumqttc::MqttOptions::new(client_id, &endpoint.host, endpoint.port);
            options
                .set_keep_alive(spec.keep_alive)
                .set_clean_session(false)
                .set_manual_acks(true)
                .set_max_packet_size(MAX_PACKET_BYTES, MAX_PACKET_BYTES);
            if let Some((user, password)) = credentials {
                options.set_credentials(user, password);
            }
            if let Some(transport) = transport {
                options.set_transport(transport);
            }
            let (client, mut events) = rumqttc::AsyncClient::new(options, REQUEST_CAPACITY);
            events
                .network_options
                .set_connection_timeout(CONNECT_TIMEOUT_SECONDS);
            (Client::V311(client), EventLoop::V311(Box::new(events)))
        }
        Protocol::V5 => {
            let mut options = v5::MqttOptions::new(client_id, &endpoint.host, endpoint.port);
            let expiry = spec.session_expiry().as_secs().min(u64::from(u32::MAX)) as u32;
            options
                .set_keep_alive(spec.keep_alive)
                .set_clean_start(false)
                .set_session_expiry_interval(Some(expiry))
                // The broker's flow control keeps at most this many QoS 1 messages
                // unacknowledged with us, which bounds what waits for the bridge.
                .set_receive_maximum(Some(context.max_in_flight.clamp(1, 65_535) as u16))
                .set_max_packet_size(Some(MAX_PACKET_BYTES as u32))
                .set_manual_acks(true)
                .set_connection_timeout(CONNECT_TIMEOUT_SECONDS);
            if let Some((user, password)) = credentials {
                options.set_credentials(user, password);
            }
            if let Some(transport) = transport {
                options.set_transport(transport);
            }
            let (client, events) = v5::AsyncClient::new(options, REQUEST_CAPACITY);
            (Client::V5(client), EventLoop::V5(Box::new(events)))
        }
    })
}
