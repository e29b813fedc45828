//! The transactional outbox relay: publishes committed outbox rows to Kafka in id order, in
//! batches, and marks them published in the same transaction that locked them. A crash between
//! the publish and the commit republishes the batch (at-least-once; consumers deduplicate by
//! message id). One relay per schema is active at a time (a transaction-scoped advisory lock),
//! so rows of one key are never published out of order by two processes.

use std::time::{Duration, Instant};

use futures::future::join_all;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use sqlx::{PgPool, Row};

use crate::infra::db::DbError;
use crate::infra::db::messaging::Schema;

#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    #[error(transparent)]
    Db(#[from] DbError),
    #[error("kafka refused outbox row {id}: {message}")]
    Publish { id: i64, message: String },
}

impl From<sqlx::Error> for RelayError {
    fn from(e: sqlx::Error) -> Self {
        RelayError::Db(DbError::Sqlx(e))
    }
}

/// One wake-up signal per schema's relay: whoever commits outbox rows notifies it, so rows are
/// published right away instead of at the next poll.
#[derive(Debug, Clone, Default)]
pub struct OutboxWakers {
    orders: std::sync::Arc<tokio::sync::Notify>,
    inventory: std::sync::Arc<tokio::sync::Notify>,
    payment: std::sync::Arc<tokio::sync::Notify>,
}

impl OutboxWakers {
    pub fn get(&self, schema: Schema) -> std::sync::Arc<tokio::sync::Notify> {
        match schema {
            Schema::Orders => self.orders.clone(),
            Schema::Inventory => self.inventory.clone(),
            Schema::Payment => self.payment.clone(),
        }
    }

    pub fn wake(&self, schema: Schema) {
        self.get(schema).notify_one();
    }
}

/// Which outbox table to relay, and how topics are named in this deployment.
#[derive(Debug, Clone)]
pub struct OutboxTable {
    /// The schema that owns the table (`orders`).
    pub schema: Schema,
    /// Prepended to each row's logical topic.
    pub topic_prefix: String,
}

/// What one pass did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PassOutcome {
    pub published: usize,
    /// Another process holds the relay lock for this schema.
    pub lock_busy: bool,
}

struct Row_ {
    id: i64,
    topic: String,
    key: String,
    payload: Vec<u8>,
    headers: serde_json::Value,
    message_id: uuid::Uuid,
    message_type: String,
}

/// Publishes up to `batch` unpublished rows and marks them. Returns how many were published.
pub async fn relay_once(
    pool: &PgPool,
    producer: &FutureProducer,
    table: &OutboxTable,
    batch: i64,
    timeout: Duration,
) -> Result<PassOutcome, RelayError> {
    let started = Instant::now();
    let mut tx = pool.begin().await?;
    let locked: bool = sqlx::query("SELECT pg_try_advisory_xact_lock(hashtext($1))")
        .bind(format!("orderflow.outbox.{}", table.schema.name()))
        .fetch_one(&mut *tx)
        .await?
        .try_get(0)?;
    if !locked {
        tx.rollback().await?;
        return Ok(PassOutcome {
            published: 0,
            lock_busy: true,
        });
    }
    let rows = sqlx::query(table.schema.select_sql())
        .bind(batch)
        .fetch_all(&mut *tx)
        .await?
        .into_iter()
        .map(|r| {
            Ok(Row_ {
                id: r.try_get("id")?,
                topic: r.try_get("topic")?,
                key: r.try_get("message_key")?,
                payload: r.try_get("payload")?,
                headers: r.try_get("headers")?,
                message_id: r.try_get("message_id")?,
                message_type: r.try_get("message_type")?,
            })
        })
        .collect::<Result<Vec<_>, sqlx::Error>>()?;
    if rows.is_empty() {
        tx.rollback().await?;
        return Ok(PassOutcome::default());
    }

    // Enqueue the whole batch first (the producer batches per partition), then await acks.
    let mut deliveries = Vec::with_capacity(rows.len());
    for row in &rows {
        let topic = format!("{}{}", table.topic_prefix, row.topic);
        let message_id = row.message_id.to_string();
        let mut headers = OwnedHeaders::new()
            .insert(Header {
                key: "message-id",
                value: Some(message_id.as_str()),
            })
            .insert(Header {
                key: "message-type",
                value: Some(row.message_type.as_str()),
            });
        if let Some(obj) = row.headers.as_object() {
            for (k, v) in obj {
                if let Some(v) = v.as_str() {
                    headers = headers.insert(Header {
                        key: k.as_str(),
                        value: Some(v),
                    });
                }
            }
        }
        let record = FutureRecord::to(&topic)
            .key(row.key.as_bytes())
            .payload(row.payload.as_slice())
            .headers(headers);
        match producer.send_result(record) {
            Ok(delivery) => deliveries.push((row.id, delivery)),
            Err((e, _)) => {
                return Err(RelayError::Publish {
                    id: row.id,
                    message: e.to_string(),
                });
            }
        }
    }
    let acks = tokio::time::timeout(
        timeout,
        join_all(
            deliveries
                .into_iter()
                .map(|(id, d)| async move { (id, d.await) }),
        ),
    )
    .await
    .map_err(|_| RelayError::Publish {
        id: rows[0].id,
        message: format!("no acknowledgement within {timeout:?}"),
    })?;
    for (id, ack) in acks {
        match ack {
            Ok(Ok(_)) => {}
            Ok(Err((e, _))) => {
                return Err(RelayError::Publish {
                    id,
                    message: e.to_string(),
                });
            }
            Err(_) => {
                return Err(RelayError::Publish {
                    id,
                    message: "producer dropped the delivery".into(),
                });
            }
        }
    }

    let ids: Vec<i64> = rows.iter().map(|r| r.id).collect();
    sqlx::query(table.schema.mark_sql())
        .bind(&ids)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    metrics::histogram!(crate::metrics::OUTBOX_BATCH_SECONDS, "schema" => table.schema.name())
        .record(started.elapsed().as_secs_f64());
    Ok(PassOutcome {
        published: rows.len(),
        lock_busy: false,
    })
}

/// Deletes published rows older than `retention`.
pub async fn purge(
    pool: &PgPool,
    table: &OutboxTable,
    retention: Duration,
) -> Result<u64, RelayError> {
    let secs = i64::try_from(retention.as_secs()).unwrap_or(i64::MAX);
    Ok(sqlx::query(table.schema.purge_sql())
        .bind(secs as f64)
        .execute(pool)
        .await?
        .rows_affected())
}

/// Rows not yet published (for tests and the operator).
pub async fn pending(pool: &PgPool, table: &OutboxTable) -> Result<i64, RelayError> {
    Ok(sqlx::query(table.schema.pending_sql())
        .fetch_one(pool)
        .await?
        .try_get(0)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio_test::{assert_pending, assert_ready, task};

    #[test]
    fn a_burst_of_wakes_leaves_one_pass_pending() {
        let wakers = OutboxWakers::default();
        let notify = wakers.get(Schema::Orders);
        // Three commits before the relay looks: one permit, so one pass, not three.
        wakers.wake(Schema::Orders);
        wakers.wake(Schema::Orders);
        wakers.wake(Schema::Orders);
        let mut first = task::spawn(notify.notified());
        assert_ready!(first.poll());
        let mut second = task::spawn(notify.notified());
        assert_pending!(second.poll());
        // Another schema's commits do not wake this relay.
        wakers.wake(Schema::Inventory);
        assert_pending!(second.poll());
        wakers.wake(Schema::Orders);
        assert!(second.is_woken());
        assert_ready!(second.poll());
    }
}
