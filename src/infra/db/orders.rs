//! The order service's SQL: orders with their outbox rows, reads for the API, and the saga's
//! state with its journal. The journal is also the saga's inbox: a message whose id is
//! journalled for its order was applied before (a unique index on `(order_id, message_id)`).

use chrono::{DateTime, Utc};
use serde::Serialize;
use std::collections::HashMap;

use futures::future::BoxFuture;

use sqlx::{PgConnection, PgPool, Row};
use uuid::Uuid;

use super::DbError;
use super::batched::SetQuery;
use super::group::{GroupWork, Grouped};
pub use super::messaging::OutboxMessage;
use super::messaging::{OutboxColumns, Schema, note_outbox, write_outbox};
use super::writer::Writer;
use crate::domain::envelope::{CancelRequested, Envelope, SagaTimeout, topics};
use crate::domain::ids::OrderId;
use crate::domain::order::{NewOrder, OrderStatus};
use crate::domain::saga::{SagaState, SagaStatus};

/// An order as stored, with its lines.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct OrderRecord {
    pub order_id: Uuid,
    pub customer_id: String,
    pub currency: String,
    pub status: OrderStatus,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cancel_reason: Option<String>,
    pub lines: Vec<LineRecord>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
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

/// The saga's first step, stored with its order: the saga's state and deadline and its journal
/// entry for the `OrderPlaced` message it answers (its commands travel in the intake's outbox
/// messages).
pub struct SagaStart<'a> {
    pub state: &'a SagaState,
    pub deadline: Option<DateTime<Utc>>,
    pub message_id: Uuid,
    pub message_type: &'a str,
}

/// Order intakes as group work: the orders whose requests wait while the previous group is
/// written are stored together, with one statement for all of them (and one more per order
/// that carries an idempotency key, for its stored response).
pub struct IntakeWork;

impl GroupWork for IntakeWork {
    type Item = IntakeWrite;
    type Output = ();

    fn write<'c>(
        &'c self,
        conn: &'c mut PgConnection,
        items: &'c [IntakeWrite],
    ) -> BoxFuture<'c, Result<Vec<()>, DbError>> {
        Box::pin(async move {
            insert_all(conn, items).await?;
            Ok(vec![(); items.len()])
        })
    }

    fn single_statement(&self, items: &[IntakeWrite]) -> bool {
        items.iter().all(|i| i.finish.is_none())
    }
}

/// Hands new orders to the intake group task of the orders writer. Cheap to clone.
#[derive(Clone)]
pub struct Intakes {
    group: Grouped<IntakeWork>,
}

impl Intakes {
    /// Starts the group task on `writer`, with up to `in_flight` sets written at once (the
    /// writer's tasks: intakes are independent of each other); it ends when the last clone is
    /// dropped.
    pub fn start(writer: Writer, group_max: usize, in_flight: usize) -> Self {
        Intakes {
            group: Grouped::start_parallel(
                "order intakes",
                writer,
                IntakeWork,
                group_max,
                in_flight,
            ),
        }
    }

    /// Stores a new order, its lines, its saga's first step and its outbox rows (`OrderPlaced`
    /// and the saga's first commands) atomically, with the other orders of its group.
    #[allow(clippy::too_many_arguments)]
    pub async fn insert_order(
        &self,
        id: OrderId,
        order: &NewOrder,
        now: DateTime<Utc>,
        trace_id: &str,
        saga: &SagaStart<'_>,
        messages: &[OutboxMessage<'_>],
        idempotency_key: Option<&super::idempotency::KeyRef>,
    ) -> Result<OrderRecord, DbError> {
        let quantities: Vec<i32> = order
            .lines
            .iter()
            .map(|l| i32::try_from(l.quantity).unwrap_or(i32::MAX))
            .collect();
        let record = OrderRecord {
            order_id: id.as_uuid(),
            customer_id: order.customer_id.to_string(),
            currency: order.currency.code().to_owned(),
            status: OrderStatus::Pending,
            cancel_reason: None,
            lines: order
                .lines
                .iter()
                .zip(&quantities)
                .map(|(l, quantity)| LineRecord {
                    sku: l.sku.to_string(),
                    quantity: *quantity,
                })
                .collect(),
            created_at: now,
            updated_at: now,
        };
        // The response an idempotency key will answer again, committed with the order.
        let finish = idempotency_key.map(|key| {
            let response = super::idempotency::Stored {
                status: 201,
                location: Some(format!("/v1/orders/{id}")),
                body: serde_json::to_vec(&record).unwrap_or_default(),
            };
            (key.clone(), response)
        });
        let write = IntakeWrite {
            id: id.as_uuid(),
            customer_id: record.customer_id.clone(),
            currency: record.currency.clone(),
            trace_id: trace_id.to_owned(),
            card_token: order.card_token.clone(),
            now,
            skus: record.lines.iter().map(|l| l.sku.clone()).collect(),
            quantities,
            saga_status: saga.state.status.as_str(),
            saga_data: serde_json::to_value(&saga.state.data)
                .map_err(|e| DbError::Corrupt(format!("saga data does not serialize: {e}")))?,
            saga_deadline: saga.deadline,
            placed_id: saga.message_id,
            placed_type: saga.message_type.to_owned(),
            outbox: OutboxColumns::new(messages),
            finish,
        };
        self.group.submit(write).await?;
        Ok(record)
    }
}

/// One order intake's values.
pub struct IntakeWrite {
    id: Uuid,
    customer_id: String,
    currency: String,
    trace_id: String,
    card_token: String,
    now: DateTime<Utc>,
    skus: Vec<String>,
    quantities: Vec<i32>,
    saga_status: &'static str,
    saga_data: serde_json::Value,
    saga_deadline: Option<DateTime<Utc>>,
    placed_id: Uuid,
    placed_type: String,
    outbox: OutboxColumns,
    /// The idempotency key to store the response under, with that response.
    finish: Option<(super::idempotency::KeyRef, super::idempotency::Stored)>,
}

/// A group of intakes as column arrays: one entry per order, per line, per outbox row.
#[derive(Default)]
struct IntakeColumns<'a> {
    ids: Vec<Uuid>,
    customers: Vec<&'a str>,
    currencies: Vec<&'a str>,
    trace_ids: Vec<&'a str>,
    card_tokens: Vec<&'a str>,
    times: Vec<DateTime<Utc>>,
    saga_statuses: Vec<&'a str>,
    saga_data: Vec<&'a serde_json::Value>,
    saga_deadlines: Vec<Option<DateTime<Utc>>>,
    placed_ids: Vec<Uuid>,
    placed_types: Vec<&'a str>,
    line_orders: Vec<Uuid>,
    line_numbers: Vec<i32>,
    line_skus: Vec<&'a str>,
    line_quantities: Vec<i32>,
    outbox_ids: Vec<Uuid>,
    outbox_keys: Vec<String>,
    outbox_topics: Vec<&'a str>,
    outbox_kinds: Vec<&'a str>,
    outbox_payloads: Vec<&'a [u8]>,
    outbox_headers: Vec<&'a serde_json::Value>,
}

impl<'a> IntakeColumns<'a> {
    fn of(items: &'a [IntakeWrite]) -> Self {
        let mut c = IntakeColumns::default();
        for w in items {
            c.ids.push(w.id);
            c.customers.push(&w.customer_id);
            c.currencies.push(&w.currency);
            c.trace_ids.push(&w.trace_id);
            c.card_tokens.push(&w.card_token);
            c.times.push(w.now);
            c.saga_statuses.push(w.saga_status);
            c.saga_data.push(&w.saga_data);
            c.saga_deadlines.push(w.saga_deadline);
            c.placed_ids.push(w.placed_id);
            c.placed_types.push(&w.placed_type);
            for (n, (sku, quantity)) in w.skus.iter().zip(&w.quantities).enumerate() {
                c.line_orders.push(w.id);
                c.line_numbers.push(i32::try_from(n).unwrap_or(i32::MAX));
                c.line_skus.push(sku);
                c.line_quantities.push(*quantity);
            }
            let o = &w.outbox;
            for i in 0..o.ids.len() {
                c.outbox_ids.push(o.ids[i]);
                c.outbox_keys.push(w.id.to_string());
                c.outbox_topics.push(&o.topics[i]);
                c.outbox_kinds.push(&o.kinds[i]);
                c.outbox_payloads.push(&o.payloads[i]);
                c.outbox_headers.push(&o.headers[i]);
            }
        }
        c
    }
}

/// One statement for the whole group: the orders, their lines, the sagas' states and journal
/// entries, and the outbox rows; then each idempotency key's stored response.
async fn insert_all(conn: &mut PgConnection, items: &[IntakeWrite]) -> Result<(), DbError> {
    let c = IntakeColumns::of(items);
    sqlx::query(
        "WITH o AS (
             INSERT INTO orders.orders
               (id, customer_id, currency, status, trace_id, card_token, created_at, updated_at)
             SELECT u.id, u.customer, u.currency, 'PENDING', u.trace, u.card, u.at, u.at
             FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::text[], $5::text[],
                         $6::timestamptz[]) AS u(id, customer, currency, trace, card, at)
             RETURNING id
         ), lines AS (
             INSERT INTO orders.order_lines (order_id, line_no, sku, quantity)
             SELECT l.id, l.n, l.sku, l.qty
             FROM o JOIN UNNEST($7::uuid[], $8::int[], $9::text[], $10::int[])
                  AS l(id, n, sku, qty) ON l.id = o.id
         ), saga AS (
             INSERT INTO orders.saga_state (order_id, status, version, data, deadline, updated_at)
             SELECT s.id, s.status, 1, s.data, s.deadline, s.at
             FROM o JOIN UNNEST($1::uuid[], $11::text[], $12::jsonb[], $13::timestamptz[],
                                $6::timestamptz[]) AS s(id, status, data, deadline, at)
                  ON s.id = o.id
         ), journal AS (
             INSERT INTO orders.saga_journal
               (order_id, message_id, message_type, from_status, to_status, trace_id)
             SELECT j.id, j.message_id, j.kind, 'NEW', j.status, j.trace
             FROM o JOIN UNNEST($1::uuid[], $14::uuid[], $15::text[], $11::text[], $4::text[])
                  AS j(id, message_id, kind, status, trace) ON j.id = o.id
         )
         INSERT INTO orders.outbox (message_id, topic, message_key, message_type, payload, headers)
         SELECT m.id, m.topic, m.key, m.kind, m.payload, m.headers
         FROM o JOIN UNNEST($16::uuid[], $17::text[], $18::text[], $19::text[], $20::bytea[],
                            $21::jsonb[]) WITH ORDINALITY
                     AS m(id, key, topic, kind, payload, headers, n)
              ON m.key = o.id::text
         ORDER BY m.n",
    )
    .bind(&c.ids)
    .bind(&c.customers)
    .bind(&c.currencies)
    .bind(&c.trace_ids)
    .bind(&c.card_tokens)
    .bind(&c.times)
    .bind(&c.line_orders)
    .bind(&c.line_numbers)
    .bind(&c.line_skus)
    .bind(&c.line_quantities)
    .bind(&c.saga_statuses)
    .bind(&c.saga_data)
    .bind(&c.saga_deadlines)
    .bind(&c.placed_ids)
    .bind(&c.placed_types)
    .bind(&c.outbox_ids)
    .bind(&c.outbox_keys)
    .bind(&c.outbox_topics)
    .bind(&c.outbox_kinds)
    .bind(&c.outbox_payloads)
    .bind(&c.outbox_headers)
    .execute(&mut *conn)
    .await?;
    // The statement wrote every outbox row (or failed); they are published in this order.
    for w in items {
        note_outbox(w.outbox.records(&w.id.to_string()));
    }
    for w in items {
        if let Some((key, response)) = &w.finish {
            super::idempotency::finish_on(conn, key, response).await?;
        }
    }
    Ok(())
}

/// The customer who placed order `id`, if it exists.
pub async fn owner_of(pool: &PgPool, id: Uuid) -> Result<Option<String>, DbError> {
    let row = sqlx::query("SELECT customer_id FROM orders.orders WHERE id = $1")
        .bind(id)
        .fetch_optional(pool)
        .await?;
    Ok(row.map(|r| r.try_get("customer_id")).transpose()?)
}

pub async fn get_order(pool: &PgPool, id: Uuid) -> Result<Option<OrderRecord>, DbError> {
    let mut found = load_orders(
        pool,
        sqlx::query(
            "SELECT id, customer_id, currency, status, cancel_reason, created_at, updated_at
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
            "SELECT id, customer_id, currency, status, cancel_reason, created_at, updated_at
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
            cancel_reason: row.try_get("cancel_reason")?,
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
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SagaRow {
    pub state: SagaState,
    pub version: i32,
}

/// Saga state loads, one statement per set: the states of the sagas that start together
/// (a batch of replies for orders whose sagas are not in memory) are read at once.
pub struct SagaLoads;

impl SetQuery for SagaLoads {
    type Item = Uuid;
    type Output = Option<SagaRow>;

    fn run<'a>(
        &'a self,
        pool: &'a PgPool,
        items: &'a [Uuid],
    ) -> BoxFuture<'a, Result<Vec<Option<SagaRow>>, DbError>> {
        Box::pin(load_sagas(pool, items))
    }
}

/// The persisted state of each order's saga (`None`: no saga yet), in the order asked.
pub async fn load_sagas(
    pool: &PgPool,
    order_ids: &[Uuid],
) -> Result<Vec<Option<SagaRow>>, DbError> {
    let rows = sqlx::query(
        "SELECT order_id, status, version, data FROM orders.saga_state WHERE order_id = ANY($1)",
    )
    .bind(order_ids)
    .fetch_all(pool)
    .await?;
    let mut found = HashMap::with_capacity(rows.len());
    for r in rows {
        let order_id: Uuid = r.try_get("order_id")?;
        let status: String = r.try_get("status")?;
        let data: serde_json::Value = r.try_get("data")?;
        let row = SagaRow {
            state: SagaState {
                status: SagaStatus::parse(&status)
                    .ok_or_else(|| DbError::Corrupt(format!("unknown saga status {status:?}")))?,
                data: serde_json::from_value(data)
                    .map_err(|e| DbError::Corrupt(format!("saga data of {order_id}: {e}")))?,
            },
            version: r.try_get("version")?,
        };
        found.insert(order_id, row);
    }
    Ok(order_ids.iter().map(|id| found.get(id).cloned()).collect())
}

/// One saga transition as it is persisted.
pub struct SagaStep<'a> {
    pub message_id: Uuid,
    pub message_type: &'a str,
    pub order_id: Uuid,
    /// The version the transition was computed from; `None` for a saga not yet stored.
    pub expected_version: Option<i32>,
    pub from: SagaStatus,
    pub to: &'a SagaState,
    pub deadline: Option<DateTime<Utc>>,
    pub trace_id: Option<&'a str>,
    /// Commands and events the transition causes, written to the outbox.
    pub messages: Vec<OutboxMessage<'a>>,
    /// The order's new status when the saga ends.
    pub order_update: Option<(OrderStatus, Option<&'a str>)>,
}

/// What happened to a transition handed to [`SagaSteps::record`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StepOutcome {
    Applied {
        version: i32,
    },
    /// The journal already has this message id for the order: nothing was written.
    Duplicate,
    /// The stored saga moved on since it was loaded: reload and try again.
    Conflict,
}

/// Saga steps as group work: the steps queued while the previous group was written are written
/// together, one statement for all the steps of stored sagas (`record_steps`).
pub struct StepWork;

impl GroupWork for StepWork {
    type Item = SagaWrite;
    type Output = StepOutcome;

    fn write<'c>(
        &'c self,
        conn: &'c mut PgConnection,
        items: &'c [SagaWrite],
    ) -> BoxFuture<'c, Result<Vec<StepOutcome>, DbError>> {
        Box::pin(record_steps(conn, items))
    }

    /// Steps of stored sagas are one statement for the whole group.
    fn single_statement(&self, items: &[SagaWrite]) -> bool {
        items.iter().all(|w| w.expected_version.is_some())
    }

    /// One step per saga and group (a saga waits for its step anyway).
    fn fits(&self, group: &[SagaWrite], item: &SagaWrite) -> bool {
        group.iter().all(|w| w.order_id != item.order_id)
    }
}

/// Hands saga steps to the group task. Cheap to clone.
#[derive(Clone)]
pub struct SagaSteps {
    group: Grouped<StepWork>,
}

impl SagaSteps {
    /// Starts the group task on the orders writer; it ends when the last clone is dropped.
    pub fn start(writer: Writer, group_max: usize) -> Self {
        SagaSteps {
            group: Grouped::start("saga steps", writer, StepWork, group_max),
        }
    }

    /// Writes the saga's new state, its journal entry (which deduplicates), its outbox messages and
    /// the order's status atomically, with the next group of steps. Every write depends on the
    /// state update, which happens only if the message is new and the stored version is the one
    /// the transition was computed from.
    pub async fn record(&self, step: &SagaStep<'_>) -> Result<StepOutcome, DbError> {
        self.group.submit(SagaWrite::prepare(step)?).await
    }
}

/// Writes a group of steps: those of sagas not stored yet one by one ([`SagaWrite::execute`]),
/// the others with one statement for the whole group.
async fn record_steps(
    conn: &mut PgConnection,
    items: &[SagaWrite],
) -> Result<Vec<StepOutcome>, DbError> {
    let mut outcomes: Vec<Option<StepOutcome>> = vec![None; items.len()];
    for (i, w) in items.iter().enumerate() {
        if w.expected_version.is_none() {
            outcomes[i] = Some(w.execute(conn).await?);
        }
    }
    let stored: Vec<&SagaWrite> = items
        .iter()
        .filter(|w| w.expected_version.is_some())
        .collect();
    if !stored.is_empty() {
        let answers = update_steps(conn, &stored).await?;
        for (i, w) in items.iter().enumerate() {
            if w.expected_version.is_some() {
                outcomes[i] = answers.get(&w.order_id).copied();
            }
        }
    }
    outcomes
        .into_iter()
        .zip(items)
        .map(|(o, w)| {
            o.ok_or_else(|| DbError::Corrupt(format!("no outcome for the step of {}", w.order_id)))
        })
        .collect()
}

/// One statement for the steps of stored sagas (at most one per saga): duplicate check against
/// the journal, versioned state update, and — for the steps that applied — journal entry,
/// outbox rows and the order's final status.
async fn update_steps(
    conn: &mut PgConnection,
    steps: &[&SagaWrite],
) -> Result<HashMap<Uuid, StepOutcome>, DbError> {
    let col = |f: fn(&SagaWrite) -> Option<String>| steps.iter().map(|w| f(w)).collect::<Vec<_>>();
    let orders: Vec<Uuid> = steps.iter().map(|w| w.order_id).collect();
    let statuses: Vec<&str> = steps.iter().map(|w| w.status).collect();
    let data: Vec<&serde_json::Value> = steps.iter().map(|w| &w.data).collect();
    let deadlines: Vec<Option<DateTime<Utc>>> = steps.iter().map(|w| w.deadline).collect();
    let expected: Vec<Option<i32>> = steps.iter().map(|w| w.expected_version).collect();
    let message_ids: Vec<Uuid> = steps.iter().map(|w| w.message_id).collect();
    let message_types: Vec<&str> = steps.iter().map(|w| w.message_type.as_str()).collect();
    let froms: Vec<&str> = steps.iter().map(|w| w.from).collect();
    let trace_ids = col(|w| w.trace_id.clone());
    let order_statuses = col(|w| w.order_status.map(str::to_owned));
    let reasons = col(|w| w.cancel_reason.clone());
    // The outbox rows of every step, each with its saga's order id.
    let mut owners: Vec<Uuid> = Vec::new();
    let mut outbox = OutboxColumns::default();
    for w in steps {
        let o = &w.outbox;
        owners.extend(std::iter::repeat_n(w.order_id, o.ids.len()));
        outbox.ids.extend_from_slice(&o.ids);
        outbox.topics.extend_from_slice(&o.topics);
        outbox.kinds.extend_from_slice(&o.kinds);
        outbox.payloads.extend_from_slice(&o.payloads);
        outbox.headers.extend_from_slice(&o.headers);
    }
    // The plan is generic and cached for the connection's life, so it must stay right while
    // the tables grow from empty (until their first ANALYZE the planner sees a few pages and
    // would hash whole tables): the journal is probed per step (`OFFSET 0` keeps the
    // `NOT EXISTS` a per-row subplan on its unique index) and the states are found by their
    // keys (`= ANY`), never by a scan.
    let rows = sqlx::query(
        "WITH input AS (
             SELECT * FROM UNNEST($1::uuid[], $2::text[], $3::jsonb[], $4::timestamptz[],
                                  $5::int[], $6::uuid[], $7::text[], $8::text[], $9::text[],
                                  $10::text[], $11::text[])
               AS i(order_id, status, data, deadline, expected, message_id, message_type,
                    from_status, trace_id, order_status, cancel_reason)
         ), fresh AS (
             SELECT i.* FROM input i
             WHERE NOT EXISTS (SELECT 1 FROM orders.saga_journal j
                               WHERE j.order_id = i.order_id AND j.message_id = i.message_id
                               OFFSET 0)
         ), upd AS (
             UPDATE orders.saga_state s
             SET status = f.status, version = s.version + 1, data = f.data,
                 deadline = f.deadline, timeout_sent = false, updated_at = now()
             FROM fresh f
             WHERE s.order_id = ANY($1) AND s.order_id = f.order_id AND s.version = f.expected
             RETURNING s.order_id, s.version
         ), done AS (
             SELECT f.*, u.version AS new_version FROM fresh f JOIN upd u USING (order_id)
         ), journal AS (
             INSERT INTO orders.saga_journal
               (order_id, message_id, message_type, from_status, to_status, trace_id)
             SELECT order_id, message_id, message_type, from_status, status, trace_id FROM done
         ), outbox AS (
             INSERT INTO orders.outbox
               (message_id, topic, message_key, message_type, payload, headers)
             SELECT m.id, m.topic, m.owner::text, m.kind, m.payload, m.headers
             FROM UNNEST($12::uuid[], $13::uuid[], $14::text[], $15::text[], $16::bytea[],
                         $17::jsonb[]) WITH ORDINALITY AS m(owner, id, topic, kind, payload,
                                                            headers, n)
             WHERE m.owner IN (SELECT order_id FROM done)
             ORDER BY m.n
         ), finished AS (
             UPDATE orders.orders o
             SET status = d.order_status, cancel_reason = d.cancel_reason, updated_at = now()
             FROM done d WHERE o.id = d.order_id AND d.order_status IS NOT NULL
         )
         SELECT i.order_id, d.new_version,
                EXISTS (SELECT 1 FROM fresh f WHERE f.order_id = i.order_id) AS fresh
         FROM input i LEFT JOIN done d USING (order_id)",
    )
    .bind(&orders)
    .bind(&statuses)
    .bind(&data)
    .bind(&deadlines)
    .bind(&expected)
    .bind(&message_ids)
    .bind(&message_types)
    .bind(&froms)
    .bind(&trace_ids)
    .bind(&order_statuses)
    .bind(&reasons)
    .bind(&owners)
    .bind(&outbox.ids)
    .bind(&outbox.topics)
    .bind(&outbox.kinds)
    .bind(&outbox.payloads)
    .bind(&outbox.headers)
    .fetch_all(&mut *conn)
    .await?;
    let mut answers = HashMap::with_capacity(rows.len());
    for r in &rows {
        let order: Uuid = r.try_get("order_id")?;
        let version: Option<i32> = r.try_get("new_version")?;
        let fresh: bool = r.try_get("fresh")?;
        answers.insert(
            order,
            match (version, fresh) {
                (Some(version), _) => StepOutcome::Applied { version },
                (None, false) => StepOutcome::Duplicate,
                (None, true) => StepOutcome::Conflict,
            },
        );
    }
    // The outbox rows were written exactly for the steps that applied, in the group's order.
    for w in steps {
        if matches!(answers.get(&w.order_id), Some(StepOutcome::Applied { .. })) {
            note_outbox(w.outbox.records(&w.order_id.to_string()));
        }
    }
    Ok(answers)
}

/// A saga step's bind parameters, encoded once (a batch may run its statement twice).
pub struct SagaWrite {
    order_id: Uuid,
    status: &'static str,
    data: serde_json::Value,
    deadline: Option<DateTime<Utc>>,
    expected_version: Option<i32>,
    message_id: Uuid,
    message_type: String,
    from: &'static str,
    trace_id: Option<String>,
    outbox: OutboxColumns,
    order_status: Option<&'static str>,
    cancel_reason: Option<String>,
}

impl SagaWrite {
    fn prepare(step: &SagaStep<'_>) -> Result<Self, DbError> {
        Ok(SagaWrite {
            order_id: step.order_id,
            status: step.to.status.as_str(),
            data: serde_json::to_value(&step.to.data)
                .map_err(|e| DbError::Corrupt(format!("saga data does not serialize: {e}")))?,
            deadline: step.deadline,
            expected_version: step.expected_version,
            message_id: step.message_id,
            message_type: step.message_type.to_owned(),
            from: step.from.as_str(),
            trace_id: step.trace_id.map(str::to_owned),
            outbox: OutboxColumns::new(&step.messages),
            order_status: step.order_update.map(|(s, _)| s.as_str()),
            cancel_reason: step.order_update.and_then(|(_, r)| r).map(str::to_owned),
        })
    }

    /// One step alone, as one statement (also the first step of a saga not stored yet).
    async fn execute(&self, conn: &mut PgConnection) -> Result<StepOutcome, DbError> {
        let o = &self.outbox;
        let row = sqlx::query(
            "WITH fresh AS (
                 SELECT NOT EXISTS (SELECT 1 FROM orders.saga_journal
                                    WHERE order_id = $1 AND message_id = $6) AS ok
             ), ins AS (
                 INSERT INTO orders.saga_state (order_id, status, version, data, deadline, updated_at)
                 SELECT $1, $2, 1, $3, $4, now() FROM fresh WHERE fresh.ok AND $5::int IS NULL
                 ON CONFLICT (order_id) DO NOTHING
                 RETURNING version
             ), upd AS (
                 UPDATE orders.saga_state
                 SET status = $2, version = version + 1, data = $3, deadline = $4,
                     timeout_sent = false, updated_at = now()
                 WHERE order_id = $1 AND version = $5 AND (SELECT ok FROM fresh)
                 RETURNING version
             ), done AS (
                 SELECT version FROM ins UNION ALL SELECT version FROM upd
             ), journal AS (
                 INSERT INTO orders.saga_journal
                   (order_id, message_id, message_type, from_status, to_status, trace_id)
                 SELECT $1, $6, $7, $8, $2, $9 FROM done
             ), outbox AS (
                 INSERT INTO orders.outbox (message_id, topic, message_key, message_type, payload, headers)
                 SELECT m.id, m.topic, $1::text, m.kind, m.payload, m.headers
                 FROM done, UNNEST($10::uuid[], $11::text[], $12::text[], $13::bytea[], $14::jsonb[])
                      AS m(id, topic, kind, payload, headers)
             ), finished AS (
                 UPDATE orders.orders SET status = $15, cancel_reason = $16, updated_at = now()
                 WHERE id = $1 AND $15::text IS NOT NULL AND EXISTS (SELECT 1 FROM done)
             )
             SELECT (SELECT version FROM done) AS version, (SELECT ok FROM fresh) AS fresh",
        )
        .bind(self.order_id)
        .bind(self.status)
        .bind(&self.data)
        .bind(self.deadline)
        .bind(self.expected_version)
        .bind(self.message_id)
        .bind(&self.message_type)
        .bind(self.from)
        .bind(self.trace_id.as_deref())
        .bind(&o.ids)
        .bind(&o.topics)
        .bind(&o.kinds)
        .bind(&o.payloads)
        .bind(&o.headers)
        .bind(self.order_status)
        .bind(self.cancel_reason.as_deref())
        .fetch_one(conn)
        .await?;
        let version: Option<i32> = row.try_get("version")?;
        let fresh: bool = row.try_get("fresh")?;
        if version.is_some() {
            // The outbox rows are written exactly when the state moved (`FROM done`).
            note_outbox(o.records(&self.order_id.to_string()));
        }
        Ok(match (version, fresh) {
            (Some(version), _) => StepOutcome::Applied { version },
            (None, false) => StepOutcome::Duplicate,
            (None, true) => StepOutcome::Conflict,
        })
    }
}

/// Announces every saga deadline that passed (at most `limit`) as a `SagaTimeout` on
/// `order.commands`, once per deadline. Returns how many were announced.
pub async fn announce_due_timeouts(writer: &Writer, limit: i64) -> Result<usize, DbError> {
    writer
        .run(move |conn| Box::pin(announce_due_timeouts_in(conn, limit)))
        .await
}

async fn announce_due_timeouts_in(conn: &mut PgConnection, limit: i64) -> Result<usize, DbError> {
    let due = sqlx::query(
        "UPDATE orders.saga_state SET timeout_sent = true
         WHERE order_id IN (
             SELECT order_id FROM orders.saga_state
             WHERE deadline < now() AND NOT timeout_sent
             ORDER BY deadline LIMIT $1 FOR UPDATE SKIP LOCKED)
         RETURNING order_id, status, version",
    )
    .bind(limit)
    .fetch_all(&mut *conn)
    .await?;
    for row in &due {
        let order_id: Uuid = row.try_get("order_id")?;
        let timeout = SagaTimeout {
            status: row.try_get("status")?,
            version: row.try_get("version")?,
        };
        let envelope = Envelope::new(OrderId::from_uuid(order_id), &timeout, Utc::now());
        write_outbox(
            conn,
            Schema::Orders,
            &OutboxMessage {
                topic: topics::ORDER_COMMANDS,
                envelope: &envelope,
                traceparent: None,
            },
        )
        .await?;
    }
    Ok(due.len())
}

/// Why a cancel request was not accepted.
#[derive(Debug, thiserror::Error)]
pub enum CancelError {
    #[error("no order with id {0}")]
    NotFound(Uuid),
    #[error("order {0} is {1} and can no longer be cancelled")]
    Final(Uuid, OrderStatus),
    #[error(transparent)]
    Db(#[from] DbError),
}

/// Queues a `CancelRequested` for the order's saga, if the order is not final yet.
pub async fn request_cancel(
    writer: &Writer,
    order_id: Uuid,
    reason: &str,
    traceparent: Option<String>,
) -> Result<OrderStatus, CancelError> {
    let reason = reason.to_owned();
    writer
        .run(move |conn| {
            let (reason, traceparent) = (reason.clone(), traceparent.clone());
            Box::pin(async move { request_cancel_in(conn, order_id, reason, traceparent).await })
        })
        .await?
}

/// The cancel request's statements; a refusal commits nothing of this job.
async fn request_cancel_in(
    conn: &mut PgConnection,
    order_id: Uuid,
    reason: String,
    traceparent: Option<String>,
) -> Result<Result<OrderStatus, CancelError>, DbError> {
    let Some(row) = sqlx::query("SELECT status FROM orders.orders WHERE id = $1 FOR UPDATE")
        .bind(order_id)
        .fetch_optional(&mut *conn)
        .await?
    else {
        return Ok(Err(CancelError::NotFound(order_id)));
    };
    let status: String = row.try_get("status")?;
    let status: OrderStatus = status
        .parse()
        .map_err(|()| DbError::Corrupt(format!("unknown order status {status:?}")))?;
    if status.is_terminal() {
        return Ok(Err(CancelError::Final(order_id, status)));
    }
    let envelope = Envelope::new(
        OrderId::from_uuid(order_id),
        &CancelRequested { reason },
        Utc::now(),
    );
    write_outbox(
        conn,
        Schema::Orders,
        &OutboxMessage {
            topic: topics::ORDER_COMMANDS,
            envelope: &envelope,
            traceparent,
        },
    )
    .await?;
    Ok(Ok(status))
}
