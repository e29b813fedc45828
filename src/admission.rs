//! Admission control for the intake: a bound on the orders this process accepted that have not
//! yet reached a terminal state.
//!
//! Without it, an intake that accepts faster than the pipeline completes fills every stage's
//! queue at once: each accepted order waits behind all the others at every stage (the saga's
//! writer, inventory, payment), handler timeouts fire on records that were only queued, their
//! retries add work, saga deadlines cancel orders, and the rate of *completed* orders collapses
//! far below what the pipeline does when it is not overloaded (measured: 500/s sustained,
//! but 363/s completed at 1,000/s offered and 3/s at 2,000/s, with 2 GiB of saga actors).
//! With the bound, the excess is refused at the door at once (503 `overloaded` with
//! `Retry-After`), accepted orders keep their latency, and the pipeline completes at its
//! capacity however much is offered.
//!
//! The intake admits an order before writing it ([`OpenOrders::admit`]) and forgets it when the
//! write fails ([`OpenOrders::abandon`]); the status hub, which reads the events topics anyway,
//! reports each terminal event ([`OpenOrders::finished`]). An order whose end this process
//! never sees (another process's hub took over, a message lost to retention) stops counting
//! after `max_age`, so a missed event cannot shrink the bound for good.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use uuid::Uuid;

/// The intake is at its bound.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Full {
    /// Orders open when the request was refused.
    pub open: usize,
}

#[derive(Debug)]
pub struct OpenOrders {
    limit: usize,
    max_age: Duration,
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    open: HashMap<Uuid, Instant>,
    /// When entries older than `max_age` were last dropped (an O(n) pass, so at most once per
    /// `SWEEP_EVERY` and only when the bound is reached).
    swept: Instant,
}

const SWEEP_EVERY: Duration = Duration::from_secs(1);

impl OpenOrders {
    /// `limit` 0 admits everything (no bound).
    pub fn new(limit: usize, max_age: Duration) -> Self {
        Self {
            limit,
            max_age,
            state: Mutex::new(State {
                open: HashMap::new(),
                swept: Instant::now(),
            }),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Counts `id` as open, or refuses it when `limit` orders are open already.
    pub fn admit(&self, id: Uuid) -> Result<(), Full> {
        if self.limit == 0 {
            return Ok(());
        }
        let now = Instant::now();
        let mut state = self.state();
        if state.open.len() >= self.limit && now.duration_since(state.swept) >= SWEEP_EVERY {
            let before = state.open.len();
            let max_age = self.max_age;
            state
                .open
                .retain(|_, admitted| now.duration_since(*admitted) < max_age);
            state.swept = now;
            let expired = before - state.open.len();
            if expired > 0 {
                tracing::warn!(
                    expired,
                    max_age_ms = max_age.as_millis() as u64,
                    "open orders without a terminal event stopped counting against the intake bound"
                );
            }
        }
        if state.open.len() >= self.limit {
            return Err(Full {
                open: state.open.len(),
            });
        }
        state.open.insert(id, now);
        Ok(())
    }

    /// The order was not accepted after all (its write failed).
    pub fn abandon(&self, id: Uuid) {
        if self.limit > 0 {
            self.state().open.remove(&id);
        }
    }

    /// The order reached a terminal state. True when it was open here.
    pub fn finished(&self, id: Uuid) -> bool {
        self.limit > 0 && self.state().open.remove(&id).is_some()
    }

    /// Orders open now.
    pub fn len(&self) -> usize {
        self.state().open.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn limit(&self) -> usize {
        self.limit
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bound_refuses_until_an_order_finishes_or_is_abandoned() {
        let open = OpenOrders::new(2, Duration::from_secs(60));
        let (a, b, c) = (Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7());
        assert_eq!(open.admit(a), Ok(()));
        assert_eq!(open.admit(b), Ok(()));
        assert_eq!(open.admit(c), Err(Full { open: 2 }));
        assert!(open.finished(a));
        assert!(!open.finished(a), "a second terminal event changes nothing");
        assert_eq!(open.admit(c), Ok(()));
        open.abandon(b);
        assert_eq!(open.len(), 1);
        assert!(!open.finished(Uuid::now_v7()), "another process's order");
    }

    #[test]
    fn orders_older_than_max_age_stop_counting_once_the_bound_is_reached() {
        let open = OpenOrders::new(1, Duration::ZERO);
        open.state().swept = Instant::now() - SWEEP_EVERY;
        assert_eq!(open.admit(Uuid::now_v7()), Ok(()));
        // Full, but the only open order is older than max_age (zero): it is dropped.
        assert_eq!(open.admit(Uuid::now_v7()), Ok(()));
        // Swept less than SWEEP_EVERY ago: no second pass yet.
        assert_eq!(open.admit(Uuid::now_v7()), Err(Full { open: 1 }));
    }

    #[test]
    fn a_limit_of_zero_admits_everything() {
        let open = OpenOrders::new(0, Duration::from_secs(1));
        for _ in 0..10 {
            assert_eq!(open.admit(Uuid::now_v7()), Ok(()));
        }
        assert!(open.is_empty());
    }
}
