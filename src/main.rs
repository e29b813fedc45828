//! The `orderflow` command: parses the CLI and calls into the library.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use orderflow::actors::Service;
use orderflow::{App, Config};

mod demo;

/// mimalloc instead of glibc's allocator: the pipeline allocates and frees many small buffers
/// across threads, and glibc spent ~40 % of the runtime's CPU in `malloc`/`free` and their
/// fastbin consolidation (ADR 0026).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "orderflow",
    version,
    about = "E-commerce order pipeline: five services, one saga per order"
)]
struct Cli {
    /// A TOML configuration file (environment variables ORDERFLOW_* override it).
    #[arg(long, global = true, env = "ORDERFLOW_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run services until SIGTERM or Ctrl-C.
    Serve {
        /// `all` or a comma-separated list (api, order).
        #[arg(long, default_value = "all")]
        services: String,
    },
    /// Apply pending database migrations and exit.
    Migrate,
    /// Print the effective configuration, secrets redacted.
    Config,
    /// Reconcile orders, payments and stock; exits non-zero on a violation.
    Check,
    /// Dead letters: list them, or re-drive them to their source topics.
    Dlq {
        #[command(subcommand)]
        action: DlqAction,
    },
    /// Send orders at a constant rate and report throughput, latencies and cost per order.
    Load {
        /// The roles to run in this process: `core` (api, order, inventory, payment), `all`,
        /// or a comma-separated list. Ignored with `--url`.
        #[arg(long, default_value = "all")]
        services: String,
        /// Orders per second (open model: sent on schedule whatever the responses take).
        #[arg(long, default_value_t = 200)]
        rate: u32,
        /// Seconds of sending.
        #[arg(long, default_value_t = 10)]
        duration: u64,
        #[arg(long, default_value_t = 1_000)]
        customers: u32,
        #[arg(long, default_value_t = 100)]
        skus: u32,
        /// Seconds to wait after sending for orders to reach a terminal state.
        #[arg(long, default_value_t = 30)]
        settle: u64,
        /// Target a running deployment instead of starting all services in this process.
        #[arg(long)]
        url: Option<String>,
        /// Also write the report as JSON here.
        #[arg(long)]
        out: Option<PathBuf>,
        /// Write the deployment's Prometheus metrics here after the run (writer batch sizes,
        /// outbox passes, bridge outcomes): where the time went.
        #[arg(long)]
        metrics_out: Option<PathBuf>,
        /// The bearer token to send (with orders:admin and catalog:admin); default: one
        /// minted by the development issuer.
        #[arg(long, env = "ORDERFLOW_LOAD_TOKEN", hide_env_values = true)]
        token: Option<String>,
    },
    /// Print a bearer token from the development issuer (auth.mode = "dev").
    Token {
        /// The subject: the customer the token speaks for.
        #[arg(long)]
        sub: String,
        /// Space-separated scopes; `all` for every scope (orders:admin and catalog:admin too).
        #[arg(
            long,
            default_value = "orders:read orders:write catalog:read files:read files:write"
        )]
        scope: String,
        /// Seconds the token stays valid.
        #[arg(long, default_value_t = 3_600)]
        ttl: u64,
    },
    /// Place demo orders against a running API and show them flowing through Kafka.
    Demo {
        #[arg(long, default_value = "http://127.0.0.1:8080")]
        url: String,
        #[arg(long, default_value_t = 4)]
        orders: u32,
    },
}

#[derive(Subcommand)]
enum DlqAction {
    /// Print every dead letter as JSON lines.
    List,
    /// Publish the dead letters not replayed before back to their source topics.
    Replay,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let config = Config::load(cli.config.as_deref()).context("loading configuration")?;
    orderflow::telemetry::init(&config.log);
    match cli.command {
        Command::Config => {
            print!("{}", config.to_redacted_toml());
            Ok(())
        }
        Command::Load {
            services,
            rate,
            duration,
            customers,
            skus,
            settle,
            url,
            out,
            metrics_out,
            token,
        } => {
            let opts = orderflow::load::LoadOptions {
                services: Service::parse_list(&services).map_err(anyhow::Error::msg)?,
                profile: services,
                url,
                rate,
                duration: std::time::Duration::from_secs(duration),
                customers,
                skus,
                settle: std::time::Duration::from_secs(settle),
                out,
                metrics_out,
                token,
            };
            let report = orderflow::load::run(config, opts).await?;
            println!("{}", report.summary());
            Ok(())
        }
        Command::Dlq { action } => match action {
            DlqAction::List => {
                let letters = orderflow::infra::dlq::list(&config).await?;
                for l in &letters {
                    println!("{}", serde_json::to_string(l)?);
                }
                eprintln!("{} dead letters", letters.len());
                Ok(())
            }
            DlqAction::Replay => {
                let producer = orderflow::infra::kafka::producer(&config.kafka)?;
                let n = orderflow::infra::dlq::replay(&config, &producer).await?;
                println!("{n} dead letters re-driven to their source topics");
                Ok(())
            }
        },
        Command::Check => {
            let pool = orderflow::infra::db::connect(&config.database)?;
            let report = orderflow::invariants::check(&pool, None).await?;
            println!("{}", serde_json::to_string_pretty(&report)?);
            if !report.is_clean() {
                anyhow::bail!("{} invariant violations", report.violations.len());
            }
            Ok(())
        }
        Command::Migrate => {
            let pool = orderflow::infra::db::connect(&config.database)?;
            orderflow::infra::db::migrate(&pool).await?;
            println!("migrations applied");
            Ok(())
        }
        Command::Serve { services } => {
            let services = Service::parse_list(&services).map_err(anyhow::Error::msg)?;
            serve(config, services).await
        }
        Command::Token { sub, scope, ttl } => {
            let scopes: Vec<&str> = if scope.trim() == "all" {
                orderflow::auth::scopes::ALL.to_vec()
            } else {
                scope.split_whitespace().collect()
            };
            let token = orderflow::auth::mint_dev_token(
                &config.auth,
                &sub,
                &scopes,
                std::time::Duration::from_secs(ttl),
            )?;
            println!("{token}");
            Ok(())
        }
        Command::Demo { url, orders } => demo::run(&config, &url, orders).await,
    }
}

async fn serve(config: Config, services: Vec<Service>) -> anyhow::Result<()> {
    let mut app = App::build(config, &services)
        .await
        .context("starting orderflow")?;
    println!("orderflow listening on http://{}", app.local_addr());
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => app.shutdown().await,
        _ = term.recv() => app.shutdown().await,
        _ = app.stopped() => anyhow::bail!("the supervision tree stopped: a restart budget was spent"),
    }
    Ok(())
}
