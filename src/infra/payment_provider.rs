//! The payment provider seam. A real deployment plugs a PSP adapter in behind
//! [`PaymentProvider`]; this machine cannot reach a card network, so [`LocalCardNetwork`] is a
//! documented stand-in that behaves like one: deterministic answers per test card token,
//! realistic latency, a per-payment amount limit, and idempotency keys that charge at most
//! once — remembered in its own ledger (`card_network.charges`) so that holds across restarts.
//!
//! | card token | answer |
//! |---|---|
//! | `tok_visa`, `tok_mastercard`, `tok_amex` | approved |
//! | `tok_decline` | declined, `card_declined` |
//! | `tok_insufficient_funds` | declined, `insufficient_funds` |
//! | `tok_slow` | approved after `payment.slow_latency_ms` |
//! | `tok_unavailable` | the network is unavailable (a transient error: retried) |
//! | any other token | declined, `invalid_card` |
//!
//! Any amount above `payment.amount_limit_minor` is declined with `amount_limit_exceeded`.

use std::time::Duration;

use async_trait::async_trait;
use rand::Rng;
use sqlx::{PgPool, Row};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthorizeRequest {
    /// One key per order: the network charges a key at most once and repeats its answer.
    pub idempotency_key: String,
    pub amount_minor: i64,
    pub currency: String,
    pub card_token: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Approved { reference: String },
    Declined { code: String },
}

#[derive(Debug, thiserror::Error)]
pub enum ProviderError {
    /// Worth retrying later.
    #[error("payment provider unavailable: {0}")]
    Unavailable(String),
}

#[async_trait]
pub trait PaymentProvider: Send + Sync + 'static {
    async fn authorize(&self, request: &AuthorizeRequest) -> Result<Decision, ProviderError>;
    /// Refunds the charge made under `idempotency_key`; refunding twice is harmless.
    async fn refund(&self, idempotency_key: &str) -> Result<bool, ProviderError>;
}

/// Latency and limits of the local card network.
#[derive(Debug, Clone)]
pub struct LocalNetworkRules {
    pub latency: Duration,
    pub slow_latency: Duration,
    pub amount_limit_minor: i64,
}

pub struct LocalCardNetwork {
    pool: PgPool,
    rules: LocalNetworkRules,
}

impl LocalCardNetwork {
    pub fn new(pool: PgPool, rules: LocalNetworkRules) -> Self {
        Self { pool, rules }
    }

    fn decide(&self, request: &AuthorizeRequest) -> Result<Option<String>, ProviderError> {
        if request.amount_minor > self.rules.amount_limit_minor {
            return Ok(Some("amount_limit_exceeded".into()));
        }
        Ok(match request.card_token.as_str() {
            "tok_visa" | "tok_mastercard" | "tok_amex" | "tok_slow" => None,
            "tok_decline" => Some("card_declined".into()),
            "tok_insufficient_funds" => Some("insufficient_funds".into()),
            "tok_unavailable" => {
                return Err(ProviderError::Unavailable(
                    "the card network did not answer".into(),
                ));
            }
            _ => Some("invalid_card".into()),
        })
    }

    async fn latency(&self, token: &str) {
        let base = if token == "tok_slow" {
            self.rules.slow_latency
        } else {
            self.rules.latency
        };
        // ±25 % jitter, like a network.
        let jitter = rand::rng().random_range(0.75..1.25);
        tokio::time::sleep(base.mul_f64(jitter)).await;
    }
}

fn db(e: sqlx::Error) -> ProviderError {
    ProviderError::Unavailable(e.to_string())
}

#[async_trait]
impl PaymentProvider for LocalCardNetwork {
    async fn authorize(&self, request: &AuthorizeRequest) -> Result<Decision, ProviderError> {
        self.latency(&request.card_token).await;
        let decline = self.decide(request)?;
        let reference = format!("ch_{}", uuid::Uuid::now_v7().simple());
        // The first answer for a key is the answer for ever.
        let row = sqlx::query(
            "WITH ins AS (
                INSERT INTO card_network.charges
                  (idempotency_key, reference, amount_minor, currency, card_token, approved, decline_code)
                VALUES ($1, $2, $3, $4, $5, $6, $7)
                ON CONFLICT (idempotency_key) DO NOTHING
                RETURNING reference, approved, decline_code)
             SELECT reference, approved, decline_code FROM ins
             UNION ALL
             SELECT reference, approved, decline_code FROM card_network.charges
             WHERE idempotency_key = $1 AND NOT EXISTS (SELECT 1 FROM ins)",
        )
        .bind(&request.idempotency_key)
        .bind(&reference)
        .bind(request.amount_minor)
        .bind(&request.currency)
        .bind(&request.card_token)
        .bind(decline.is_none())
        .bind(decline.as_deref())
        .fetch_one(&self.pool)
        .await
        .map_err(db)?;
        let approved: bool = row.try_get("approved").map_err(db)?;
        Ok(if approved {
            Decision::Approved {
                reference: row.try_get("reference").map_err(db)?,
            }
        } else {
            Decision::Declined {
                code: row
                    .try_get::<Option<String>, _>("decline_code")
                    .map_err(db)?
                    .unwrap_or_else(|| "card_declined".into()),
            }
        })
    }

    async fn refund(&self, idempotency_key: &str) -> Result<bool, ProviderError> {
        self.latency("refund").await;
        let refunded = sqlx::query(
            "UPDATE card_network.charges SET refunded = true
             WHERE idempotency_key = $1 AND approved AND NOT refunded",
        )
        .bind(idempotency_key)
        .execute(&self.pool)
        .await
        .map_err(db)?
        .rows_affected()
            == 1;
        Ok(refunded)
    }
}
