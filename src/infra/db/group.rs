//! Set-based writes: requests that arrive while the previous group is being written are written
//! together, as **one** job of a schema's writer with one statement per kind for the whole
//! group, instead of one job (and its statements) each. Under load groups grow by themselves;
//! an idle request is written at once.

use std::sync::Arc;

use futures::StreamExt;
use futures::future::BoxFuture;
use futures::stream::FuturesUnordered;
use sqlx::PgConnection;
use tokio::sync::{mpsc, oneshot};

use super::DbError;
use super::writer::Writer;

/// What a group writes.
pub trait GroupWork: Send + Sync + 'static {
    type Item: Send + Sync + 'static;
    type Output: Send + 'static;

    /// Writes the whole group inside the writer's transaction: one output per item, in order.
    /// It may run more than once (the writer retries a failed batch job by job).
    fn write<'c>(
        &'c self,
        conn: &'c mut PgConnection,
        items: &'c [Self::Item],
    ) -> BoxFuture<'c, Result<Vec<Self::Output>, DbError>>;

    /// Whether [`GroupWork::write`] runs exactly one statement for these items (see
    /// `Writer::run_one`).
    fn single_statement(&self, _items: &[Self::Item]) -> bool {
        false
    }

    /// Whether `item` may join `group`; when not, it opens the next group.
    fn fits(&self, _group: &[Self::Item], _item: &Self::Item) -> bool {
        true
    }
}

type Request<I, O> = (I, oneshot::Sender<Result<O, DbError>>);

/// The asking side of a set task: hands an item to the task and waits for its output. Cheap
/// to clone; the task ends when the last clone is dropped.
pub(super) struct SetSender<I, O> {
    name: &'static str,
    requests: mpsc::Sender<Request<I, O>>,
}

impl<I, O> Clone for SetSender<I, O> {
    fn clone(&self) -> Self {
        Self {
            name: self.name,
            requests: self.requests.clone(),
        }
    }
}

impl<I, O> SetSender<I, O> {
    /// A sender and the receiver its task reads, for sets of at most `set_max` items.
    pub(super) fn open(
        name: &'static str,
        set_max: usize,
    ) -> (Self, mpsc::Receiver<Request<I, O>>) {
        let (requests, rx) = mpsc::channel(set_max.max(1) * 8);
        (SetSender { name, requests }, rx)
    }

    /// Hands `item` to the next set; its output once the set ran.
    pub(super) async fn submit(&self, item: I) -> Result<O, DbError> {
        let (answer, rx) = oneshot::channel();
        self.requests
            .send((item, answer))
            .await
            .map_err(|_| DbError::WriterStopped(self.name))?;
        rx.await.map_err(|_| DbError::WriterStopped(self.name))?
    }
}

/// Hands items to the group task. Cheap to clone.
pub struct Grouped<W: GroupWork> {
    set: SetSender<W::Item, W::Output>,
}

impl<W: GroupWork> Clone for Grouped<W> {
    fn clone(&self) -> Self {
        Self {
            set: self.set.clone(),
        }
    }
}

impl<W: GroupWork> Grouped<W> {
    /// Starts the group task on `writer`; it ends when the last clone is dropped. One group
    /// is written at a time: the next forms while it is written.
    pub fn start(name: &'static str, writer: Writer, work: W, group_max: usize) -> Self {
        Self::start_parallel(name, writer, work, group_max, 1)
    }

    /// Like [`Grouped::start`], with up to `in_flight` groups written at once (each in a
    /// transaction of its own, on the writer's tasks), for items that do not depend on each
    /// other's order: a new group starts as soon as fewer than `in_flight` are in progress.
    pub fn start_parallel(
        name: &'static str,
        writer: Writer,
        work: W,
        group_max: usize,
        in_flight: usize,
    ) -> Self {
        let group_max = group_max.max(1);
        let (set, rx) = SetSender::open(name, group_max);
        let limits = SetLimits {
            set_max: group_max,
            in_flight: in_flight.max(1),
        };
        tokio::spawn(group_loop(name, writer, Arc::new(work), rx, limits));
        Grouped { set }
    }

    /// Writes `item` with the next group; its output once the group committed.
    pub async fn submit(&self, item: W::Item) -> Result<W::Output, DbError> {
        self.set.submit(item).await
    }
}

async fn group_loop<W: GroupWork>(
    name: &'static str,
    writer: Writer,
    work: Arc<W>,
    rx: mpsc::Receiver<Request<W::Item, W::Output>>,
    limits: SetLimits,
) {
    let fits = {
        let work = work.clone();
        move |items: &[W::Item], item: &W::Item| work.fits(items, item)
    };
    set_loop(name, rx, limits, fits, move |items: Arc<Vec<W::Item>>| {
        let single = work.single_statement(&items);
        let job = (work.clone(), items);
        let writer = writer.clone();
        Box::pin(async move {
            writer
                .run_with(single, move |conn| {
                    let (work, items) = job.clone();
                    Box::pin(async move { work.write(conn, &items).await })
                })
                .await
        })
    })
    .await
}

/// How large sets grow and how many run at once.
#[derive(Debug, Clone, Copy)]
pub(super) struct SetLimits {
    pub set_max: usize,
    pub in_flight: usize,
}

/// The loop every set-based helper shares: takes the requests that waited while the previous
/// set ran (up to `set_max`, while they `fit`), runs them with one `run`, and answers each.
/// Up to `in_flight` sets run at once; a request that finds all of them busy waits for the
/// next set.
pub(super) async fn set_loop<I, O, F, R>(
    name: &'static str,
    mut rx: mpsc::Receiver<Request<I, O>>,
    limits: SetLimits,
    fits: F,
    run: R,
) where
    I: Send + Sync + 'static,
    O: Send + 'static,
    F: Fn(&[I], &I) -> bool,
    R: Fn(Arc<Vec<I>>) -> BoxFuture<'static, Result<Vec<O>, DbError>>,
{
    let mut carried: Option<Request<I, O>> = None;
    let mut running = FuturesUnordered::new();
    loop {
        while running.len() >= limits.in_flight {
            running.next().await;
        }
        let first = match carried.take() {
            Some(r) => r,
            None => tokio::select! {
                r = rx.recv() => match r {
                    Some(r) => r,
                    None => break,
                },
                Some(()) = running.next(), if !running.is_empty() => continue,
            },
        };
        let (mut items, mut answers) = (vec![first.0], vec![first.1]);
        while items.len() < limits.set_max {
            match rx.try_recv() {
                Ok((item, answer)) if fits(&items, &item) => {
                    items.push(item);
                    answers.push(answer);
                }
                Ok(request) => {
                    carried = Some(request);
                    break;
                }
                Err(_) => break,
            }
        }
        metrics::histogram!(crate::metrics::GROUP_ITEMS, "group" => name)
            .record(items.len() as f64);
        let ran = run(Arc::new(items));
        running.push(async move { answer_all(ran.await, answers) });
    }
    while running.next().await.is_some() {}
}

/// Answers each request of a set with its output, or all of them with the set's error.
fn answer_all<O>(ran: Result<Vec<O>, DbError>, answers: Vec<oneshot::Sender<Result<O, DbError>>>) {
    match ran {
        Ok(outputs) if outputs.len() == answers.len() => {
            for (answer, output) in answers.into_iter().zip(outputs) {
                let _ = answer.send(Ok(output));
            }
        }
        Ok(outputs) => {
            let text = format!("{} outputs for {} items", outputs.len(), answers.len());
            for answer in answers {
                let _ = answer.send(Err(DbError::Corrupt(text.clone())));
            }
        }
        Err(e) => {
            // Every item of the set is retried by its caller (a partition bridge).
            let text = e.to_string();
            for answer in answers {
                let _ = answer.send(Err(DbError::BatchFailed(text.clone())));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    #[tokio::test(start_paused = true)]
    async fn sets_run_up_to_in_flight_at_once_and_every_request_gets_its_output() {
        let (set, rx) = SetSender::<u32, u32>::open("test", 4);
        let running = Arc::new(AtomicUsize::new(0));
        let most = Arc::new(AtomicUsize::new(0));
        let sizes = Arc::new(std::sync::Mutex::new(Vec::new()));
        let (r, m, s) = (running.clone(), most.clone(), sizes.clone());
        let limits = SetLimits {
            set_max: 4,
            in_flight: 2,
        };
        let run = move |items: Arc<Vec<u32>>| {
            let (r, m, s) = (r.clone(), m.clone(), s.clone());
            Box::pin(async move {
                let now = r.fetch_add(1, Ordering::SeqCst) + 1;
                m.fetch_max(now, Ordering::SeqCst);
                s.lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push(items.len());
                tokio::time::sleep(Duration::from_millis(10)).await;
                r.fetch_sub(1, Ordering::SeqCst);
                Ok(items.iter().map(|i| i * 10).collect())
            }) as BoxFuture<'static, Result<Vec<u32>, DbError>>
        };
        tokio::spawn(set_loop("test", rx, limits, |_: &[u32], _: &u32| true, run));
        // A current-thread runtime: all 20 requests queue before the loop takes the first.
        let answers = futures::future::join_all((0..20_u32).map(|i| {
            let set = set.clone();
            async move { set.submit(i).await }
        }))
        .await;
        for (i, answer) in (0_u32..).zip(answers) {
            assert_eq!(answer.ok(), Some(i * 10), "request {i}");
        }
        assert_eq!(
            most.load(Ordering::SeqCst),
            2,
            "two sets at once, never more"
        );
        let sizes = sizes.lock().unwrap_or_else(|e| e.into_inner()).clone();
        assert_eq!(sizes, vec![4; 5]);
    }
}
