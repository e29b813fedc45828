//! The notification service's SQL: the recipient of each order, and the log that makes each
//! customer-visible event mailed at most once (one row per event and template).

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::{PgPool, Row};
use uuid::Uuid;

use super::DbError;

/// Remembers where an order's notifications go (`None`: the order gave no address). The first
/// `OrderPlaced` wins; a redelivery changes nothing.
pub async fn remember_recipient(
    pool: &PgPool,
    order_id: Uuid,
    customer_id: &str,
    email: Option<&str>,
) -> Result<(), DbError> {
    sqlx::query(
        "INSERT INTO notifications.recipients (order_id, customer_id, email) VALUES ($1, $2, $3)
         ON CONFLICT (order_id) DO NOTHING",
    )
    .bind(order_id)
    .bind(customer_id)
    .bind(email)
    .execute(pool)
    .await?;
    Ok(())
}

/// The order's address: `None` when its `OrderPlaced` was not seen yet, `Some(None)` when the
/// order gave no address.
pub async fn recipient(pool: &PgPool, order_id: Uuid) -> Result<Option<Option<String>>, DbError> {
    let row = sqlx::query("SELECT email FROM notifications.recipients WHERE order_id = $1")
        .bind(order_id)
        .fetch_optional(pool)
        .await?;
    Ok(match row {
        Some(r) => Some(r.try_get("email")?),
        None => None,
    })
}

/// One notification as logged.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LogEntry {
    pub event_id: Uuid,
    pub template: String,
    pub order_id: Uuid,
    pub recipient: Option<String>,
    pub subject: String,
    /// `SENT`, `SKIPPED` (no address) or `FAILING` (retried until it is sent).
    pub status: String,
    pub attempts: i32,
    pub last_error: Option<String>,
    pub created_at: DateTime<Utc>,
    pub sent_at: Option<DateTime<Utc>>,
}

/// The status of the notification of `event_id` with `template`, if one was logged.
pub async fn status(
    pool: &PgPool,
    event_id: Uuid,
    template: &str,
) -> Result<Option<String>, DbError> {
    let row =
        sqlx::query("SELECT status FROM notifications.log WHERE event_id = $1 AND template = $2")
            .bind(event_id)
            .bind(template)
            .fetch_optional(pool)
            .await?;
    Ok(row.map(|r| r.try_get("status")).transpose()?)
}

/// What one attempt did.
pub struct Attempt<'a> {
    pub event_id: Uuid,
    pub template: &'a str,
    pub order_id: Uuid,
    pub recipient: Option<&'a str>,
    pub subject: &'a str,
    pub status: &'a str,
    pub error: Option<&'a str>,
}

/// Logs an attempt: the first one inserts the row, later ones (after failures) update it. A
/// row already SENT or SKIPPED is never changed.
pub async fn log(pool: &PgPool, a: &Attempt<'_>) -> Result<(), DbError> {
    sqlx::query(
        "INSERT INTO notifications.log
           (event_id, template, order_id, recipient, subject, status, attempts, last_error, sent_at)
         VALUES ($1, $2, $3, $4, $5, $6, 1, $7, CASE WHEN $6 = 'SENT' THEN now() END)
         ON CONFLICT (event_id, template) DO UPDATE
           SET status = EXCLUDED.status, attempts = notifications.log.attempts + 1,
               last_error = EXCLUDED.last_error, sent_at = EXCLUDED.sent_at
           WHERE notifications.log.status = 'FAILING'",
    )
    .bind(a.event_id)
    .bind(a.template)
    .bind(a.order_id)
    .bind(a.recipient)
    .bind(a.subject)
    .bind(a.status)
    .bind(a.error)
    .execute(pool)
    .await?;
    Ok(())
}

/// The order's notifications, oldest first.
pub async fn for_order(pool: &PgPool, order_id: Uuid) -> Result<Vec<LogEntry>, DbError> {
    let rows = sqlx::query(
        "SELECT event_id, template, order_id, recipient, subject, status, attempts, last_error,
                created_at, sent_at
         FROM notifications.log WHERE order_id = $1 ORDER BY created_at, template",
    )
    .bind(order_id)
    .fetch_all(pool)
    .await?;
    rows.iter()
        .map(|r| {
            Ok(LogEntry {
                event_id: r.try_get("event_id")?,
                template: r.try_get("template")?,
                order_id: r.try_get("order_id")?,
                recipient: r.try_get("recipient")?,
                subject: r.try_get("subject")?,
                status: r.try_get("status")?,
                attempts: r.try_get("attempts")?,
                last_error: r.try_get("last_error")?,
                created_at: r.try_get("created_at")?,
                sent_at: r.try_get("sent_at")?,
            })
        })
        .collect::<Result<_, sqlx::Error>>()
        .map_err(DbError::from)
}
