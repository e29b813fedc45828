//! The inventory service: each partition's batch of `ReserveStock`, `ReleaseStock` and
//! `CommitStock` is handled at once (`handler`, run by `actors::worker::PerCommand`), and a
//! sweeper releases reservations that expired (`expiry`).

pub mod expiry;
pub mod handler;

use std::sync::Arc;

use crate::actors::service::ServiceArgs;
use crate::actors::worker::command_service;
use crate::config::Config;
use crate::domain::envelope::topics;
use crate::infra::db::writer::Writers;

/// The inventory service: consumes `inventory.commands` in batches of at most
/// `inventory.workers` commands per partition.
pub fn service(
    config: Arc<Config>,
    producer: rdkafka::producer::FutureProducer,
    writers: Writers,
    instance: String,
) -> ServiceArgs {
    let handler = Arc::new(handler::InventoryHandler::new(&config, writers));
    let workers = config.inventory.workers;
    command_service(
        config,
        producer,
        "inventory",
        topics::INVENTORY_COMMANDS,
        workers,
        handler,
        instance,
    )
}
