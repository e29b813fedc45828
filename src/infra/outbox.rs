//! Publishing the transactional outbox to Kafka, two ways.
//!
//! - [`CommitPublisher`]: a writer reads the rows its batch wrote just before COMMIT and hands
//!   them to the producer right after it (the fast path, `outbox.publish_on_commit`).
//! - The relay ([`relay_once`]): publishes committed rows in id order, in batches, and deletes
//!   them in the same transaction that locked them. It takes what the fast path left:
//!   rows of a process that died between commit and publish, rows whose publish failed, and
//!   every row when publishing on commit is off. A crash between the publish and the commit
//!   republishes the batch (at-least-once; consumers deduplicate by message id). One relay per
//!   schema is active at a time (a transaction-scoped advisory lock).

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::future::join_all;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use sqlx::postgres::PgRow;
use sqlx::{PgPool, Row};
use tokio::sync::mpsc;

use crate::infra::db::DbError;
use crate::infra::db::messaging::Schema;

#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    #[error(transparent)]
    Db(#[from] DbError),
    #[error("kafka refused outbox message {message_id}: {message}")]
    Publish {
        message_id: uuid::Uuid,
        message: String,
    },
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
    files: std::sync::Arc<tokio::sync::Notify>,
}

impl OutboxWakers {
    pub fn get(&self, schema: Schema) -> std::sync::Arc<tokio::sync::Notify> {
        match schema {
            Schema::Orders => self.orders.clone(),
            Schema::Inventory => self.inventory.clone(),
            Schema::Payment => self.payment.clone(),
            Schema::Files => self.files.clone(),
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

/// An outbox row as it is published: read by the relay, or known to the writer job that
/// inserted it (published right after the commit without reading it back).
#[derive(Debug, Clone)]
pub struct OutboxRecord {
    /// The logical topic; the publisher adds the deployment's prefix.
    topic: String,
    key: String,
    payload: Vec<u8>,
    headers: serde_json::Value,
    message_id: uuid::Uuid,
    message_type: String,
}

impl OutboxRecord {
    pub fn new(
        message_id: uuid::Uuid,
        topic: &str,
        key: String,
        message_type: String,
        payload: Vec<u8>,
        headers: serde_json::Value,
    ) -> Self {
        OutboxRecord {
            topic: topic.to_owned(),
            key,
            payload,
            headers,
            message_id,
            message_type,
        }
    }

    fn from_row(r: &PgRow) -> Result<Self, sqlx::Error> {
        Ok(OutboxRecord {
            topic: r.try_get("topic")?,
            key: r.try_get("message_key")?,
            payload: r.try_get("payload")?,
            headers: r.try_get("headers")?,
            message_id: r.try_get("message_id")?,
            message_type: r.try_get("message_type")?,
        })
    }
}

type Deliveries = Vec<(uuid::Uuid, rdkafka::producer::DeliveryFuture)>;

/// Hands `records` to the producer in order (it batches per partition); the acks come later.
fn enqueue(
    producer: &FutureProducer,
    topic_prefix: &str,
    records: &[OutboxRecord],
) -> Result<Deliveries, RelayError> {
    let mut deliveries = Vec::with_capacity(records.len());
    for row in records {
        let topic = format!("{topic_prefix}{}", row.topic);
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
            Ok(delivery) => deliveries.push((row.message_id, delivery)),
            Err((e, _)) => {
                return Err(RelayError::Publish {
                    message_id: row.message_id,
                    message: e.to_string(),
                });
            }
        }
    }
    Ok(deliveries)
}

/// Waits until the broker acknowledged every delivery; the ids in order when all were.
async fn acks(deliveries: Deliveries, timeout: Duration) -> Result<Vec<uuid::Uuid>, RelayError> {
    let first = deliveries.first().map(|(id, _)| *id).unwrap_or_default();
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
        message_id: first,
        message: format!("no acknowledgement within {timeout:?}"),
    })?;
    let mut ids = Vec::with_capacity(acks.len());
    for (id, ack) in acks {
        match ack {
            Ok(Ok(_)) => ids.push(id),
            Ok(Err((e, _))) => {
                return Err(RelayError::Publish {
                    message_id: id,
                    message: e.to_string(),
                });
            }
            Err(_) => {
                return Err(RelayError::Publish {
                    message_id: id,
                    message: "producer dropped the delivery".into(),
                });
            }
        }
    }
    Ok(ids)
}

/// Publishes up to `batch` rows written at least `min_age` ago, and deletes them.
pub async fn relay_once(
    pool: &PgPool,
    producer: &FutureProducer,
    table: &OutboxTable,
    batch: i64,
    min_age: Duration,
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
        .bind(min_age.as_secs_f64())
        .fetch_all(&mut *tx)
        .await?
        .iter()
        .map(OutboxRecord::from_row)
        .collect::<Result<Vec<_>, sqlx::Error>>()?;
    if rows.is_empty() {
        tx.rollback().await?;
        return Ok(PassOutcome::default());
    }
    let ids = acks(enqueue(producer, &table.topic_prefix, &rows)?, timeout).await?;
    sqlx::query(table.schema.delete_published_sql())
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

/// Publishes the outbox rows of each writer batch right after its commit, so a message leaves
/// one commit after the change that caused it instead of one relay pass later. The acks are
/// awaited off the writer's path, and the acknowledged rows are deleted by a background task per
/// schema in bulk, on transactions that do not wait for the WAL flush: a delete lost in a crash
/// only means the relay publishes that row again (consumers deduplicate by message id).
///
/// A failed publish pauses direct publishing of that schema for a while: its writers wake the
/// relay instead, which publishes the failed rows and the new ones in id order.
#[derive(Clone)]
pub struct CommitPublisher {
    producer: FutureProducer,
    topic_prefix: Arc<str>,
    ack_timeout: Duration,
    pause: Duration,
    lanes: Arc<[Lane; 4]>,
    /// Publishes handed to the producer whose rows are not deleted yet (or failed): the
    /// relay's final flush waits for none, or it would publish them a second time.
    unsettled: Arc<tokio::sync::watch::Sender<usize>>,
}

struct Lane {
    published: mpsc::UnboundedSender<Vec<uuid::Uuid>>,
    paused_until: std::sync::Mutex<Option<Instant>>,
}

impl CommitPublisher {
    /// Starts the delete tasks on `pool`; they end when the last clone is dropped.
    pub fn start(
        pool: &PgPool,
        producer: FutureProducer,
        topic_prefix: &str,
        ack_timeout: Duration,
        pause: Duration,
    ) -> Self {
        // Deletes do not wait for the WAL flush (a lost one means a republish), so they run
        // as single statements on connections of their own with `synchronous_commit` off.
        let options = pool
            .connect_options()
            .as_ref()
            .clone()
            .options([("synchronous_commit", "off")]);
        let deleters = sqlx::postgres::PgPoolOptions::new()
            .max_connections(3)
            .min_connections(0)
            .connect_lazy_with(options);
        let unsettled = Arc::new(tokio::sync::watch::Sender::new(0));
        let lane = |schema: Schema| {
            let (published, rx) = mpsc::unbounded_channel();
            tokio::spawn(delete_loop(deleters.clone(), schema, rx, unsettled.clone()));
            Lane {
                published,
                paused_until: std::sync::Mutex::new(None),
            }
        };
        CommitPublisher {
            producer,
            topic_prefix: topic_prefix.into(),
            ack_timeout,
            pause,
            lanes: Arc::new([
                lane(Schema::Orders),
                lane(Schema::Inventory),
                lane(Schema::Payment),
                lane(Schema::Files),
            ]),
            unsettled,
        }
    }

    /// Waits up to `timeout` until every publish handed over so far has its rows deleted
    /// (or failed, leaving them to the relay). True when none is left.
    pub async fn settle(&self, timeout: Duration) -> bool {
        let mut rx = self.unsettled.subscribe();
        tokio::time::timeout(timeout, rx.wait_for(|n| *n == 0))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    fn lane(&self, schema: Schema) -> &Lane {
        match schema {
            Schema::Orders => &self.lanes[0],
            Schema::Inventory => &self.lanes[1],
            Schema::Payment => &self.lanes[2],
            Schema::Files => &self.lanes[3],
        }
    }

    /// False while a recent failure leaves the schema's rows to the relay.
    pub fn is_active(&self, schema: Schema) -> bool {
        let mut paused = self
            .lane(schema)
            .paused_until
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        match *paused {
            Some(until) if Instant::now() < until => false,
            Some(_) => {
                *paused = None;
                tracing::info!(
                    schema = schema.name(),
                    "publishing on commit again after a failure"
                );
                true
            }
            None => true,
        }
    }

    fn fail(&self, schema: Schema, error: &RelayError) {
        metrics::counter!(crate::metrics::OUTBOX_PUBLISH_ERRORS, "schema" => schema.name(), "via" => "commit")
            .increment(1);
        let mut paused = self
            .lane(schema)
            .paused_until
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if paused.is_none() {
            tracing::warn!(schema = schema.name(), %error, pause = ?self.pause, "publish on commit failed; the relay takes over for a while");
        }
        *paused = Some(Instant::now() + self.pause);
    }

    /// Hands the committed `records` (in the order they were written) to the producer now; awaits their acks and
    /// deletes them in the background. Rows that fail stay unpublished for the relay.
    pub fn publish(&self, schema: Schema, records: Vec<OutboxRecord>) {
        if records.is_empty() {
            return;
        }
        let deliveries = match enqueue(&self.producer, &self.topic_prefix, &records) {
            Ok(d) => d,
            Err(e) => return self.fail(schema, &e),
        };
        self.unsettled.send_modify(|n| *n += 1);
        let this = self.clone();
        tokio::spawn(async move {
            match acks(deliveries, this.ack_timeout).await {
                Ok(ids) => {
                    metrics::counter!(crate::metrics::OUTBOX_PUBLISHED, "schema" => schema.name(), "via" => "commit")
                        .increment(ids.len() as u64);
                    // The delete task settles the publish; if it is gone (the process is
                    // stopping), the relay's final flush publishes the rows again.
                    if this.lane(schema).published.send(ids).is_err() {
                        this.unsettled.send_modify(|n| *n -= 1);
                    }
                }
                Err(e) => {
                    this.fail(schema, &e);
                    this.unsettled.send_modify(|n| *n -= 1);
                }
            }
        });
    }
}

/// How long the delete task gathers acknowledged ids before deleting them.
const DELETE_GATHER: Duration = Duration::from_millis(100);

/// Deletes acknowledged rows, many publishes per statement, on a pool whose connections do
/// not wait for the WAL flush.
async fn delete_loop(
    pool: PgPool,
    schema: Schema,
    mut rx: mpsc::UnboundedReceiver<Vec<uuid::Uuid>>,
    unsettled: Arc<tokio::sync::watch::Sender<usize>>,
) {
    while let Some(mut ids) = rx.recv().await {
        let mut publishes = 1;
        // Acks arrive batch by batch; gathering them a moment makes one statement of many
        // publishes. The rows are long gone from the sweeper's view (it takes rows older than
        // `outbox.stale_after_ms`), so the wait costs nothing.
        tokio::time::sleep(DELETE_GATHER).await;
        while ids.len() < 10_000 {
            match rx.try_recv() {
                Ok(more) => {
                    ids.extend(more);
                    publishes += 1;
                }
                Err(_) => break,
            }
        }
        let deleted = sqlx::query(schema.delete_published_sql())
            .bind(&ids)
            .execute(&pool)
            .await;
        if let Err(e) = deleted {
            // Left behind, the rows are published again by the relay: duplicates the
            // consumers' inboxes absorb, never a loss.
            tracing::warn!(schema = schema.name(), rows = ids.len(), error = %e, "deleting published rows failed");
        }
        unsettled.send_modify(|n| *n -= publishes);
    }
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
