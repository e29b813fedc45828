//! Orders: the intake request, its validation into a `NewOrder`, and the order's status.

use std::collections::HashSet;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use super::ids::{CustomerId, Sku};
use super::money::Currency;

pub const MAX_LINES: usize = 100;
pub const MAX_QUANTITY: i64 = 1_000;

/// The body of `POST /v1/orders` as it arrives. Fields stay loose (`serde_json::Number` for the
/// quantity) so that every kind of bad value gets its own error code from [`PlaceOrder::validate`]
/// instead of a generic deserialization failure.
#[derive(Debug, Clone, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"customer_id": "c-1", "currency": "EUR", "card_token": "tok_visa",
    "email": "c-1@example.com", "lines": [{"sku": "BOOK-RUST", "quantity": 2}]}))]
pub struct PlaceOrder {
    /// The customer: must be the token's subject unless the token has `orders:admin`.
    #[schema(min_length = 1, max_length = 64, pattern = "^[A-Za-z0-9._:@-]+$")]
    pub customer_id: String,
    /// An accepted ISO 4217 code (EUR, USD, GBP, JPY, ...; `unknown_currency` otherwise).
    #[schema(example = "EUR")]
    pub currency: String,
    /// 1 to 100 lines, each sku at most once.
    #[schema(min_items = 1, max_items = 100)]
    pub lines: Vec<PlaceOrderLine>,
    /// The payment card's token; `tok_visa` when absent (see the payment provider's rules).
    #[serde(default)]
    #[schema(pattern = "^[a-z0-9_]{1,64}$", example = "tok_visa")]
    pub card_token: Option<String>,
    /// Where the customer's notifications go; none are mailed when absent.
    #[serde(default)]
    #[schema(max_length = 254, example = "c-1@example.com")]
    pub email: Option<String>,
}

#[derive(Debug, Clone, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PlaceOrderLine {
    #[schema(
        min_length = 1,
        max_length = 64,
        pattern = "^[A-Za-z0-9._-]+$",
        example = "BOOK-RUST"
    )]
    pub sku: String,
    #[schema(value_type = i64, minimum = 1, maximum = 1000, example = 2)]
    pub quantity: serde_json::Number,
}

/// A validated order line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderLine {
    pub sku: Sku,
    pub quantity: u32,
}

/// A validated order, ready to be stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewOrder {
    pub customer_id: CustomerId,
    pub currency: Currency,
    pub lines: Vec<OrderLine>,
    pub card_token: String,
    pub email: Option<String>,
}

/// The longest accepted email address (RFC 5321's path limit).
pub const MAX_EMAIL_LEN: usize = 254;

/// A plausible mailbox: `local@domain.tld`, printable ASCII without spaces or angle brackets,
/// at most [`MAX_EMAIL_LEN`] characters. Deliverability is the mail server's business.
pub fn valid_email(s: &str) -> bool {
    let Some((local, domain)) = s.split_once('@') else {
        return false;
    };
    let allowed = |b: u8| {
        b.is_ascii_graphic()
            && !matches!(
                b,
                b'<' | b'>' | b'(' | b')' | b',' | b';' | b'"' | b'\\' | b'[' | b']'
            )
    };
    s.len() <= MAX_EMAIL_LEN
        && !local.is_empty()
        && local.len() <= 64
        && domain.contains('.')
        && !domain.starts_with('.')
        && !domain.ends_with('.')
        && !domain.contains('@')
        && s.bytes().all(allowed)
}

/// The card token used when an order names none.
pub const DEFAULT_CARD_TOKEN: &str = "tok_visa";

/// Why an order request is invalid. Each variant maps to one stable API error code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OrderValidationError {
    #[error(
        "customer_id must be 1-{} characters of letters, digits and ._:@-",
        CustomerId::MAX_LEN
    )]
    InvalidCustomerId,
    #[error("currency {0:?} is not an accepted ISO 4217 code")]
    UnknownCurrency(String),
    #[error("an order needs at least one line")]
    NoLines,
    #[error("an order has at most {MAX_LINES} lines, got {0}")]
    TooManyLines(usize),
    #[error(
        "line {line}: sku must be 1-{} characters of letters, digits and ._-",
        Sku::MAX_LEN
    )]
    InvalidSku { line: usize },
    #[error("line {line}: quantity must be a whole number from 1 to {MAX_QUANTITY}")]
    InvalidQuantity { line: usize },
    #[error("line {line}: sku {sku} appears more than once")]
    DuplicateSku { line: usize, sku: String },
    #[error("card_token must be 1-64 characters of lowercase letters, digits and _")]
    InvalidCardToken,
    #[error("email must be an address like name@example.com, at most {MAX_EMAIL_LEN} characters")]
    InvalidEmail,
}

impl PlaceOrder {
    pub fn validate(&self) -> Result<NewOrder, OrderValidationError> {
        let customer_id =
            CustomerId::parse(&self.customer_id).ok_or(OrderValidationError::InvalidCustomerId)?;
        let currency = Currency::parse(&self.currency)
            .ok_or_else(|| OrderValidationError::UnknownCurrency(self.currency.clone()))?;
        if self.lines.is_empty() {
            return Err(OrderValidationError::NoLines);
        }
        if self.lines.len() > MAX_LINES {
            return Err(OrderValidationError::TooManyLines(self.lines.len()));
        }
        let mut seen = HashSet::with_capacity(self.lines.len());
        let mut lines = Vec::with_capacity(self.lines.len());
        for (i, line) in self.lines.iter().enumerate() {
            let sku = Sku::parse(&line.sku).ok_or(OrderValidationError::InvalidSku { line: i })?;
            let quantity = super::whole_number(&line.quantity)
                .filter(|q| (1..=MAX_QUANTITY).contains(q))
                .and_then(|q| u32::try_from(q).ok())
                .ok_or(OrderValidationError::InvalidQuantity { line: i })?;
            if !seen.insert(sku.clone()) {
                return Err(OrderValidationError::DuplicateSku {
                    line: i,
                    sku: sku.to_string(),
                });
            }
            lines.push(OrderLine { sku, quantity });
        }
        let card_token = match &self.card_token {
            None => DEFAULT_CARD_TOKEN.to_owned(),
            Some(t)
                if !t.is_empty()
                    && t.len() <= 64
                    && t.bytes()
                        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_') =>
            {
                t.clone()
            }
            Some(_) => return Err(OrderValidationError::InvalidCardToken),
        };
        let email = match &self.email {
            None => None,
            Some(e) if valid_email(e) => Some(e.clone()),
            Some(_) => return Err(OrderValidationError::InvalidEmail),
        };
        Ok(NewOrder {
            customer_id,
            currency,
            lines,
            card_token,
            email,
        })
    }
}

/// Where an order stands, as clients see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum OrderStatus {
    Pending,
    Confirmed,
    Cancelled,
}

impl OrderStatus {
    pub fn as_str(&self) -> &'static str {
        match self {
            OrderStatus::Pending => "PENDING",
            OrderStatus::Confirmed => "CONFIRMED",
            OrderStatus::Cancelled => "CANCELLED",
        }
    }
    pub fn is_terminal(&self) -> bool {
        matches!(self, OrderStatus::Confirmed | OrderStatus::Cancelled)
    }
}

impl fmt::Display for OrderStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for OrderStatus {
    type Err = ();
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "PENDING" => Ok(OrderStatus::Pending),
            "CONFIRMED" => Ok(OrderStatus::Confirmed),
            "CANCELLED" => Ok(OrderStatus::Cancelled),
            _ => Err(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(json: &str) -> PlaceOrder {
        match serde_json::from_str(json) {
            Ok(r) => r,
            Err(e) => panic!("test request does not parse: {e}"),
        }
    }

    fn with_lines(lines: &str) -> PlaceOrder {
        request(&format!(
            r#"{{"customer_id":"c1","currency":"EUR","lines":{lines}}}"#
        ))
    }

    #[test]
    fn a_good_order_validates() {
        let order = with_lines(r#"[{"sku":"A-1","quantity":2.0},{"sku":"B-2","quantity":1000}]"#)
            .validate();
        let order = order.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(order.lines.len(), 2);
        assert_eq!(order.lines[1].quantity, 1000);
        assert_eq!(order.currency.code(), "EUR");
    }

    #[test]
    fn each_bad_quantity_is_rejected_with_its_line() {
        for q in ["0", "-1", "1001", "1.5", "1e30", "99999999999999999999"] {
            let err = with_lines(&format!(
                r#"[{{"sku":"A","quantity":1}},{{"sku":"B","quantity":{q}}}]"#
            ))
            .validate();
            assert_eq!(
                err,
                Err(OrderValidationError::InvalidQuantity { line: 1 }),
                "quantity {q}"
            );
        }
    }

    #[test]
    fn empty_too_many_and_duplicate_lines_are_rejected() {
        assert_eq!(
            with_lines("[]").validate(),
            Err(OrderValidationError::NoLines)
        );
        let many: Vec<String> = (0..101)
            .map(|i| format!(r#"{{"sku":"S{i}","quantity":1}}"#))
            .collect();
        assert_eq!(
            with_lines(&format!("[{}]", many.join(","))).validate(),
            Err(OrderValidationError::TooManyLines(101))
        );
        assert!(matches!(
            with_lines(r#"[{"sku":"A","quantity":1},{"sku":"A","quantity":2}]"#).validate(),
            Err(OrderValidationError::DuplicateSku { line: 1, .. })
        ));
    }

    #[test]
    fn unknown_currency_and_bad_customer_are_rejected() {
        let r =
            request(r#"{"customer_id":"c1","currency":"XYZ","lines":[{"sku":"A","quantity":1}]}"#);
        assert_eq!(
            r.validate(),
            Err(OrderValidationError::UnknownCurrency("XYZ".into()))
        );
        let r =
            request(r#"{"customer_id":"","currency":"EUR","lines":[{"sku":"A","quantity":1}]}"#);
        assert_eq!(r.validate(), Err(OrderValidationError::InvalidCustomerId));
    }

    #[test]
    fn emails_are_optional_and_checked() {
        for good in ["a@b.co", "first.last+tag@shop.example.com"] {
            assert!(valid_email(good), "{good}");
        }
        for bad in [
            "", "a", "a@b", "@b.co", "a@.co", "a@b.co.", "a b@c.co", "a@b@c.co", "<a@b.co>",
            "é@b.co",
        ] {
            assert!(!valid_email(bad), "{bad}");
        }
        let long = format!("{}@example.com", "a".repeat(250));
        assert!(!valid_email(&long));
    }

    #[test]
    fn card_tokens_default_and_are_checked() {
        let r =
            request(r#"{"customer_id":"c1","currency":"EUR","lines":[{"sku":"A","quantity":1}]}"#);
        assert_eq!(
            r.validate().map(|o| o.card_token).ok().as_deref(),
            Some("tok_visa")
        );
        let r = request(
            r#"{"customer_id":"c1","currency":"EUR","lines":[{"sku":"A","quantity":1}],"card_token":"tok_decline"}"#,
        );
        assert_eq!(
            r.validate().map(|o| o.card_token).ok().as_deref(),
            Some("tok_decline")
        );
        let r = request(
            r#"{"customer_id":"c1","currency":"EUR","lines":[{"sku":"A","quantity":1}],"card_token":"4111 1111"}"#,
        );
        assert_eq!(r.validate(), Err(OrderValidationError::InvalidCardToken));
    }

    #[test]
    fn unknown_fields_do_not_deserialize() {
        let r = serde_json::from_str::<PlaceOrder>(
            r#"{"customer_id":"c1","currency":"EUR","lines":[],"discount":5}"#,
        );
        assert!(r.is_err());
    }

    #[test]
    fn status_round_trips() {
        for s in [
            OrderStatus::Pending,
            OrderStatus::Confirmed,
            OrderStatus::Cancelled,
        ] {
            assert_eq!(s.as_str().parse::<OrderStatus>(), Ok(s));
        }
        assert!("pending".parse::<OrderStatus>().is_err());
    }
}
