//! The order service: its supervisor (`service`) and the per-order saga actor (`saga`).

pub mod saga;
pub mod service;
