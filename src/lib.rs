//! orderflow: an e-commerce order-processing pipeline. Five services form one saga per order and
//! talk only through Kafka; each keeps its state in PostgreSQL. The runtime is a ractor
//! supervision tree (`actors`), the HTTP edge is warp (`api`), adapters to outside systems live
//! in `infra`, and `domain` holds the pure types. `app` wires them together.

pub mod actors;
pub mod admission;
pub mod api;
pub mod app;
pub mod auth;
pub mod config;
pub mod domain;
pub mod infra;
pub mod invariants;
pub mod load;
pub mod metrics;
pub mod telemetry;

pub use app::App;
pub use config::Config;
