//! The inventory service: each partition's batch of `ReserveStock`, `ReleaseStock` and
//! `CommitStock` is handled at once (`handler`, run by `actors::worker::PerCommand`), and a
//! sweeper releases reservations that expired (`expiry`).

pub mod expiry;
pub mod handler;

use std::sync::Arc;

use crate::actors::batch::batch_service;
use crate::actors::service::ServiceArgs;
use crate::actors::worker::PerCommand;
use crate::config::Config;
use crate::domain::envelope::topics;
use crate::infra::db::writer::Writers;

/// The inventory service: consumes `inventory.commands` in batches per partition, at most
/// `inventory.workers` commands in progress at once.
pub fn service(
    config: Arc<Config>,
    producer: rdkafka::producer::FutureProducer,
    writers: Writers,
    instance: String,
) -> ServiceArgs {
    let handler = Arc::new(handler::InventoryHandler::new(&config, writers));
    let workers = config.inventory.workers;
    let batch_max = config.database.batch_max;
    batch_service(
        config,
        producer,
        "inventory",
        vec![topics::INVENTORY_COMMANDS],
        batch_max,
        Arc::new(PerCommand::new(handler, workers)),
        instance,
    )
}
