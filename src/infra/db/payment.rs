//! The payment service's SQL: one payment row per order, written with the inbox row and the
//! reply in one transaction.

use chrono::{DateTime, Utc};
use serde::Serialize;
use std::sync::Arc;

use sqlx::{PgPool, Row};
use uuid::Uuid;

use super::DbError;
use super::messaging::{note_outbox, reply_columns, reply_record};
use super::writer::Writer;
use crate::domain::envelope::{Payload, topics};
use crate::domain::ids::OrderId;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct PaymentRecord {
    /// `AUTHORIZED`, `DECLINED` or `REFUNDED`.
    pub order_id: Uuid,
    pub status: String,
    pub amount_minor: i64,
    pub currency: String,
    #[serde(skip_serializing)]
    #[schema(ignore)]
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

/// A decision's bind parameters.
struct DecisionWrite {
    consumer: String,
    message_id: Uuid,
    order_id: Uuid,
    status: &'static str,
    amount_minor: i64,
    currency: String,
    card_token: String,
    provider_ref: Option<String>,
    decline_reason: Option<String>,
    reply: (Uuid, String, Vec<u8>, serde_json::Value),
}

/// Stores the decision (the first one for an order wins) and its reply, in the next batch of
/// the payment writer. `false` when the message was handled before.
pub async fn record_decision<P: Payload>(
    writer: &Writer,
    h: &Handling<'_>,
    payment: &NewPayment<'_>,
    answer: &P,
) -> Result<bool, DbError> {
    let w = Arc::new(DecisionWrite {
        consumer: h.consumer.to_owned(),
        message_id: h.message_id,
        order_id: payment.order_id.as_uuid(),
        status: if payment.approved {
            "AUTHORIZED"
        } else {
            "DECLINED"
        },
        amount_minor: payment.amount_minor,
        currency: payment.currency.to_owned(),
        card_token: payment.card_token.to_owned(),
        provider_ref: payment.provider_ref.map(str::to_owned),
        decline_reason: payment.decline_reason.map(str::to_owned),
        reply: reply_columns(payment.order_id, answer, h.traceparent.as_deref()),
    });
    writer
        .run_one(move |conn| {
            let w = w.clone();
            Box::pin(async move {
                let (id, kind, payload, headers) = &w.reply;
                // One statement: the inbox claim gates the payment row and the reply.
                let fresh: bool = sqlx::query(
                    "WITH claim AS (
                         INSERT INTO payment.inbox (consumer, message_id) VALUES ($1, $2)
                         ON CONFLICT DO NOTHING RETURNING 1
                     ), pay AS (
                         INSERT INTO payment.payments
                           (order_id, status, amount_minor, currency, card_token, provider_ref,
                            decline_reason)
                         SELECT $3, $4, $5, $6, $7, $8, $9 FROM claim
                         ON CONFLICT (order_id) DO NOTHING
                     ), reply AS (
                         INSERT INTO payment.outbox
                           (message_id, topic, message_key, message_type, payload, headers)
                         SELECT $10, $11, $3::text, $12, $13, $14 FROM claim
                     )
                     SELECT EXISTS (SELECT 1 FROM claim)",
                )
                .bind(&w.consumer)
                .bind(w.message_id)
                .bind(w.order_id)
                .bind(w.status)
                .bind(w.amount_minor)
                .bind(&w.currency)
                .bind(&w.card_token)
                .bind(w.provider_ref.as_deref())
                .bind(w.decline_reason.as_deref())
                .bind(id)
                .bind(topics::PAYMENT_EVENTS)
                .bind(kind)
                .bind(payload)
                .bind(headers)
                .fetch_one(conn)
                .await?
                .try_get(0)?;
                if fresh {
                    // The reply is written exactly when the claim is (`FROM claim`).
                    note_outbox([reply_record(topics::PAYMENT_EVENTS, w.order_id, &w.reply)]);
                }
                Ok(fresh)
            })
        })
        .await
}

/// Marks the order's payment refunded (if it was authorized) and replies, in the next batch
/// of the payment writer. `false` when the message was handled before.
pub async fn record_refund<P: Payload>(
    writer: &Writer,
    h: &Handling<'_>,
    order_id: OrderId,
    answer: &P,
) -> Result<bool, DbError> {
    let w = Arc::new((
        h.consumer.to_owned(),
        h.message_id,
        order_id.as_uuid(),
        reply_columns(order_id, answer, h.traceparent.as_deref()),
    ));
    writer
        .run_one(move |conn| {
            let w = w.clone();
            Box::pin(async move {
                let (consumer, message_id, order, reply) = &*w;
                let (id, kind, payload, headers) = reply;
                let fresh: bool = sqlx::query(
                    "WITH claim AS (
                         INSERT INTO payment.inbox (consumer, message_id) VALUES ($1, $2)
                         ON CONFLICT DO NOTHING RETURNING 1
                     ), refund AS (
                         UPDATE payment.payments SET status = 'REFUNDED', updated_at = now()
                         WHERE order_id = $3 AND status = 'AUTHORIZED' AND EXISTS (SELECT 1 FROM claim)
                     ), reply AS (
                         INSERT INTO payment.outbox
                           (message_id, topic, message_key, message_type, payload, headers)
                         SELECT $4, $5, $3::text, $6, $7, $8 FROM claim
                     )
                     SELECT EXISTS (SELECT 1 FROM claim)",
                )
                .bind(consumer)
                .bind(message_id)
                .bind(order)
                .bind(id)
                .bind(topics::PAYMENT_EVENTS)
                .bind(kind)
                .bind(payload)
                .bind(headers)
                .fetch_one(conn)
                .await?
                .try_get(0)?;
                if fresh {
                    note_outbox([reply_record(topics::PAYMENT_EVENTS, *order, reply)]);
                }
                Ok(fresh)
            })
        })
        .await
}
