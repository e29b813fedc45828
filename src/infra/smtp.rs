//! SMTP: sends a rendered mail (plain text and HTML alternatives) to the configured server —
//! mailpit locally, any SMTP relay in production. Plain SMTP without TLS is only for loopback
//! servers; the URL scheme says which (`smtp://` plain, `smtps://` TLS is not built in yet and
//! is refused at start).

use std::time::Duration;

use lettre::message::{Mailbox, MultiPart};
use lettre::transport::smtp::AsyncSmtpTransport;
use lettre::{AsyncTransport, Message, Tokio1Executor};

use crate::config::SmtpConfig;

#[derive(Debug, thiserror::Error)]
pub enum SmtpError {
    #[error("smtp configuration: {0}")]
    Config(String),
    #[error("mail to {to} could not be built: {message}")]
    Build { to: String, message: String },
    #[error("smtp send failed: {0}")]
    Send(String),
}

/// A mail ready to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mail {
    pub to: String,
    pub subject: String,
    pub text: String,
    pub html: String,
}

/// A connection pool to the SMTP server and the sender address.
#[derive(Clone)]
pub struct Mailer {
    transport: AsyncSmtpTransport<Tokio1Executor>,
    from: Mailbox,
}

impl Mailer {
    pub fn new(config: &SmtpConfig) -> Result<Mailer, SmtpError> {
        let rest = config.url.strip_prefix("smtp://").ok_or_else(|| {
            SmtpError::Config(format!(
                "smtp.url must be smtp://host:port, got {:?}",
                config.url
            ))
        })?;
        let (host, port) = match rest.trim_end_matches('/').rsplit_once(':') {
            Some((h, p)) => (
                h.to_owned(),
                p.parse::<u16>()
                    .map_err(|_| SmtpError::Config(format!("bad port in {:?}", config.url)))?,
            ),
            None => (rest.trim_end_matches('/').to_owned(), 25),
        };
        let transport = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(host)
            .port(port)
            .timeout(Some(Duration::from_millis(config.timeout_ms)))
            .build();
        let from = config
            .from
            .parse::<Mailbox>()
            .map_err(|e| SmtpError::Config(format!("smtp.from {:?}: {e}", config.from)))?;
        Ok(Mailer { transport, from })
    }

    pub async fn send(&self, mail: &Mail) -> Result<(), SmtpError> {
        let to = mail.to.parse::<Mailbox>().map_err(|e| SmtpError::Build {
            to: mail.to.clone(),
            message: e.to_string(),
        })?;
        let message = Message::builder()
            .from(self.from.clone())
            .to(to)
            .subject(mail.subject.clone())
            .multipart(MultiPart::alternative_plain_html(
                mail.text.clone(),
                mail.html.clone(),
            ))
            .map_err(|e| SmtpError::Build {
                to: mail.to.clone(),
                message: e.to_string(),
            })?;
        self.transport
            .send(message)
            .await
            .map_err(|e| SmtpError::Send(e.to_string()))?;
        Ok(())
    }
}
