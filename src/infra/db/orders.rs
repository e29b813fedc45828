//! The order service's SQL: orders with their outbox rows, reads for the API, and the saga's
//! state with its inbox and journal.

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::{PgPool, Row};
use uuid::Uuid;

use super::DbError;
pub use super::messaging::OutboxMessage;
use super::messaging::{Schema, claim_inbox, write_outbox};
use crate::domain::ids::OrderId;
use crate::domain::order::{NewOrder, OrderStatus};
use crate::domain::saga::SagaStatus;

/// An order as stored, with its lines.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct OrderRecord {
    pub order_id: Uuid,
    pub customer_id: String,
    pub currency: String,
    pub status: OrderStatus,
    pub lines: Vec<LineRecord>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LineRecord {
    pub sku: String,
    pub quantity: i32,
}

/// Filters for listing orders, newest first; `before` is the cursor (an order id).
#[derive(Debug, Clone, Default)]
pub struct OrderFilter {
    pub status: Option<OrderStatus>,
    pub customer_id: Option<String>,
    pub before: Option<Uuid>,
    pub limit: u32,
}

/// Stores a new order, its lines and its `OrderPlaced` outbox row in one transaction.
pub async fn insert_order(
    pool: &PgPool,
    id: OrderId,
    order: &NewOrder,
    now: DateTime<Utc>,
    trace_id: &str,
    message: OutboxMessage<'_>,
) -> Result<OrderRecord, DbError> {
    let skus: Vec<String> = order.lines.iter().map(|l| l.sku.to_string()).collect();
    let quantities: Vec<i32> = order
        .lines
        .iter()
        .map(|l| i32::try_from(l.quantity).unwrap_or(i32::MAX))
        .collect();
    let mut tx = pool.begin().await?;
    sqlx::query(
        "INSERT INTO orders.orders (id, customer_id, currency, status, trace_id, created_at, updated_at)
         VALUES ($1, $2, $3, 'PENDING', $4, $5, $5)",
    )
    .bind(id.as_uuid())
    .bind(order.customer_id.as_str())
    .bind(order.currency.code())
    .bind(trace_id)
    .bind(now)
    .execute(&mut *tx)
    .await?;
    sqlx::query(
        "INSERT INTO orders.order_lines (order_id, line_no, sku, quantity)
         SELECT $1, n - 1, sku, qty FROM UNNEST($2::text[], $3::int[]) WITH ORDINALITY AS l(sku, qty, n)",
    )
    .bind(id.as_uuid())
    .bind(&skus)
    .bind(&quantities)
    .execute(&mut *tx)
    .await?;
    write_outbox(&mut tx, Schema::Orders, &message).await?;
    tx.commit().await?;
    Ok(OrderRecord {
        order_id: id.as_uuid(),
        customer_id: order.customer_id.to_string(),
        currency: order.currency.code().to_owned(),
        status: OrderStatus::Pending,
        lines: skus
            .into_iter()
            .zip(quantities)
            .map(|(sku, quantity)| LineRecord { sku, quantity })
            .collect(),
        created_at: now,
        updated_at: now,
    })
}

pub async fn get_order(pool: &PgPool, id: Uuid) -> Result<Option<OrderRecord>, DbError> {
    let mut found = load_orders(
        pool,
        sqlx::query(
            "SELECT id, customer_id, currency, status, created_at, updated_at
             FROM orders.orders WHERE id = $1",
        )
        .bind(id),
    )
    .await?;
    Ok(found.pop())
}

pub async fn list_orders(pool: &PgPool, filter: &OrderFilter) -> Result<Vec<OrderRecord>, DbError> {
    load_orders(
        pool,
        sqlx::query(
            "SELECT id, customer_id, currency, status, created_at, updated_at
             FROM orders.orders
             WHERE ($1::text IS NULL OR status = $1)
               AND ($2::text IS NULL OR customer_id = $2)
               AND ($3::uuid IS NULL OR id < $3)
             ORDER BY id DESC
             LIMIT $4",
        )
        .bind(filter.status.map(|s| s.as_str()))
        .bind(filter.customer_id.as_deref())
        .bind(filter.before)
        .bind(i64::from(filter.limit)),
    )
    .await
}

type PgQuery<'q> = sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments>;

/// Runs an order query and attaches every order's lines with one more query.
async fn load_orders(pool: &PgPool, query: PgQuery<'_>) -> Result<Vec<OrderRecord>, DbError> {
    let rows = query.fetch_all(pool).await?;
    let mut orders = Vec::with_capacity(rows.len());
    for row in rows {
        let status: String = row.try_get("status")?;
        orders.push(OrderRecord {
            order_id: row.try_get("id")?,
            customer_id: row.try_get("customer_id")?,
            currency: row.try_get::<String, _>("currency")?,
            status: status
                .parse()
                .map_err(|()| DbError::Corrupt(format!("unknown order status {status:?}")))?,
            lines: Vec::new(),
            created_at: row.try_get("created_at")?,
            updated_at: row.try_get("updated_at")?,
        });
    }
    if orders.is_empty() {
        return Ok(orders);
    }
    let ids: Vec<Uuid> = orders.iter().map(|o| o.order_id).collect();
    let lines = sqlx::query(
        "SELECT order_id, sku, quantity FROM orders.order_lines
         WHERE order_id = ANY($1) ORDER BY order_id, line_no",
    )
    .bind(&ids)
    .fetch_all(pool)
    .await?;
    for line in lines {
        let order_id: Uuid = line.try_get("order_id")?;
        if let Some(order) = orders.iter_mut().find(|o| o.order_id == order_id) {
            order.lines.push(LineRecord {
                sku: line.try_get("sku")?,
                quantity: line.try_get("quantity")?,
            });
        }
    }
    Ok(orders)
}

/// A saga's persisted state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SagaRow {
    pub status: SagaStatus,
    pub version: i32,
}

pub async fn load_saga(pool: &PgPool, order_id: Uuid) -> Result<Option<SagaRow>, DbError> {
    let row = sqlx::query("SELECT status, version FROM orders.saga_state WHERE order_id = $1")
        .bind(order_id)
        .fetch_optional(pool)
        .await?;
    row.map(|r| {
        let status: String = r.try_get("status")?;
        Ok(SagaRow {
            status: SagaStatus::parse(&status)
                .ok_or_else(|| DbError::Corrupt(format!("unknown saga status {status:?}")))?,
            version: r.try_get("version")?,
        })
    })
    .transpose()
}

/// One saga transition as it is persisted.
pub struct SagaStep<'a> {
    pub consumer: &'a str,
    pub message_id: Uuid,
    pub message_type: &'a str,
    pub order_id: Uuid,
    pub from: SagaStatus,
    pub to: SagaStatus,
    pub trace_id: Option<&'a str>,
}

/// What happened to a message handed to [`record_saga_step`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StepOutcome {
    Applied,
    /// The inbox already had this message id: nothing was written.
    Duplicate,
}

/// Writes the inbox row, the new saga state and the journal entry in one transaction. A
/// message id already in the inbox changes nothing.
pub async fn record_saga_step(pool: &PgPool, step: &SagaStep<'_>) -> Result<StepOutcome, DbError> {
    let mut tx = pool.begin().await?;
    if !claim_inbox(&mut tx, Schema::Orders, step.consumer, step.message_id).await? {
        tx.rollback().await?;
        return Ok(StepOutcome::Duplicate);
    }
    if step.from != step.to {
        sqlx::query(
            "INSERT INTO orders.saga_state (order_id, status, version, updated_at)
             VALUES ($1, $2, 1, now())
             ON CONFLICT (order_id) DO UPDATE
               SET status = EXCLUDED.status, version = orders.saga_state.version + 1,
                   updated_at = EXCLUDED.updated_at",
        )
        .bind(step.order_id)
        .bind(step.to.as_str())
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "INSERT INTO orders.saga_journal
               (order_id, message_id, message_type, from_status, to_status, trace_id)
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(step.order_id)
        .bind(step.message_id)
        .bind(step.message_type)
        .bind(step.from.as_str())
        .bind(step.to.as_str())
        .bind(step.trace_id)
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await?;
    Ok(StepOutcome::Applied)
}
