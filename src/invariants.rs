//! The invariant checker: reconciles what the services stored once the system is quiet. It reads
//! across the service schemas (an operator's view, not a service's), so it lives outside them;
//! `orderflow check` prints its report and the chaos tests assert it is clean.
//!
//! What must hold:
//! - every order's saga recorded each message once, and `OrderPlaced` exactly once;
//! - a CONFIRMED order holds one approved, unrefunded charge and a committed reservation;
//! - a CANCELLED order holds no money (its charge, if any, is refunded) and no reserved stock;
//! - per sku, `reserved` equals what open reservations hold, and `on_hand + sold` equals the
//!   initial stock when it is known.

use std::collections::HashMap;

use serde::Serialize;
use sqlx::{PgPool, Row};

use crate::infra::db::DbError;

#[derive(Debug, Clone, Default, Serialize)]
pub struct Report {
    pub orders: i64,
    pub confirmed: i64,
    pub cancelled: i64,
    pub pending: i64,
    pub violations: Vec<String>,
}

impl Report {
    pub fn is_clean(&self) -> bool {
        self.violations.is_empty()
    }
}

async fn violations(
    pool: &PgPool,
    sql: &'static str,
    what: &str,
    out: &mut Vec<String>,
) -> Result<(), DbError> {
    for row in sqlx::query(sql).fetch_all(pool).await? {
        let detail: String = row.try_get(0)?;
        out.push(format!("{what}: {detail}"));
    }
    Ok(())
}

/// Checks every invariant; `initial_stock` (sku → units at the start) enables the
/// conservation check.
pub async fn check(
    pool: &PgPool,
    initial_stock: Option<&HashMap<String, i64>>,
) -> Result<Report, DbError> {
    let mut report = Report::default();
    let counts = sqlx::query(
        "SELECT count(*) AS orders,
                count(*) FILTER (WHERE status = 'CONFIRMED') AS confirmed,
                count(*) FILTER (WHERE status = 'CANCELLED') AS cancelled,
                count(*) FILTER (WHERE status = 'PENDING') AS pending
         FROM orders.orders",
    )
    .fetch_one(pool)
    .await?;
    report.orders = counts.try_get("orders")?;
    report.confirmed = counts.try_get("confirmed")?;
    report.cancelled = counts.try_get("cancelled")?;
    report.pending = counts.try_get("pending")?;
    let v = &mut report.violations;

    violations(pool,
        "SELECT order_id::text || ' handled message ' || message_id::text || ' ' || count(*) || ' times'
         FROM orders.saga_journal GROUP BY order_id, message_id HAVING count(*) > 1",
        "duplicate saga effect", v).await?;
    violations(
        pool,
        "SELECT o.id::text || ' recorded OrderPlaced ' || count(j.id) || ' times'
         FROM orders.orders o JOIN orders.saga_state s ON s.order_id = o.id
         LEFT JOIN orders.saga_journal j ON j.order_id = o.id AND j.message_type = 'OrderPlaced'
         GROUP BY o.id HAVING count(j.id) <> 1",
        "order not recorded exactly once",
        v,
    )
    .await?;
    violations(pool,
        "SELECT o.id::text FROM orders.orders o
         WHERE o.status = 'CONFIRMED' AND NOT EXISTS (
             SELECT 1 FROM card_network.charges c
             WHERE c.idempotency_key = 'order-' || o.id::text || '-authorize' AND c.approved AND NOT c.refunded)",
        "confirmed order without a standing charge", v).await?;
    violations(
        pool,
        "SELECT o.id::text FROM orders.orders o
         JOIN card_network.charges c ON c.idempotency_key = 'order-' || o.id::text || '-authorize'
         WHERE o.status = 'CANCELLED' AND c.approved AND NOT c.refunded",
        "cancelled order still charged",
        v,
    )
    .await?;
    violations(pool,
        "SELECT o.id::text FROM orders.orders o
         WHERE o.status = 'CONFIRMED' AND NOT EXISTS (
             SELECT 1 FROM inventory.reservations r WHERE r.order_id = o.id AND r.status = 'COMMITTED')",
        "confirmed order without sold stock", v).await?;
    violations(
        pool,
        "SELECT o.id::text FROM orders.orders o JOIN inventory.reservations r ON r.order_id = o.id
         WHERE o.status = 'CANCELLED' AND r.status <> 'RELEASED'",
        "cancelled order still holding stock",
        v,
    )
    .await?;
    violations(pool,
        "SELECT p.sku || ' reserved ' || p.reserved || ' but open reservations hold ' || coalesce(h.held, 0)
         FROM inventory.products p
         LEFT JOIN (SELECT l.sku, sum(l.quantity) AS held FROM inventory.reservation_lines l
                    JOIN inventory.reservations r USING (order_id) WHERE r.status = 'RESERVED'
                    GROUP BY l.sku) h USING (sku)
         WHERE p.reserved <> coalesce(h.held, 0)",
        "reserved stock does not add up", v).await?;

    if let Some(initial) = initial_stock {
        let rows = sqlx::query(
            "SELECT p.sku, p.on_hand::bigint AS on_hand, coalesce(s.sold, 0)::bigint AS sold
             FROM inventory.products p
             LEFT JOIN (SELECT l.sku, sum(l.quantity) AS sold FROM inventory.reservation_lines l
                        JOIN inventory.reservations r USING (order_id) WHERE r.status = 'COMMITTED'
                        GROUP BY l.sku) s USING (sku)",
        )
        .fetch_all(pool)
        .await?;
        for row in rows {
            let sku: String = row.try_get("sku")?;
            let on_hand: i64 = row.try_get("on_hand")?;
            let sold: i64 = row.try_get("sold")?;
            if let Some(start) = initial.get(&sku)
                && on_hand + sold != *start
            {
                v.push(format!(
                    "stock not conserved: {sku} on hand {on_hand} + sold {sold} != initial {start}"
                ));
            }
        }
    }
    Ok(report)
}
