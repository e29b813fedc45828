//! The payment service: keyed workers handle `AuthorizePayment` and `RefundPayment` through a
//! [`PaymentProvider`](crate::infra::payment_provider::PaymentProvider).

pub mod handler;

use std::sync::Arc;

use ractor::ActorCell;
use sqlx::PgPool;

use crate::actors::bridge::Router;
use crate::actors::service::{RouterFactory, ServiceArgs};
use crate::actors::worker::WorkerRouter;
use crate::config::Config;
use crate::domain::envelope::topics;
use crate::infra::db::writer::Writers;
use crate::infra::payment_provider::PaymentProvider;

/// The payment service: consumes `payment.commands` with a pool of keyed workers.
pub fn service(
    config: Arc<Config>,
    producer: rdkafka::producer::FutureProducer,
    pool: PgPool,
    provider: Arc<dyn PaymentProvider>,
    writers: Writers,
    instance: String,
) -> ServiceArgs {
    let handler = Arc::new(handler::PaymentHandler::new(
        pool, provider, &config, writers,
    ));
    let workers = config.payment.workers;
    let router_instance = instance.clone();
    let router: RouterFactory = Arc::new(move |supervisor: ActorCell| {
        Arc::new(WorkerRouter {
            service: "payment",
            instance: router_instance.clone(),
            workers,
            handler: handler.clone(),
            supervisor,
        }) as Arc<dyn Router>
    });
    ServiceArgs {
        config,
        producer,
        name: "payment",
        topics: vec![topics::PAYMENT_COMMANDS],
        router,
        instance,
    }
}
