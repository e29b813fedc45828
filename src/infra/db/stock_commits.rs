//! Stock commits, set-based: every `CommitStock` waiting when the previous group finished is
//! applied together, with **one** statement for the whole group (claim the inbox rows, mark the
//! reservations committed, take the stock per sku) in one job of the inventory writer,
//! instead of one job per command. The inventory writer is a single task per process (see
//! `writer.rs`), so its jobs per order decide the inventory's throughput.
//!
//! A group holds at most one command per order: a second one (a retry) waits for the next
//! group and sees the first one's effect, exactly as it would one at a time.

use std::collections::HashMap;

use futures::future::BoxFuture;
use sqlx::{PgConnection, Row};
use uuid::Uuid;

use super::DbError;
use super::group::{GroupWork, Grouped};
use super::inventory::{CommandContext, CommandOutcome};
use super::writer::Writer;

/// One command (the job may run more than once).
struct Commit {
    ctx: CommandContext,
}

struct CommitWork;

impl GroupWork for CommitWork {
    type Item = Commit;
    type Output = CommandOutcome;

    fn write<'c>(
        &'c self,
        conn: &'c mut PgConnection,
        items: &'c [Commit],
    ) -> BoxFuture<'c, Result<Vec<CommandOutcome>, DbError>> {
        Box::pin(commit_all(conn, items))
    }

    fn single_statement(&self, _items: &[Commit]) -> bool {
        true
    }

    fn fits(&self, group: &[Commit], item: &Commit) -> bool {
        group.iter().all(|c| c.ctx.order_id != item.ctx.order_id)
    }
}

/// Hands stock commits to the group task. Cheap to clone.
#[derive(Clone)]
pub struct StockCommits {
    group: Grouped<CommitWork>,
}

impl StockCommits {
    /// Starts the group task on `writer`; it ends when the last clone is dropped.
    pub fn start(writer: Writer, group_max: usize) -> Self {
        StockCommits {
            group: Grouped::start("inventory stock commits", writer, CommitWork, group_max),
        }
    }

    /// Turns the order's reservation into a sale (stock leaves `on_hand` and `reserved`
    /// together). Nothing reserved (released, expired, committed before): no change. A message
    /// id handled before changes nothing. Nothing is replied: the saga confirms the order when
    /// it sends `CommitStock` and waits for no answer, and no other service needs one.
    pub async fn commit(&self, ctx: &CommandContext) -> Result<CommandOutcome, DbError> {
        self.group.submit(Commit { ctx: ctx.clone() }).await
    }
}

async fn commit_all(
    conn: &mut PgConnection,
    items: &[Commit],
) -> Result<Vec<CommandOutcome>, DbError> {
    let consumers: Vec<&str> = items.iter().map(|c| c.ctx.consumer).collect();
    let message_ids: Vec<Uuid> = items.iter().map(|c| c.ctx.message_id).collect();
    let orders: Vec<Uuid> = items.iter().map(|c| c.ctx.order_id.as_uuid()).collect();
    let rows = sqlx::query(
        "WITH input AS (
             SELECT * FROM UNNEST($1::text[], $2::uuid[], $3::uuid[])
               AS i(consumer, message_id, order_id)
         ), claim AS (
             INSERT INTO inventory.inbox (consumer, message_id)
             SELECT consumer, message_id FROM input
             ON CONFLICT DO NOTHING RETURNING message_id
         ), res AS (
             UPDATE inventory.reservations r SET status = 'COMMITTED', updated_at = now()
             FROM input i JOIN claim c ON c.message_id = i.message_id
             WHERE r.order_id = ANY($3) AND r.order_id = i.order_id AND r.status = 'RESERVED'
             RETURNING r.order_id
         ), stock AS (
             UPDATE inventory.products p
             SET on_hand = p.on_hand - t.quantity, reserved = p.reserved - t.quantity,
                 updated_at = now()
             FROM (SELECT l.sku, sum(l.quantity) AS quantity
                   FROM res JOIN inventory.reservation_lines l ON l.order_id = res.order_id
                   GROUP BY l.sku) t
             WHERE p.sku = t.sku
         )
         SELECT i.message_id,
                EXISTS (SELECT 1 FROM claim c WHERE c.message_id = i.message_id) AS fresh,
                EXISTS (SELECT 1 FROM res WHERE res.order_id = i.order_id) AS changed
         FROM input i",
    )
    .bind(&consumers)
    .bind(&message_ids)
    .bind(&orders)
    .fetch_all(&mut *conn)
    .await?;
    let mut answered: HashMap<Uuid, (bool, bool)> = HashMap::with_capacity(rows.len());
    for r in &rows {
        let id: Uuid = r.try_get("message_id")?;
        answered.insert(id, (r.try_get("fresh")?, r.try_get("changed")?));
    }
    items
        .iter()
        .map(|c| match answered.get(&c.ctx.message_id) {
            Some((false, _)) => Ok(CommandOutcome::Duplicate),
            Some((true, committed)) => Ok(CommandOutcome::Committed {
                committed: *committed,
            }),
            None => Err(DbError::Corrupt(format!(
                "no outcome for stock commit {}",
                c.ctx.message_id
            ))),
        })
        .collect()
}
