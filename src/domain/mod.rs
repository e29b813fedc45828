//! Pure domain types: identifiers, money, orders, the message envelope and the saga's state
//! machine. Nothing here performs I/O or imports another module of the crate.

pub mod documents;
pub mod envelope;
pub mod ids;
pub mod money;
pub mod order;
pub mod saga;
pub mod sniff;
pub mod templates;

/// A JSON number as a whole number: an integer, or a float with a zero fraction (`62.0` is an
/// integer in JSON Schema, so clients may send it) of at most 2^53 in magnitude.
pub fn whole_number(n: &serde_json::Number) -> Option<i64> {
    n.as_i64().or_else(|| {
        n.as_f64()
            .filter(|f| f.fract() == 0.0 && f.abs() <= 9.0e15)
            .map(|f| f as i64)
    })
}
