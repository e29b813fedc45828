//! The inventory service's SQL: the catalogue, and reservations that take stock all-or-none
//! under row locks taken in sku order (no oversell, no deadlock), each with its inbox row and
//! its reply in the outbox.

use chrono::{DateTime, Utc};
use serde::Serialize;
use std::sync::Arc;

use sqlx::{PgConnection, PgPool, Row};
use uuid::Uuid;

use super::DbError;
use super::messaging::{
    OutboxMessage, Schema, note_outbox, reply_columns, reply_record, write_outbox,
};
use super::writer::Writer;
use crate::domain::envelope::{Envelope, Payload, RejectedLine, StockReleased, topics};
use crate::domain::ids::OrderId;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Product {
    pub sku: String,
    pub name: String,
    pub unit_price_minor: i64,
    pub currency: String,
    pub on_hand: i32,
    pub reserved: i32,
    pub available: i32,
    pub updated_at: DateTime<Utc>,
}

/// The writable fields of a product.
#[derive(Debug, Clone)]
pub struct ProductFields<'a> {
    pub name: &'a str,
    pub unit_price_minor: i64,
    pub currency: &'a str,
    pub on_hand: i32,
}

#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    #[error("a product with sku {0} exists")]
    Exists(String),
    #[error("on_hand {on_hand} is below the {reserved} units reserved")]
    BelowReserved { on_hand: i32, reserved: i32 },
    #[error(transparent)]
    Db(#[from] DbError),
}

fn product(row: &sqlx::postgres::PgRow) -> Result<Product, sqlx::Error> {
    let on_hand: i32 = row.try_get("on_hand")?;
    let reserved: i32 = row.try_get("reserved")?;
    Ok(Product {
        sku: row.try_get("sku")?,
        name: row.try_get("name")?,
        unit_price_minor: row.try_get("unit_price_minor")?,
        currency: row.try_get("currency")?,
        on_hand,
        reserved,
        available: on_hand - reserved,
        updated_at: row.try_get("updated_at")?,
    })
}

pub async fn create_product(
    pool: &PgPool,
    sku: &str,
    fields: &ProductFields<'_>,
) -> Result<Product, CatalogError> {
    let row = sqlx::query(
        "INSERT INTO inventory.products (sku, name, unit_price_minor, currency, on_hand)
         VALUES ($1, $2, $3, $4, $5)
         ON CONFLICT (sku) DO NOTHING
         RETURNING sku, name, unit_price_minor, currency, on_hand, reserved, updated_at",
    )
    .bind(sku)
    .bind(fields.name)
    .bind(fields.unit_price_minor)
    .bind(fields.currency)
    .bind(fields.on_hand)
    .fetch_optional(pool)
    .await
    .map_err(DbError::from)?;
    match row {
        Some(r) => Ok(product(&r).map_err(DbError::from)?),
        None => Err(CatalogError::Exists(sku.to_owned())),
    }
}

/// Replaces a product's fields; `None` when there is no such sku. Setting `on_hand` below
/// what is reserved is refused (the table's CHECK would refuse it too).
pub async fn update_product(
    pool: &PgPool,
    sku: &str,
    fields: &ProductFields<'_>,
) -> Result<Option<Product>, CatalogError> {
    let mut tx = pool.begin().await.map_err(DbError::from)?;
    let current = sqlx::query("SELECT reserved FROM inventory.products WHERE sku = $1 FOR UPDATE")
        .bind(sku)
        .fetch_optional(&mut *tx)
        .await
        .map_err(DbError::from)?;
    let Some(current) = current else {
        return Ok(None);
    };
    let reserved: i32 = current.try_get("reserved").map_err(DbError::from)?;
    if fields.on_hand < reserved {
        return Err(CatalogError::BelowReserved {
            on_hand: fields.on_hand,
            reserved,
        });
    }
    let row = sqlx::query(
        "UPDATE inventory.products
         SET name = $2, unit_price_minor = $3, currency = $4, on_hand = $5, updated_at = now()
         WHERE sku = $1
         RETURNING sku, name, unit_price_minor, currency, on_hand, reserved, updated_at",
    )
    .bind(sku)
    .bind(fields.name)
    .bind(fields.unit_price_minor)
    .bind(fields.currency)
    .bind(fields.on_hand)
    .fetch_one(&mut *tx)
    .await
    .map_err(DbError::from)?;
    tx.commit().await.map_err(DbError::from)?;
    Ok(Some(product(&row).map_err(DbError::from)?))
}

pub async fn get_product(pool: &PgPool, sku: &str) -> Result<Option<Product>, DbError> {
    let row = sqlx::query(
        "SELECT sku, name, unit_price_minor, currency, on_hand, reserved, updated_at
         FROM inventory.products WHERE sku = $1",
    )
    .bind(sku)
    .fetch_optional(pool)
    .await?;
    Ok(row.map(|r| product(&r)).transpose()?)
}

/// Products in sku order after `after`, at most `limit`.
pub async fn list_products(
    pool: &PgPool,
    after: Option<&str>,
    limit: u32,
) -> Result<Vec<Product>, DbError> {
    let rows = sqlx::query(
        "SELECT sku, name, unit_price_minor, currency, on_hand, reserved, updated_at
         FROM inventory.products WHERE ($1::text IS NULL OR sku > $1) ORDER BY sku LIMIT $2",
    )
    .bind(after)
    .bind(i64::from(limit))
    .fetch_all(pool)
    .await?;
    Ok(rows.iter().map(product).collect::<Result<_, _>>()?)
}

/// What a command did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CommandOutcome {
    Reserved {
        total_minor: i64,
    },
    Rejected(Vec<RejectedLine>),
    Released {
        released: bool,
    },
    Committed {
        committed: bool,
    },
    /// The message id was handled before: nothing changed and nothing was sent.
    Duplicate,
}

/// The context every inventory command is handled in.
#[derive(Debug, Clone)]
pub struct CommandContext {
    pub consumer: &'static str,
    pub message_id: Uuid,
    pub order_id: OrderId,
    pub traceparent: Option<String>,
}

async fn reply<P: Payload>(
    conn: &mut PgConnection,
    ctx: &CommandContext,
    payload: &P,
) -> Result<(), DbError> {
    let envelope = Envelope::new(ctx.order_id, payload, Utc::now());
    write_outbox(
        conn,
        Schema::Inventory,
        &OutboxMessage {
            topic: topics::INVENTORY_EVENTS,
            envelope: &envelope,
            traceparent: ctx.traceparent.clone(),
        },
    )
    .await
}

/// Runs one "claim the inbox, change, reply" statement whose parameters are: $1 consumer,
/// $2 message id, $3 order id, $4-$8 the reply's id, topic, type, payload and headers. It must
/// return `fresh` (the message was new), `changed`, and `replied` (the reply's outbox row was
/// written; its CTE `reply` returns a row for it). `None` for a duplicate.
async fn claim_change_reply<P: Payload>(
    writer: &Writer,
    ctx: &CommandContext,
    reply: &P,
    sql: &'static str,
) -> Result<Option<bool>, DbError> {
    let binds = Arc::new((
        ctx.clone(),
        reply_columns(ctx.order_id, reply, ctx.traceparent.as_deref()),
    ));
    writer
        .run_one(move |conn| {
            let binds = binds.clone();
            Box::pin(async move {
                let (ctx, reply) = &*binds;
                let (id, kind, payload, headers) = reply;
                let row = sqlx::query(sql)
                    .bind(ctx.consumer)
                    .bind(ctx.message_id)
                    .bind(ctx.order_id.as_uuid())
                    .bind(id)
                    .bind(topics::INVENTORY_EVENTS)
                    .bind(kind)
                    .bind(payload)
                    .bind(headers)
                    .fetch_one(conn)
                    .await?;
                if row.try_get::<bool, _>("replied")? {
                    note_outbox([reply_record(
                        topics::INVENTORY_EVENTS,
                        ctx.order_id.as_uuid(),
                        reply,
                    )]);
                }
                if !row.try_get::<bool, _>("fresh")? {
                    return Ok(None);
                }
                Ok(Some(row.try_get("changed")?))
            })
        })
        .await
}

/// Gives back a reserved order's stock and replies `StockReleased` (also when nothing was
/// reserved, so compensation always completes). One statement: inbox, release, reply.
pub async fn release(
    writer: &Writer,
    ctx: &CommandContext,
    reason: &str,
) -> Result<CommandOutcome, DbError> {
    let reply = StockReleased {
        reason: reason.to_owned(),
    };
    let changed = claim_change_reply(
        writer,
        ctx,
        &reply,
        "WITH claim AS (
             INSERT INTO inventory.inbox (consumer, message_id) VALUES ($1, $2)
             ON CONFLICT DO NOTHING RETURNING 1
         ), res AS (
             UPDATE inventory.reservations SET status = 'RELEASED', updated_at = now()
             WHERE order_id = $3 AND status = 'RESERVED' AND EXISTS (SELECT 1 FROM claim)
             RETURNING order_id
         ), stock AS (
             UPDATE inventory.products p SET reserved = p.reserved - l.quantity, updated_at = now()
             FROM res, inventory.reservation_lines l
             WHERE l.order_id = res.order_id AND p.sku = l.sku
         ), reply AS (
             INSERT INTO inventory.outbox (message_id, topic, message_key, message_type, payload, headers)
             SELECT $4, $5, $3::text, $6, $7, $8 FROM claim
             RETURNING 1
         )
         SELECT EXISTS (SELECT 1 FROM claim) AS fresh, EXISTS (SELECT 1 FROM res) AS changed,
                EXISTS (SELECT 1 FROM reply) AS replied",
    )
    .await?;
    Ok(match changed {
        None => CommandOutcome::Duplicate,
        Some(released) => CommandOutcome::Released { released },
    })
}

async fn release_in(conn: &mut PgConnection, order: Uuid) -> Result<bool, DbError> {
    let changed = sqlx::query(
        "UPDATE inventory.reservations SET status = 'RELEASED', updated_at = now()
         WHERE order_id = $1 AND status = 'RESERVED'",
    )
    .bind(order)
    .execute(&mut *conn)
    .await?
    .rows_affected()
        == 1;
    if changed {
        sqlx::query(
            "UPDATE inventory.products p SET reserved = p.reserved - l.quantity, updated_at = now()
             FROM inventory.reservation_lines l WHERE l.order_id = $1 AND p.sku = l.sku",
        )
        .bind(order)
        .execute(&mut *conn)
        .await?;
    }
    Ok(changed)
}

/// Releases reservations past their expiry (at most `limit`), replying `StockReleased` with
/// reason `expired` for each, in the next batch of the inventory writer. Returns how many were
/// released.
pub async fn expire_due(writer: &Writer, limit: i64) -> Result<usize, DbError> {
    writer
        .run(move |conn| Box::pin(expire_due_in(conn, limit)))
        .await
}

async fn expire_due_in(conn: &mut PgConnection, limit: i64) -> Result<usize, DbError> {
    let due: Vec<Uuid> = sqlx::query(
        "SELECT order_id FROM inventory.reservations
         WHERE status = 'RESERVED' AND expires_at < now()
         ORDER BY expires_at LIMIT $1 FOR UPDATE SKIP LOCKED",
    )
    .bind(limit)
    .fetch_all(&mut *conn)
    .await?
    .iter()
    .map(|r| r.try_get("order_id"))
    .collect::<Result<_, _>>()?;
    for order in &due {
        if release_in(conn, *order).await? {
            let ctx = CommandContext {
                consumer: "inventory-expiry",
                message_id: Uuid::now_v7(),
                order_id: OrderId::from_uuid(*order),
                traceparent: None,
            };
            reply(
                conn,
                &ctx,
                &StockReleased {
                    reason: "expired".into(),
                },
            )
            .await?;
        }
    }
    Ok(due.len())
}
