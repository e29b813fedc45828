//! S3: a client for any S3-compatible endpoint (AWS, LocalStack, s3s-fs) and the bucket check.

use aws_sdk_s3::Client;
use aws_sdk_s3::config::{BehaviorVersion, Credentials, Region};
use aws_smithy_http_client::tls;

use crate::config::S3Config;

#[derive(Debug, thiserror::Error)]
pub enum S3Error {
    #[error("s3 {operation} failed: {message}")]
    Call {
        operation: &'static str,
        message: String,
    },
}

pub fn client(config: &S3Config) -> Client {
    let http = aws_smithy_http_client::Builder::new()
        .tls_provider(tls::Provider::Rustls(
            tls::rustls_provider::CryptoMode::Ring,
        ))
        .build_https();
    let credentials = Credentials::new(
        config.access_key.clone(),
        config.secret_key.expose().to_owned(),
        None,
        None,
        "orderflow-config",
    );
    let s3 = aws_sdk_s3::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .http_client(http)
        .region(Region::new(config.region.clone()))
        .endpoint_url(&config.endpoint)
        .credentials_provider(credentials)
        .force_path_style(config.force_path_style)
        .build();
    Client::from_conf(s3)
}

fn call_error(operation: &'static str, e: impl std::error::Error) -> S3Error {
    // The SDK's Display is terse ("service error"); the source chain says what happened.
    let mut message = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        message.push_str(": ");
        message.push_str(&s.to_string());
        source = s.source();
    }
    S3Error::Call { operation, message }
}

/// Creates the bucket when it does not exist.
pub async fn ensure_bucket(client: &Client, bucket: &str) -> Result<(), S3Error> {
    if client.head_bucket().bucket(bucket).send().await.is_ok() {
        return Ok(());
    }
    match client.create_bucket().bucket(bucket).send().await {
        Ok(_) => Ok(()),
        Err(e) => {
            let owned = e
                .as_service_error()
                .map(|s| s.is_bucket_already_owned_by_you() || s.is_bucket_already_exists())
                .unwrap_or(false);
            if owned {
                Ok(())
            } else {
                Err(call_error("create_bucket", e))
            }
        }
    }
}

/// Readiness: the bucket answers a HEAD.
pub async fn probe(client: &Client, bucket: &str) -> Result<(), S3Error> {
    client
        .head_bucket()
        .bucket(bucket)
        .send()
        .await
        .map(|_| ())
        .map_err(|e| call_error("head_bucket", e))
}
