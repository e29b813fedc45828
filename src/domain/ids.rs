//! Identifier newtypes that reject bad input at the boundary.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// An order's id: a UUIDv7, so ids sort by creation time (used for cursor pagination).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct OrderId(Uuid);

impl OrderId {
    pub fn new() -> Self {
        Self(Uuid::now_v7())
    }
    pub fn from_uuid(id: Uuid) -> Self {
        Self(id)
    }
    pub fn as_uuid(&self) -> Uuid {
        self.0
    }
}

impl Default for OrderId {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Display for OrderId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl FromStr for OrderId {
    type Err = uuid::Error;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Uuid::try_parse(s).map(Self)
    }
}

/// Characters allowed in customer ids and SKUs besides ASCII letters and digits.
fn is_id_char(c: char, extra: &str) -> bool {
    c.is_ascii_alphanumeric() || extra.contains(c)
}

fn validate_token(value: &str, max: usize, extra: &str) -> bool {
    !value.is_empty() && value.len() <= max && value.chars().all(|c| is_id_char(c, extra))
}

/// A customer's id as the identity provider knows it (1–64 chars of `[A-Za-z0-9._:@-]`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct CustomerId(String);

impl CustomerId {
    pub const MAX_LEN: usize = 64;
    pub fn parse(value: &str) -> Option<Self> {
        validate_token(value, Self::MAX_LEN, "._:@-").then(|| Self(value.to_owned()))
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for CustomerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A stock-keeping unit (1–64 chars of `[A-Za-z0-9._-]`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Sku(String);

impl Sku {
    pub const MAX_LEN: usize = 64;
    pub fn parse(value: &str) -> Option<Self> {
        validate_token(value, Self::MAX_LEN, "._-").then(|| Self(value.to_owned()))
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Sku {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn customer_ids_reject_empty_long_and_odd_characters() {
        assert!(CustomerId::parse("cust-42@shop").is_some());
        assert!(CustomerId::parse("").is_none());
        assert!(CustomerId::parse(&"a".repeat(65)).is_none());
        assert!(CustomerId::parse("bob smith").is_none());
        assert!(CustomerId::parse("x;drop").is_none());
    }

    #[test]
    fn skus_reject_spaces_and_unicode() {
        assert!(Sku::parse("SKU-001.blue_L").is_some());
        assert!(Sku::parse("SKU 1").is_none());
        assert!(Sku::parse("ſku").is_none());
    }

    #[test]
    fn order_ids_are_time_ordered_v7() {
        let a = OrderId::new();
        let b = OrderId::new();
        assert_eq!(a.as_uuid().get_version_num(), 7);
        assert!(a < b);
        assert_eq!(a.to_string().parse::<OrderId>().ok(), Some(a));
    }
}
