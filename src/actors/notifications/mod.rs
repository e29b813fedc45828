//! The notification service: a batch handler per partition mails the customer on each customer-visible event
//! (order confirmed, order cancelled, invoice ready), once per event, through an SMTP circuit.

pub mod handler;

use sqlx::PgPool;
use std::sync::Arc;

use crate::actors::batch::batch_service;
use crate::actors::service::ServiceArgs;
use crate::config::Config;
use crate::domain::envelope::topics;
use crate::infra::circuit::CircuitBreaker;
use crate::infra::db::writer::Writers;
use crate::infra::smtp::Mailer;

/// The notification service: consumes `order.events` and `file.events` in batches.
pub fn service(
    config: Arc<Config>,
    producer: rdkafka::producer::FutureProducer,
    pool: PgPool,
    mailer: Mailer,
    breaker: Arc<CircuitBreaker>,
    writers: Writers,
    instance: String,
) -> ServiceArgs {
    let handler = Arc::new(handler::NotificationHandler::new(
        &config, pool, mailer, breaker, writers,
    ));
    let batch_max = config.database.batch_max;
    batch_service(
        config,
        producer,
        "notification",
        vec![topics::ORDER_EVENTS, topics::FILE_EVENTS],
        batch_max,
        handler,
        instance,
    )
}
