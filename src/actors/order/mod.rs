//! The order service: the router that hands order events to sagas (`router`) and the
//! per-order saga actor (`saga`). Its supervisor is the generic `actors::service`.

pub mod router;
pub mod saga;
pub mod timers;
