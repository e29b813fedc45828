//! Handles the payment commands. The provider call cannot share the database transaction, so
//! the order's idempotency key makes it safe to repeat: a command redelivered (after a crash,
//! or a duplicate) calls the provider again with the same key, gets the same answer, is
//! charged once, and the inbox claim at commit makes the second record a no-op.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::PgPool;

use crate::actors::bridge::{HandleError, HandleResult, Handled};
use crate::actors::worker::CommandHandler;
use crate::config::Config;
use crate::domain::envelope::{
    AuthorizePayment, Envelope, PaymentAuthorized, PaymentDeclined, PaymentRefunded, RefundPayment,
};
use crate::infra::db::messaging::Schema;
use crate::infra::db::payment::{self as repo, Handling, NewPayment, PaymentDecisions};
use crate::infra::db::writer::Writers;
use crate::infra::payment_provider::{AuthorizeRequest, Decision, PaymentProvider};

/// The inbox consumer name of the payment command handler.
pub const CONSUMER: &str = "payment-commands";

pub struct PaymentHandler {
    pool: PgPool,
    provider: Arc<dyn PaymentProvider>,
    provider_timeout: Duration,
    writers: Writers,
    /// Decisions are stored in groups: one statement per group, not one per payment.
    decisions: PaymentDecisions,
}

impl PaymentHandler {
    pub fn new(
        pool: PgPool,
        provider: Arc<dyn PaymentProvider>,
        config: &Config,
        writers: Writers,
    ) -> Self {
        let decisions = PaymentDecisions::start(
            writers.get(Schema::Payment).clone(),
            config.database.batch_max,
        );
        Self {
            pool,
            provider,
            provider_timeout: Duration::from_millis(config.payment.provider_timeout_ms),
            writers,
            decisions,
        }
    }

    fn key(order: &crate::domain::ids::OrderId) -> String {
        format!("order-{order}-authorize")
    }

    async fn authorize(
        &self,
        env: &Envelope,
        h: &Handling<'_>,
        cmd: AuthorizePayment,
    ) -> HandleResult {
        let transient = |e: String| HandleError::Transient(e);
        let request = AuthorizeRequest {
            idempotency_key: Self::key(&env.order_id),
            amount_minor: cmd.amount_minor,
            currency: cmd.currency.code().to_owned(),
            card_token: cmd.card_token.clone(),
        };
        let decision =
            tokio::time::timeout(self.provider_timeout, self.provider.authorize(&request))
                .await
                .map_err(|_| {
                    transient(format!(
                        "provider gave no answer within {:?}",
                        self.provider_timeout
                    ))
                })?
                .map_err(|e| transient(e.to_string()))?;
        let stored = match &decision {
            Decision::Approved { reference } => {
                let payment = NewPayment {
                    order_id: env.order_id,
                    approved: true,
                    amount_minor: cmd.amount_minor,
                    currency: cmd.currency.code(),
                    card_token: &cmd.card_token,
                    provider_ref: Some(reference),
                    decline_reason: None,
                };
                let answer = PaymentAuthorized {
                    amount_minor: cmd.amount_minor,
                    currency: cmd.currency,
                    provider_ref: reference.clone(),
                };
                self.decisions.record(h, &payment, &answer).await
            }
            Decision::Declined { code } => {
                let payment = NewPayment {
                    order_id: env.order_id,
                    approved: false,
                    amount_minor: cmd.amount_minor,
                    currency: cmd.currency.code(),
                    card_token: &cmd.card_token,
                    provider_ref: None,
                    decline_reason: Some(code),
                };
                let answer = PaymentDeclined {
                    reason: code.clone(),
                };
                self.decisions.record(h, &payment, &answer).await
            }
        }
        .map_err(|e| transient(e.to_string()))?;
        tracing::debug!(order_id = %env.order_id, ?decision, "payment decided");
        Ok(if stored {
            Handled::Applied
        } else {
            Handled::Duplicate
        })
    }

    async fn refund(&self, env: &Envelope, h: &Handling<'_>) -> HandleResult {
        let transient = |e: String| HandleError::Transient(e);
        let payment = repo::get_payment(&self.pool, env.order_id.as_uuid())
            .await
            .map_err(|e| transient(e.to_string()))?;
        let amount = match &payment {
            Some(p) if p.status != "DECLINED" => {
                tokio::time::timeout(
                    self.provider_timeout,
                    self.provider.refund(&Self::key(&env.order_id)),
                )
                .await
                .map_err(|_| transient("provider gave no refund answer in time".into()))?
                .map_err(|e| transient(e.to_string()))?;
                p.amount_minor
            }
            _ => 0,
        };
        let stored = repo::record_refund(
            self.writers.get(Schema::Payment),
            h,
            env.order_id,
            &PaymentRefunded {
                refunded_minor: amount,
            },
        )
        .await
        .map_err(|e| transient(e.to_string()))?;
        tracing::debug!(order_id = %env.order_id, refunded_minor = amount, "payment refunded");
        Ok(if stored {
            Handled::Applied
        } else {
            Handled::Duplicate
        })
    }
}

#[async_trait]
impl CommandHandler for PaymentHandler {
    async fn handle(&self, envelope: &Envelope, traceparent: Option<&str>) -> HandleResult {
        let h = Handling {
            consumer: CONSUMER,
            message_id: envelope.id,
            traceparent: traceparent.map(str::to_owned),
        };
        let poison = |e: crate::domain::envelope::EnvelopeError| HandleError::Poison(e.to_string());
        if envelope.is::<AuthorizePayment>() {
            let cmd = envelope.payload_as::<AuthorizePayment>().map_err(poison)?;
            self.authorize(envelope, &h, cmd).await
        } else if envelope.is::<RefundPayment>() {
            envelope.payload_as::<RefundPayment>().map_err(poison)?;
            self.refund(envelope, &h).await
        } else {
            Err(HandleError::Poison(format!(
                "the payment service does not handle {} messages",
                envelope.kind
            )))
        }
    }
}
