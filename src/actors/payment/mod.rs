//! The payment service: keyed workers handle `AuthorizePayment` and `RefundPayment` through a
//! `PaymentProvider` (`infra::payment_provider`).

pub mod handler;

use sqlx::PgPool;
use std::sync::Arc;

use crate::actors::service::ServiceArgs;
use crate::actors::worker::keyed_service;
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
    keyed_service(
        config,
        producer,
        "payment",
        vec![topics::PAYMENT_COMMANDS],
        workers,
        handler,
        instance,
    )
}
