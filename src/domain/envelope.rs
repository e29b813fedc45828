//! The versioned JSON envelope every Kafka message travels in, and the message payloads.
//!
//! `id` is a UUIDv7 (the inbox key: a redelivered message has the same id), `type` and
//! `version` select the payload schema, `order_id` is also the Kafka key for order-scoped topics.

use chrono::{DateTime, Utc};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::ids::{CustomerId, OrderId};
use super::money::Currency;
use super::order::OrderLine;

/// Logical topic names; deployments may prefix them (see `KafkaConfig::topic_prefix`).
pub mod topics {
    /// Events of the order service, keyed by order id (the order's public story: placed,
    /// confirmed, cancelled).
    pub const ORDER_EVENTS: &str = "order.events";
    /// Commands to the order saga (`CancelRequested`, `SagaTimeout`), keyed by order id: the
    /// saga reads these and the replies of the services it commands, not its own events.
    pub const ORDER_COMMANDS: &str = "order.commands";
    /// Commands to the inventory service (`ReserveStock`, `ReleaseStock`, `CommitStock`).
    pub const INVENTORY_COMMANDS: &str = "inventory.commands";
    /// Replies of the inventory service (`StockReserved`, `StockRejected`, …).
    pub const INVENTORY_EVENTS: &str = "inventory.events";
    /// Commands to the payment service (`AuthorizePayment`, `RefundPayment`).
    pub const PAYMENT_COMMANDS: &str = "payment.commands";
    /// Replies of the payment service (`PaymentAuthorized`, `PaymentDeclined`, `PaymentRefunded`).
    pub const PAYMENT_EVENTS: &str = "payment.events";
    /// Events of the file service (`InvoiceStored`), keyed by order id.
    pub const FILE_EVENTS: &str = "file.events";
    /// The suffix of a topic's dead-letter topic (`order.events` → `order.events.dlq`).
    pub const DLQ_SUFFIX: &str = ".dlq";
    /// Topics that services consume, each with a dead-letter topic.
    pub const CONSUMED: &[&str] = &[
        ORDER_EVENTS,
        ORDER_COMMANDS,
        INVENTORY_COMMANDS,
        INVENTORY_EVENTS,
        PAYMENT_COMMANDS,
        PAYMENT_EVENTS,
        FILE_EVENTS,
    ];
    /// Every topic the current services use, for topic provisioning.
    pub const ALL: &[&str] = &[
        ORDER_EVENTS,
        ORDER_COMMANDS,
        INVENTORY_COMMANDS,
        INVENTORY_EVENTS,
        PAYMENT_COMMANDS,
        PAYMENT_EVENTS,
        FILE_EVENTS,
    ];
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Envelope {
    pub id: Uuid,
    #[serde(rename = "type")]
    pub kind: String,
    pub version: u16,
    pub occurred_at: DateTime<Utc>,
    pub order_id: OrderId,
    pub payload: serde_json::Value,
}

/// A payload type with its name and schema version.
pub trait Payload: Serialize + DeserializeOwned {
    const TYPE: &'static str;
    const VERSION: u16;
}

#[derive(Debug, thiserror::Error)]
pub enum EnvelopeError {
    #[error("message is not a valid envelope: {0}")]
    Malformed(#[source] serde_json::Error),
    #[error("expected {expected} v{version}, got {kind} v{got}")]
    WrongType {
        expected: &'static str,
        version: u16,
        kind: String,
        got: u16,
    },
    #[error("payload of {kind} does not match its schema: {source}")]
    BadPayload {
        kind: String,
        #[source]
        source: serde_json::Error,
    },
}

impl Envelope {
    pub fn new<P: Payload>(order_id: OrderId, payload: &P, now: DateTime<Utc>) -> Self {
        Self {
            id: Uuid::now_v7(),
            kind: P::TYPE.to_owned(),
            version: P::VERSION,
            occurred_at: now,
            order_id,
            // Serializing a plain struct of strings and numbers into a Value cannot fail.
            payload: serde_json::to_value(payload).unwrap_or(serde_json::Value::Null),
        }
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, EnvelopeError> {
        serde_json::from_slice(bytes).map_err(EnvelopeError::Malformed)
    }

    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    pub fn is<P: Payload>(&self) -> bool {
        self.kind == P::TYPE
    }

    /// The payload as `P`, if the envelope carries `P` at a version this code understands.
    pub fn payload_as<P: Payload>(&self) -> Result<P, EnvelopeError> {
        if self.kind != P::TYPE || self.version > P::VERSION {
            return Err(EnvelopeError::WrongType {
                expected: P::TYPE,
                version: P::VERSION,
                kind: self.kind.clone(),
                got: self.version,
            });
        }
        P::deserialize(&self.payload).map_err(|source| EnvelopeError::BadPayload {
            kind: self.kind.clone(),
            source,
        })
    }
}

/// An order was accepted by the API and committed with its outbox row.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderPlaced {
    pub customer_id: CustomerId,
    pub currency: Currency,
    pub lines: Vec<OrderLine>,
    /// The card to charge (optional in v1; absent means `tok_visa`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub card_token: Option<String>,
    /// Where the customer's notifications go (optional).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
}

impl OrderPlaced {
    /// The announcement of a validated new order.
    pub fn of(order: &crate::domain::order::NewOrder) -> Self {
        OrderPlaced {
            customer_id: order.customer_id.clone(),
            currency: order.currency,
            lines: order.lines.clone(),
            card_token: Some(order.card_token.clone()),
            email: order.email.clone(),
        }
    }
}

impl Payload for OrderPlaced {
    const TYPE: &'static str = "OrderPlaced";
    const VERSION: u16 = 1;
}

/// The customer asked to cancel (`POST /v1/orders/{id}/cancel`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CancelRequested {
    pub reason: String,
}

impl Payload for CancelRequested {
    const TYPE: &'static str = "CancelRequested";
    const VERSION: u16 = 1;
}

/// A saga's deadline passed while it was in `status` at `version` (sent by the timer sweeper;
/// a saga that moved on since ignores it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SagaTimeout {
    pub status: String,
    pub version: i32,
}

impl Payload for SagaTimeout {
    const TYPE: &'static str = "SagaTimeout";
    const VERSION: u16 = 1;
}

/// The order is paid for and its stock is sold.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderConfirmed {
    pub total_minor: i64,
    pub currency: Currency,
    /// Who bought, and what at which price: enough for an invoice without asking another
    /// service (absent in messages of earlier releases).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub customer_id: Option<CustomerId>,
    #[serde(default)]
    pub lines: Vec<PricedLine>,
}

impl Payload for OrderConfirmed {
    const TYPE: &'static str = "OrderConfirmed";
    const VERSION: u16 = 1;
}

/// Where a stored document of an order is, and its checksum.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredDocument {
    pub bucket: String,
    pub object_key: String,
    pub size_bytes: i64,
    /// Hex SHA-256 of the object's bytes.
    pub sha256: String,
    pub content_type: String,
}

/// The order's invoice is stored in S3 (`file.events`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct InvoiceStored(pub StoredDocument);

impl Payload for InvoiceStored {
    const TYPE: &'static str = "InvoiceStored";
    const VERSION: u16 = 1;
}

/// The receipt of the order's payment is stored in S3 (`file.events`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ReceiptStored(pub StoredDocument);

impl Payload for ReceiptStored {
    const TYPE: &'static str = "ReceiptStored";
    const VERSION: u16 = 1;
}

/// The order ended without a sale; what was reserved or charged was given back.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderCancelled {
    pub reason: String,
}

impl Payload for OrderCancelled {
    const TYPE: &'static str = "OrderCancelled";
    const VERSION: u16 = 1;
}

/// Reserve every line of an order, or none.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReserveStock {
    pub currency: Currency,
    pub lines: Vec<OrderLine>,
}

impl Payload for ReserveStock {
    const TYPE: &'static str = "ReserveStock";
    const VERSION: u16 = 1;
}

/// A reserved line with the price it was reserved at.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PricedLine {
    pub sku: String,
    /// The product's name when it was reserved (absent in messages of earlier releases).
    #[serde(default)]
    pub name: String,
    pub quantity: u32,
    pub unit_price_minor: i64,
}

/// Every line is reserved until `expires_at`; `total_minor` is what the customer pays.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StockReserved {
    pub currency: Currency,
    pub lines: Vec<PricedLine>,
    pub total_minor: i64,
    pub expires_at: DateTime<Utc>,
}

impl Payload for StockReserved {
    const TYPE: &'static str = "StockReserved";
    const VERSION: u16 = 1;
}

/// Why a line could not be reserved.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum RejectReason {
    UnknownSku,
    InsufficientStock,
    CurrencyMismatch,
}

impl RejectReason {
    pub fn as_str(&self) -> &'static str {
        match self {
            RejectReason::UnknownSku => "UNKNOWN_SKU",
            RejectReason::InsufficientStock => "INSUFFICIENT_STOCK",
            RejectReason::CurrencyMismatch => "CURRENCY_MISMATCH",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RejectedLine {
    pub sku: String,
    pub requested: u32,
    /// Units available when the reservation was tried (absent for an unknown sku).
    pub available: Option<i64>,
    pub reason: RejectReason,
}

/// Nothing was reserved; each line that failed says why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StockRejected {
    pub lines: Vec<RejectedLine>,
}

impl Payload for StockRejected {
    const TYPE: &'static str = "StockRejected";
    const VERSION: u16 = 1;
}

/// Give back an order's reserved stock (compensation or expiry).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReleaseStock {
    pub reason: String,
}

impl Payload for ReleaseStock {
    const TYPE: &'static str = "ReleaseStock";
    const VERSION: u16 = 1;
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StockReleased {
    pub reason: String,
}

impl Payload for StockReleased {
    const TYPE: &'static str = "StockReleased";
    const VERSION: u16 = 1;
}

/// Turn an order's reservation into a sale (the order is confirmed).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommitStock {}

impl Payload for CommitStock {
    const TYPE: &'static str = "CommitStock";
    const VERSION: u16 = 1;
}

/// The answer to `CommitStock` that earlier versions published. Nothing publishes it now (the
/// saga confirms the order as it sends `CommitStock` and waits for no answer, and no other
/// service read it); the type stays so that such records still in `inventory.events` are
/// recognised and skipped instead of dead-lettered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StockCommitted {}

impl Payload for StockCommitted {
    const TYPE: &'static str = "StockCommitted";
    const VERSION: u16 = 1;
}

/// Authorize the order's amount on the customer's card (one payment per order).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuthorizePayment {
    pub amount_minor: i64,
    pub currency: Currency,
    pub card_token: String,
}

impl Payload for AuthorizePayment {
    const TYPE: &'static str = "AuthorizePayment";
    const VERSION: u16 = 1;
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PaymentAuthorized {
    pub amount_minor: i64,
    pub currency: Currency,
    pub provider_ref: String,
}

impl Payload for PaymentAuthorized {
    const TYPE: &'static str = "PaymentAuthorized";
    const VERSION: u16 = 1;
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PaymentDeclined {
    /// The network's decline code (`card_declined`, `insufficient_funds`, `amount_limit_exceeded`).
    pub reason: String,
}

impl Payload for PaymentDeclined {
    const TYPE: &'static str = "PaymentDeclined";
    const VERSION: u16 = 1;
}

/// Give back an authorized payment (compensation).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RefundPayment {
    pub reason: String,
}

impl Payload for RefundPayment {
    const TYPE: &'static str = "RefundPayment";
    const VERSION: u16 = 1;
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PaymentRefunded {
    /// Zero when there was nothing to refund (no authorized payment).
    pub refunded_minor: i64,
}

impl Payload for PaymentRefunded {
    const TYPE: &'static str = "PaymentRefunded";
    const VERSION: u16 = 1;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::ids::Sku;

    fn placed() -> OrderPlaced {
        OrderPlaced {
            customer_id: CustomerId::parse("c1").unwrap_or_else(|| unreachable!()),
            currency: Currency::parse("EUR").unwrap_or_else(|| unreachable!()),
            lines: vec![OrderLine {
                sku: Sku::parse("A").unwrap_or_else(|| unreachable!()),
                quantity: 3,
            }],
            card_token: None,
            email: None,
        }
    }

    #[test]
    fn envelope_round_trips_with_typed_payload() {
        let env = Envelope::new(OrderId::new(), &placed(), Utc::now());
        let back = Envelope::decode(&env.encode()).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(back, env);
        assert!(back.is::<OrderPlaced>());
        assert_eq!(back.payload_as::<OrderPlaced>().ok(), Some(placed()));
        let json: serde_json::Value = serde_json::from_slice(&env.encode()).unwrap_or_default();
        assert_eq!(json["type"], "OrderPlaced");
        assert_eq!(json["version"], 1);
        assert_eq!(env.id.get_version_num(), 7);
    }

    #[test]
    fn newer_versions_and_other_types_are_refused() {
        let mut env = Envelope::new(OrderId::new(), &placed(), Utc::now());
        env.version = 2;
        assert!(matches!(
            env.payload_as::<OrderPlaced>(),
            Err(EnvelopeError::WrongType { .. })
        ));
        assert!(Envelope::decode(b"{not json").is_err());
    }
}
