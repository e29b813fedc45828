//! The file service's SQL: the stored documents of each order, recorded with the inbox row of
//! the message that caused them and their `InvoiceStored` announcement.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::{PgPool, Row};
use uuid::Uuid;

use super::DbError;
use super::messaging::{note_outbox, reply_columns, reply_record};
use super::writer::Writer;
use crate::domain::envelope::{Payload, StoredDocument, topics};
use crate::domain::ids::OrderId;

/// A document stored in S3.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Document {
    pub order_id: Uuid,
    pub kind: String,
    pub bucket: String,
    pub object_key: String,
    pub size_bytes: i64,
    pub sha256: String,
    pub content_type: String,
    pub customer_id: Option<String>,
    pub created_at: DateTime<Utc>,
}

/// The message a document is recorded for.
#[derive(Debug, Clone)]
pub struct Cause {
    pub consumer: &'static str,
    pub message_id: Uuid,
    pub traceparent: Option<String>,
}

impl Document {
    /// Where the document is, as its announcement carries it.
    pub fn stored(&self) -> StoredDocument {
        StoredDocument {
            bucket: self.bucket.clone(),
            object_key: self.object_key.clone(),
            size_bytes: self.size_bytes,
            sha256: self.sha256.clone(),
            content_type: self.content_type.clone(),
        }
    }
}

/// Records a stored document and its `announcement`, in the next batch of the files writer.
/// False when the message was handled before or the order already has a document of this kind
/// (nothing is written or announced then).
pub async fn record<P: Payload>(
    writer: &Writer,
    cause: &Cause,
    doc: &Document,
    announcement: &P,
) -> Result<bool, DbError> {
    let binds = Arc::new((
        cause.clone(),
        doc.clone(),
        reply_columns(
            OrderId::from_uuid(doc.order_id),
            announcement,
            cause.traceparent.as_deref(),
        ),
    ));
    writer
        .run_one(move |conn| {
            let binds = binds.clone();
            Box::pin(async move {
                let (cause, doc, reply) = &*binds;
                let (id, kind, payload, headers) = reply;
                let row = sqlx::query(
                    "WITH claim AS (
                         INSERT INTO files.inbox (consumer, message_id) VALUES ($1, $2)
                         ON CONFLICT DO NOTHING RETURNING 1
                     ), doc AS (
                         INSERT INTO files.documents (order_id, kind, bucket, object_key,
                             size_bytes, sha256, content_type, customer_id)
                         SELECT $3, $4, $5, $6, $7, $8, $9, $10 FROM claim
                         ON CONFLICT (order_id, kind) DO NOTHING
                         RETURNING 1
                     ), announce AS (
                         INSERT INTO files.outbox
                           (message_id, topic, message_key, message_type, payload, headers)
                         SELECT $11, $12, $3::text, $13, $14, $15 FROM doc
                     )
                     SELECT EXISTS (SELECT 1 FROM doc) AS stored",
                )
                .bind(cause.consumer)
                .bind(cause.message_id)
                .bind(doc.order_id)
                .bind(&doc.kind)
                .bind(&doc.bucket)
                .bind(&doc.object_key)
                .bind(doc.size_bytes)
                .bind(&doc.sha256)
                .bind(&doc.content_type)
                .bind(doc.customer_id.as_deref())
                .bind(id)
                .bind(topics::FILE_EVENTS)
                .bind(kind)
                .bind(payload)
                .bind(headers)
                .fetch_one(conn)
                .await?;
                let stored: bool = row.try_get("stored")?;
                if stored {
                    // The announcement is written exactly when the document is (`FROM doc`).
                    note_outbox([reply_record(topics::FILE_EVENTS, doc.order_id, reply)]);
                }
                Ok(stored)
            })
        })
        .await
}

/// Every document stored for the order, oldest first.
pub async fn documents_of(pool: &PgPool, order_id: Uuid) -> Result<Vec<Document>, DbError> {
    let rows = sqlx::query(
        "SELECT order_id, kind, bucket, object_key, size_bytes, sha256, content_type,
                customer_id, created_at
         FROM files.documents WHERE order_id = $1 ORDER BY created_at, kind",
    )
    .bind(order_id)
    .fetch_all(pool)
    .await?;
    Ok(rows.iter().map(document_row).collect::<Result<_, _>>()?)
}

fn document_row(r: &sqlx::postgres::PgRow) -> Result<Document, sqlx::Error> {
    Ok(Document {
        order_id: r.try_get("order_id")?,
        kind: r.try_get("kind")?,
        bucket: r.try_get("bucket")?,
        object_key: r.try_get("object_key")?,
        size_bytes: r.try_get("size_bytes")?,
        sha256: r.try_get("sha256")?,
        content_type: r.try_get("content_type")?,
        customer_id: r.try_get("customer_id")?,
        created_at: r.try_get("created_at")?,
    })
}

/// The order's document of `kind`, if stored.
pub async fn document(
    pool: &PgPool,
    order_id: Uuid,
    kind: &str,
) -> Result<Option<Document>, DbError> {
    let row = sqlx::query(
        "SELECT order_id, kind, bucket, object_key, size_bytes, sha256, content_type,
                customer_id, created_at
         FROM files.documents WHERE order_id = $1 AND kind = $2",
    )
    .bind(order_id)
    .bind(kind)
    .fetch_optional(pool)
    .await?;
    Ok(row.as_ref().map(document_row).transpose()?)
}

/// A file a user uploaded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct UserFile {
    pub id: Uuid,
    #[serde(skip)]
    #[schema(ignore)]
    pub owner: String,
    pub file_name: String,
    pub content_type: String,
    pub size_bytes: i64,
    pub sha256: String,
    #[serde(skip)]
    #[schema(ignore)]
    pub bucket: String,
    #[serde(skip)]
    #[schema(ignore)]
    pub object_key: String,
    pub multipart: bool,
    pub created_at: DateTime<Utc>,
}

fn user_file(r: &sqlx::postgres::PgRow) -> Result<UserFile, sqlx::Error> {
    Ok(UserFile {
        id: r.try_get("id")?,
        owner: r.try_get("owner")?,
        file_name: r.try_get("file_name")?,
        content_type: r.try_get("content_type")?,
        size_bytes: r.try_get("size_bytes")?,
        sha256: r.try_get("sha256")?,
        bucket: r.try_get("bucket")?,
        object_key: r.try_get("object_key")?,
        multipart: r.try_get("multipart")?,
        created_at: r.try_get("created_at")?,
    })
}

/// Records an uploaded file (after its object is stored).
pub async fn insert_user_file(
    conn: &mut sqlx::PgConnection,
    f: &UserFile,
) -> Result<UserFile, DbError> {
    let row = sqlx::query(
        "INSERT INTO files.user_files
           (id, owner, file_name, content_type, size_bytes, sha256, bucket, object_key, multipart)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
         RETURNING id, owner, file_name, content_type, size_bytes, sha256, bucket, object_key,
                   multipart, created_at",
    )
    .bind(f.id)
    .bind(&f.owner)
    .bind(&f.file_name)
    .bind(&f.content_type)
    .bind(f.size_bytes)
    .bind(&f.sha256)
    .bind(&f.bucket)
    .bind(&f.object_key)
    .bind(f.multipart)
    .fetch_one(conn)
    .await?;
    Ok(user_file(&row)?)
}

/// The file `id` if `owner` owns it (another owner's file is "not found").
pub async fn user_file_of(
    pool: &PgPool,
    id: Uuid,
    owner: &str,
) -> Result<Option<UserFile>, DbError> {
    let row = sqlx::query(
        "SELECT id, owner, file_name, content_type, size_bytes, sha256, bucket, object_key,
                multipart, created_at
         FROM files.user_files WHERE id = $1 AND owner = $2",
    )
    .bind(id)
    .bind(owner)
    .fetch_optional(pool)
    .await?;
    Ok(row.as_ref().map(user_file).transpose()?)
}

/// The owner's files, newest first (at most `limit`).
pub async fn user_files(pool: &PgPool, owner: &str, limit: i64) -> Result<Vec<UserFile>, DbError> {
    let rows = sqlx::query(
        "SELECT id, owner, file_name, content_type, size_bytes, sha256, bucket, object_key,
                multipart, created_at
         FROM files.user_files WHERE owner = $1 ORDER BY created_at DESC, id DESC LIMIT $2",
    )
    .bind(owner)
    .bind(limit)
    .fetch_all(pool)
    .await?;
    Ok(rows.iter().map(user_file).collect::<Result<_, _>>()?)
}

/// Forgets the file `id` of `owner`; the removed record, if there was one.
pub async fn delete_user_file(
    pool: &PgPool,
    id: Uuid,
    owner: &str,
) -> Result<Option<UserFile>, DbError> {
    let row = sqlx::query(
        "DELETE FROM files.user_files WHERE id = $1 AND owner = $2
         RETURNING id, owner, file_name, content_type, size_bytes, sha256, bucket, object_key,
                   multipart, created_at",
    )
    .bind(id)
    .bind(owner)
    .fetch_optional(pool)
    .await?;
    Ok(row.as_ref().map(user_file).transpose()?)
}
