//! What a load run costs, read from the outside of the pipeline: CPU per local server process
//! (from `/proc`), SQL statements (from `pg_stat_statements`), and Kafka messages and batch
//! sizes (from the deployment's own Prometheus metrics). Each is a snapshot; a run takes one
//! when its send window opens and one when it closes, and divides the difference by the orders
//! completed in between.

use std::collections::{BTreeMap, HashMap};

use serde::Serialize;

/// The local server processes a run charges CPU to, by the names the report uses.
pub const PROCESS_CLASSES: [&str; 6] = ["orderflow", "postgres", "kafka", "s3", "smtp", "redis"];

/// Clock ticks per second of `/proc/<pid>/stat` times (`USER_HZ`, 100 on every Linux
/// architecture this project builds for).
const TICKS_PER_S: f64 = 100.0;

/// CPU time (ticks) used so far, per process class.
#[derive(Debug, Clone, Default)]
pub struct CpuSnapshot(BTreeMap<&'static str, u64>);

impl CpuSnapshot {
    /// Reads every process in `/proc`. `in_process`: orderflow is this process (the load
    /// generator runs the services); otherwise it is every other process named `orderflow`.
    pub fn take(in_process: bool) -> Self {
        let own = std::process::id();
        let mut ticks: BTreeMap<&'static str, u64> =
            PROCESS_CLASSES.iter().map(|c| (*c, 0)).collect();
        let Ok(entries) = std::fs::read_dir("/proc") else {
            return Self(ticks);
        };
        for entry in entries.flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<u32>().ok())
            else {
                continue;
            };
            let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
                continue;
            };
            let Some((comm, used)) = parse_stat(&stat) else {
                continue;
            };
            let class = if pid == own {
                in_process.then_some("orderflow")
            } else {
                classify(comm, || {
                    std::fs::read(entry.path().join("cmdline")).unwrap_or_default()
                })
                .filter(|c| *c != "orderflow" || !in_process)
            };
            if let Some(class) = class
                && let Some(t) = ticks.get_mut(class)
            {
                *t += used;
            }
        }
        Self(ticks)
    }

    /// Milliseconds of CPU per order for each class between `self` (earlier) and `later`.
    pub fn per_order(&self, later: &CpuSnapshot, orders: u64) -> BTreeMap<String, f64> {
        let orders = orders.max(1) as f64;
        later
            .0
            .iter()
            .map(|(class, after)| {
                let before = self.0.get(class).copied().unwrap_or(0);
                let ms = after.saturating_sub(before) as f64 / TICKS_PER_S * 1_000.0;
                ((*class).to_owned(), round3(ms / orders))
            })
            .collect()
    }
}

/// `(comm, utime + stime + cutime + cstime)` of a `/proc/<pid>/stat` line. Children's times
/// count because PostgreSQL's postmaster reaps its backends: a backend that exits inside the
/// window moves its time there.
fn parse_stat(stat: &str) -> Option<(&str, u64)> {
    let open = stat.find('(')?;
    let close = stat.rfind(')')?;
    let comm = stat.get(open + 1..close)?;
    // After the name: state (field 3), …, utime (14), stime (15), cutime (16), cstime (17).
    let fields: Vec<&str> = stat.get(close + 1..)?.split_whitespace().collect();
    let sum = fields
        .get(11..15)?
        .iter()
        .map(|f| f.parse::<i64>().unwrap_or(0).max(0) as u64)
        .sum();
    Some((comm, sum))
}

/// Which server a process is, by its name (and for Java, by its command line).
fn classify(comm: &str, cmdline: impl FnOnce() -> Vec<u8>) -> Option<&'static str> {
    match comm {
        "postgres" => Some("postgres"),
        "s3s-fs" | "versitygw" => Some("s3"),
        "mailpit" => Some("smtp"),
        "redis-server" => Some("redis"),
        "orderflow" => Some("orderflow"),
        "java" => {
            let cmd = cmdline();
            cmd.windows(b"kafka.Kafka".len())
                .any(|w| w == b"kafka.Kafka")
                .then_some("kafka")
        }
        _ => None,
    }
}

/// Statements PostgreSQL has executed in the current database so far, from
/// `pg_stat_statements` (`None` when the extension is not installed there).
pub async fn statements(pool: &sqlx::PgPool) -> Option<i64> {
    sqlx::query_scalar::<_, i64>(
        "SELECT coalesce(sum(calls), 0)::bigint FROM pg_stat_statements
         WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database())",
    )
    .fetch_one(pool)
    .await
    .ok()
}

/// Tuples read by sequential scans so far, per table of the current database
/// (`pg_stat_user_tables`; `None` when it cannot be read). A table scanned whole while it
/// grows is a plan made for an empty table (docs/performance.md).
pub async fn seq_tuples(pool: &sqlx::PgPool) -> Option<BTreeMap<String, i64>> {
    let rows = sqlx::query_as::<_, (String, i64)>(
        "SELECT schemaname || '.' || relname, coalesce(seq_tup_read, 0)::bigint
         FROM pg_stat_user_tables",
    )
    .fetch_all(pool)
    .await
    .ok()?;
    Some(rows.into_iter().collect())
}

/// The database's `fsync` setting: results with it off are not comparable.
pub async fn fsync(pool: &sqlx::PgPool) -> Option<String> {
    sqlx::query_scalar::<_, String>("SELECT current_setting('fsync')")
        .fetch_one(pool)
        .await
        .ok()
}

/// Values of a Prometheus text exposition, by series (`name{labels}`).
#[derive(Debug, Clone, Default)]
pub struct MetricsSnapshot(HashMap<String, f64>);

/// The histograms whose mean is a stage's batch size, and the label that names the stage.
const BATCH_HISTOGRAMS: [(&str, &str, &str); 4] = [
    (
        crate::metrics::CONSUMER_BATCH_RECORDS,
        "service",
        "consumer",
    ),
    (crate::metrics::HANDLER_BATCH_RECORDS, "service", "handler"),
    (crate::metrics::WRITER_BATCH_JOBS, "schema", "writer"),
    (crate::metrics::GROUP_ITEMS, "group", "group"),
];

/// The histograms of seconds whose mean is a stage's time, and the label that names the stage.
const STAGE_HISTOGRAMS: [(&str, &str, &str); 3] = [
    (crate::metrics::CONSUMER_RECORD_AGE, "service", "delivery"),
    (crate::metrics::WRITER_BATCH_SECONDS, "schema", "writer"),
    (crate::metrics::OUTBOX_BATCH_SECONDS, "schema", "relay"),
];

impl MetricsSnapshot {
    pub fn parse(text: &str) -> Self {
        let values = text
            .lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(|l| {
                let (series, value) = l.rsplit_once(' ')?;
                Some((series.trim().to_owned(), value.trim().parse::<f64>().ok()?))
            })
            .collect();
        Self(values)
    }

    /// The sum of every series of `name` (any labels).
    fn total(&self, name: &str) -> f64 {
        self.0
            .iter()
            .filter(|(series, _)| {
                series
                    .strip_prefix(name)
                    .is_some_and(|rest| rest.is_empty() || rest.starts_with('{'))
            })
            .map(|(_, v)| v)
            .sum()
    }

    /// Kafka messages the deployment published (outbox rows, by either path) since `earlier`.
    pub fn published_since(&self, earlier: &MetricsSnapshot) -> f64 {
        let name = crate::metrics::OUTBOX_PUBLISHED;
        self.total(name) - earlier.total(name)
    }

    /// Mean batch size per stage since `earlier` (`consumer:<service>`, `writer:<schema>`,
    /// `group:<group>`), for stages that ran in between.
    pub fn batch_means_since(&self, earlier: &MetricsSnapshot) -> BTreeMap<String, f64> {
        self.means_since(earlier, &BATCH_HISTOGRAMS, 1.0)
    }

    /// Mean milliseconds per stage since `earlier`: a record's age when its service's consumer
    /// received it (`delivery:<service>`), a writer transaction (`writer:<schema>`), a relay
    /// batch (`relay:<schema>`).
    pub fn stage_ms_since(&self, earlier: &MetricsSnapshot) -> BTreeMap<String, f64> {
        self.means_since(earlier, &STAGE_HISTOGRAMS, 1_000.0)
    }

    fn means_since(
        &self,
        earlier: &MetricsSnapshot,
        histograms: &[(&str, &str, &str)],
        scale: f64,
    ) -> BTreeMap<String, f64> {
        let mut out = BTreeMap::new();
        for &(name, label, stage) in histograms {
            let count_prefix = format!("{name}_count{{");
            for (series, count) in &self.0 {
                let Some(labels) = series.strip_prefix(&count_prefix) else {
                    continue;
                };
                let Some(value) = label_value(labels, label) else {
                    continue;
                };
                let sum_series = format!("{name}_sum{{{labels}");
                let count = count - earlier.0.get(series).copied().unwrap_or(0.0);
                let sum = self.0.get(&sum_series).copied().unwrap_or(0.0)
                    - earlier.0.get(&sum_series).copied().unwrap_or(0.0);
                if count > 0.0 {
                    out.insert(format!("{stage}:{value}"), round3(scale * sum / count));
                }
            }
        }
        out
    }
}

/// Tuples read by sequential scans between two readings, per table that had any.
fn seq_delta(a: &BTreeMap<String, i64>, b: &BTreeMap<String, i64>) -> BTreeMap<String, i64> {
    b.iter()
        .map(|(table, n)| (table.clone(), n - a.get(table).copied().unwrap_or(0)))
        .filter(|(_, d)| *d > 0)
        .collect()
}

/// `value` of `label="value"` in a series' label text (`a="x",b="y"}`).
fn label_value<'a>(labels: &'a str, label: &str) -> Option<&'a str> {
    let start = labels.find(&format!("{label}=\""))? + label.len() + 2;
    let rest = labels.get(start..)?;
    rest.get(..rest.find('"')?)
}

fn round3(v: f64) -> f64 {
    (v * 1_000.0).round() / 1_000.0
}

/// What a run's send window cost, per completed order.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Costs {
    /// CPU milliseconds per completed order, per local process class.
    pub cpu_ms_per_order: BTreeMap<String, f64>,
    /// SQL statements per completed order (`None` without `pg_stat_statements`).
    pub sql_statements_per_order: Option<f64>,
    /// Kafka messages the deployment published per completed order (`None` when its metrics
    /// could not be read).
    pub kafka_messages_per_order: Option<f64>,
    /// Mean batch size per stage over the window.
    pub batch_mean: BTreeMap<String, f64>,
    /// Mean milliseconds per stage over the window (see [`MetricsSnapshot::stage_ms_since`]).
    pub stage_mean_ms: BTreeMap<String, f64>,
    /// Tuples read by sequential scans over the window, per table that had any.
    pub seq_tuples_read: BTreeMap<String, i64>,
}

/// The snapshots taken at one instant.
pub struct Snapshot {
    pub cpu: CpuSnapshot,
    pub statements: Option<i64>,
    pub seq_tuples: Option<BTreeMap<String, i64>>,
    pub metrics: Option<MetricsSnapshot>,
}

impl Snapshot {
    pub async fn take(
        in_process: bool,
        pool: Option<&sqlx::PgPool>,
        metrics_text: Option<String>,
    ) -> Self {
        let (statements, seq_tuples) = match pool {
            Some(pool) => (statements(pool).await, seq_tuples(pool).await),
            None => (None, None),
        };
        Snapshot {
            cpu: CpuSnapshot::take(in_process),
            statements,
            seq_tuples,
            metrics: metrics_text.as_deref().map(MetricsSnapshot::parse),
        }
    }

    /// The costs between `self` (the window's start) and `end`, per order of `completed`.
    pub fn costs_until(&self, end: &Snapshot, completed: u64) -> Costs {
        let per = |v: f64| round3(v / completed.max(1) as f64);
        let (messages, batch_mean, stage_mean_ms) = match (&self.metrics, &end.metrics) {
            (Some(a), Some(b)) => (
                Some(per(b.published_since(a))),
                b.batch_means_since(a),
                b.stage_ms_since(a),
            ),
            _ => (None, BTreeMap::new(), BTreeMap::new()),
        };
        Costs {
            cpu_ms_per_order: self.cpu.per_order(&end.cpu, completed),
            sql_statements_per_order: self
                .statements
                .zip(end.statements)
                .map(|(a, b)| per((b - a) as f64)),
            kafka_messages_per_order: messages,
            batch_mean,
            stage_mean_ms,
            seq_tuples_read: match (&self.seq_tuples, &end.seq_tuples) {
                (Some(a), Some(b)) => seq_delta(a, b),
                _ => BTreeMap::new(),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_lines_give_the_name_and_the_cpu_ticks_with_children() {
        let line = "4242 (postgres: wal writer) S 1 2 3 4 5 6 7 8 9 10 11 12 13 14 20 0 1 0";
        assert_eq!(
            parse_stat(line),
            Some(("postgres: wal writer", 11 + 12 + 13 + 14))
        );
        assert_eq!(parse_stat("garbage"), None);
    }

    #[test]
    fn processes_are_charged_to_their_server() {
        assert_eq!(classify("postgres", Vec::new), Some("postgres"));
        assert_eq!(
            classify("java", || b"java\0-cp\0x\0kafka.Kafka\0server.properties"
                .to_vec()),
            Some("kafka")
        );
        assert_eq!(classify("java", || b"java\0-jar\0other.jar".to_vec()), None);
        assert_eq!(classify("s3s-fs", Vec::new), Some("s3"));
        assert_eq!(classify("bash", Vec::new), None);
    }

    #[test]
    fn batch_means_and_messages_come_from_metric_deltas() {
        let before = MetricsSnapshot::parse(
            "# TYPE x histogram\n\
             orderflow_db_group_items_sum{group=\"saga_steps\"} 10\n\
             orderflow_db_group_items_count{group=\"saga_steps\"} 10\n\
             orderflow_outbox_published_total{schema=\"orders\",via=\"commit\"} 5\n",
        );
        let after = MetricsSnapshot::parse(
            "orderflow_db_group_items_sum{group=\"saga_steps\"} 50\n\
             orderflow_db_group_items_count{group=\"saga_steps\"} 20\n\
             orderflow_consumer_batch_records_sum{service=\"payment\"} 12\n\
             orderflow_consumer_batch_records_count{service=\"payment\"} 3\n\
             orderflow_outbox_published_total{schema=\"orders\",via=\"commit\"} 25\n\
             orderflow_outbox_published_total{schema=\"payment\",via=\"relay\"} 7\n",
        );
        let means = after.batch_means_since(&before);
        assert_eq!(means.get("group:saga_steps"), Some(&4.0));
        assert_eq!(means.get("consumer:payment"), Some(&4.0));
        assert_eq!(means.len(), 2);
        assert_eq!(after.published_since(&before), 27.0);
    }

    #[test]
    fn sequential_scan_tuples_are_the_growth_per_table() {
        let a: BTreeMap<String, i64> = [("inventory.reservations".to_owned(), 10)].into();
        let b: BTreeMap<String, i64> = [
            ("inventory.reservations".to_owned(), 610),
            ("inventory.products".to_owned(), 0),
            ("orders.outbox".to_owned(), 7),
        ]
        .into();
        let d = seq_delta(&a, &b);
        assert_eq!(d.get("inventory.reservations"), Some(&600));
        assert_eq!(d.get("orders.outbox"), Some(&7));
        assert_eq!(d.len(), 2);
    }

    #[test]
    fn stage_times_are_mean_milliseconds_of_the_deltas() {
        let before = MetricsSnapshot::parse(
            "orderflow_consumer_record_age_seconds_sum{service=\"order\"} 1\n\
             orderflow_consumer_record_age_seconds_count{service=\"order\"} 100\n",
        );
        let after = MetricsSnapshot::parse(
            "orderflow_consumer_record_age_seconds_sum{service=\"order\"} 3\n\
             orderflow_consumer_record_age_seconds_count{service=\"order\"} 200\n\
             orderflow_writer_batch_seconds_sum{schema=\"orders\"} 0.5\n\
             orderflow_writer_batch_seconds_count{schema=\"orders\"} 100\n",
        );
        let stages = after.stage_ms_since(&before);
        assert_eq!(stages.get("delivery:order"), Some(&20.0));
        assert_eq!(stages.get("writer:orders"), Some(&5.0));
        assert_eq!(stages.len(), 2);
        assert!(after.batch_means_since(&before).is_empty());
    }

    #[test]
    fn cpu_per_order_is_the_difference_over_the_orders() {
        let mut a = CpuSnapshot::default();
        a.0.insert("postgres", 100);
        let mut b = CpuSnapshot::default();
        b.0.insert("postgres", 150);
        // 50 ticks = 500 ms over 1,000 orders.
        assert_eq!(a.per_order(&b, 1_000).get("postgres"), Some(&0.5));
    }
}
