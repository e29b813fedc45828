//! The messaging tables every service schema has: the outbox (messages committed with the state
//! change that caused them) and the inbox (message ids already handled). Each schema has its
//! own static statements: sqlx takes only `&'static str` SQL, and a schema name is an
//! identifier that cannot be a bound parameter.

use sqlx::{Postgres, Transaction};
use uuid::Uuid;

use super::DbError;
use crate::domain::envelope::Envelope;

/// A service schema with an outbox and an inbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Schema {
    Orders,
    Inventory,
}

/// An outbox row to write with a state change.
pub struct OutboxMessage<'a> {
    /// The logical topic; the relay adds the deployment's prefix.
    pub topic: &'a str,
    pub envelope: &'a Envelope,
    pub traceparent: Option<String>,
}

/// Writes `message` to the schema's outbox inside `tx`.
pub async fn write_outbox(
    tx: &mut Transaction<'_, Postgres>,
    schema: Schema,
    message: &OutboxMessage<'_>,
) -> Result<(), DbError> {
    let mut headers = serde_json::Map::new();
    if let Some(tp) = &message.traceparent {
        headers.insert("traceparent".into(), tp.clone().into());
    }
    sqlx::query(schema.insert_outbox_sql())
        .bind(message.envelope.id)
        .bind(message.topic)
        .bind(message.envelope.order_id.to_string())
        .bind(&message.envelope.kind)
        .bind(message.envelope.encode())
        .bind(serde_json::Value::Object(headers))
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// Records that `consumer` handles `message_id` inside `tx`. False means it was handled
/// before: the caller must change nothing.
pub async fn claim_inbox(
    tx: &mut Transaction<'_, Postgres>,
    schema: Schema,
    consumer: &str,
    message_id: Uuid,
) -> Result<bool, DbError> {
    Ok(sqlx::query(schema.claim_inbox_sql())
        .bind(consumer)
        .bind(message_id)
        .execute(&mut **tx)
        .await?
        .rows_affected()
        == 1)
}

impl Schema {
    pub fn name(&self) -> &'static str {
        match self {
            Schema::Orders => "orders",
            Schema::Inventory => "inventory",
        }
    }

    fn insert_outbox_sql(&self) -> &'static str {
        match self {
            Schema::Orders => {
                "INSERT INTO orders.outbox (message_id, topic, message_key, message_type, payload, headers)
                 VALUES ($1, $2, $3, $4, $5, $6)"
            }
            Schema::Inventory => {
                "INSERT INTO inventory.outbox (message_id, topic, message_key, message_type, payload, headers)
                 VALUES ($1, $2, $3, $4, $5, $6)"
            }
        }
    }

    fn claim_inbox_sql(&self) -> &'static str {
        match self {
            Schema::Orders => {
                "INSERT INTO orders.inbox (consumer, message_id) VALUES ($1, $2) ON CONFLICT DO NOTHING"
            }
            Schema::Inventory => {
                "INSERT INTO inventory.inbox (consumer, message_id) VALUES ($1, $2) ON CONFLICT DO NOTHING"
            }
        }
    }

    pub(crate) fn select_sql(&self) -> &'static str {
        match self {
            Schema::Orders => {
                "SELECT id, message_id, topic, message_key, message_type, payload, headers
                 FROM orders.outbox WHERE published_at IS NULL ORDER BY id LIMIT $1"
            }
            Schema::Inventory => {
                "SELECT id, message_id, topic, message_key, message_type, payload, headers
                 FROM inventory.outbox WHERE published_at IS NULL ORDER BY id LIMIT $1"
            }
        }
    }

    pub(crate) fn mark_sql(&self) -> &'static str {
        match self {
            Schema::Orders => "UPDATE orders.outbox SET published_at = now() WHERE id = ANY($1)",
            Schema::Inventory => {
                "UPDATE inventory.outbox SET published_at = now() WHERE id = ANY($1)"
            }
        }
    }

    pub(crate) fn purge_sql(&self) -> &'static str {
        match self {
            Schema::Orders => {
                "DELETE FROM orders.outbox
                 WHERE published_at IS NOT NULL AND published_at < now() - make_interval(secs => $1)"
            }
            Schema::Inventory => {
                "DELETE FROM inventory.outbox
                 WHERE published_at IS NOT NULL AND published_at < now() - make_interval(secs => $1)"
            }
        }
    }

    pub(crate) fn pending_sql(&self) -> &'static str {
        match self {
            Schema::Orders => "SELECT count(*) FROM orders.outbox WHERE published_at IS NULL",
            Schema::Inventory => "SELECT count(*) FROM inventory.outbox WHERE published_at IS NULL",
        }
    }
}
