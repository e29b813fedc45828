//! Mails the customer about their order, once per event.
//!
//! `OrderPlaced` tells where the order's mails go (`notifications.recipients`). Each
//! customer-visible event is then looked up in the notification log by its message id and
//! template: a logged SENT or SKIPPED notification is never sent again, so a redelivered event
//! mails nothing twice. An order without an address is logged SKIPPED. A failed send is logged
//! FAILING with the error and retried by the partition bridge without a limit (through the
//! SMTP circuit), so nothing is dropped while the server is away. A crash between the SMTP
//! server's acceptance and the log write sends that one mail again: SMTP has no idempotency key.

use std::sync::Arc;

use async_trait::async_trait;
use sqlx::PgPool;

use crate::actors::bridge::{HandleError, HandleResult, Handled};
use crate::actors::worker::CommandHandler;
use crate::config::Config;
use crate::domain::documents::money;
use crate::domain::envelope::{
    Envelope, InvoiceStored, OrderCancelled, OrderConfirmed, OrderPlaced,
};
use crate::domain::templates::{self, Notice};
use crate::infra::circuit::{CallError, CircuitBreaker};
use crate::infra::db::notifications::{self as repo, Attempt, NotificationWrites};
use crate::infra::db::writer::Writers;
use crate::infra::smtp::{Mail, Mailer};

pub struct NotificationHandler {
    pool: PgPool,
    mailer: Mailer,
    breaker: Arc<CircuitBreaker>,
    writes: NotificationWrites,
    seller: String,
    public_url: String,
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
        }
    }

    async fn notify(&self, envelope: &Envelope, notice: Notice) -> HandleResult {
        let transient = |e: &dyn std::fmt::Display| HandleError::Transient(e.to_string());
        let template = notice.template();
        let order_id = envelope.order_id.as_uuid();
        // The order's OrderPlaced precedes its other events on order.events; an invoice
        // (file.events) can overtake it only while this service catches up: retried.
        let known = repo::known(&self.pool, order_id, envelope.id, template)
            .await
            .map_err(|e| transient(&e))?
            .ok_or_else(|| {
                transient(&format!(
                    "the recipient of order {order_id} is not known yet"
                ))
            })?;
        if matches!(known.status.as_deref(), Some("SENT" | "SKIPPED")) {
            return Ok(Handled::Duplicate);
        }
        let rendered = templates::render(&self.seller, order_id, &notice);
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
        match self.breaker.call(self.mailer.send(&mail)).await {
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

#[async_trait]
impl CommandHandler for NotificationHandler {
    async fn handle(&self, envelope: Envelope, _traceparent: Option<String>) -> HandleResult {
        let poison = |e: crate::domain::envelope::EnvelopeError| HandleError::Poison(e.to_string());
        if envelope.is::<OrderPlaced>() {
            let placed = envelope.payload_as::<OrderPlaced>().map_err(poison)?;
            self.writes
                .remember_recipient(
                    envelope.order_id.as_uuid(),
                    placed.customer_id.to_string(),
                    placed.email,
                )
                .await
                .map_err(|e| HandleError::Transient(e.to_string()))?;
            Ok(Handled::Applied)
        } else if envelope.is::<OrderConfirmed>() {
            let c = envelope.payload_as::<OrderConfirmed>().map_err(poison)?;
            let total = money(c.currency, c.total_minor);
            self.notify(&envelope, Notice::OrderConfirmed { total })
                .await
        } else if envelope.is::<OrderCancelled>() {
            let c = envelope.payload_as::<OrderCancelled>().map_err(poison)?;
            self.notify(&envelope, Notice::OrderCancelled { reason: c.reason })
                .await
        } else if envelope.is::<InvoiceStored>() {
            envelope.payload_as::<InvoiceStored>().map_err(poison)?;
            let link = format!(
                "{}/v1/orders/{}/invoice",
                self.public_url, envelope.order_id
            );
            self.notify(&envelope, Notice::InvoiceReady { link }).await
        } else {
            Ok(Handled::Ignored)
        }
    }
}
