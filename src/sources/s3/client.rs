//! The S3 client of a bridge: endpoint, addressing, credentials and trusted CA.

use std::path::Path;

use aws_sdk_s3::Client;
use aws_sdk_s3::config::{
    BehaviorVersion, Credentials, Region, RequestChecksumCalculation, ResponseChecksumValidation,
};

use super::spec::S3Spec;
use crate::message::SourceError;

pub(super) async fn client(spec: &S3Spec) -> Result<Client, SourceError> {
    let region = Region::new(spec.region.clone());
    let mut builder = match (&spec.access_key_id, &spec.secret_access_key) {
        (Some(id), Some(secret)) => aws_sdk_s3::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(region)
            .credentials_provider(Credentials::new(
                id.expose(),
                secret.expose(),
                spec.session_token.as_ref().map(|t| t.expose().to_owned()),
                None,
                "broker-bridge",
            )),
        _ => {
            let shared = aws_config::defaults(BehaviorVersion::latest())
                .region(region)
                .load()
                .await;
            aws_sdk_s3::config::Builder::from(&shared)
        }
    };
    if let Some(url) = &spec.endpoint_url {
        builder = builder.endpoint_url(url);
    }
    if let Some(tls) = &spec.tls {
        if tls.required
            && !spec
                .endpoint_url
                .as_deref()
                .is_none_or(|u| u.starts_with("https://"))
        {
            return Err(SourceError::Connect(
                "tls.required: endpoint_url is not https://".into(),
            ));
        }
        if let Some(ca) = &tls.ca_file {
            builder = builder.http_client(tls_client(ca)?);
        }
    }
    let config = builder
        .force_path_style(spec.path_style.unwrap_or(spec.endpoint_url.is_some()))
        // Many S3-compatible stores reject the newer default checksums.
        .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
        .response_checksum_validation(ResponseChecksumValidation::WhenRequired)
        .build();
    Ok(Client::from_conf(config))
}

fn tls_client(ca: &Path) -> Result<aws_sdk_s3::config::SharedHttpClient, SourceError> {
    use aws_smithy_http_client::tls;
    let pem = std::fs::read(ca)
        .map_err(|e| SourceError::Connect(format!("cannot read ca_file {}: {e}", ca.display())))?;
    let trust = tls::TrustStore::empty()
        .with_native_roots(false)
        .with_pem_certificate(pem);
    let context = tls::TlsContext::builder()
        .with_trust_store(trust)
        .build()
        .map_err(|e| SourceError::Connect(format!("ca_file {}: {e}", ca.display())))?;
    Ok(aws_smithy_http_client::Builder::new()
        .tls_provider(tls::Provider::Rustls(
            tls::rustls_provider::CryptoMode::AwsLc,
        ))
        .tls_context(context)
        .build_https())
}
