//! Metrics in one place: every name and its help text, and the Prometheus recorder. Labels are
//! bounded sets (route, code, service); never an order id.

use std::sync::OnceLock;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

pub const HTTP_REQUESTS: &str = "orderflow_http_requests_total";
pub const HTTP_DURATION: &str = "orderflow_http_request_duration_seconds";
pub const ORDERS_ACCEPTED: &str = "orderflow_orders_accepted_total";
pub const ORDERS_REJECTED: &str = "orderflow_orders_rejected_total";
pub const INTAKE_OPEN_ORDERS: &str = "orderflow_intake_open_orders";
pub const OUTBOX_PUBLISHED: &str = "orderflow_outbox_published_total";
pub const OUTBOX_PUBLISH_ERRORS: &str = "orderflow_outbox_publish_errors_total";
pub const OUTBOX_BATCH_SECONDS: &str = "orderflow_outbox_batch_seconds";
pub const BRIDGE_RECORDS: &str = "orderflow_bridge_records_total";
pub const BRIDGE_RETRIES: &str = "orderflow_bridge_retries_total";
pub const BRIDGE_PAUSES: &str = "orderflow_bridge_partition_pauses_total";
pub const BRIDGE_IN_FLIGHT: &str = "orderflow_bridge_in_flight";
pub const SAGA_EVENTS: &str = "orderflow_saga_events_total";
pub const SAGA_ACTIVE: &str = "orderflow_saga_actors_active";
pub const ACTOR_RESTARTS: &str = "orderflow_actor_restarts_total";
pub const WRITER_BATCH_JOBS: &str = "orderflow_writer_batch_jobs";
pub const WRITER_BATCH_SECONDS: &str = "orderflow_writer_batch_seconds";
pub const WRITER_SPLITS: &str = "orderflow_writer_batch_splits_total";
pub const GROUP_ITEMS: &str = "orderflow_db_group_items";
pub const CONSUMER_BATCH_RECORDS: &str = "orderflow_consumer_batch_records";
pub const HANDLER_BATCH_RECORDS: &str = "orderflow_handler_batch_records";
pub const CONSUMER_RECORD_AGE: &str = "orderflow_consumer_record_age_seconds";
pub const CIRCUIT_STATE: &str = "orderflow_circuit_state";
pub const CIRCUIT_TRANSITIONS: &str = "orderflow_circuit_transitions_total";
pub const AUTH_FAILURES: &str = "orderflow_auth_failures_total";
pub const AUTH_JWKS_FETCHES: &str = "orderflow_auth_jwks_fetches_total";
pub const RATE_LIMITED: &str = "orderflow_rate_limited_total";
pub const IDEMPOTENT_REPLAYS: &str = "orderflow_idempotent_replays_total";
pub const CACHE_LOOKUPS: &str = "orderflow_cache_lookups_total";
pub const CACHE_INVALIDATIONS: &str = "orderflow_cache_invalidations_total";
pub const CACHE_INVALIDATION_ERRORS: &str = "orderflow_cache_invalidation_errors_total";
pub const RATE_LIMIT_ERRORS: &str = "orderflow_rate_limit_errors_total";

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Installs the global recorder once and returns the handle `/metrics` renders.
pub fn install() -> PrometheusHandle {
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new()
                .set_buckets(&[
                    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
                ])
                .and_then(|b| {
                    b.set_buckets_for_metric(
                        metrics_exporter_prometheus::Matcher::Full(WRITER_BATCH_JOBS.into()),
                        &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0],
                    )
                })
                .and_then(|b| {
                    b.set_buckets_for_metric(
                        metrics_exporter_prometheus::Matcher::Full(GROUP_ITEMS.into()),
                        &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0],
                    )
                })
                .and_then(|b| {
                    b.set_buckets_for_metric(
                        metrics_exporter_prometheus::Matcher::Full(CONSUMER_BATCH_RECORDS.into()),
                        &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0],
                    )
                })
                .and_then(|b| {
                    b.set_buckets_for_metric(
                        metrics_exporter_prometheus::Matcher::Full(HANDLER_BATCH_RECORDS.into()),
                        &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0],
                    )
                })
                .map(PrometheusBuilder::build_recorder);
            let recorder = match recorder {
                Ok(r) => r,
                // Only an empty bucket list fails; fall back to summaries.
                Err(_) => PrometheusBuilder::new().build_recorder(),
            };
            let handle = recorder.handle();
            // Fails only if another recorder is installed; then ours simply stays unused.
            drop(metrics::set_global_recorder(recorder));
            describe();
            spawn_upkeep(handle.clone());
            handle
        })
        .clone()
}

/// How often histogram observations are folded into their buckets without a scrape.
const UPKEEP_EVERY: std::time::Duration = std::time::Duration::from_secs(5);

/// The recorder keeps every histogram observation (8 bytes each, dozens per order) until
/// something folds it into the buckets: a scrape of `/metrics` does, and so does this thread,
/// every [`UPKEEP_EVERY`], as the builder's own `install` does, so a process that nobody
/// scrapes does not grow without bound.
fn spawn_upkeep(handle: PrometheusHandle) {
    let started = std::thread::Builder::new()
        .name("metrics-upkeep".into())
        .spawn(move || {
            loop {
                std::thread::sleep(UPKEEP_EVERY);
                handle.run_upkeep();
            }
        });
    if let Err(e) = started {
        tracing::warn!(error = %e, "cannot start the metrics upkeep; histograms are folded only by scrapes");
    }
}

fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram};
    describe_counter!(HTTP_REQUESTS, "HTTP requests by route, method and status");
    describe_counter!(
        AUTH_FAILURES,
        "Requests refused for their bearer token, by reason (missing, expired, bad signature, missing scope...)"
    );
    describe_counter!(
        CACHE_LOOKUPS,
        "Read-cache lookups by cache (product, products, order) and outcome (hit, miss, error)"
    );
    describe_counter!(CACHE_INVALIDATIONS, "Read-cache entries invalidated");
    describe_counter!(
        CACHE_INVALIDATION_ERRORS,
        "Read-cache drains that failed (Redis or PostgreSQL unreachable); their change rows are retried"
    );
    describe_counter!(
        IDEMPOTENT_REPLAYS,
        "Requests answered with the stored response of their Idempotency-Key, by route"
    );
    describe_counter!(
        RATE_LIMITED,
        "Requests refused with 429, by the limit that refused them (ip, subject)"
    );
    describe_counter!(
        RATE_LIMIT_ERRORS,
        "Requests whose rate limit Redis could not check, by the configured mode (open: admitted, closed: refused)"
    );
    describe_counter!(
        AUTH_JWKS_FETCHES,
        "Fetches of the token issuer's keys (JWKS), by outcome"
    );
    describe_histogram!(HTTP_DURATION, "HTTP request latency by route");
    describe_counter!(ORDERS_ACCEPTED, "Orders committed by the API");
    describe_histogram!(
        WRITER_BATCH_JOBS,
        "Jobs committed together in one writer transaction, by schema"
    );
    describe_histogram!(
        GROUP_ITEMS,
        "Requests written together by one set-based statement group (reservations, stock commits)"
    );
    describe_histogram!(
        CONSUMER_BATCH_RECORDS,
        "Records a service's consumer took from Kafka in one batch (what one poll had fetched), by service"
    );
    describe_histogram!(
        CONSUMER_RECORD_AGE,
        "Age of a record when its service's consumer received it (its producer's timestamp to now: producer batching, the broker, fetch waits), by service"
    );
    describe_histogram!(
        HANDLER_BATCH_RECORDS,
        "Records a batch handler decided together (one partition's records that waited), by service"
    );
    describe_histogram!(
        WRITER_BATCH_SECONDS,
        "Time to run and commit one writer batch, by schema"
    );
    describe_counter!(
        WRITER_SPLITS,
        "Writer batches rolled back because one job failed, then run job by job"
    );
    describe_counter!(ORDERS_REJECTED, "Order requests rejected, by error code");
    describe_gauge!(
        INTAKE_OPEN_ORDERS,
        "Orders this process accepted that are not yet confirmed or cancelled (bounded by http.max_open_orders)"
    );
    describe_gauge!(
        CIRCUIT_STATE,
        "Circuit breaker state by dependency: 0 closed, 1 half-open, 2 open"
    );
    describe_counter!(
        CIRCUIT_TRANSITIONS,
        "Circuit breaker state changes, by dependency and new state"
    );
    describe_counter!(
        OUTBOX_PUBLISHED,
        "Outbox rows published to Kafka, by schema"
    );
    describe_counter!(
        OUTBOX_PUBLISH_ERRORS,
        "Outbox batches that failed to publish"
    );
    describe_histogram!(
        OUTBOX_BATCH_SECONDS,
        "Time to publish and mark one outbox batch"
    );
    describe_counter!(
        BRIDGE_RECORDS,
        "Kafka records handled by partition bridges, by outcome"
    );
    describe_counter!(BRIDGE_RETRIES, "Records retried by partition bridges");
    describe_counter!(
        BRIDGE_PAUSES,
        "Times a bridge paused its partition for backpressure"
    );
    describe_gauge!(
        BRIDGE_IN_FLIGHT,
        "Records dispatched and not yet durable, per service"
    );
    describe_counter!(SAGA_EVENTS, "Events applied by order sagas, by outcome");
    describe_gauge!(SAGA_ACTIVE, "Order saga actors alive");
    describe_counter!(
        ACTOR_RESTARTS,
        "Actors restarted by their supervisor, by actor kind"
    );
}
