//! Renders and stores the invoice of each confirmed order (`OrderConfirmed`) and the receipt of
//! each card payment (`PaymentAuthorized`), once.
//!
//! The object keys are derived from the order id (`invoices/<order id>/invoice.pdf`,
//! `receipts/<order id>/receipt.pdf`), so a redelivered message can never make a second
//! document: an order that has its document recorded is skipped, and a crash between the upload
//! and the record only means the same key is written again on redelivery.
//!
//! A partition's records are handled as a batch: one query finds the documents already
//! recorded, the rest are rendered and uploaded concurrently (at most `files.workers` at once
//! per process, through the S3 circuit), and the stored ones are recorded with their inbox
//! rows and announcements by one statement. A failed upload fails its own record only.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use async_trait::async_trait;
use futures::StreamExt;
use sha2::{Digest, Sha256};
use sqlx::PgPool;
use tokio::sync::Semaphore;

use crate::actors::batch::{BatchHandler, Message};
use crate::actors::bridge::{HandleError, HandleResult, Handled};
use crate::config::Config;
use crate::domain::documents::{Invoice, Receipt};
use crate::domain::envelope::{InvoiceStored, OrderConfirmed, PaymentAuthorized, ReceiptStored};
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
    /// Documents rendered and uploaded at once, across the process's batches.
    uploads: Arc<Semaphore>,
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
            uploads: Arc::new(Semaphore::new(config.files.workers.max(1))),
        }
    }
}

/// The document a message asks for, not rendered yet.
enum Wanted {
    Invoice(Invoice),
    Receipt(Receipt),
}

/// One document to store for the message at `index` of its batch.
struct Job {
    index: usize,
    order_id: uuid::Uuid,
    kind: &'static str,
    customer_id: Option<String>,
    wanted: Wanted,
}

impl FileHandler {
    /// What `message` asks for: a document to store, or nothing (`Ok(None)`).
    fn plan(&self, index: usize, message: &Message) -> Result<Option<Job>, HandleError> {
        let envelope = &message.envelope;
        let poison = |e: crate::domain::envelope::EnvelopeError| HandleError::Poison(e.to_string());
        let order_id = envelope.order_id.as_uuid();
        if envelope.is::<OrderConfirmed>() {
            let confirmed = envelope.payload_as::<OrderConfirmed>().map_err(poison)?;
            let customer_id = confirmed.customer_id.as_ref().map(ToString::to_string);
            Ok(Some(Job {
                index,
                order_id,
                kind: INVOICE,
                customer_id: customer_id.clone(),
                wanted: Wanted::Invoice(Invoice {
                    order_id,
                    customer_id: customer_id.unwrap_or_else(|| "unknown".into()),
                    issued_at: envelope.occurred_at,
                    seller: self.seller.clone(),
                    currency: confirmed.currency,
                    lines: confirmed.lines,
                    total_minor: confirmed.total_minor,
                    vat_percent: self.vat_percent,
                }),
            }))
        } else if envelope.is::<PaymentAuthorized>() {
            let paid = envelope.payload_as::<PaymentAuthorized>().map_err(poison)?;
            Ok(Some(Job {
                index,
                order_id,
                kind: RECEIPT,
                customer_id: None,
                wanted: Wanted::Receipt(Receipt {
                    order_id,
                    issued_at: envelope.occurred_at,
                    seller: self.seller.clone(),
                    currency: paid.currency,
                    amount_minor: paid.amount_minor,
                    provider_ref: paid.provider_ref,
                }),
            }))
        } else {
            Ok(None)
        }
    }

    /// Renders `job`'s document and stores it in S3 through the circuit: while S3 is down the
    /// record waits (retried without a limit by its bridge) instead of burning its attempts
    /// and landing in the dead-letter topic.
    async fn upload(&self, job: Job) -> (usize, Result<Document, HandleError>) {
        let index = job.index;
        let Ok(_permit) = self.uploads.acquire().await else {
            return (
                index,
                Err(HandleError::Transient("the file service stopped".into())),
            );
        };
        let (key, bytes) = match &job.wanted {
            Wanted::Invoice(invoice) => (invoice_key(job.order_id), invoice.render_pdf()),
            Wanted::Receipt(receipt) => (receipt_key(job.order_id), receipt.render_pdf()),
        };
        let digest: [u8; 32] = Sha256::digest(&bytes).into();
        let size_bytes = i64::try_from(bytes.len()).unwrap_or(i64::MAX);
        let put = self
            .breaker
            .call(s3::put_document(
                &self.s3,
                &self.bucket,
                &key,
                bytes,
                PDF,
                &digest,
                &[
                    ("order-id", job.order_id.to_string()),
                    ("kind", job.kind.to_owned()),
                ],
            ))
            .await;
        if let Err(e) = put {
            return (index, Err(HandleError::Unavailable(e.to_string())));
        }
        let record = Document {
            order_id: job.order_id,
            kind: job.kind.into(),
            bucket: self.bucket.clone(),
            object_key: key,
            size_bytes,
            sha256: s3::hex(&digest),
            content_type: PDF.into(),
            customer_id: job.customer_id,
            created_at: chrono::Utc::now(),
        };
        (index, Ok(record))
    }

    /// Records a stored document with its inbox row and announcement (joining the group of
    /// the batch's other documents).
    async fn record(&self, message: &Message, record: Document) -> HandleResult {
        let cause = Cause {
            consumer: CONSUMER,
            message_id: message.envelope.id,
            traceparent: message.traceparent.clone(),
        };
        let stored = if record.kind == INVOICE {
            self.records
                .record(&cause, &record, &InvoiceStored(record.stored()))
                .await
        } else {
            self.records
                .record(&cause, &record, &ReceiptStored(record.stored()))
                .await
        };
        match stored {
            Ok(true) => {
                tracing::info!(order_id = %record.order_id, kind = %record.kind, key = %record.object_key, bytes = record.size_bytes, "document stored");
                Ok(Handled::Applied)
            }
            Ok(false) => Ok(Handled::Duplicate),
            Err(e) => Err(HandleError::Transient(e.to_string())),
        }
    }
}

#[async_trait]
impl BatchHandler for FileHandler {
    async fn handle_batch(&self, batch: &[Message]) -> Vec<HandleResult> {
        let mut results: Vec<Option<HandleResult>> = vec![None; batch.len()];
        let mut jobs = Vec::new();
        // A second message for a document of the batch (a redelivery) takes the first's outcome.
        let mut first_of: HashMap<(uuid::Uuid, &'static str), usize> = HashMap::new();
        let mut repeats: Vec<(usize, usize)> = Vec::new();
        for (index, message) in batch.iter().enumerate() {
            match self.plan(index, message) {
                Ok(Some(job)) => match first_of.get(&(job.order_id, job.kind)) {
                    Some(&first) => repeats.push((index, first)),
                    None => {
                        first_of.insert((job.order_id, job.kind), index);
                        jobs.push(job);
                    }
                },
                Ok(None) => results[index] = Some(Ok(Handled::Ignored)),
                Err(e) => results[index] = Some(Err(e)),
            }
        }
        if !jobs.is_empty() {
            let keys: Vec<(uuid::Uuid, &str)> = jobs.iter().map(|j| (j.order_id, j.kind)).collect();
            match repo::recorded(&self.pool, &keys).await {
                Ok(recorded) => {
                    let recorded: HashSet<(uuid::Uuid, String)> = recorded.into_iter().collect();
                    jobs.retain(|j| {
                        let known = recorded.contains(&(j.order_id, j.kind.to_owned()));
                        if known {
                            results[j.index] = Some(Ok(Handled::Duplicate));
                        }
                        !known
                    });
                }
                Err(e) => {
                    for j in jobs.drain(..) {
                        results[j.index] = Some(Err(HandleError::Transient(e.to_string())));
                    }
                }
            }
        }
        let uploads: Vec<_> = futures::stream::iter(jobs.into_iter().map(|job| self.upload(job)))
            .buffer_unordered(batch.len().max(1))
            .collect()
            .await;
        let mut stored = Vec::new();
        for (index, outcome) in uploads {
            match outcome {
                Ok(document) => stored.push((index, document)),
                Err(e) => results[index] = Some(Err(e)),
            }
        }
        let recorded =
            futures::future::join_all(stored.into_iter().map(|(index, document)| async move {
                (index, self.record(&batch[index], document).await)
            }))
            .await;
        for (index, result) in recorded {
            results[index] = Some(result);
        }
        for (index, first) in repeats {
            results[index] = Some(match &results[first] {
                Some(Ok(_)) => Ok(Handled::Duplicate),
                Some(Err(e)) => Err(e.clone()),
                None => Err(HandleError::Transient("its twin was not handled".into())),
            });
        }
        results
            .into_iter()
            .map(|r| r.unwrap_or_else(|| Err(HandleError::Transient("not handled".into()))))
            .collect()
    }
}
