//! The notification service: keyed workers mail the customer on each customer-visible event
//! (order confirmed, order cancelled, invoice ready), once per event, through an SMTP circuit.

pub mod handler;

use std::sync::Arc;

use ractor::ActorCell;
use sqlx::PgPool;

use crate::actors::bridge::Router;
use crate::actors::service::{RouterFactory, ServiceArgs};
use crate::actors::worker::WorkerRouter;
use crate::config::Config;
use crate::domain::envelope::topics;
use crate::infra::circuit::CircuitBreaker;
use crate::infra::smtp::Mailer;

/// The notification service: consumes `order.events` and `file.events` with keyed workers.
pub fn service(
    config: Arc<Config>,
    producer: rdkafka::producer::FutureProducer,
    pool: PgPool,
    mailer: Mailer,
    breaker: Arc<CircuitBreaker>,
    instance: String,
) -> ServiceArgs {
    let handler = Arc::new(handler::NotificationHandler::new(
        &config, pool, mailer, breaker,
    ));
    let workers = config.notifications.workers;
    let router_instance = instance.clone();
    let router: RouterFactory = Arc::new(move |supervisor: ActorCell| {
        Arc::new(WorkerRouter {
            service: "notification",
            instance: router_instance.clone(),
            workers,
            handler: handler.clone(),
            supervisor,
        }) as Arc<dyn Router>
    });
    ServiceArgs {
        config,
        producer,
        name: "notification",
        topics: vec![topics::ORDER_EVENTS, topics::FILE_EVENTS],
        router,
        instance,
    }
}
