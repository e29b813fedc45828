//! The notification service's SQL: the recipient of each order, and the log that makes each
//! customer-visible event mailed at most once (one row per event and template).

use chrono::{DateTime, Utc};
use futures::future::BoxFuture;
use serde::Serialize;
use sqlx::{PgConnection, PgPool, Row};
use uuid::Uuid;

use super::DbError;
use super::group::{GroupWork, Grouped};
use super::writer::Writer;

/// The notification service's writes, as groups of its writer: one statement per group for
/// the recipients and one for the log, however many events a batch of partitions handled at
/// once. Cheap to clone.
#[derive(Clone)]
pub struct NotificationWrites {
    recipients: Grouped<RecipientWork>,
    log: Grouped<LogWork>,
}

impl NotificationWrites {
    /// Starts the group tasks on the notification writer; they end with the last clone.
    pub fn start(writer: Writer, group_max: usize) -> Self {
        NotificationWrites {
            recipients: Grouped::start(
                "notification recipients",
                writer.clone(),
                RecipientWork,
                group_max,
            ),
            log: Grouped::start("notification log", writer, LogWork, group_max),
        }
    }

    /// Remembers where an order's notifications go (`None`: the order gave no address). The
    /// first `OrderPlaced` wins; a redelivery changes nothing.
    pub async fn remember_recipient(
        &self,
        order_id: Uuid,
        customer_id: String,
        email: Option<String>,
    ) -> Result<(), DbError> {
        self.recipients
            .submit(Recipient {
                order_id,
                customer_id,
                email,
            })
            .await
    }

    /// Logs an attempt: the first one inserts the row, later ones (after failures) update it.
    /// A row already SENT or SKIPPED is never changed.
    pub async fn log(&self, attempt: Attempt) -> Result<(), DbError> {
        self.log.submit(attempt).await
    }
}

pub struct Recipient {
    order_id: Uuid,
    customer_id: String,
    email: Option<String>,
}

/// Recipients as group work (duplicates in a group are harmless: `DO NOTHING`).
pub struct RecipientWork;

impl GroupWork for RecipientWork {
    type Item = Recipient;
    type Output = ();

    fn write<'c>(
        &'c self,
        conn: &'c mut PgConnection,
        items: &'c [Recipient],
    ) -> BoxFuture<'c, Result<Vec<()>, DbError>> {
        Box::pin(async move {
            let orders: Vec<Uuid> = items.iter().map(|r| r.order_id).collect();
            let customers: Vec<&str> = items.iter().map(|r| r.customer_id.as_str()).collect();
            let emails: Vec<Option<&str>> = items.iter().map(|r| r.email.as_deref()).collect();
            sqlx::query(
                "INSERT INTO notifications.recipients (order_id, customer_id, email)
                 SELECT * FROM UNNEST($1::uuid[], $2::text[], $3::text[])
                 ON CONFLICT (order_id) DO NOTHING",
            )
            .bind(&orders)
            .bind(&customers)
            .bind(&emails)
            .execute(conn)
            .await?;
            Ok(vec![(); items.len()])
        })
    }

    fn single_statement(&self, _items: &[Recipient]) -> bool {
        true
    }
}

/// What is known before notifying about one event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Known {
    /// The order's address (`None`: the order gave no address).
    pub email: Option<String>,
    /// The status of this event's notification, if one was logged.
    pub status: Option<String>,
}

/// One event about to be notified: its order, its message id and its template.
#[derive(Debug, Clone, Copy)]
pub struct Asked<'a> {
    pub order_id: Uuid,
    pub event_id: Uuid,
    pub template: &'a str,
}

/// For each asked event, in order, in one query: the order's address and the logged status of
/// the event's notification; `None` when the order's `OrderPlaced` was not seen yet (nothing
/// is logged before its recipient is known).
pub async fn known_all(pool: &PgPool, asked: &[Asked<'_>]) -> Result<Vec<Option<Known>>, DbError> {
    let orders: Vec<Uuid> = asked.iter().map(|a| a.order_id).collect();
    let events: Vec<Uuid> = asked.iter().map(|a| a.event_id).collect();
    let templates: Vec<&str> = asked.iter().map(|a| a.template).collect();
    let rows = sqlx::query(
        "SELECT k.n, r.email, l.status FROM
           UNNEST($1::uuid[], $2::uuid[], $3::text[]) WITH ORDINALITY AS k(order_id, event_id, template, n)
         JOIN notifications.recipients r ON r.order_id = k.order_id
         LEFT JOIN notifications.log l ON l.event_id = k.event_id AND l.template = k.template",
    )
    .bind(&orders)
    .bind(&events)
    .bind(&templates)
    .fetch_all(pool)
    .await?;
    let mut known = vec![None; asked.len()];
    for row in rows {
        let n: i64 = row.try_get("n")?;
        let slot = usize::try_from(n - 1)
            .ok()
            .and_then(|i| known.get_mut(i))
            .ok_or_else(|| DbError::Corrupt(format!("row {n} of {} asked", asked.len())))?;
        *slot = Some(Known {
            email: row.try_get("email")?,
            status: row.try_get("status")?,
        });
    }
    Ok(known)
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

/// Log attempts as group work: one `INSERT … ON CONFLICT DO UPDATE` for the group.
pub struct LogWork;

impl GroupWork for LogWork {
    type Item = Attempt;
    type Output = ();

    fn write<'c>(
        &'c self,
        conn: &'c mut PgConnection,
        items: &'c [Attempt],
    ) -> BoxFuture<'c, Result<Vec<()>, DbError>> {
        Box::pin(async move {
            log_all(conn, items).await?;
            Ok(vec![(); items.len()])
        })
    }

    fn single_statement(&self, _items: &[Attempt]) -> bool {
        true
    }

    /// `ON CONFLICT DO UPDATE` may not touch one row twice in a statement: one attempt per
    /// event and template in a group.
    fn fits(&self, group: &[Attempt], item: &Attempt) -> bool {
        group
            .iter()
            .all(|a| (a.event_id, a.template) != (item.event_id, item.template))
    }
}

async fn log_all(conn: &mut PgConnection, items: &[Attempt]) -> Result<(), DbError> {
    let events: Vec<Uuid> = items.iter().map(|a| a.event_id).collect();
    let templates: Vec<&str> = items.iter().map(|a| a.template).collect();
    let orders: Vec<Uuid> = items.iter().map(|a| a.order_id).collect();
    let recipients: Vec<Option<&str>> = items.iter().map(|a| a.recipient.as_deref()).collect();
    let subjects: Vec<&str> = items.iter().map(|a| a.subject.as_str()).collect();
    let statuses: Vec<&str> = items.iter().map(|a| a.status).collect();
    let errors: Vec<Option<&str>> = items.iter().map(|a| a.error.as_deref()).collect();
    sqlx::query(
        "INSERT INTO notifications.log
           (event_id, template, order_id, recipient, subject, status, attempts, last_error, sent_at)
         SELECT a.event_id, a.template, a.order_id, a.recipient, a.subject, a.status, 1, a.error,
                CASE WHEN a.status = 'SENT' THEN now() END
         FROM UNNEST($1::uuid[], $2::text[], $3::uuid[], $4::text[], $5::text[], $6::text[],
                     $7::text[]) AS a(event_id, template, order_id, recipient, subject, status,
                                      error)
         ON CONFLICT (event_id, template) DO UPDATE
           SET status = EXCLUDED.status, attempts = notifications.log.attempts + 1,
               last_error = EXCLUDED.last_error, sent_at = EXCLUDED.sent_at
           WHERE notifications.log.status = 'FAILING'",
    )
    .bind(&events)
    .bind(&templates)
    .bind(&orders)
    .bind(&recipients)
    .bind(&subjects)
    .bind(&statuses)
    .bind(&errors)
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
