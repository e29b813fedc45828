//! The inventory service: keyed workers handle `ReserveStock`, `ReleaseStock` and
//! `CommitStock` (`handler`), and a sweeper releases reservations that expired (`expiry`).

pub mod expiry;
pub mod handler;

use std::sync::Arc;

use ractor::ActorCell;

use crate::actors::bridge::Router;
use crate::actors::service::{RouterFactory, ServiceArgs};
use crate::actors::worker::WorkerRouter;
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
    let router_instance = instance.clone();
    let router: RouterFactory = Arc::new(move |supervisor: ActorCell| {
        Arc::new(WorkerRouter {
            service: "inventory",
            instance: router_instance.clone(),
            workers,
            handler: handler.clone(),
            supervisor,
        }) as Arc<dyn Router>
    });
    ServiceArgs {
        config,
        producer,
        name: "inventory",
        topics: vec![topics::INVENTORY_COMMANDS],
        router,
        instance,
    }
}
