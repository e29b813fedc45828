//! Currencies and amounts in minor units (no floats for money).

use std::fmt;

use serde::{Deserialize, Serialize};

/// The ISO 4217 codes the shop accepts. An unknown code is rejected at the boundary.
const ACCEPTED: &[(&str, u8)] = &[
    ("AUD", 2),
    ("BRL", 2),
    ("CAD", 2),
    ("CHF", 2),
    ("CNY", 2),
    ("CZK", 2),
    ("DKK", 2),
    ("EUR", 2),
    ("GBP", 2),
    ("HKD", 2),
    ("INR", 2),
    ("JPY", 0),
    ("KRW", 0),
    ("MXN", 2),
    ("NOK", 2),
    ("NZD", 2),
    ("PLN", 2),
    ("SEK", 2),
    ("SGD", 2),
    ("USD", 2),
    ("ZAR", 2),
];

/// An accepted ISO 4217 currency code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Currency {
    code: [u8; 3],
    minor_digits: u8,
}

impl Currency {
    /// Every accepted code.
    pub fn codes() -> impl Iterator<Item = &'static str> {
        ACCEPTED.iter().map(|(code, _)| *code)
    }

    pub fn parse(code: &str) -> Option<Self> {
        ACCEPTED
            .iter()
            .find(|(c, _)| *c == code)
            .map(|(c, digits)| {
                let b = c.as_bytes();
                Self {
                    code: [b[0], b[1], b[2]],
                    minor_digits: *digits,
                }
            })
    }
    pub fn code(&self) -> &str {
        // The code comes from the ASCII table above.
        std::str::from_utf8(&self.code).unwrap_or("XXX")
    }
    pub fn minor_digits(&self) -> u8 {
        self.minor_digits
    }
}

impl fmt::Display for Currency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.code())
    }
}

impl TryFrom<String> for Currency {
    type Error = String;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Currency::parse(&value).ok_or_else(|| format!("unknown currency {value:?}"))
    }
}

impl From<Currency> for String {
    fn from(c: Currency) -> Self {
        c.code().to_owned()
    }
}

/// An amount in the currency's minor unit (cents for EUR, yen for JPY).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Money {
    pub minor: i64,
    pub currency: Currency,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_codes_parse_and_unknown_ones_do_not() {
        let eur = Currency::parse("EUR");
        assert_eq!(eur.map(|c| c.minor_digits()), Some(2));
        assert_eq!(Currency::parse("JPY").map(|c| c.minor_digits()), Some(0));
        assert!(Currency::parse("eur").is_none());
        assert!(Currency::parse("XXX").is_none());
        assert!(Currency::parse("").is_none());
    }

    #[test]
    fn currency_round_trips_through_json() {
        let c = Currency::parse("USD");
        let json = serde_json::to_string(&c).unwrap_or_default();
        assert_eq!(json, "\"USD\"");
        let back: Option<Currency> = serde_json::from_str(&json).ok();
        assert_eq!(back, c);
        assert!(serde_json::from_str::<Currency>("\"ABC\"").is_err());
    }
}
