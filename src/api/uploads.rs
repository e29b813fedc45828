//! User files: `POST /v1/files` (the body is the file; streamed with a size limit; its type
//! checked against its bytes), `GET /v1/files` (the owner's files), `GET /v1/files/{id}` (a
//! redirect to a presigned download), `DELETE /v1/files/{id}`.
//!
//! The owner is the bearer token's subject (`files:write` to upload and delete, `files:read`
//! to list and download); another owner's file answers 404, as if it did not exist.

use bytes::Buf;
use futures::StreamExt;
use serde::Deserialize;
use sha2::{Digest, Sha256};
use uuid::Uuid;
use warp::http::{StatusCode, header};
use warp::{Filter, Rejection, Reply};

use super::guard::require;
use super::idempotency::{self, Begin};
use super::problem::{ApiError, Problem};
use super::{ApiContext, with_ctx};
use crate::auth::{Principal, scopes};
use crate::domain::sniff;
use crate::infra::db::files::{self as repo, UserFile};
use crate::infra::db::idempotency::{self as idempotency_repo, KeyRef, Stored};
use crate::infra::s3;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct UploadQuery {
    name: String,
}

pub fn routes(ctx: ApiContext) -> warp::filters::BoxedFilter<(warp::reply::Response,)> {
    // The owner of a file is the token's subject.
    let owner = |scope: &'static str| require(&ctx, scope).map(|p: Principal| p.subject);
    let upload = warp::path!("v1" / "files")
        .and(warp::post())
        .and(owner(scopes::FILES_WRITE))
        .and(super::idempotency::key())
        .and(warp::query::<UploadQuery>().or_else(|_| async {
            Err(warp::reject::custom(ApiError::InvalidQuery(
                "name=<file name> is required, nothing else".into(),
            )))
        }))
        .and(warp::header::optional::<String>("content-type"))
        .and(warp::header::optional::<u64>("content-length"))
        .and(warp::body::stream())
        .and(with_ctx(ctx.clone()))
        .and_then(upload);
    let list = warp::path!("v1" / "files")
        .and(warp::get())
        .and(owner(scopes::FILES_READ))
        .and(with_ctx(ctx.clone()))
        .and_then(list);
    let download = warp::path!("v1" / "files" / String)
        .and(warp::get())
        .and(owner(scopes::FILES_READ))
        .and(with_ctx(ctx.clone()))
        .and_then(download);
    let remove = warp::path!("v1" / "files" / String)
        .and(warp::delete())
        .and(owner(scopes::FILES_WRITE))
        .and(with_ctx(ctx.clone()))
        .and_then(remove);
    upload
        .or(list)
        .unify()
        .or(download)
        .unify()
        .or(remove)
        .unify()
        .boxed()
}

fn unavailable(e: &dyn std::fmt::Display) -> Rejection {
    warp::reject::custom(ApiError::Unavailable(e.to_string()))
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 255
        && !name
            .chars()
            .any(|c| c.is_control() || c == '/' || c == '\\')
}

/// Upload a file (the body is the file): its type must be allowed and confirmed by its bytes.
#[utoipa::path(post, path = "/v1/files", tag = "files",
    request_body(description = "The file's bytes",
        content((Binary = "application/pdf"), (Binary = "image/png"), (Binary = "image/jpeg"),
            (Text = "text/plain"))),
    params(
        ("name" = String, Query, pattern = "^[^/\\\\\\u0000-\\u001f\\u007f-\\u009f]{1,255}$", description = "The file name, 1-255 characters without slashes or control characters"),
        ("Idempotency-Key" = Option<String>, Header, pattern = "^[!-~]{1,255}$", description = "Retry-safe key; the same key, name, type and bytes answer the first response again"),
    ),
    responses(
        (status = 201, description = "Stored", body = UserFile, headers(("Location" = String, description = "/v1/files/{id}"))),
        (status = 400, description = "invalid_query, invalid_idempotency_key", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "idempotency_key_in_use", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "body_too_large", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "unsupported_file_type", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "invalid_file_name, idempotency_key_reused", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = ["files:write"])))]
pub(crate) async fn upload<S, B>(
    owner: String,
    idempotency_key: Option<String>,
    query: UploadQuery,
    content_type: Option<String>,
    content_length: Option<u64>,
    mut body: S,
    ctx: ApiContext,
) -> Result<warp::reply::Response, Rejection>
where
    S: futures::Stream<Item = Result<B, warp::Error>> + Unpin + Send,
    B: Buf,
{
    let limit = ctx.config.files.max_upload_bytes;
    if let Some(n) = content_length.filter(|n| *n > limit) {
        // A body up to twice the limit is read and dropped, so the client (still sending) gets
        // the 413 instead of a reset connection; a larger one is cut off at once.
        if n <= limit.saturating_mul(2) {
            drain(&mut body, n).await;
        }
        return Err(warp::reject::custom(ApiError::BodyTooLarge(limit)));
    }
    if !valid_name(&query.name) {
        return Err(warp::reject::custom(ApiError::InvalidFileName));
    }
    let declared = content_type
        .as_deref()
        .map(sniff::essence)
        .unwrap_or_default();
    if !sniff::ALLOWED.contains(&declared.as_str()) {
        return Err(warp::reject::custom(ApiError::UnsupportedFileType(
            format!("{declared:?} is not one of {}", sniff::ALLOWED.join(", ")),
        )));
    }
    // Read the stream chunk by chunk, refusing as soon as it passes the limit.
    let mut bytes: Vec<u8> = Vec::new();
    while let Some(chunk) = body.next().await {
        let mut chunk = chunk.map_err(|e| {
            warp::reject::custom(ApiError::MalformedJson(format!(
                "the upload broke off: {e}"
            )))
        })?;
        if bytes.len() as u64 + chunk.remaining() as u64 > limit {
            drain(&mut body, limit).await;
            return Err(warp::reject::custom(ApiError::BodyTooLarge(limit)));
        }
        while chunk.has_remaining() {
            let part = chunk.chunk();
            bytes.extend_from_slice(part);
            let n = part.len();
            chunk.advance(n);
        }
    }
    match sniff::sniff(&bytes) {
        Some(actual) if actual == declared => {}
        actual => {
            return Err(warp::reject::custom(ApiError::UnsupportedFileType(
                format!(
                    "declared {declared}, but the bytes are {}",
                    actual.unwrap_or("not an allowed type")
                ),
            )));
        }
    }
    let digest: [u8; 32] = Sha256::digest(&bytes).into();
    let fingerprint =
        idempotency::fingerprint(&[query.name.as_bytes(), declared.as_bytes(), &digest]);
    let claimed = match idempotency::begin(
        &ctx,
        &owner,
        "POST /v1/files",
        idempotency_key,
        &fingerprint,
    )
    .await?
    {
        Begin::Replay(response) => return Ok(response),
        Begin::Proceed(claimed) => claimed,
    };
    let stored = store(
        &ctx,
        owner,
        query.name,
        declared,
        bytes,
        digest,
        claimed.as_ref(),
    )
    .await;
    if stored.is_err() {
        idempotency::release(&ctx, claimed.as_ref()).await;
    }
    stored
}

/// Uploads a checked file to S3 and records it (with the idempotency key's response, in one
/// transaction).
async fn store(
    ctx: &ApiContext,
    owner: String,
    name: String,
    declared: String,
    bytes: Vec<u8>,
    digest: [u8; 32],
    idempotency_key: Option<&KeyRef>,
) -> Result<warp::reply::Response, Rejection> {
    let id = Uuid::now_v7();
    let key = format!("uploads/{id}");
    let part = usize::try_from(ctx.config.files.multipart_part_bytes).unwrap_or(usize::MAX);
    let multipart = bytes.len() > part;
    // S3 metadata travels in headers (and in the request signature): ASCII only.
    let metadata = [
        ("owner", percent_encode(&owner)),
        ("file-name", percent_encode(&name)),
    ];
    let bucket = ctx.config.s3.bucket.clone();
    let stored = if multipart {
        ctx.s3_breaker
            .call(s3::put_multipart(
                &ctx.s3, &bucket, &key, &bytes, &declared, part, &metadata,
            ))
            .await
    } else {
        ctx.s3_breaker
            .call(s3::put_document(
                &ctx.s3,
                &bucket,
                &key,
                bytes.clone(),
                &declared,
                &digest,
                &metadata,
            ))
            .await
    };
    stored.map_err(|e| unavailable(&e))?;
    let file = UserFile {
        id,
        owner,
        file_name: name,
        content_type: declared,
        size_bytes: i64::try_from(bytes.len()).unwrap_or(i64::MAX),
        sha256: s3::hex(&digest),
        bucket,
        object_key: key,
        multipart,
        created_at: chrono::Utc::now(),
    };
    let mut tx = ctx.pool.begin().await.map_err(|e| unavailable(&e))?;
    let file = repo::insert_user_file(&mut tx, &file)
        .await
        .map_err(|e| unavailable(&e))?;
    let location = format!("/v1/files/{}", file.id);
    let body = serde_json::to_vec(&file).map_err(|e| unavailable(&e))?;
    if let Some(key) = idempotency_key {
        let response = Stored {
            status: 201,
            location: Some(location.clone()),
            body: body.clone(),
        };
        idempotency_repo::finish_on(&mut tx, key, &response)
            .await
            .map_err(|e| unavailable(&e))?;
    }
    tx.commit().await.map_err(|e| unavailable(&e))?;
    tracing::info!(file_id = %file.id, bytes = file.size_bytes, multipart, "file uploaded");
    let mut resp = warp::reply::Response::new(body.into());
    *resp.status_mut() = StatusCode::CREATED;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    if let Ok(v) = header::HeaderValue::from_str(&location) {
        resp.headers_mut().insert(header::LOCATION, v);
    }
    Ok(resp)
}

/// Reads and drops up to `at_most` more bytes of the body.
async fn drain<S, B>(body: &mut S, at_most: u64)
where
    S: futures::Stream<Item = Result<B, warp::Error>> + Unpin + Send,
    B: Buf,
{
    let mut dropped = 0_u64;
    while dropped < at_most {
        match body.next().await {
            Some(Ok(chunk)) => dropped += chunk.remaining() as u64,
            _ => break,
        }
    }
}

/// The caller's files, newest first (at most 100).
#[utoipa::path(get, path = "/v1/files", tag = "files",
    responses((status = 200, description = "The files", body = FileList)),
    security(("bearer" = ["files:read"])))]
pub(crate) async fn list(
    owner: String,
    ctx: ApiContext,
) -> Result<warp::reply::Response, Rejection> {
    let items = repo::user_files(&ctx.pool, &owner, 100)
        .await
        .map_err(|e| unavailable(&e))?;
    Ok(warp::reply::json(&FileList { items }).into_response())
}

fn file_id(id: &str) -> Result<Uuid, Rejection> {
    Uuid::try_parse(id).map_err(|_| warp::reject::custom(ApiError::InvalidFileId(id.to_owned())))
}

/// A redirect to a short-lived presigned link of one of the caller's files.
#[utoipa::path(get, path = "/v1/files/{id}", tag = "files",
    params(("id" = Uuid, Path, description = "The file id")),
    responses(
        (status = 303, description = "Redirect to a presigned link", headers(("Location" = String, description = "The presigned S3 URL"))),
        (status = 400, description = "invalid_file_id", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "file_not_found", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = ["files:read"])))]
pub(crate) async fn download(
    id: String,
    owner: String,
    ctx: ApiContext,
) -> Result<warp::reply::Response, Rejection> {
    let uuid = file_id(&id)?;
    let file = repo::user_file_of(&ctx.pool, uuid, &owner)
        .await
        .map_err(|e| unavailable(&e))?
        .ok_or_else(|| warp::reject::custom(ApiError::FileNotFound(id.clone())))?;
    super::documents::presigned_redirect(&ctx, &file.bucket, &file.object_key).await
}

/// Delete one of the caller's files (the record and the object).
#[utoipa::path(delete, path = "/v1/files/{id}", tag = "files",
    params(("id" = Uuid, Path, description = "The file id")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 400, description = "invalid_file_id", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "file_not_found", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = ["files:write"])))]
pub(crate) async fn remove(
    id: String,
    owner: String,
    ctx: ApiContext,
) -> Result<warp::reply::Response, Rejection> {
    let uuid = file_id(&id)?;
    let file = repo::delete_user_file(&ctx.pool, uuid, &owner)
        .await
        .map_err(|e| unavailable(&e))?
        .ok_or_else(|| warp::reject::custom(ApiError::FileNotFound(id.clone())))?;
    // The record is gone first: a failed object delete leaves an orphan object, never a record
    // pointing at nothing.
    if let Err(e) = ctx
        .s3_breaker
        .call(s3::delete(&ctx.s3, &file.bucket, &file.object_key))
        .await
    {
        tracing::warn!(file_id = %file.id, error = %e, "the object stays behind; its record is deleted");
    }
    Ok(warp::reply::with_status(warp::reply(), StatusCode::NO_CONTENT).into_response())
}

/// A file's bytes, as the request body of an upload (an empty file is not one of the allowed
/// types).
#[derive(utoipa::ToSchema)]
#[schema(value_type = String, format = Binary, min_length = 1)]
pub struct Binary(pub Vec<u8>);

/// Non-empty UTF-8 text without control characters other than tab and line breaks.
#[derive(utoipa::ToSchema)]
#[schema(value_type = String, min_length = 1, pattern = "^[^\\u0000-\\u0008\\u000b\\u000e-\\u001f\\u007f-\\u009f]+$")]
pub struct Text(pub String);

/// `%XX` for every byte outside letters, digits and ` ._-` (metadata headers are ASCII).
fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b' ' | b'.' | b'_' | b'-') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The caller's files, newest first.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct FileList {
    pub items: Vec<UserFile>,
}
