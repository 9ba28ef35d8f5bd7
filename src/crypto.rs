//! One process-wide rustls crypto provider. aws-sdk-s3 (feature `s3`) brings rustls'
//! aws-lc-rs backend next to the ring one lapin and rumqttc use; with both compiled in,
//! rustls cannot pick a default by itself and panics on the first TLS connection that
//! asks for it (rumqttc does). Installing ring up front keeps every TLS client on one
//! provider.

/// Installs ring as the process default unless a provider is installed already.
/// Idempotent; call it before any TLS client is built.
pub fn install_default_provider() {
    if rustls::crypto::CryptoProvider::get_default().is_none() {
        // Losing a race to another thread installing one is fine.
        let _ = rustls::crypto::ring::default_provider().install_default();
    }
}

/// The process's provider, for TLS built here (the webhook listener's server side).
pub fn provider() -> std::sync::Arc<rustls::crypto::CryptoProvider> {
    install_default_provider();
    rustls::crypto::CryptoProvider::get_default()
        .expect("installed just above")
        .clone()
}
