//! Renders and stores the invoice of each confirmed order (`OrderConfirmed`) and the receipt of
//! each card payment (`PaymentAuthorized`), once.
//!
//! The object keys are derived from the order id (`invoices/<order id>/invoice.pdf`,
//! `receipts/<order id>/receipt.pdf`), so a redelivered message can never make a second
//! document: an order that has its document recorded is skipped, and a crash between the upload
//! and the record only means the same key is written again on redelivery.

use std::sync::Arc;

use async_trait::async_trait;
use sha2::{Digest, Sha256};
use sqlx::PgPool;

use crate::actors::bridge::{HandleError, HandleResult, Handled};
use crate::actors::worker::CommandHandler;
use crate::config::Config;
use crate::domain::documents::{Invoice, Receipt};
use crate::domain::envelope::{
    Envelope, InvoiceStored, OrderConfirmed, PaymentAuthorized, ReceiptStored, StoredDocument,
};
use crate::infra::circuit::CircuitBreaker;
use crate::infra::db::files::{self as repo, Cause, Document, Records};
use crate::infra::db::messaging::Schema;
use crate::infra::db::writer::Writers;
use crate::infra::s3;

/// The inbox consumer name of the invoice handler.
pub const CONSUMER: &str = "file-invoices";
pub const INVOICE: &str = "invoice";
pub const RECEIPT: &str = "receipt";
const PDF: &str = "application/pdf";

/// Where an order's invoice lives in the bucket.
pub fn invoice_key(order_id: uuid::Uuid) -> String {
    format!("invoices/{order_id}/invoice.pdf")
}

/// Where the receipt of an order's payment lives in the bucket.
pub fn receipt_key(order_id: uuid::Uuid) -> String {
    format!("receipts/{order_id}/receipt.pdf")
}

pub struct FileHandler {
    pool: PgPool,
    s3: aws_sdk_s3::Client,
    breaker: Arc<CircuitBreaker>,
    bucket: String,
    seller: String,
    vat_percent: u32,
    records: Records,
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
            records: Records::start(
                writers.get(Schema::Files).clone(),
                config.database.batch_max,
            ),
        }
    }
}

/// A rendered document on its way to S3 and the record.
struct Rendered {
    kind: &'static str,
    key: String,
    bytes: Vec<u8>,
    customer_id: Option<String>,
}

impl FileHandler {
    /// Stores `doc` in S3 (through the circuit), records it and announces it, once per order
    /// and kind.
    async fn store<P: crate::domain::envelope::Payload>(
        &self,
        envelope: &Envelope,
        traceparent: Option<String>,
        doc: Rendered,
        announce: impl FnOnce(StoredDocument) -> P,
    ) -> HandleResult {
        let order_id = envelope.order_id.as_uuid();
        let digest: [u8; 32] = Sha256::digest(&doc.bytes).into();
        let size_bytes = i64::try_from(doc.bytes.len()).unwrap_or(i64::MAX);
        // Through the circuit: while S3 is down the record waits (retried without a limit by
        // its bridge) instead of burning its attempts and landing in the dead-letter topic.
        self.breaker
            .call(s3::put_document(
                &self.s3,
                &self.bucket,
                &doc.key,
                doc.bytes,
                PDF,
                &digest,
                &[
                    ("order-id", order_id.to_string()),
                    ("kind", doc.kind.to_owned()),
                ],
            ))
            .await
            .map_err(|e| HandleError::Unavailable(e.to_string()))?;
        let record = Document {
            order_id,
            kind: doc.kind.into(),
            bucket: self.bucket.clone(),
            object_key: doc.key,
            size_bytes,
            sha256: s3::hex(&digest),
            content_type: PDF.into(),
            customer_id: doc.customer_id,
            created_at: chrono::Utc::now(),
        };
        let cause = Cause {
            consumer: CONSUMER,
            message_id: envelope.id,
            traceparent,
        };
        let announcement = announce(record.stored());
        let stored = self
            .records
            .record(&cause, &record, &announcement)
            .await
            .map_err(|e| HandleError::Transient(e.to_string()))?;
        if stored {
            tracing::info!(order_id = %order_id, kind = doc.kind, key = %record.object_key, bytes = record.size_bytes, "document stored");
            Ok(Handled::Applied)
        } else {
            Ok(Handled::Duplicate)
        }
    }

    async fn exists(&self, order_id: uuid::Uuid, kind: &str) -> Result<bool, HandleError> {
        Ok(repo::document(&self.pool, order_id, kind)
            .await
            .map_err(|e| HandleError::Transient(e.to_string()))?
            .is_some())
    }
}

#[async_trait]
impl CommandHandler for FileHandler {
    async fn handle(&self, envelope: Envelope, traceparent: Option<String>) -> HandleResult {
        let poison = |e: crate::domain::envelope::EnvelopeError| HandleError::Poison(e.to_string());
        let order_id = envelope.order_id.as_uuid();
        if envelope.is::<OrderConfirmed>() {
            let confirmed = envelope.payload_as::<OrderConfirmed>().map_err(poison)?;
            if self.exists(order_id, INVOICE).await? {
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
            let doc = Rendered {
                kind: INVOICE,
                key: invoice_key(order_id),
                bytes: invoice.render_pdf(),
                customer_id,
            };
            self.store(&envelope, traceparent, doc, InvoiceStored).await
        } else if envelope.is::<PaymentAuthorized>() {
            let paid = envelope.payload_as::<PaymentAuthorized>().map_err(poison)?;
            if self.exists(order_id, RECEIPT).await? {
                return Ok(Handled::Duplicate);
            }
            let receipt = Receipt {
                order_id,
                issued_at: envelope.occurred_at,
                seller: self.seller.clone(),
                currency: paid.currency,
                amount_minor: paid.amount_minor,
                provider_ref: paid.provider_ref,
            };
            let doc = Rendered {
                kind: RECEIPT,
                key: receipt_key(order_id),
                bytes: receipt.render_pdf(),
                customer_id: None,
            };
            self.store(&envelope, traceparent, doc, ReceiptStored).await
        } else {
            Ok(Handled::Ignored)
        }
    }
}
