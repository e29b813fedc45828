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
        services: orderflow::actors::Service::ALL.to_vec(),
        profile: "all".into(),
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
    assert_eq!(report.not_terminal, 0);
    assert_eq!(report.post_ms.count, 50);
    assert_eq!(report.e2e_ms.count, 50);
    assert!(report.rss_mib_max > 0.0);
    // The costs of the window are measured: this process did the work, the database ran
    // statements for it and the deployment published its messages.
    assert!(report.completed_per_s > 0.0);
    let cpu = &report.costs.cpu_ms_per_order;
    assert!(cpu.get("orderflow").is_some_and(|ms| *ms > 0.0), "{cpu:?}");
    assert!(
        cpu.contains_key("postgres") && cpu.contains_key("kafka"),
        "{cpu:?}"
    );
    assert!(
        report
            .costs
            .kafka_messages_per_order
            .is_some_and(|n| n > 1.0),
        "{:?}",
        report.costs
    );
    assert!(
        report
            .costs
            .batch_mean
            .keys()
            .any(|k| k.starts_with("consumer:")),
        "{:?}",
        report.costs.batch_mean
    );
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
