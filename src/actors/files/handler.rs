//! Renders and stores the invoice of each confirmed order, once.
//!
//! The object key is derived from the order id (`invoices/<order id>/invoice.pdf`), so a
//! redelivered `OrderConfirmed` can never make a second invoice: an order that has its
//! document recorded is skipped, and a crash between the upload and the record only means the
//! same key is written again on redelivery.

use std::sync::Arc;

use async_trait::async_trait;
use sha2::{Digest, Sha256};
use sqlx::PgPool;

use crate::actors::bridge::{HandleError, HandleResult, Handled};
use crate::actors::worker::CommandHandler;
use crate::config::Config;
use crate::domain::envelope::{Envelope, OrderConfirmed};
use crate::domain::invoice::Invoice;
use crate::infra::circuit::CircuitBreaker;
use crate::infra::db::files::{self as repo, Cause, Document};
use crate::infra::db::messaging::Schema;
use crate::infra::db::writer::Writers;
use crate::infra::s3;

/// The inbox consumer name of the invoice handler.
pub const CONSUMER: &str = "file-invoices";
pub const INVOICE: &str = "invoice";
const PDF: &str = "application/pdf";

/// Where an order's invoice lives in the bucket.
pub fn invoice_key(order_id: uuid::Uuid) -> String {
    format!("invoices/{order_id}/invoice.pdf")
}

pub struct FileHandler {
    pool: PgPool,
    s3: aws_sdk_s3::Client,
    breaker: Arc<CircuitBreaker>,
    bucket: String,
    seller: String,
    vat_percent: u32,
    writers: Writers,
}

impl FileHandler {
    pub fn new(
        config: &Config,
        pool: PgPool,
        s3: aws_sdk_s3::Client,
        breaker: Arc<CircuitBreaker>,
        writers: Writers,
    ) -> Self {
        Self {
            pool,
            s3,
            breaker,
            bucket: config.s3.bucket.clone(),
            seller: config.files.seller.clone(),
            vat_percent: config.files.vat_percent,
            writers,
        }
    }
}

#[async_trait]
impl CommandHandler for FileHandler {
    async fn handle(&self, envelope: Envelope, traceparent: Option<String>) -> HandleResult {
        if !envelope.is::<OrderConfirmed>() {
            return Ok(Handled::Ignored);
        }
        let confirmed = envelope
            .payload_as::<OrderConfirmed>()
            .map_err(|e| HandleError::Poison(e.to_string()))?;
        let order_id = envelope.order_id.as_uuid();
        let transient = |e: &dyn std::fmt::Display| HandleError::Transient(e.to_string());
        if repo::document(&self.pool, order_id, INVOICE)
            .await
            .map_err(|e| transient(&e))?
            .is_some()
        {
            return Ok(Handled::Duplicate);
        }
        let customer_id = confirmed.customer_id.as_ref().map(ToString::to_string);
        let invoice = Invoice {
            order_id,
            customer_id: customer_id.clone().unwrap_or_else(|| "unknown".into()),
            issued_at: envelope.occurred_at,
            seller: self.seller.clone(),
            currency: confirmed.currency,
            lines: confirmed.lines,
            total_minor: confirmed.total_minor,
            vat_percent: self.vat_percent,
        };
        let bytes = invoice.render_pdf();
        let digest: [u8; 32] = Sha256::digest(&bytes).into();
        let key = invoice_key(order_id);
        let size_bytes = i64::try_from(bytes.len()).unwrap_or(i64::MAX);
        // Through the circuit: while S3 is down the record waits (retried without a limit by
        // its bridge) instead of burning its attempts and landing in the dead-letter topic.
        self.breaker
            .call(s3::put_document(
                &self.s3,
                &self.bucket,
                &key,
                bytes,
                PDF,
                &digest,
                &[
                    ("order-id", order_id.to_string()),
                    ("kind", INVOICE.to_owned()),
                ],
            ))
            .await
            .map_err(|e| HandleError::Unavailable(e.to_string()))?;
        let doc = Document {
            order_id,
            kind: INVOICE.into(),
            bucket: self.bucket.clone(),
            object_key: key,
            size_bytes,
            sha256: s3::hex(&digest),
            content_type: PDF.into(),
            customer_id,
            created_at: chrono::Utc::now(),
        };
        let cause = Cause {
            consumer: CONSUMER,
            message_id: envelope.id,
            traceparent,
        };
        let stored = repo::record(self.writers.get(Schema::Files), &cause, &doc)
            .await
            .map_err(|e| transient(&e))?;
        if stored {
            tracing::info!(order_id = %order_id, key = %doc.object_key, bytes = doc.size_bytes, "invoice stored");
            Ok(Handled::Applied)
        } else {
            Ok(Handled::Duplicate)
        }
    }
}
