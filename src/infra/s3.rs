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

/// Stores `bytes` under `key` with their content type, their SHA-256 (sent as the S3 checksum,
/// which the server verifies, and kept in the object's metadata as hex) and `metadata`.
pub async fn put_document(
    client: &Client,
    bucket: &str,
    key: &str,
    bytes: Vec<u8>,
    content_type: &str,
    sha256: &[u8; 32],
    metadata: &[(&str, String)],
) -> Result<(), S3Error> {
    use base64::Engine as _;
    let mut put = client
        .put_object()
        .bucket(bucket)
        .key(key)
        .content_type(content_type)
        .checksum_sha256(base64::engine::general_purpose::STANDARD.encode(sha256))
        .metadata("sha256", hex(sha256));
    for (k, v) in metadata {
        put = put.metadata(*k, v);
    }
    put.body(aws_sdk_s3::primitives::ByteStream::from(bytes))
        .send()
        .await
        .map_err(|e| call_error("put_object", e))?;
    Ok(())
}

/// Stores `bytes` under `key` in parts of `part_bytes` (S3 multipart upload), for objects too
/// large for one request. A failed part aborts the upload, so no half object stays behind.
pub async fn put_multipart(
    client: &Client,
    bucket: &str,
    key: &str,
    bytes: &[u8],
    content_type: &str,
    part_bytes: usize,
    metadata: &[(&str, String)],
) -> Result<(), S3Error> {
    use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};
    let mut create = client
        .create_multipart_upload()
        .bucket(bucket)
        .key(key)
        .content_type(content_type);
    for (k, v) in metadata {
        create = create.metadata(*k, v);
    }
    let upload = create
        .send()
        .await
        .map_err(|e| call_error("create_multipart_upload", e))?;
    let upload_id = upload.upload_id().unwrap_or_default().to_owned();
    let mut parts = Vec::new();
    for (i, chunk) in bytes.chunks(part_bytes.max(1)).enumerate() {
        let number = i32::try_from(i + 1).unwrap_or(i32::MAX);
        let sent = client
            .upload_part()
            .bucket(bucket)
            .key(key)
            .upload_id(&upload_id)
            .part_number(number)
            .body(aws_sdk_s3::primitives::ByteStream::from(chunk.to_vec()))
            .send()
            .await;
        match sent {
            Ok(part) => parts.push(
                CompletedPart::builder()
                    .part_number(number)
                    .set_e_tag(part.e_tag().map(str::to_owned))
                    .build(),
            ),
            Err(e) => {
                let _ = client
                    .abort_multipart_upload()
                    .bucket(bucket)
                    .key(key)
                    .upload_id(&upload_id)
                    .send()
                    .await;
                return Err(call_error("upload_part", e));
            }
        }
    }
    client
        .complete_multipart_upload()
        .bucket(bucket)
        .key(key)
        .upload_id(&upload_id)
        .multipart_upload(
            CompletedMultipartUpload::builder()
                .set_parts(Some(parts))
                .build(),
        )
        .send()
        .await
        .map_err(|e| call_error("complete_multipart_upload", e))?;
    Ok(())
}

/// Deletes the object (nothing happens when it is already gone).
pub async fn delete(client: &Client, bucket: &str, key: &str) -> Result<(), S3Error> {
    client
        .delete_object()
        .bucket(bucket)
        .key(key)
        .send()
        .await
        .map_err(|e| call_error("delete_object", e))?;
    Ok(())
}

/// The object's bytes.
pub async fn get_bytes(client: &Client, bucket: &str, key: &str) -> Result<Vec<u8>, S3Error> {
    let out = client
        .get_object()
        .bucket(bucket)
        .key(key)
        .send()
        .await
        .map_err(|e| call_error("get_object", e))?;
    let body = out
        .body
        .collect()
        .await
        .map_err(|e| call_error("get_object body", e))?;
    Ok(body.into_bytes().to_vec())
}

/// A URL that downloads the object without credentials until `ttl` has passed.
pub async fn presigned_get(
    client: &Client,
    bucket: &str,
    key: &str,
    ttl: std::time::Duration,
) -> Result<String, S3Error> {
    let config = aws_sdk_s3::presigning::PresigningConfig::expires_in(ttl)
        .map_err(|e| call_error("presign", e))?;
    let request = client
        .get_object()
        .bucket(bucket)
        .key(key)
        .presigned(config)
        .await
        .map_err(|e| call_error("presign", e))?;
    Ok(request.uri().to_owned())
}

/// Lower-case hex.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
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
