//! Handles the inventory commands: each runs in one transaction with its inbox row and its
//! reply, so a redelivered command has no second effect. Reservations are decided in groups
//! (`infra::db::reserve`), commits are applied in groups (`infra::db::stock_commits`); a
//! release is one statement.

use async_trait::async_trait;

use crate::actors::bridge::{HandleError, HandleResult, Handled};
use crate::actors::worker::CommandHandler;
use crate::config::Config;
use crate::domain::envelope::{CommitStock, Envelope, ReleaseStock, ReserveStock};
use crate::infra::db::inventory::{self as repo, CommandContext, CommandOutcome};
use crate::infra::db::messaging::Schema;
use crate::infra::db::reserve::Reservations;
use crate::infra::db::stock_commits::StockCommits;
use crate::infra::db::writer::Writers;

/// The inbox consumer name of the inventory command handler.
pub const CONSUMER: &str = "inventory-commands";

pub struct InventoryHandler {
    reservations: Reservations,
    commits: StockCommits,
    writers: Writers,
}

impl InventoryHandler {
    pub fn new(config: &Config, writers: Writers) -> Self {
        let secs = i64::try_from(config.inventory.reservation_ttl_secs).unwrap_or(i64::MAX);
        let reservations = Reservations::start(
            writers.get(Schema::Inventory).clone(),
            chrono::Duration::seconds(secs),
            config.database.batch_max,
        );
        let commits = StockCommits::start(
            writers.get(Schema::Inventory).clone(),
            config.database.batch_max,
        );
        Self {
            reservations,
            commits,
            writers,
        }
    }
}

#[async_trait]
impl CommandHandler for InventoryHandler {
    async fn handle(&self, envelope: &Envelope, traceparent: Option<&str>) -> HandleResult {
        let ctx = CommandContext {
            consumer: CONSUMER,
            message_id: envelope.id,
            order_id: envelope.order_id,
            traceparent: traceparent.map(str::to_owned),
        };
        let poison = |e: crate::domain::envelope::EnvelopeError| HandleError::Poison(e.to_string());
        let outcome = if envelope.is::<ReserveStock>() {
            let command = envelope.payload_as::<ReserveStock>().map_err(poison)?;
            self.reservations.reserve(&ctx, &command).await
        } else if envelope.is::<ReleaseStock>() {
            let command = envelope.payload_as::<ReleaseStock>().map_err(poison)?;
            repo::release(self.writers.get(Schema::Inventory), &ctx, &command.reason).await
        } else if envelope.is::<CommitStock>() {
            envelope.payload_as::<CommitStock>().map_err(poison)?;
            self.commits.commit(&ctx).await
        } else {
            return Err(HandleError::Poison(format!(
                "the inventory service does not handle {} messages",
                envelope.kind
            )));
        };
        match outcome {
            Ok(CommandOutcome::Duplicate) => Ok(Handled::Duplicate),
            Ok(outcome) => {
                tracing::debug!(order_id = %envelope.order_id, kind = %envelope.kind, ?outcome, "inventory command handled");
                Ok(Handled::Applied)
            }
            Err(e) => Err(HandleError::Transient(e.to_string())),
        }
    }
}
