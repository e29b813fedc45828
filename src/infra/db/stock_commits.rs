//! Stock commits, set-based: every `CommitStock` waiting when the previous group finished is
//! applied together, with **one** statement for the whole group (claim the inbox rows, mark the
//! reservations committed, take the stock per sku, reply) in one job of the inventory writer,
//! instead of one job per command. The inventory writer is a single task per process (see
//! `writer.rs`), so its jobs per order decide the inventory's throughput.
//!
//! A group holds at most one command per order: a second one (a retry) waits for the next
//! group and sees the first one's effect, exactly as it would one at a time.

use std::collections::{HashMap, HashSet};

use futures::future::BoxFuture;
use sqlx::{PgConnection, Row};
use uuid::Uuid;

use super::DbError;
use super::group::{GroupWork, Grouped};
use super::inventory::{CommandContext, CommandOutcome};
use super::messaging::{note_outbox, reply_columns, reply_record};
use super::writer::Writer;
use crate::domain::envelope::{StockCommitted, topics};

/// One command with its reply, encoded once (the job may run more than once).
struct Commit {
    ctx: CommandContext,
    reply: (Uuid, String, Vec<u8>, serde_json::Value),
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
    /// together) and replies `StockCommitted`. Nothing reserved (released, expired, committed
    /// before): no change and no reply. A message id handled before changes nothing.
    pub async fn commit(&self, ctx: &CommandContext) -> Result<CommandOutcome, DbError> {
        let reply = reply_columns(ctx.order_id, &StockCommitted {}, ctx.traceparent.as_deref());
        self.group
            .submit(Commit {
                ctx: ctx.clone(),
                reply,
            })
            .await
    }
}

async fn commit_all(
    conn: &mut PgConnection,
    items: &[Commit],
) -> Result<Vec<CommandOutcome>, DbError> {
    let consumers: Vec<&str> = items.iter().map(|c| c.ctx.consumer).collect();
    let message_ids: Vec<Uuid> = items.iter().map(|c| c.ctx.message_id).collect();
    let orders: Vec<Uuid> = items.iter().map(|c| c.ctx.order_id.as_uuid()).collect();
    let reply_ids: Vec<Uuid> = items.iter().map(|c| c.reply.0).collect();
    let kinds: Vec<&str> = items.iter().map(|c| c.reply.1.as_str()).collect();
    let payloads: Vec<&[u8]> = items.iter().map(|c| c.reply.2.as_slice()).collect();
    let headers: Vec<&serde_json::Value> = items.iter().map(|c| &c.reply.3).collect();
    let rows = sqlx::query(
        "WITH input AS (
             SELECT * FROM UNNEST($1::text[], $2::uuid[], $3::uuid[], $4::uuid[], $5::text[],
                                  $6::bytea[], $7::jsonb[])
               AS i(consumer, message_id, order_id, reply_id, kind, payload, headers)
         ), claim AS (
             INSERT INTO inventory.inbox (consumer, message_id)
             SELECT consumer, message_id FROM input
             ON CONFLICT DO NOTHING RETURNING message_id
         ), res AS (
             UPDATE inventory.reservations r SET status = 'COMMITTED', updated_at = now()
             FROM input i JOIN claim c ON c.message_id = i.message_id
             WHERE r.order_id = i.order_id AND r.status = 'RESERVED'
             RETURNING r.order_id
         ), stock AS (
             UPDATE inventory.products p
             SET on_hand = p.on_hand - t.quantity, reserved = p.reserved - t.quantity,
                 updated_at = now()
             FROM (SELECT l.sku, sum(l.quantity) AS quantity
                   FROM res JOIN inventory.reservation_lines l ON l.order_id = res.order_id
                   GROUP BY l.sku) t
             WHERE p.sku = t.sku
         ), reply AS (
             INSERT INTO inventory.outbox
               (message_id, topic, message_key, message_type, payload, headers)
             SELECT i.reply_id, $8, i.order_id::text, i.kind, i.payload, i.headers
             FROM input i JOIN res ON res.order_id = i.order_id
             RETURNING message_id
         )
         SELECT i.message_id,
                EXISTS (SELECT 1 FROM claim c WHERE c.message_id = i.message_id) AS fresh,
                EXISTS (SELECT 1 FROM res WHERE res.order_id = i.order_id) AS changed,
                EXISTS (SELECT 1 FROM reply WHERE reply.message_id = i.reply_id) AS replied
         FROM input i",
    )
    .bind(&consumers)
    .bind(&message_ids)
    .bind(&orders)
    .bind(&reply_ids)
    .bind(&kinds)
    .bind(&payloads)
    .bind(&headers)
    .bind(topics::INVENTORY_EVENTS)
    .fetch_all(&mut *conn)
    .await?;
    let mut answered: HashMap<Uuid, (bool, bool)> = HashMap::with_capacity(rows.len());
    let mut replied: HashSet<Uuid> = HashSet::new();
    for r in &rows {
        let id: Uuid = r.try_get("message_id")?;
        answered.insert(id, (r.try_get("fresh")?, r.try_get("changed")?));
        if r.try_get::<bool, _>("replied")? {
            replied.insert(id);
        }
    }
    // The replies the statement wrote, in the group's order.
    note_outbox(
        items
            .iter()
            .filter(|c| replied.contains(&c.ctx.message_id))
            .map(|c| reply_record(topics::INVENTORY_EVENTS, c.ctx.order_id.as_uuid(), &c.reply)),
    );
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
