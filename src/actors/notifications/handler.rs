//! Mails the customer about their order, once per event.
//!
//! `OrderPlaced` tells where the order's mails go (`notifications.recipients`). Each
//! customer-visible event is then looked up in the notification log by its message id and
//! template: a logged SENT or SKIPPED notification is never sent again, so a redelivered event
//! mails nothing twice. An order without an address is logged SKIPPED. A failed send is logged
//! FAILING with the error and retried by the partition bridge without a limit (through the
//! SMTP circuit), so nothing is dropped while the server is away. A crash between the SMTP
//! server's acceptance and the log write sends that one mail again: SMTP has no idempotency key.
//!
//! A partition's records are handled as a batch: the batch's recipients are remembered by one
//! statement first (an order's `OrderPlaced` precedes its other events in the partition), one
//! query then reads the recipients and log entries of all its events, the mails go out
//! concurrently (at most `notifications.workers` at once per process, through the circuit) and
//! the attempts are logged by one statement. A failed mail fails its own record only.

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use futures::{FutureExt, StreamExt};
use sqlx::PgPool;
use tokio::sync::Semaphore;

use crate::actors::batch::{BatchHandler, Message};
use crate::actors::bridge::{HandleError, HandleResult, Handled};
use crate::config::Config;
use crate::domain::documents::money;
use crate::domain::envelope::{
    Envelope, InvoiceStored, OrderCancelled, OrderConfirmed, OrderPlaced,
};
use crate::domain::templates::{self, Notice};
use crate::infra::circuit::{CallError, CircuitBreaker};
use crate::infra::db::notifications::{self as repo, Asked, Attempt, Known, NotificationWrites};
use crate::infra::db::writer::Writers;
use crate::infra::smtp::{Mail, Mailer};

pub struct NotificationHandler {
    pool: PgPool,
    mailer: Mailer,
    breaker: Arc<CircuitBreaker>,
    writes: NotificationWrites,
    seller: String,
    public_url: String,
    /// Mails sent at once, across the process's batches.
    sending: Arc<Semaphore>,
}

impl NotificationHandler {
    pub fn new(
        config: &Config,
        pool: PgPool,
        mailer: Mailer,
        breaker: Arc<CircuitBreaker>,
        writers: Writers,
    ) -> Self {
        Self {
            pool,
            mailer,
            breaker,
            writes: NotificationWrites::start(
                writers.notifications().clone(),
                config.database.batch_max,
            ),
            seller: config.files.seller.clone(),
            public_url: config
                .notifications
                .public_url
                .trim_end_matches('/')
                .to_owned(),
            sending: Arc::new(Semaphore::new(config.notifications.workers.max(1))),
        }
    }

    /// What `message` asks for: a recipient to remember, a notice to send, or nothing.
    fn plan(&self, message: &Message) -> Result<Plan, HandleError> {
        let envelope = &message.envelope;
        let poison = |e: crate::domain::envelope::EnvelopeError| HandleError::Poison(e.to_string());
        if envelope.is::<OrderPlaced>() {
            let placed = envelope.payload_as::<OrderPlaced>().map_err(poison)?;
            Ok(Plan::Remember {
                customer_id: placed.customer_id.to_string(),
                email: placed.email,
            })
        } else if envelope.is::<OrderConfirmed>() {
            let c = envelope.payload_as::<OrderConfirmed>().map_err(poison)?;
            let total = money(c.currency, c.total_minor);
            Ok(Plan::Notify(Notice::OrderConfirmed { total }))
        } else if envelope.is::<OrderCancelled>() {
            let c = envelope.payload_as::<OrderCancelled>().map_err(poison)?;
            Ok(Plan::Notify(Notice::OrderCancelled { reason: c.reason }))
        } else if envelope.is::<InvoiceStored>() {
            envelope.payload_as::<InvoiceStored>().map_err(poison)?;
            let link = format!(
                "{}/v1/orders/{}/invoice",
                self.public_url, envelope.order_id
            );
            Ok(Plan::Notify(Notice::InvoiceReady { link }))
        } else {
            Ok(Plan::Nothing)
        }
    }

    /// Mails one notice (or logs it SKIPPED for an order without an address) and logs the
    /// attempt with the batch's other attempts.
    async fn notify(&self, envelope: &Envelope, notice: &Notice, known: Known) -> HandleResult {
        let transient = |e: &dyn std::fmt::Display| HandleError::Transient(e.to_string());
        if matches!(known.status.as_deref(), Some("SENT" | "SKIPPED")) {
            return Ok(Handled::Duplicate);
        }
        let template = notice.template();
        let order_id = envelope.order_id.as_uuid();
        let rendered = templates::render(&self.seller, order_id, notice);
        let mut attempt = Attempt {
            event_id: envelope.id,
            template,
            order_id,
            recipient: known.email.clone(),
            subject: rendered.subject.clone(),
            status: "SKIPPED",
            error: None,
        };
        let Some(to) = known.email else {
            self.writes.log(attempt).await.map_err(|e| transient(&e))?;
            return Ok(Handled::Applied);
        };
        let mail = Mail {
            to,
            subject: rendered.subject.clone(),
            text: rendered.text,
            html: rendered.html,
        };
        let sent = {
            let Ok(_permit) = self.sending.acquire().await else {
                return Err(transient(&"the notification service stopped"));
            };
            self.breaker.call(self.mailer.send(&mail)).await
        };
        match sent {
            Ok(()) => {
                attempt.status = "SENT";
                self.writes.log(attempt).await.map_err(|e| transient(&e))?;
                tracing::info!(order_id = %order_id, template, "notification sent");
                Ok(Handled::Applied)
            }
            Err(e) => {
                let text = e.to_string();
                if !matches!(e, CallError::Open(_)) {
                    attempt.status = "FAILING";
                    attempt.error = Some(text.clone());
                    self.writes.log(attempt).await.map_err(|e| transient(&e))?;
                }
                Err(HandleError::Unavailable(text))
            }
        }
    }
}

/// What one message asks of the notification service.
enum Plan {
    Remember {
        customer_id: String,
        email: Option<String>,
    },
    Notify(Notice),
    Nothing,
}

#[async_trait]
impl BatchHandler for NotificationHandler {
    async fn handle_batch(&self, batch: &[Message]) -> Vec<HandleResult> {
        let transient = |e: &dyn std::fmt::Display| HandleError::Transient(e.to_string());
        let mut results: Vec<Option<HandleResult>> = vec![None; batch.len()];
        let mut remember = Vec::new();
        let mut notices = Vec::new();
        // A second copy of an event in the batch (a redelivery) takes the first's outcome.
        let mut first_of: HashMap<(uuid::Uuid, &'static str), usize> = HashMap::new();
        let mut repeats = Vec::new();
        for (index, message) in batch.iter().enumerate() {
            match self.plan(message) {
                Ok(Plan::Remember { customer_id, email }) => {
                    remember.push((index, customer_id, email))
                }
                Ok(Plan::Notify(notice)) => {
                    let key = (message.envelope.id, notice.template());
                    match first_of.get(&key) {
                        Some(&first) => repeats.push((index, first)),
                        None => {
                            first_of.insert(key, index);
                            notices.push((index, notice));
                        }
                    }
                }
                Ok(Plan::Nothing) => results[index] = Some(Ok(Handled::Ignored)),
                Err(e) => results[index] = Some(Err(e)),
            }
        }
        // Recipients first: the batch's later events of those orders need them.
        let remembered = futures::future::join_all(remember.into_iter().map(
            |(index, customer_id, email)| async move {
                let order_id = batch[index].envelope.order_id.as_uuid();
                let done = self
                    .writes
                    .remember_recipient(order_id, customer_id, email)
                    .await;
                (
                    index,
                    done.map(|()| Handled::Applied).map_err(|e| transient(&e)),
                )
            },
        ))
        .await;
        for (index, result) in remembered {
            results[index] = Some(result);
        }
        if !notices.is_empty() {
            let asked: Vec<Asked<'_>> = notices
                .iter()
                .map(|(index, notice)| Asked {
                    order_id: batch[*index].envelope.order_id.as_uuid(),
                    event_id: batch[*index].envelope.id,
                    template: notice.template(),
                })
                .collect();
            match repo::known_all(&self.pool, &asked).await {
                Ok(known) => {
                    let sends = notices
                        .into_iter()
                        .zip(known)
                        .map(|((index, notice), known)| {
                            let envelope = &batch[index].envelope;
                            async move {
                                // The order's OrderPlaced precedes its other events on
                                // order.events; an invoice (file.events) can overtake it only
                                // while this service catches up: retried.
                                let result = match known {
                                    Some(known) => self.notify(envelope, &notice, known).await,
                                    None => Err(transient(&format!(
                                        "the recipient of order {} is not known yet",
                                        envelope.order_id
                                    ))),
                                };
                                (index, result)
                            }
                            .boxed()
                        });
                    let sent: Vec<_> = futures::stream::iter(sends)
                        .buffer_unordered(batch.len())
                        .collect()
                        .await;
                    for (index, result) in sent {
                        results[index] = Some(result);
                    }
                }
                Err(e) => {
                    for (index, _) in &notices {
                        results[*index] = Some(Err(transient(&e)));
                    }
                }
            }
        }
        for (index, first) in repeats {
            results[index] = Some(match &results[first] {
                Some(Ok(_)) => Ok(Handled::Duplicate),
                Some(Err(e)) => Err(e.clone()),
                None => Err(transient(&"its twin was not handled")),
            });
        }
        results
            .into_iter()
            .map(|r| r.unwrap_or_else(|| Err(transient(&"not handled"))))
            .collect()
    }
}
