//! The inventory service: keyed workers handle `ReserveStock`, `ReleaseStock` and
//! `CommitStock` (`handler`), and a sweeper releases reservations that expired (`expiry`).

pub mod expiry;
pub mod handler;

use std::sync::Arc;

use crate::actors::service::ServiceArgs;
use crate::actors::worker::keyed_service;
use crate::config::Config;
use crate::domain::envelope::topics;
use crate::infra::db::writer::Writers;

/// The inventory service: consumes `inventory.commands` with a pool of keyed workers.
pub fn service(
    config: Arc<Config>,
    producer: rdkafka::producer::FutureProducer,
    writers: Writers,
    instance: String,
) -> ServiceArgs {
    let handler = Arc::new(handler::InventoryHandler::new(&config, writers));
    let workers = config.inventory.workers;
    keyed_service(
        config,
        producer,
        "inventory",
        vec![topics::INVENTORY_COMMANDS],
        workers,
        handler,
        instance,
    )
}
