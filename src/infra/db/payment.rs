//! The payment service's SQL: one payment row per order, written with the inbox row and the
//! reply in one transaction.

use chrono::{DateTime, Utc};
use serde::Serialize;
use std::sync::Arc;

use std::collections::HashSet;

use futures::future::BoxFuture;
use sqlx::{PgConnection, PgPool, Row};
use uuid::Uuid;

use super::DbError;
use super::group::{GroupWork, Grouped};
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
pub struct DecisionWrite {
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

/// Payment decisions as group work: the whole group in one statement ([`decide_all`]).
struct DecisionWork;

impl GroupWork for DecisionWork {
    type Item = DecisionWrite;
    type Output = bool;

    fn write<'c>(
        &'c self,
        conn: &'c mut PgConnection,
        items: &'c [DecisionWrite],
    ) -> BoxFuture<'c, Result<Vec<bool>, DbError>> {
        Box::pin(decide_all(conn, items))
    }

    fn single_statement(&self, _items: &[DecisionWrite]) -> bool {
        true
    }
}

/// Hands payment decisions to the group task: every decision waiting when the previous group
/// finished is stored with one statement (inbox claims, payment rows, replies) instead of one
/// each. Cheap to clone.
#[derive(Clone)]
pub struct PaymentDecisions {
    group: Grouped<DecisionWork>,
}

impl PaymentDecisions {
    /// Starts the group task on `writer`; it ends when the last clone is dropped.
    pub fn start(writer: Writer, group_max: usize) -> Self {
        PaymentDecisions {
            group: Grouped::start("payment decisions", writer, DecisionWork, group_max),
        }
    }

    /// Stores the decision (the first one for an order wins) and its reply. `false` when the
    /// message was handled before.
    pub async fn record<P: Payload>(
        &self,
        h: &Handling<'_>,
        payment: &NewPayment<'_>,
        answer: &P,
    ) -> Result<bool, DbError> {
        let write = DecisionWrite {
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
        };
        self.group.submit(write).await
    }
}

/// Stores a group of decisions in one statement: each inbox claim gates its payment row and
/// its reply, as one decision's own statement would. A message id twice in the group counts
/// once (its first occurrence); of two decisions for one order the first in the group wins,
/// and a decision for an order that already has a payment writes no second row (its reply is
/// written, as before).
async fn decide_all(
    conn: &mut PgConnection,
    items: &[DecisionWrite],
) -> Result<Vec<bool>, DbError> {
    let mut seen = HashSet::new();
    let first: Vec<bool> = items
        .iter()
        .map(|w| seen.insert((w.consumer.as_str(), w.message_id)))
        .collect();
    let rows: Vec<&DecisionWrite> = items
        .iter()
        .zip(&first)
        .filter_map(|(w, first)| first.then_some(w))
        .collect();
    let col = |f: fn(&DecisionWrite) -> String| rows.iter().map(|w| f(w)).collect::<Vec<_>>();
    let opt =
        |f: fn(&DecisionWrite) -> Option<String>| rows.iter().map(|w| f(w)).collect::<Vec<_>>();
    let claimed: Vec<Uuid> = sqlx::query_scalar(
        "WITH input AS (
             SELECT * FROM UNNEST($1::text[], $2::uuid[], $3::uuid[], $4::text[], $5::bigint[],
                                  $6::text[], $7::text[], $8::text[], $9::text[], $10::uuid[],
                                  $11::text[], $12::bytea[], $13::jsonb[])
               WITH ORDINALITY AS i(consumer, message_id, order_id, status, amount_minor,
                                    currency, card_token, provider_ref, decline_reason,
                                    reply_id, kind, payload, headers, n)
         ), claim AS (
             INSERT INTO payment.inbox (consumer, message_id)
             SELECT consumer, message_id FROM input
             ON CONFLICT DO NOTHING RETURNING consumer, message_id
         ), fresh AS (
             SELECT i.* FROM input i JOIN claim c USING (consumer, message_id)
         ), pay AS (
             INSERT INTO payment.payments
               (order_id, status, amount_minor, currency, card_token, provider_ref,
                decline_reason)
             SELECT DISTINCT ON (order_id) order_id, status, amount_minor, currency, card_token,
                    provider_ref, decline_reason
             FROM fresh ORDER BY order_id, n
             ON CONFLICT (order_id) DO NOTHING
         ), reply AS (
             INSERT INTO payment.outbox
               (message_id, topic, message_key, message_type, payload, headers)
             SELECT reply_id, $14, order_id::text, kind, payload, headers FROM fresh ORDER BY n
         )
         SELECT message_id FROM claim",
    )
    .bind(col(|w| w.consumer.clone()))
    .bind(rows.iter().map(|w| w.message_id).collect::<Vec<_>>())
    .bind(rows.iter().map(|w| w.order_id).collect::<Vec<_>>())
    .bind(col(|w| w.status.to_owned()))
    .bind(rows.iter().map(|w| w.amount_minor).collect::<Vec<_>>())
    .bind(col(|w| w.currency.clone()))
    .bind(col(|w| w.card_token.clone()))
    .bind(opt(|w| w.provider_ref.clone()))
    .bind(opt(|w| w.decline_reason.clone()))
    .bind(rows.iter().map(|w| w.reply.0).collect::<Vec<_>>())
    .bind(col(|w| w.reply.1.clone()))
    .bind(rows.iter().map(|w| w.reply.2.clone()).collect::<Vec<_>>())
    .bind(rows.iter().map(|w| w.reply.3.clone()).collect::<Vec<_>>())
    .bind(topics::PAYMENT_EVENTS)
    .fetch_all(&mut *conn)
    .await?;
    let claimed: HashSet<Uuid> = claimed.into_iter().collect();
    // The replies written are exactly the claimed ones (`FROM fresh`).
    note_outbox(
        rows.iter()
            .filter(|w| claimed.contains(&w.message_id))
            .map(|w| reply_record(topics::PAYMENT_EVENTS, w.order_id, &w.reply)),
    );
    Ok(items
        .iter()
        .zip(first)
        .map(|(w, first)| first && claimed.contains(&w.message_id))
        .collect())
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
