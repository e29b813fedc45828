//! The payment service's SQL: one payment row per order, written with the inbox row and the
//! reply in one transaction.

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::{PgPool, Postgres, Row, Transaction};
use uuid::Uuid;

use super::DbError;
use super::messaging::{OutboxMessage, Schema, claim_inbox, write_outbox};
use crate::domain::envelope::{Envelope, Payload, topics};
use crate::domain::ids::OrderId;

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PaymentRecord {
    pub order_id: Uuid,
    pub status: String,
    pub amount_minor: i64,
    pub currency: String,
    #[serde(skip_serializing)]
    pub card_token: String,
    pub provider_ref: Option<String>,
    pub decline_reason: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

pub async fn get_payment(pool: &PgPool, order_id: Uuid) -> Result<Option<PaymentRecord>, DbError> {
    let row = sqlx::query(
        "SELECT order_id, status, amount_minor, currency, card_token, provider_ref, decline_reason,
                created_at, updated_at
         FROM payment.payments WHERE order_id = $1",
    )
    .bind(order_id)
    .fetch_optional(pool)
    .await?;
    row.map(|r| {
        Ok(PaymentRecord {
            order_id: r.try_get("order_id")?,
            status: r.try_get("status")?,
            amount_minor: r.try_get("amount_minor")?,
            currency: r.try_get("currency")?,
            card_token: r.try_get("card_token")?,
            provider_ref: r.try_get("provider_ref")?,
            decline_reason: r.try_get("decline_reason")?,
            created_at: r.try_get("created_at")?,
            updated_at: r.try_get("updated_at")?,
        })
    })
    .transpose()
    .map_err(DbError::Sqlx)
}

/// A payment decision to store.
pub struct NewPayment<'a> {
    pub order_id: OrderId,
    pub approved: bool,
    pub amount_minor: i64,
    pub currency: &'a str,
    pub card_token: &'a str,
    pub provider_ref: Option<&'a str>,
    pub decline_reason: Option<&'a str>,
}

/// The message context a payment write happens in.
pub struct Handling<'a> {
    pub consumer: &'a str,
    pub message_id: Uuid,
    pub traceparent: Option<String>,
}

async fn begin(
    pool: &PgPool,
    h: &Handling<'_>,
) -> Result<Option<Transaction<'static, Postgres>>, DbError> {
    let mut tx = pool.begin().await?;
    if !claim_inbox(&mut tx, Schema::Payment, h.consumer, h.message_id).await? {
        tx.rollback().await?;
        return Ok(None);
    }
    Ok(Some(tx))
}

async fn reply<P: Payload>(
    tx: &mut Transaction<'_, Postgres>,
    h: &Handling<'_>,
    order_id: OrderId,
    payload: &P,
) -> Result<(), DbError> {
    let envelope = Envelope::new(order_id, payload, Utc::now());
    write_outbox(
        tx,
        Schema::Payment,
        &OutboxMessage {
            topic: topics::PAYMENT_EVENTS,
            envelope: &envelope,
            traceparent: h.traceparent.clone(),
        },
    )
    .await
}

/// Stores the decision (the first one for an order wins) and its reply. `false` when the
/// message was handled before.
pub async fn record_decision<P: Payload>(
    pool: &PgPool,
    h: &Handling<'_>,
    payment: &NewPayment<'_>,
    answer: &P,
) -> Result<bool, DbError> {
    let envelope = Envelope::new(payment.order_id, answer, Utc::now());
    let mut headers = serde_json::Map::new();
    if let Some(tp) = &h.traceparent {
        headers.insert("traceparent".into(), tp.clone().into());
    }
    // One statement: the inbox claim gates the payment row and the reply.
    let fresh: bool = sqlx::query(
        "WITH claim AS (
             INSERT INTO payment.inbox (consumer, message_id) VALUES ($1, $2)
             ON CONFLICT DO NOTHING RETURNING 1
         ), pay AS (
             INSERT INTO payment.payments
               (order_id, status, amount_minor, currency, card_token, provider_ref, decline_reason)
             SELECT $3, $4, $5, $6, $7, $8, $9 FROM claim
             ON CONFLICT (order_id) DO NOTHING
         ), reply AS (
             INSERT INTO payment.outbox (message_id, topic, message_key, message_type, payload, headers)
             SELECT $10, $11, $3::text, $12, $13, $14 FROM claim
         )
         SELECT EXISTS (SELECT 1 FROM claim)",
    )
    .bind(h.consumer)
    .bind(h.message_id)
    .bind(payment.order_id.as_uuid())
    .bind(if payment.approved { "AUTHORIZED" } else { "DECLINED" })
    .bind(payment.amount_minor)
    .bind(payment.currency)
    .bind(payment.card_token)
    .bind(payment.provider_ref)
    .bind(payment.decline_reason)
    .bind(envelope.id)
    .bind(topics::PAYMENT_EVENTS)
    .bind(&envelope.kind)
    .bind(envelope.encode())
    .bind(serde_json::Value::Object(headers))
    .fetch_one(pool)
    .await?
    .try_get(0)?;
    Ok(fresh)
}

/// Marks the order's payment refunded (if it was authorized) and replies.
pub async fn record_refund<P: Payload>(
    pool: &PgPool,
    h: &Handling<'_>,
    order_id: OrderId,
    answer: &P,
) -> Result<bool, DbError> {
    let Some(mut tx) = begin(pool, h).await? else {
        return Ok(false);
    };
    sqlx::query(
        "UPDATE payment.payments SET status = 'REFUNDED', updated_at = now()
         WHERE order_id = $1 AND status = 'AUTHORIZED'",
    )
    .bind(order_id.as_uuid())
    .execute(&mut *tx)
    .await?;
    reply(&mut tx, h, order_id, answer).await?;
    tx.commit().await?;
    Ok(true)
}
