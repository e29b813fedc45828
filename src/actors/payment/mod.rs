//! The payment service: each partition's batch of `AuthorizePayment` and `RefundPayment` is
//! handled at once (`handler`, run by `actors::worker::PerCommand`) through a `PaymentProvider`
//! (`infra::payment_provider`).

pub mod handler;

use sqlx::PgPool;
use std::sync::Arc;

use crate::actors::service::ServiceArgs;
use crate::actors::worker::command_service;
use crate::config::Config;
use crate::domain::envelope::topics;
use crate::infra::db::writer::Writers;
use crate::infra::payment_provider::PaymentProvider;

/// The payment service: consumes `payment.commands` in batches of at most `payment.workers`
/// commands (and so provider calls) per partition.
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
    command_service(
        config,
        producer,
        "payment",
        topics::PAYMENT_COMMANDS,
        workers,
        handler,
        instance,
    )
}
