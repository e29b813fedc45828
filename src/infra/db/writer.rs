//! Group commit: the writes of many concurrent handlers share one transaction.
//!
//! Every handler that changes state (a saga step, a reservation, a payment decision, an order
//! intake) hands its statements to its schema's [`Writer`] as a job and waits. A writer task
//! takes every job that is queued (up to `database.batch_max`), runs them one after another in
//! **one** transaction and commits once, then answers each job. Under load the batch grows by
//! itself (jobs queue while the previous batch commits); when idle a job runs at once, so there
//! is no timer to wait for. A commit (and its WAL flush) is shared by the whole batch. The
//! outbox rows the batch wrote (noted by its jobs as their statements report them written, so
//! nothing is read back) are handed to the Kafka producer right after it
//! ([`CommitPublisher`]); without a publisher (or while it is paused by a failure) the
//! schema's outbox relay is woken once per batch instead.
//!
//! A job that runs exactly one statement is submitted with [`Writer::run_one`]: alone in its
//! batch (the common case below saturation) it runs as that statement's own transaction, one
//! round trip instead of three (BEGIN, statement, COMMIT); with others it joins the batch's
//! transaction like any job.
//!
//! A job is all-or-nothing within the batch: when one fails, the batch is rolled back and each
//! of its jobs runs again alone, so one bad message never fails the others. A job may therefore
//! run more than once before it commits, and must build everything it writes inside its closure.

use std::sync::Arc;

use futures::future::BoxFuture;
use sqlx::{Connection, PgConnection, PgPool};
use tokio::sync::{Mutex, Notify, mpsc, oneshot};

use super::DbError;
use super::messaging::{self, Schema};
use crate::infra::outbox::{CommitPublisher, OutboxRecord, OutboxWakers};
use crate::metrics as m;

/// What a job runs: its statements on the batch's connection, inside the batch's transaction.
pub type JobFn<T> =
    dyn for<'c> Fn(&'c mut PgConnection) -> BoxFuture<'c, Result<T, DbError>> + Send + Sync;

trait Job: Send {
    fn run<'c>(&'c mut self, conn: &'c mut PgConnection) -> BoxFuture<'c, Result<(), DbError>>;
    /// The job runs exactly one statement (atomic by itself): alone in a batch it needs no
    /// BEGIN and COMMIT of its own.
    fn single_statement(&self) -> bool;
    /// Answers the submitter: the job's output when the batch committed, else the error.
    fn answer(self: Box<Self>, committed: Result<(), DbError>);
}

struct TypedJob<T> {
    f: Box<JobFn<T>>,
    single_statement: bool,
    output: Option<T>,
    reply: oneshot::Sender<Result<T, DbError>>,
}

impl<T: Send + 'static> Job for TypedJob<T> {
    fn run<'c>(&'c mut self, conn: &'c mut PgConnection) -> BoxFuture<'c, Result<(), DbError>> {
        Box::pin(async move {
            let out = (self.f)(conn).await?;
            self.output = Some(out);
            Ok(())
        })
    }

    fn single_statement(&self) -> bool {
        self.single_statement
    }

    fn answer(self: Box<Self>, committed: Result<(), DbError>) {
        let TypedJob { output, reply, .. } = *self;
        let result = committed.and_then(|()| {
            output.ok_or_else(|| DbError::Corrupt("a committed job has no output".into()))
        });
        let _ = reply.send(result);
    }
}

/// Submits jobs to one schema's writer tasks. Cheap to clone.
#[derive(Clone)]
pub struct Writer {
    name: &'static str,
    jobs: mpsc::Sender<Box<dyn Job>>,
}

impl Writer {
    /// Runs `f` in the next batch of this schema and returns its output once committed.
    pub async fn run<T, F>(&self, f: F) -> Result<T, DbError>
    where
        T: Send + 'static,
        F: for<'c> Fn(&'c mut PgConnection) -> BoxFuture<'c, Result<T, DbError>>
            + Send
            + Sync
            + 'static,
    {
        self.run_with(false, f).await
    }

    /// Like [`Writer::run`], for a job whose `f` runs **exactly one statement**: when it is
    /// alone in its batch it runs as that statement's own transaction (one round trip instead
    /// of BEGIN, statement, COMMIT). A job with a second statement must use `run`, or a failure
    /// between its statements would leave the first one committed.
    pub async fn run_one<T, F>(&self, f: F) -> Result<T, DbError>
    where
        T: Send + 'static,
        F: for<'c> Fn(&'c mut PgConnection) -> BoxFuture<'c, Result<T, DbError>>
            + Send
            + Sync
            + 'static,
    {
        self.run_with(true, f).await
    }

    /// [`Writer::run_one`] when `single_statement`, else [`Writer::run`].
    pub async fn run_with<T, F>(&self, single_statement: bool, f: F) -> Result<T, DbError>
    where
        T: Send + 'static,
        F: for<'c> Fn(&'c mut PgConnection) -> BoxFuture<'c, Result<T, DbError>>
            + Send
            + Sync
            + 'static,
    {
        let (reply, rx) = oneshot::channel();
        let job = Box::new(TypedJob {
            f: Box::new(f),
            single_statement,
            output: None,
            reply,
        });
        self.jobs
            .send(job)
            .await
            .map_err(|_| DbError::WriterStopped(self.name))?;
        rx.await.map_err(|_| DbError::WriterStopped(self.name))?
    }
}

/// The writers of every schema, and the relay wake-ups they ring after each commit.
#[derive(Clone)]
pub struct Writers {
    orders: Writer,
    /// The order intakes' own tasks on the `orders` schema: an intake (one statement, its own
    /// transaction) never queues behind a set of saga steps, so a POST waits only for its set.
    intakes: Writer,
    inventory: Writer,
    payment: Writer,
    files: Writer,
    notifications: Writer,
    wakers: OutboxWakers,
    on_commit: Option<CommitPublisher>,
}

/// Where a writer's committed outbox rows go, and who hears of its commits.
#[derive(Clone)]
struct Publish {
    schema: Schema,
    wakers: OutboxWakers,
    on_commit: Option<CommitPublisher>,
    /// The read cache's drainer: a commit may have written `cache.changes` rows.
    cache_changes: Option<Arc<Notify>>,
}

impl Publish {
    fn direct(&self) -> bool {
        self.on_commit
            .as_ref()
            .is_some_and(|p| p.is_active(self.schema))
    }

    /// After a commit: publish the rows read before it, or wake the relay.
    fn committed(&self, records: Vec<OutboxRecord>, direct: bool) {
        if let Some(wake) = &self.cache_changes {
            wake.notify_one();
        }
        match &self.on_commit {
            Some(p) if direct => p.publish(self.schema, records),
            _ => self.wakers.wake(self.schema),
        }
    }
}

/// How the writer tasks batch.
#[derive(Debug, Clone, Copy)]
pub struct WriterConfig {
    /// Writer tasks (and so connections) per schema that commit in parallel.
    pub writers: usize,
    /// The most jobs in one transaction.
    pub batch_max: usize,
}

impl Writers {
    /// Starts the writer tasks of every schema on `pool`. They stop when the last `Writers`
    /// clone is dropped, after finishing what was queued. With `on_commit`, committed outbox
    /// rows are published at once; without, the relay is woken. `cache_changes` is notified
    /// after every commit of a schema whose tables the read cache shows.
    pub fn start(
        pool: &PgPool,
        wakers: OutboxWakers,
        on_commit: Option<CommitPublisher>,
        cache_changes: Option<Arc<Notify>>,
        config: WriterConfig,
    ) -> Self {
        let writer = |schema: Schema, name: &'static str| {
            // Reservations lock product rows one job after another: two inventory batches in
            // one process could lock the same skus in opposite orders, so inventory has a
            // single writer per process (other processes wait on the row locks).
            let tasks = if schema == Schema::Inventory {
                1
            } else {
                config.writers.max(1)
            };
            let publish = Publish {
                schema,
                wakers: wakers.clone(),
                on_commit: on_commit.clone(),
                cache_changes: cache_changes.clone().filter(|_| schema != Schema::Payment),
            };
            spawn_writer(pool, name, tasks, config, Some(publish))
        };
        Writers {
            orders: writer(Schema::Orders, Schema::Orders.name()),
            intakes: writer(Schema::Orders, "orders-intake"),
            inventory: writer(Schema::Inventory, Schema::Inventory.name()),
            payment: writer(Schema::Payment, Schema::Payment.name()),
            files: writer(Schema::Files, Schema::Files.name()),
            // The notification log has no outbox: its writer only shares commits.
            notifications: spawn_writer(pool, "notifications", config.writers, config, None),
            wakers,
            on_commit,
        }
    }

    /// The writer of the order intakes (the `orders` schema, tasks of their own).
    pub fn intakes(&self) -> &Writer {
        &self.intakes
    }

    /// The writer of the notification service's tables (no outbox).
    pub fn notifications(&self) -> &Writer {
        &self.notifications
    }

    pub fn get(&self, schema: Schema) -> &Writer {
        match schema {
            Schema::Orders => &self.orders,
            Schema::Inventory => &self.inventory,
            Schema::Payment => &self.payment,
            Schema::Files => &self.files,
        }
    }

    /// Waits up to `timeout` until the rows published on commit so far are deleted, so that
    /// a relay's final flush does not publish them again. True at once without a publisher.
    pub async fn settle_published(&self, timeout: std::time::Duration) -> bool {
        match &self.on_commit {
            Some(p) => p.settle(timeout).await,
            None => true,
        }
    }

    /// The relay wake-ups (for writes that do not go through a writer).
    pub fn wakers(&self) -> &OutboxWakers {
        &self.wakers
    }
}

/// Starts `tasks` writer tasks sharing one job queue.
fn spawn_writer(
    pool: &PgPool,
    name: &'static str,
    tasks: usize,
    config: WriterConfig,
    publish: Option<Publish>,
) -> Writer {
    let (tx, rx) = mpsc::channel(config.batch_max.max(1) * 8);
    let rx = Arc::new(Mutex::new(rx));
    for _ in 0..tasks.max(1) {
        tokio::spawn(write_loop(
            pool.clone(),
            rx.clone(),
            config.batch_max.max(1),
            name,
            publish.clone(),
        ));
    }
    Writer { name, jobs: tx }
}

/// One writer task: takes the queued jobs, runs them in one transaction, commits, publishes
/// (when the schema has an outbox) and answers.
async fn write_loop(
    pool: PgPool,
    jobs: Arc<Mutex<mpsc::Receiver<Box<dyn Job>>>>,
    batch_max: usize,
    name: &'static str,
    publish: Option<Publish>,
) {
    loop {
        let mut batch = {
            let mut rx = jobs.lock().await;
            let Some(first) = rx.recv().await else {
                return;
            };
            let mut batch = Vec::with_capacity(batch_max.min(64));
            batch.push(first);
            while batch.len() < batch_max {
                match rx.try_recv() {
                    Ok(job) => batch.push(job),
                    Err(_) => break,
                }
            }
            batch
        };
        let started = std::time::Instant::now();
        metrics::histogram!(m::WRITER_BATCH_JOBS, "schema" => name).record(batch.len() as f64);
        let attempt = Attempt {
            pool: &pool,
            schema: publish.as_ref().map(|p| p.schema),
            direct: publish.as_ref().is_some_and(Publish::direct),
        };
        let committed = |records| {
            if let Some(p) = &publish {
                p.committed(records, attempt.direct);
            }
        };
        if let [job] = batch.as_mut_slice()
            && job.single_statement()
        {
            let result = attempt.single(job.as_mut()).await.map(&committed);
            if let Some(job) = batch.pop() {
                job.answer(result);
            }
            metrics::histogram!(m::WRITER_BATCH_SECONDS, "schema" => name)
                .record(started.elapsed().as_secs_f64());
            continue;
        }
        match attempt.batch(&mut batch).await {
            Ok(records) => {
                committed(records);
                for job in batch {
                    job.answer(Ok(()));
                }
            }
            Err(BatchError::Commit(e)) => {
                // Whether the commit happened is unknown: every job is told it failed, and
                // its message is redelivered and deduplicated by the inbox. Rows that did
                // commit are left to the relay.
                tracing::warn!(schema = name, error = %e, jobs = batch.len(), "batch commit failed");
                let text = e.to_string();
                for job in batch {
                    job.answer(Err(DbError::BatchFailed(text.clone())));
                }
            }
            Err(BatchError::Job(e)) if batch.len() == 1 => {
                if let Some(job) = batch.pop() {
                    job.answer(Err(e));
                }
            }
            Err(BatchError::Job(e)) => {
                tracing::debug!(schema = name, error = %e, jobs = batch.len(), "a job failed its batch; running each alone");
                metrics::counter!(m::WRITER_SPLITS, "schema" => name).increment(1);
                for mut job in batch {
                    match attempt.alone(job.as_mut()).await {
                        Ok(records) => {
                            committed(records);
                            job.answer(Ok(()));
                        }
                        Err(e) => job.answer(Err(e)),
                    }
                }
            }
        }
        metrics::histogram!(m::WRITER_BATCH_SECONDS, "schema" => name)
            .record(started.elapsed().as_secs_f64());
    }
}

enum BatchError {
    /// A job failed: nothing of the batch is committed.
    Job(DbError),
    /// The commit itself failed.
    Commit(DbError),
}

/// One batch's transactions (the batch, then each job alone if one failed).
struct Attempt<'a> {
    pool: &'a PgPool,
    /// The schema whose outbox rows the jobs note (`None`: no outbox).
    schema: Option<Schema>,
    /// Keep the noted outbox rows, to publish them after the COMMIT.
    direct: bool,
}

impl Attempt<'_> {
    /// Runs `jobs` on `conn`; returns the outbox rows they noted when those are to be published
    /// directly.
    async fn run_jobs(
        &self,
        conn: &mut PgConnection,
        jobs: &mut [&mut (dyn Job + 'static)],
    ) -> Result<Vec<OutboxRecord>, DbError> {
        let (ran, noted) = messaging::noting(async {
            for job in jobs.iter_mut() {
                job.run(&mut *conn).await?;
            }
            Ok::<_, DbError>(())
        })
        .await;
        ran?;
        Ok(if self.schema.is_some() && self.direct {
            noted
        } else {
            Vec::new()
        })
    }

    async fn batch(&self, batch: &mut [Box<dyn Job>]) -> Result<Vec<OutboxRecord>, BatchError> {
        let mut conn = self
            .pool
            .acquire()
            .await
            .map_err(|e| BatchError::Job(e.into()))?;
        let mut tx = conn.begin().await.map_err(|e| BatchError::Job(e.into()))?;
        let mut jobs: Vec<&mut (dyn Job + 'static)> =
            batch.iter_mut().map(|j| j.as_mut()).collect();
        let records = self
            .run_jobs(&mut tx, &mut jobs)
            .await
            .map_err(BatchError::Job)?;
        tx.commit()
            .await
            .map_err(|e| BatchError::Commit(e.into()))?;
        Ok(records)
    }

    /// A single-statement job alone: its statement is its own transaction (autocommit), so an
    /// error leaves nothing behind and success is committed.
    async fn single(&self, job: &mut (dyn Job + 'static)) -> Result<Vec<OutboxRecord>, DbError> {
        let mut conn = self.pool.acquire().await?;
        self.run_jobs(&mut conn, &mut [job]).await
    }

    async fn alone(&self, job: &mut (dyn Job + 'static)) -> Result<Vec<OutboxRecord>, DbError> {
        let mut tx = self.pool.begin().await?;
        let records = self.run_jobs(&mut tx, &mut [job]).await?;
        tx.commit().await?;
        Ok(records)
    }
}
