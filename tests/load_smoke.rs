//! A short run of the load generator against the whole system in this process: every order it
//! sends is accepted and followed to its terminal state, and the report adds up. Throughput
//! numbers are not asserted here (they belong to `orderflow load` runs and the closing notes).

mod support;

use std::time::Duration;

use orderflow::load::{LoadOptions, run};
use support::TestEnv;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn load_run_follows_every_order_to_its_end() {
    let env = TestEnv::new().await;
    let out = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("{}-load.json", env.db_name));
    let opts = LoadOptions {
        token: None,
        url: None,
        rate: 25,
        duration: Duration::from_secs(2),
        customers: 5,
        skus: 3,
        settle: Duration::from_secs(60),
        out: Some(out.clone()),
        metrics_out: None,
    };
    let report = run(env.config.clone(), opts)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(report.sent, 50);
    assert_eq!(report.accepted, 50, "errors: {:?}", report.errors);
    assert_eq!(report.confirmed, 50);
    assert_eq!(report.unfinished, 0);
    assert_eq!(report.post_latency_ms.count, 50);
    assert_eq!(report.accepted_to_terminal_ms.count, 50);
    assert!(report.max_rss_mib > 0.0);
    let written: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&out).unwrap_or_default()).unwrap_or_default();
    assert_eq!(written["accepted"], 50);
    // The stock commits follow the confirmations (the saga sends CommitStock after
    // OrderConfirmed): wait for them before reconciling.
    support::eventually(
        Duration::from_secs(30),
        "orders, payments and stock reconcile",
        || async {
            let report = orderflow::invariants::check(&env.pool, None).await.ok()?;
            report.is_clean().then_some(())
        },
    )
    .await;
    env.cleanup().await;
}
