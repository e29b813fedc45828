//! Adapters to the outside systems, one module each. Nothing here knows about actors or HTTP.

pub mod cache;
pub mod circuit;
pub mod db;
pub mod dlq;
pub mod kafka;
pub mod outbox;
pub mod payment_provider;
pub mod ratelimit;
pub mod redis;
pub mod s3;
pub mod smtp;
