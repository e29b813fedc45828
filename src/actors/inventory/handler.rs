//! Handles the inventory commands: each runs in one transaction with its inbox row and its
//! reply, so a redelivered command has no second effect.

use async_trait::async_trait;
use sqlx::PgPool;

use crate::actors::bridge::{HandleError, HandleResult, Handled};
use crate::actors::worker::CommandHandler;
use crate::config::Config;
use crate::domain::envelope::{CommitStock, Envelope, ReleaseStock, ReserveStock};
use crate::infra::db::inventory::{self as repo, CommandContext, CommandOutcome};
use crate::infra::db::messaging::Schema;
use crate::infra::outbox::OutboxWakers;

/// The inbox consumer name of the inventory command handler.
pub const CONSUMER: &str = "inventory-commands";

pub struct InventoryHandler {
    pool: PgPool,
    reservation_ttl: chrono::Duration,
    wakers: OutboxWakers,
}

impl InventoryHandler {
    pub fn new(pool: PgPool, config: &Config, wakers: OutboxWakers) -> Self {
        let secs = i64::try_from(config.inventory.reservation_ttl_secs).unwrap_or(i64::MAX);
        Self {
            pool,
            reservation_ttl: chrono::Duration::seconds(secs),
            wakers,
        }
    }
}

#[async_trait]
impl CommandHandler for InventoryHandler {
    async fn handle(&self, envelope: Envelope, traceparent: Option<String>) -> HandleResult {
        let ctx = CommandContext {
            consumer: CONSUMER,
            message_id: envelope.id,
            order_id: envelope.order_id,
            traceparent,
        };
        let poison = |e: crate::domain::envelope::EnvelopeError| HandleError::Poison(e.to_string());
        let outcome = if envelope.is::<ReserveStock>() {
            let command = envelope.payload_as::<ReserveStock>().map_err(poison)?;
            repo::reserve(&self.pool, &ctx, &command, self.reservation_ttl).await
        } else if envelope.is::<ReleaseStock>() {
            let command = envelope.payload_as::<ReleaseStock>().map_err(poison)?;
            repo::release(&self.pool, &ctx, &command.reason).await
        } else if envelope.is::<CommitStock>() {
            envelope.payload_as::<CommitStock>().map_err(poison)?;
            repo::commit(&self.pool, &ctx).await
        } else {
            return Err(HandleError::Poison(format!(
                "the inventory service does not handle {} messages",
                envelope.kind
            )));
        };
        match outcome {
            Ok(CommandOutcome::Duplicate) => Ok(Handled::Duplicate),
            Ok(outcome) => {
                self.wakers.wake(Schema::Inventory);
                tracing::debug!(order_id = %envelope.order_id, kind = %envelope.kind, ?outcome, "inventory command handled");
                Ok(Handled::Applied)
            }
            Err(e) => Err(HandleError::Transient(e.to_string())),
        }
    }
}
