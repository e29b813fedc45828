//! The messaging tables of the service schemas: the outbox (messages committed with the state
//! change that caused them) and the inbox (message ids already handled). Each schema has its
//! own static statements: sqlx takes only `&'static str` SQL, and a schema name is an
//! identifier that cannot be a bound parameter.

use sqlx::PgConnection;
use uuid::Uuid;

use super::DbError;
use crate::domain::envelope::Envelope;
use crate::infra::outbox::OutboxRecord;

/// A service schema with an outbox and an inbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Schema {
    Orders,
    Inventory,
    Payment,
    Files,
}

/// An outbox row to write with a state change.
pub struct OutboxMessage<'a> {
    /// The logical topic; the relay adds the deployment's prefix.
    pub topic: &'a str,
    pub envelope: &'a Envelope,
    pub traceparent: Option<String>,
}

tokio::task_local! {
    /// The outbox rows the jobs of the running writer batch inserted, in insertion order.
    static NOTED: std::cell::RefCell<Vec<OutboxRecord>>;
}

/// Notes outbox rows the running job **did** insert (its statement said so), so its writer
/// publishes them right after the commit without reading them back. Outside a writer batch it
/// does nothing; a row that is not noted is published by the relay's sweep instead (later,
/// never lost). A row noted but not inserted would publish a message whose cause never
/// committed: note only what the statement reports as written.
pub fn note_outbox(records: impl IntoIterator<Item = OutboxRecord>) {
    let _ = NOTED.try_with(|n| n.borrow_mut().extend(records));
}

/// Runs `f` and returns its output with the outbox rows noted while it ran.
pub(crate) async fn noting<F: std::future::Future>(f: F) -> (F::Output, Vec<OutboxRecord>) {
    NOTED
        .scope(std::cell::RefCell::new(Vec::new()), async move {
            let out = f.await;
            (out, NOTED.with(|n| n.take()))
        })
        .await
}

/// Writes `message` to the schema's outbox inside `tx`.
pub async fn write_outbox(
    conn: &mut PgConnection,
    schema: Schema,
    message: &OutboxMessage<'_>,
) -> Result<(), DbError> {
    let payload = message.envelope.encode();
    let headers = trace_headers(message.traceparent.as_deref());
    let key = message.envelope.order_id.to_string();
    sqlx::query(schema.insert_outbox_sql())
        .bind(message.envelope.id)
        .bind(message.topic)
        .bind(&key)
        .bind(&message.envelope.kind)
        .bind(&payload)
        .bind(&headers)
        .execute(conn)
        .await?;
    note_outbox([OutboxRecord::new(
        message.envelope.id,
        message.topic,
        key,
        message.envelope.kind.clone(),
        payload,
        headers,
    )]);
    Ok(())
}

/// Outbox rows as column arrays, for one `INSERT … SELECT FROM UNNEST(…)` of several rows.
#[derive(Debug, Clone, Default)]
pub struct OutboxColumns {
    pub ids: Vec<Uuid>,
    pub topics: Vec<String>,
    pub kinds: Vec<String>,
    pub payloads: Vec<Vec<u8>>,
    pub headers: Vec<serde_json::Value>,
}

impl OutboxColumns {
    pub fn new(messages: &[OutboxMessage<'_>]) -> Self {
        let mut c = OutboxColumns::default();
        for m in messages {
            c.push(m);
        }
        c
    }

    pub fn push(&mut self, m: &OutboxMessage<'_>) {
        self.ids.push(m.envelope.id);
        self.topics.push(m.topic.to_owned());
        self.kinds.push(m.envelope.kind.clone());
        self.payloads.push(m.envelope.encode());
        self.headers.push(trace_headers(m.traceparent.as_deref()));
    }

    /// The rows as they are published, all under message key `key`.
    pub fn records(&self, key: &str) -> Vec<OutboxRecord> {
        (0..self.ids.len())
            .map(|i| {
                OutboxRecord::new(
                    self.ids[i],
                    &self.topics[i],
                    key.to_owned(),
                    self.kinds[i].clone(),
                    self.payloads[i].clone(),
                    self.headers[i].clone(),
                )
            })
            .collect()
    }
}

/// A reply written from [`reply_columns`], as it is published.
pub fn reply_record(
    topic: &str,
    order_id: Uuid,
    (id, kind, payload, headers): &(Uuid, String, Vec<u8>, serde_json::Value),
) -> OutboxRecord {
    OutboxRecord::new(
        *id,
        topic,
        order_id.to_string(),
        kind.clone(),
        payload.clone(),
        headers.clone(),
    )
}

/// The outbox columns of a reply to write with a statement's own binds: the new envelope's id,
/// type, encoded bytes, and the headers carrying the trace context.
pub fn reply_columns<P: crate::domain::envelope::Payload>(
    order_id: crate::domain::ids::OrderId,
    payload: &P,
    traceparent: Option<&str>,
) -> (Uuid, String, Vec<u8>, serde_json::Value) {
    let envelope = Envelope::new(order_id, payload, chrono::Utc::now());
    (
        envelope.id,
        envelope.kind.clone(),
        envelope.encode(),
        trace_headers(traceparent),
    )
}

/// The JSON headers column of an outbox row: the trace context when there is one.
pub fn trace_headers(traceparent: Option<&str>) -> serde_json::Value {
    let mut headers = serde_json::Map::new();
    if let Some(tp) = traceparent {
        headers.insert("traceparent".into(), tp.into());
    }
    serde_json::Value::Object(headers)
}

/// The statements of one schema's messaging tables, built at compile time by `statements!`.
struct Statements {
    insert_outbox: &'static str,
    select_unpublished: &'static str,
    delete_published: &'static str,
    count_unpublished: &'static str,
}

macro_rules! statements {
    ($schema:literal) => {
        Statements {
            insert_outbox: concat!(
                "INSERT INTO ",
                $schema,
                ".outbox ",
                "(message_id, topic, message_key, message_type, payload, headers) ",
                "VALUES ($1, $2, $3, $4, $5, $6)"
            ),
            select_unpublished: concat!(
                "SELECT id, message_id, topic, message_key, message_type, payload, headers FROM ",
                $schema,
                ".outbox WHERE created_at <= now() - make_interval(secs => $2) ",
                "ORDER BY id LIMIT $1"
            ),
            // Published rows leave the outbox: Kafka holds the message from then on. By message
            // id (unique): the writers know the ids of the rows they publish, not their serials.
            delete_published: concat!(
                "DELETE FROM ",
                $schema,
                ".outbox WHERE message_id = ANY($1)"
            ),
            count_unpublished: concat!("SELECT count(*) FROM ", $schema, ".outbox"),
        }
    };
}

const ORDERS: Statements = statements!("orders");
const INVENTORY: Statements = statements!("inventory");
const PAYMENT: Statements = statements!("payment");
const FILES: Statements = statements!("files");

impl Schema {
    pub const ALL: &'static [Schema] = &[
        Schema::Orders,
        Schema::Inventory,
        Schema::Payment,
        Schema::Files,
    ];

    pub fn name(&self) -> &'static str {
        match self {
            Schema::Orders => "orders",
            Schema::Inventory => "inventory",
            Schema::Payment => "payment",
            Schema::Files => "files",
        }
    }

    fn statements(&self) -> &'static Statements {
        match self {
            Schema::Orders => &ORDERS,
            Schema::Inventory => &INVENTORY,
            Schema::Payment => &PAYMENT,
            Schema::Files => &FILES,
        }
    }

    fn insert_outbox_sql(&self) -> &'static str {
        self.statements().insert_outbox
    }

    pub(crate) fn select_sql(&self) -> &'static str {
        self.statements().select_unpublished
    }

    pub(crate) fn delete_published_sql(&self) -> &'static str {
        self.statements().delete_published
    }

    pub(crate) fn pending_sql(&self) -> &'static str {
        self.statements().count_unpublished
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statements_name_their_own_schema() {
        for schema in Schema::ALL {
            let name = format!("{}.", schema.name());
            let s = schema.statements();
            for sql in [
                s.insert_outbox,
                s.select_unpublished,
                s.delete_published,
                s.count_unpublished,
            ] {
                assert!(sql.contains(&name), "{sql}");
            }
        }
    }
}
