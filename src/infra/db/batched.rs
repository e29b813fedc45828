//! Set-based reads and single-statement writes outside a writer transaction: requests that
//! arrive while the previous statement runs are answered by **one** statement on the pool
//! instead of a round trip each (the saga state loads of a batch of new sagas, the local card
//! network's ledger). Under load the sets grow by themselves; an idle request runs at once.

use std::sync::Arc;

use futures::future::BoxFuture;
use sqlx::PgPool;

use super::DbError;
use super::group::{SetLimits, SetSender, set_loop};

/// What one statement answers for a set of requests.
pub trait SetQuery: Send + Sync + 'static {
    type Item: Send + Sync + 'static;
    type Output: Send + 'static;

    /// Runs the statement for `items`: one output per item, in order.
    fn run<'a>(
        &'a self,
        pool: &'a PgPool,
        items: &'a [Self::Item],
    ) -> BoxFuture<'a, Result<Vec<Self::Output>, DbError>>;

    /// Whether `item` may join `set`; when not, it opens the next set.
    fn fits(&self, _set: &[Self::Item], _item: &Self::Item) -> bool {
        true
    }
}

/// Hands requests to the set task. Cheap to clone.
pub struct Batched<Q: SetQuery> {
    set: SetSender<Q::Item, Q::Output>,
}

impl<Q: SetQuery> Clone for Batched<Q> {
    fn clone(&self) -> Self {
        Self {
            set: self.set.clone(),
        }
    }
}

impl<Q: SetQuery> Batched<Q> {
    /// Starts the set task on `pool`; it ends when the last clone is dropped.
    pub fn start(name: &'static str, pool: PgPool, query: Q, set_max: usize) -> Self {
        let set_max = set_max.max(1);
        let (set, rx) = SetSender::open(name, set_max);
        let query = Arc::new(query);
        let fits = {
            let query = query.clone();
            move |items: &[Q::Item], item: &Q::Item| query.fits(items, item)
        };
        let run = move |items: Arc<Vec<Q::Item>>| -> BoxFuture<'static, _> {
            let (query, pool) = (query.clone(), pool.clone());
            Box::pin(async move { query.run(&pool, &items).await })
        };
        let limits = SetLimits {
            set_max,
            in_flight: 1,
        };
        tokio::spawn(set_loop(name, rx, limits, fits, run));
        Batched { set }
    }

    /// Runs `item` with the next set; its output once the statement returned.
    pub async fn submit(&self, item: Q::Item) -> Result<Q::Output, DbError> {
        self.set.submit(item).await
    }
}
