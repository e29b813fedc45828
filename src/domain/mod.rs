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
