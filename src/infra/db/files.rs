//! The file service's SQL: the stored documents of each order, recorded with the inbox row of
//! the message that caused them and their `InvoiceStored` announcement.

use chrono::{DateTime, Utc};
use futures::future::BoxFuture;
use serde::Serialize;
use sqlx::{PgConnection, PgPool, Row};
use uuid::Uuid;

use super::DbError;
use super::group::{GroupWork, Grouped};
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

/// One document to record, with the message that caused it and its announcement (encoded
/// once: the job may run more than once).
pub struct Record {
    cause: Cause,
    doc: Document,
    reply: (Uuid, String, Vec<u8>, serde_json::Value),
}

/// Document records as group work: one statement for the whole group.
pub struct RecordWork;

impl GroupWork for RecordWork {
    type Item = Record;
    type Output = bool;

    fn write<'c>(
        &'c self,
        conn: &'c mut PgConnection,
        items: &'c [Record],
    ) -> BoxFuture<'c, Result<Vec<bool>, DbError>> {
        Box::pin(record_all(conn, items))
    }

    fn single_statement(&self, _items: &[Record]) -> bool {
        true
    }

    /// One record per message and per document in a group, so each is decided on its own.
    fn fits(&self, group: &[Record], item: &Record) -> bool {
        group.iter().all(|r| {
            r.cause.message_id != item.cause.message_id
                && (r.doc.order_id, &r.doc.kind) != (item.doc.order_id, &item.doc.kind)
        })
    }
}

/// Hands document records to the group task. Cheap to clone.
#[derive(Clone)]
pub struct Records {
    group: Grouped<RecordWork>,
}

impl Records {
    /// Starts the group task on the files writer; it ends when the last clone is dropped.
    pub fn start(writer: Writer, group_max: usize) -> Self {
        Records {
            group: Grouped::start("file records", writer, RecordWork, group_max),
        }
    }

    /// Records a stored document and its `announcement` with the next group. False when the
    /// message was handled before or the order already has a document of this kind (nothing
    /// is written or announced then).
    pub async fn record<P: Payload>(
        &self,
        cause: &Cause,
        doc: &Document,
        announcement: &P,
    ) -> Result<bool, DbError> {
        let reply = reply_columns(
            OrderId::from_uuid(doc.order_id),
            announcement,
            cause.traceparent.as_deref(),
        );
        self.group
            .submit(Record {
                cause: cause.clone(),
                doc: doc.clone(),
                reply,
            })
            .await
    }
}

/// One statement for a group: inbox claims, documents (one per order and kind), and an
/// announcement for each document written; per record whether it was stored.
async fn record_all(conn: &mut PgConnection, items: &[Record]) -> Result<Vec<bool>, DbError> {
    let consumers: Vec<&str> = items.iter().map(|r| r.cause.consumer).collect();
    let message_ids: Vec<Uuid> = items.iter().map(|r| r.cause.message_id).collect();
    let orders: Vec<Uuid> = items.iter().map(|r| r.doc.order_id).collect();
    let kinds: Vec<&str> = items.iter().map(|r| r.doc.kind.as_str()).collect();
    let buckets: Vec<&str> = items.iter().map(|r| r.doc.bucket.as_str()).collect();
    let keys: Vec<&str> = items.iter().map(|r| r.doc.object_key.as_str()).collect();
    let sizes: Vec<i64> = items.iter().map(|r| r.doc.size_bytes).collect();
    let digests: Vec<&str> = items.iter().map(|r| r.doc.sha256.as_str()).collect();
    let types: Vec<&str> = items.iter().map(|r| r.doc.content_type.as_str()).collect();
    let customers: Vec<Option<&str>> = items.iter().map(|r| r.doc.customer_id.as_deref()).collect();
    let reply_ids: Vec<Uuid> = items.iter().map(|r| r.reply.0).collect();
    let reply_kinds: Vec<&str> = items.iter().map(|r| r.reply.1.as_str()).collect();
    let payloads: Vec<&[u8]> = items.iter().map(|r| r.reply.2.as_slice()).collect();
    let headers: Vec<&serde_json::Value> = items.iter().map(|r| &r.reply.3).collect();
    let rows = sqlx::query(
        "WITH input AS (
             SELECT * FROM UNNEST($1::text[], $2::uuid[], $3::uuid[], $4::text[], $5::text[],
                                  $6::text[], $7::bigint[], $8::text[], $9::text[], $10::text[],
                                  $11::uuid[], $12::text[], $13::bytea[], $14::jsonb[])
               AS i(consumer, message_id, order_id, kind, bucket, object_key, size_bytes,
                    sha256, content_type, customer_id, reply_id, reply_kind, payload, headers)
         ), claim AS (
             INSERT INTO files.inbox (consumer, message_id)
             SELECT consumer, message_id FROM input
             ON CONFLICT DO NOTHING RETURNING message_id
         ), doc AS (
             INSERT INTO files.documents (order_id, kind, bucket, object_key, size_bytes, sha256,
                                          content_type, customer_id)
             SELECT i.order_id, i.kind, i.bucket, i.object_key, i.size_bytes, i.sha256,
                    i.content_type, i.customer_id
             FROM input i JOIN claim c ON c.message_id = i.message_id
             ON CONFLICT (order_id, kind) DO NOTHING
             RETURNING order_id, kind
         ), announce AS (
             INSERT INTO files.outbox
               (message_id, topic, message_key, message_type, payload, headers)
             SELECT i.reply_id, $15, i.order_id::text, i.reply_kind, i.payload, i.headers
             FROM input i JOIN doc d ON d.order_id = i.order_id AND d.kind = i.kind
         )
         SELECT i.reply_id,
                EXISTS (SELECT 1 FROM doc d WHERE d.order_id = i.order_id AND d.kind = i.kind)
                  AS stored
         FROM input i",
    )
    .bind(&consumers)
    .bind(&message_ids)
    .bind(&orders)
    .bind(&kinds)
    .bind(&buckets)
    .bind(&keys)
    .bind(&sizes)
    .bind(&digests)
    .bind(&types)
    .bind(&customers)
    .bind(&reply_ids)
    .bind(&reply_kinds)
    .bind(&payloads)
    .bind(&headers)
    .bind(topics::FILE_EVENTS)
    .fetch_all(&mut *conn)
    .await?;
    let mut stored = std::collections::HashMap::with_capacity(rows.len());
    for r in &rows {
        stored.insert(
            r.try_get::<Uuid, _>("reply_id")?,
            r.try_get::<bool, _>("stored")?,
        );
    }
    // The announcement is written exactly when its document is.
    note_outbox(
        items
            .iter()
            .filter(|r| stored.get(&r.reply.0) == Some(&true))
            .map(|r| reply_record(topics::FILE_EVENTS, r.doc.order_id, &r.reply)),
    );
    items
        .iter()
        .map(|r| {
            stored.get(&r.reply.0).copied().ok_or_else(|| {
                DbError::Corrupt(format!("no outcome for the document of {}", r.doc.order_id))
            })
        })
        .collect()
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

/// Which of the (order, kind) pairs already have a recorded document, in one query.
pub async fn recorded(
    pool: &PgPool,
    keys: &[(Uuid, &str)],
) -> Result<Vec<(Uuid, String)>, DbError> {
    let orders: Vec<Uuid> = keys.iter().map(|(o, _)| *o).collect();
    let kinds: Vec<&str> = keys.iter().map(|(_, k)| *k).collect();
    let rows = sqlx::query(
        "SELECT d.order_id, d.kind FROM files.documents d
         JOIN UNNEST($1::uuid[], $2::text[]) AS k(order_id, kind)
           ON d.order_id = k.order_id AND d.kind = k.kind",
    )
    .bind(&orders)
    .bind(&kinds)
    .fetch_all(pool)
    .await?;
    rows.iter()
        .map(|r| Ok((r.try_get("order_id")?, r.try_get("kind")?)))
        .collect::<Result<_, sqlx::Error>>()
        .map_err(Into::into)
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
