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

/// Reads a PEM certificate chain and its private key, checking that they belong
/// together. An error names the key at fault (`tls.cert` or `tls.key`) and never holds
/// the files' contents.
pub fn load_certified_key(
    cert: &std::path::Path,
    key: &std::path::Path,
) -> Result<rustls::sign::CertifiedKey, (&'static str, String)> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let cert_error = |message: String| ("tls.cert", message);
    let key_error = |message: String| ("tls.key", message);
    let pem = std::fs::read(cert)
        .map_err(|e| cert_error(format!("cannot read `{}`: {e}", cert.display())))?;
    let chain = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| cert_error(format!("`{}` is not PEM: {e}", cert.display())))?;
    if chain.is_empty() {
        return Err(cert_error(format!(
            "`{}` holds no CERTIFICATE block",
            cert.display()
        )));
    }
    let pem = std::fs::read(key)
        .map_err(|e| key_error(format!("cannot read `{}`: {e}", key.display())))?;
    let private = PrivateKeyDer::from_pem_slice(&pem)
        .map_err(|e| key_error(format!("`{}` holds no private key: {e}", key.display())))?;
    rustls::sign::CertifiedKey::from_der(chain, private, &provider()).map_err(|e| {
        key_error(format!(
            "`{}` is not the key of the certificate in `{}`: {e}",
            key.display(),
            cert.display()
        ))
    })
}
