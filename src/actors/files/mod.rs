//! The file service: a batch handler per partition renders each confirmed order's invoice and
//! each payment's receipt as PDFs, store them in S3 under keys derived from the order id, record them and
//! announce `InvoiceStored` / `ReceiptStored`.

pub mod handler;

use sqlx::PgPool;
use std::sync::Arc;

use crate::actors::batch::batch_service;
use crate::actors::service::ServiceArgs;
use crate::config::Config;
use crate::domain::envelope::topics;
use crate::infra::circuit::CircuitBreaker;
use crate::infra::db::writer::Writers;

/// The file service: consumes `order.events` and `payment.events` in batches.
pub fn service(
    config: Arc<Config>,
    producer: rdkafka::producer::FutureProducer,
    pool: PgPool,
    s3: aws_sdk_s3::Client,
    s3_breaker: Arc<CircuitBreaker>,
    writers: Writers,
    instance: String,
) -> ServiceArgs {
    let handler = Arc::new(handler::FileHandler::new(
        &config, pool, s3, s3_breaker, writers,
    ));
    let batch_max = config.database.batch_max;
    batch_service(
        config,
        producer,
        "file",
        vec![topics::ORDER_EVENTS, topics::PAYMENT_EVENTS],
        batch_max,
        handler,
        instance,
    )
}
