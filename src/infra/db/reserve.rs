//! Reservations, set-based: every `ReserveStock` waiting when the previous group finished is
//! decided together, in one job of the inventory writer, with four statements for the whole
//! group (claim the inbox rows, read earlier reservations, lock the products, write) instead of
//! four per command.
//!
//! The products of the whole group are locked at once, in sku order, so two groups (of two
//! processes) queue on the locks and never deadlock. The decisions are taken in Rust, command by
//! command in arrival order against the locked availability, each all lines or none, so a group
//! never oversells: a command sees the stock that the commands before it in the group took.

use std::collections::{BTreeMap, HashMap, HashSet};

use chrono::{DateTime, Utc};
use futures::future::BoxFuture;
use sqlx::{PgConnection, Row};
use uuid::Uuid;

use super::DbError;
use super::group::{GroupWork, Grouped};
use super::inventory::{CommandContext, CommandOutcome};
use super::messaging::{note_outbox, reply_columns};
use super::writer::Writer;
use crate::domain::envelope::{
    PricedLine, RejectReason, RejectedLine, ReserveStock, StockRejected, StockReserved, topics,
};
use crate::domain::money::Currency;
use crate::infra::outbox::OutboxRecord;

/// Reservations as group work: the whole group is decided in [`reserve_all`].
struct ReserveWork {
    ttl: chrono::Duration,
}

impl GroupWork for ReserveWork {
    type Item = (CommandContext, ReserveStock);
    type Output = CommandOutcome;

    fn write<'c>(
        &'c self,
        conn: &'c mut PgConnection,
        items: &'c [Self::Item],
    ) -> BoxFuture<'c, Result<Vec<CommandOutcome>, DbError>> {
        Box::pin(reserve_all(conn, items, Utc::now() + self.ttl))
    }
}

/// Hands reservations to the group task. Cheap to clone.
#[derive(Clone)]
pub struct Reservations {
    group: Grouped<ReserveWork>,
}

impl Reservations {
    /// Starts the group task on `writer`; it ends when the last clone is dropped.
    pub fn start(writer: Writer, ttl: chrono::Duration, group_max: usize) -> Self {
        let group = Grouped::start(
            "inventory reservations",
            writer,
            ReserveWork { ttl },
            group_max,
        );
        Reservations { group }
    }

    /// Reserves every line of the order or none and replies `StockReserved` or
    /// `StockRejected`. A second `ReserveStock` for an order that already has a reservation
    /// repeats its answer; a message id handled before changes nothing.
    pub async fn reserve(
        &self,
        ctx: &CommandContext,
        command: &ReserveStock,
    ) -> Result<CommandOutcome, DbError> {
        self.group.submit((ctx.clone(), command.clone())).await
    }
}

/// What the write statement of a group inserts and updates, as column arrays.
#[derive(Default)]
struct GroupWrite {
    taken: BTreeMap<String, i64>,
    reservation_orders: Vec<Uuid>,
    reservation_expiry: Vec<DateTime<Utc>>,
    line_orders: Vec<Uuid>,
    line_skus: Vec<String>,
    line_quantities: Vec<i32>,
    line_prices: Vec<i64>,
    reply_ids: Vec<Uuid>,
    reply_keys: Vec<String>,
    reply_kinds: Vec<String>,
    reply_payloads: Vec<Vec<u8>>,
    reply_headers: Vec<serde_json::Value>,
}

impl GroupWrite {
    fn reply<P: crate::domain::envelope::Payload>(&mut self, ctx: &CommandContext, payload: &P) {
        let (id, kind, bytes, headers) =
            reply_columns(ctx.order_id, payload, ctx.traceparent.as_deref());
        self.reply_ids.push(id);
        self.reply_keys.push(ctx.order_id.to_string());
        self.reply_kinds.push(kind);
        self.reply_payloads.push(bytes);
        self.reply_headers.push(headers);
    }
}

struct Stock {
    name: String,
    unit_price_minor: i64,
    currency: String,
    available: i64,
}

/// Decides and writes a whole group; one outcome per command, in order.
async fn reserve_all(
    conn: &mut PgConnection,
    commands: &[(CommandContext, ReserveStock)],
    expires_at: DateTime<Utc>,
) -> Result<Vec<CommandOutcome>, DbError> {
    let consumers: Vec<&str> = commands.iter().map(|(c, _)| c.consumer).collect();
    let message_ids: Vec<Uuid> = commands.iter().map(|(c, _)| c.message_id).collect();
    let fresh: HashSet<Uuid> = sqlx::query(
        "INSERT INTO inventory.inbox (consumer, message_id)
         SELECT * FROM UNNEST($1::text[], $2::uuid[])
         ON CONFLICT DO NOTHING RETURNING message_id",
    )
    .bind(&consumers)
    .bind(&message_ids)
    .fetch_all(&mut *conn)
    .await?
    .iter()
    .map(|r| r.try_get("message_id"))
    .collect::<Result<_, _>>()?;
    let orders: Vec<Uuid> = commands
        .iter()
        .filter(|(c, _)| fresh.contains(&c.message_id))
        .map(|(c, _)| c.order_id.as_uuid())
        .collect();
    let mut existing = existing_reservations(conn, &orders).await?;

    let mut skus: Vec<String> = commands
        .iter()
        .filter(|(c, _)| fresh.contains(&c.message_id))
        .flat_map(|(_, cmd)| cmd.lines.iter().map(|l| l.sku.to_string()))
        .collect::<HashSet<_>>()
        .into_iter()
        .collect();
    skus.sort();
    let mut stock: HashMap<String, Stock> = HashMap::with_capacity(skus.len());
    if !skus.is_empty() {
        // Lock every product of the group in sku order: groups queue per sku, never deadlock.
        for r in sqlx::query(
            "SELECT sku, name, unit_price_minor, currency, on_hand - reserved AS available
             FROM inventory.products WHERE sku = ANY($1) ORDER BY sku FOR UPDATE",
        )
        .bind(&skus)
        .fetch_all(&mut *conn)
        .await?
        {
            let available: i32 = r.try_get("available")?;
            stock.insert(
                r.try_get("sku")?,
                Stock {
                    name: r.try_get("name")?,
                    unit_price_minor: r.try_get("unit_price_minor")?,
                    currency: r.try_get("currency")?,
                    available: i64::from(available),
                },
            );
        }
    }

    let mut write = GroupWrite::default();
    let mut outcomes = Vec::with_capacity(commands.len());
    let mut seen = HashSet::new();
    for (ctx, command) in commands {
        // A message id twice in one group: the second is a duplicate like any redelivery.
        if !fresh.contains(&ctx.message_id) || !seen.insert(ctx.message_id) {
            outcomes.push(CommandOutcome::Duplicate);
            continue;
        }
        let order = ctx.order_id.as_uuid();
        if let Some(earlier) = existing.get(&order) {
            write.reply(ctx, earlier);
            outcomes.push(CommandOutcome::Reserved {
                total_minor: earlier.total_minor,
            });
            continue;
        }
        match decide(command, &mut stock) {
            Ok(priced) => {
                let total_minor = priced
                    .iter()
                    .map(|l| l.unit_price_minor.saturating_mul(i64::from(l.quantity)))
                    .fold(0i64, i64::saturating_add);
                for line in &priced {
                    let quantity = i64::from(line.quantity);
                    *write.taken.entry(line.sku.clone()).or_default() += quantity;
                    write.line_orders.push(order);
                    write.line_skus.push(line.sku.clone());
                    write
                        .line_quantities
                        .push(i32::try_from(line.quantity).unwrap_or(i32::MAX));
                    write.line_prices.push(line.unit_price_minor);
                }
                write.reservation_orders.push(order);
                write.reservation_expiry.push(expires_at);
                let reserved = StockReserved {
                    currency: command.currency,
                    lines: priced,
                    total_minor,
                    expires_at,
                };
                write.reply(ctx, &reserved);
                existing.insert(order, reserved);
                outcomes.push(CommandOutcome::Reserved { total_minor });
            }
            Err(rejected) => {
                write.reply(
                    ctx,
                    &StockRejected {
                        lines: rejected.clone(),
                    },
                );
                outcomes.push(CommandOutcome::Rejected(rejected));
            }
        }
    }
    if write.reply_ids.is_empty() {
        return Ok(outcomes);
    }
    let (taken_skus, taken_quantities): (Vec<String>, Vec<i32>) = write
        .taken
        .iter()
        .map(|(sku, q)| (sku.clone(), i32::try_from(*q).unwrap_or(i32::MAX)))
        .unzip();
    let topic = vec![topics::INVENTORY_EVENTS; write.reply_ids.len()];
    // The rows are locked above: take the stock, record the reservations and reply at once.
    sqlx::query(
        "WITH take AS (
             UPDATE inventory.products p SET reserved = p.reserved + r.qty, updated_at = now()
             FROM UNNEST($1::text[], $2::int[]) AS r(sku, qty) WHERE p.sku = r.sku
         ), head AS (
             INSERT INTO inventory.reservations (order_id, status, expires_at)
             SELECT o, 'RESERVED', e FROM UNNEST($3::uuid[], $4::timestamptz[]) AS r(o, e)
         ), lines AS (
             INSERT INTO inventory.reservation_lines (order_id, sku, quantity, unit_price_minor)
             SELECT * FROM UNNEST($5::uuid[], $6::text[], $7::int[], $8::bigint[])
         )
         INSERT INTO inventory.outbox (message_id, topic, message_key, message_type, payload, headers)
         SELECT * FROM UNNEST($9::uuid[], $10::text[], $11::text[], $12::text[], $13::bytea[], $14::jsonb[])",
    )
    .bind(&taken_skus)
    .bind(&taken_quantities)
    .bind(&write.reservation_orders)
    .bind(&write.reservation_expiry)
    .bind(&write.line_orders)
    .bind(&write.line_skus)
    .bind(&write.line_quantities)
    .bind(&write.line_prices)
    .bind(&write.reply_ids)
    .bind(&topic)
    .bind(&write.reply_keys)
    .bind(&write.reply_kinds)
    .bind(&write.reply_payloads)
    .bind(&write.reply_headers)
    .execute(&mut *conn)
    .await?;
    // Every reply was written (or the statement failed).
    note_outbox((0..write.reply_ids.len()).map(|i| {
        OutboxRecord::new(
            write.reply_ids[i],
            topics::INVENTORY_EVENTS,
            write.reply_keys[i].clone(),
            write.reply_kinds[i].clone(),
            write.reply_payloads[i].clone(),
            write.reply_headers[i].clone(),
        )
    }));
    Ok(outcomes)
}

/// Prices every line against the locked stock and takes it, or takes nothing and says why
/// each failing line failed.
fn decide(
    command: &ReserveStock,
    stock: &mut HashMap<String, Stock>,
) -> Result<Vec<PricedLine>, Vec<RejectedLine>> {
    // What this command asks of each sku (an order may name a sku on two lines).
    let mut asked: HashMap<&str, i64> = HashMap::new();
    for line in &command.lines {
        *asked.entry(line.sku.as_str()).or_default() += i64::from(line.quantity);
    }
    let mut priced = Vec::with_capacity(command.lines.len());
    let mut rejected = Vec::new();
    for line in &command.lines {
        let verdict = match stock.get(line.sku.as_str()) {
            None => Err((None, RejectReason::UnknownSku)),
            Some(s) if s.currency != command.currency.code() => {
                Err((Some(s.available), RejectReason::CurrencyMismatch))
            }
            Some(s) if s.available < asked[line.sku.as_str()] => {
                Err((Some(s.available), RejectReason::InsufficientStock))
            }
            Some(s) => Ok((s.name.clone(), s.unit_price_minor)),
        };
        match verdict {
            Ok((name, price)) => priced.push(PricedLine {
                sku: line.sku.to_string(),
                name,
                quantity: line.quantity,
                unit_price_minor: price,
            }),
            Err((available, reason)) => rejected.push(RejectedLine {
                sku: line.sku.to_string(),
                requested: line.quantity,
                available,
                reason,
            }),
        }
    }
    if !rejected.is_empty() {
        return Err(rejected);
    }
    for (sku, quantity) in asked {
        if let Some(s) = stock.get_mut(sku) {
            s.available -= quantity;
        }
    }
    Ok(priced)
}

/// The `StockReserved` answers of the orders among `orders` that already have a reservation.
async fn existing_reservations(
    conn: &mut PgConnection,
    orders: &[Uuid],
) -> Result<HashMap<Uuid, StockReserved>, DbError> {
    if orders.is_empty() {
        return Ok(HashMap::new());
    }
    let rows = sqlx::query(
        "SELECT r.order_id, r.expires_at, l.sku, p.name, l.quantity, l.unit_price_minor, p.currency
         FROM inventory.reservations r
         JOIN inventory.reservation_lines l USING (order_id)
         JOIN inventory.products p USING (sku)
         WHERE r.order_id = ANY($1) ORDER BY r.order_id, l.sku",
    )
    .bind(orders)
    .fetch_all(&mut *conn)
    .await?;
    let mut found: HashMap<Uuid, StockReserved> = HashMap::new();
    for row in &rows {
        let order: Uuid = row.try_get("order_id")?;
        let code: String = row.try_get("currency")?;
        let currency = Currency::parse(&code)
            .ok_or_else(|| DbError::Corrupt(format!("product currency {code:?}")))?;
        let quantity: i32 = row.try_get("quantity")?;
        let line = PricedLine {
            sku: row.try_get("sku")?,
            name: row.try_get("name")?,
            quantity: u32::try_from(quantity).unwrap_or(0),
            unit_price_minor: row.try_get("unit_price_minor")?,
        };
        let total = line
            .unit_price_minor
            .saturating_mul(i64::from(line.quantity));
        match found.get_mut(&order) {
            Some(r) => {
                r.total_minor = r.total_minor.saturating_add(total);
                r.lines.push(line);
            }
            None => {
                found.insert(
                    order,
                    StockReserved {
                        currency,
                        lines: vec![line],
                        total_minor: total,
                        expires_at: row.try_get("expires_at")?,
                    },
                );
            }
        }
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::ids::Sku;
    use crate::domain::order::OrderLine;

    fn stock(available: i64) -> HashMap<String, Stock> {
        HashMap::from([(
            "A".to_owned(),
            Stock {
                name: "Widget".into(),
                unit_price_minor: 250,
                currency: "EUR".into(),
                available,
            },
        )])
    }

    fn command(lines: &[(&str, u32)]) -> ReserveStock {
        ReserveStock {
            currency: Currency::parse("EUR").unwrap_or_else(|| unreachable!()),
            lines: lines
                .iter()
                .map(|(sku, quantity)| OrderLine {
                    sku: Sku::parse(sku).unwrap_or_else(|| unreachable!()),
                    quantity: *quantity,
                })
                .collect(),
        }
    }

    #[test]
    fn commands_of_a_group_see_what_earlier_ones_took() {
        let mut s = stock(5);
        assert!(decide(&command(&[("A", 3)]), &mut s).is_ok());
        let second = decide(&command(&[("A", 3)]), &mut s);
        assert!(
            matches!(&second, Err(lines) if lines[0].available == Some(2)),
            "{second:?}"
        );
        assert!(decide(&command(&[("A", 2)]), &mut s).is_ok());
        assert_eq!(s["A"].available, 0);
    }

    #[test]
    fn a_sku_on_two_lines_is_checked_against_their_sum_and_takes_nothing_when_short() {
        let mut s = stock(5);
        let r = decide(&command(&[("A", 3), ("A", 3)]), &mut s);
        assert!(matches!(&r, Err(lines) if lines.len() == 2), "{r:?}");
        assert_eq!(s["A"].available, 5);
        assert!(decide(&command(&[("A", 2), ("A", 3)]), &mut s).is_ok());
        assert_eq!(s["A"].available, 0);
    }

    #[test]
    fn unknown_skus_and_other_currencies_are_rejected_line_by_line() {
        let mut s = stock(5);
        let r = decide(&command(&[("A", 1), ("B", 1)]), &mut s);
        assert!(
            matches!(&r, Err(lines) if lines.len() == 1 && lines[0].reason == RejectReason::UnknownSku),
            "{r:?}"
        );
        assert_eq!(s["A"].available, 5, "all lines or none");
    }
}
