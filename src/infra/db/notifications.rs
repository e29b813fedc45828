//! The notification service's SQL: the recipient of each order, and the log that makes each
//! customer-visible event mailed at most once (one row per event and template).

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::{PgConnection, PgPool, Row};
use uuid::Uuid;

use super::DbError;
use super::writer::Writer;

/// Remembers where an order's notifications go (`None`: the order gave no address), in the
/// notification writer's next batch. The first `OrderPlaced` wins; a redelivery changes nothing.
pub async fn remember_recipient(
    writer: &Writer,
    order_id: Uuid,
    customer_id: String,
    email: Option<String>,
) -> Result<(), DbError> {
    writer
        .run_one(move |conn: &mut PgConnection| {
            let (customer_id, email) = (customer_id.clone(), email.clone());
            Box::pin(async move {
                sqlx::query(
                    "INSERT INTO notifications.recipients (order_id, customer_id, email)
                     VALUES ($1, $2, $3) ON CONFLICT (order_id) DO NOTHING",
                )
                .bind(order_id)
                .bind(customer_id)
                .bind(email)
                .execute(conn)
                .await?;
                Ok(())
            })
        })
        .await
}

/// What is known before notifying about one event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Known {
    /// The order's address (`None`: the order gave no address).
    pub email: Option<String>,
    /// The status of this event's notification, if one was logged.
    pub status: Option<String>,
}

/// The order's address and the logged status of the notification of `event_id` with
/// `template`, in one query; `None` when the order's `OrderPlaced` was not seen yet (nothing
/// is logged before its recipient is known).
pub async fn known(
    pool: &PgPool,
    order_id: Uuid,
    event_id: Uuid,
    template: &str,
) -> Result<Option<Known>, DbError> {
    let row = sqlx::query(
        "SELECT r.email, l.status FROM notifications.recipients r
         LEFT JOIN notifications.log l ON l.event_id = $2 AND l.template = $3
         WHERE r.order_id = $1",
    )
    .bind(order_id)
    .bind(event_id)
    .bind(template)
    .fetch_optional(pool)
    .await?;
    row.map(|r| {
        Ok(Known {
            email: r.try_get("email")?,
            status: r.try_get("status")?,
        })
    })
    .transpose()
    .map_err(|e: sqlx::Error| e.into())
}

/// One notification as logged.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
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

/// What one attempt did.
#[derive(Debug, Clone)]
pub struct Attempt {
    pub event_id: Uuid,
    pub template: &'static str,
    pub order_id: Uuid,
    pub recipient: Option<String>,
    pub subject: String,
    pub status: &'static str,
    pub error: Option<String>,
}

/// Logs an attempt in the notification writer's next batch: the first one inserts the row,
/// later ones (after failures) update it. A row already SENT or SKIPPED is never changed.
pub async fn log(writer: &Writer, attempt: Attempt) -> Result<(), DbError> {
    writer
        .run_one(move |conn: &mut PgConnection| {
            let a = attempt.clone();
            Box::pin(async move { log_on(conn, &a).await })
        })
        .await
}

async fn log_on(conn: &mut PgConnection, a: &Attempt) -> Result<(), DbError> {
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
    .bind(a.recipient.as_deref())
    .bind(&a.subject)
    .bind(a.status)
    .bind(a.error.as_deref())
    .execute(conn)
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
