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

use std::collections::HashMap;
use std::time::Duration;

use async_trait::async_trait;
use futures::future::BoxFuture;
use rand::Rng;
use sqlx::{PgPool, Row};

use crate::infra::db::DbError;
use crate::infra::db::batched::{Batched, SetQuery};

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
    /// The ledger's writes: the charges asked for together are written by one statement.
    charges: Batched<Charges>,
}

impl LocalCardNetwork {
    /// Starts the ledger's set task (on the current tokio runtime).
    pub fn new(pool: PgPool, rules: LocalNetworkRules) -> Self {
        let charges = Batched::start("card network charges", pool.clone(), Charges, 128);
        Self {
            pool,
            rules,
            charges,
        }
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
        let charge = Charge {
            idempotency_key: request.idempotency_key.clone(),
            reference: format!("ch_{}", uuid::Uuid::now_v7().simple()),
            amount_minor: request.amount_minor,
            currency: request.currency.clone(),
            card_token: request.card_token.clone(),
            decline_code: decline,
        };
        // The first answer for a key is the answer for ever.
        let answer = self
            .charges
            .submit(charge)
            .await
            .map_err(|e| ProviderError::Unavailable(e.to_string()))?
            .ok_or_else(|| {
                ProviderError::Unavailable(format!(
                    "a concurrent charge under key {} is not visible yet",
                    request.idempotency_key
                ))
            })?;
        Ok(match answer.decline_code {
            None => Decision::Approved {
                reference: answer.reference,
            },
            Some(code) => Decision::Declined { code },
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

/// One charge to write to the ledger (`decline_code` `None`: approved).
pub struct Charge {
    idempotency_key: String,
    reference: String,
    amount_minor: i64,
    currency: String,
    card_token: String,
    decline_code: Option<String>,
}

/// The ledger's answer for a key: the first charge written under it.
pub struct Charged {
    reference: String,
    decline_code: Option<String>,
}

/// Ledger writes as sets: one statement inserts every new key of the set and reads the
/// recorded answer of every key written before.
pub struct Charges;

impl SetQuery for Charges {
    type Item = Charge;
    type Output = Option<Charged>;

    fn run<'a>(
        &'a self,
        pool: &'a PgPool,
        items: &'a [Charge],
    ) -> BoxFuture<'a, Result<Vec<Option<Charged>>, DbError>> {
        Box::pin(charge_all(pool, items))
    }

    /// One charge per key in a set: the statement cannot see a row it inserts itself.
    fn fits(&self, set: &[Charge], item: &Charge) -> bool {
        set.iter()
            .all(|c| c.idempotency_key != item.idempotency_key)
    }
}

/// Per charge, in order, the ledger's answer; `None` when the key's first charge is being
/// written by a concurrent transaction that this statement cannot see yet (retried).
async fn charge_all(pool: &PgPool, items: &[Charge]) -> Result<Vec<Option<Charged>>, DbError> {
    let keys: Vec<&str> = items.iter().map(|c| c.idempotency_key.as_str()).collect();
    let references: Vec<&str> = items.iter().map(|c| c.reference.as_str()).collect();
    let amounts: Vec<i64> = items.iter().map(|c| c.amount_minor).collect();
    let currencies: Vec<&str> = items.iter().map(|c| c.currency.as_str()).collect();
    let tokens: Vec<&str> = items.iter().map(|c| c.card_token.as_str()).collect();
    let declines: Vec<Option<&str>> = items.iter().map(|c| c.decline_code.as_deref()).collect();
    let rows = sqlx::query(
        "WITH req AS (
             SELECT * FROM UNNEST($1::text[], $2::text[], $3::bigint[], $4::text[], $5::text[],
                                  $6::text[])
               AS r(key, reference, amount, currency, token, decline)
         ), ins AS (
             INSERT INTO card_network.charges
               (idempotency_key, reference, amount_minor, currency, card_token, approved, decline_code)
             SELECT key, reference, amount, currency, token, decline IS NULL, decline FROM req
             ON CONFLICT (idempotency_key) DO NOTHING
             RETURNING idempotency_key, reference, approved, decline_code
         )
         SELECT idempotency_key, reference, approved, decline_code FROM ins
         UNION ALL
         SELECT c.idempotency_key, c.reference, c.approved, c.decline_code
         FROM card_network.charges c JOIN req ON c.idempotency_key = req.key
         WHERE NOT EXISTS (SELECT 1 FROM ins WHERE ins.idempotency_key = req.key)",
    )
    .bind(&keys)
    .bind(&references)
    .bind(&amounts)
    .bind(&currencies)
    .bind(&tokens)
    .bind(&declines)
    .fetch_all(pool)
    .await?;
    let mut answers: HashMap<String, Charged> = HashMap::with_capacity(rows.len());
    for row in rows {
        let approved: bool = row.try_get("approved")?;
        let decline: Option<String> = row.try_get("decline_code")?;
        answers.insert(
            row.try_get("idempotency_key")?,
            Charged {
                reference: row.try_get("reference")?,
                // A declined charge without a recorded code was declined by the card.
                decline_code: (!approved)
                    .then(|| decline.unwrap_or_else(|| "card_declined".into())),
            },
        );
    }
    Ok(items
        .iter()
        .map(|c| answers.remove(&c.idempotency_key))
        .collect())
}
