//! A circuit breaker around a slow or failing dependency (S3, later SMTP).
//!
//! Closed: calls go through; `failure_threshold` failures in a row open it. Open: calls fail at
//! once with [`CallError::Open`] for `open_for`, so nobody waits on a dependency known to be
//! down. Then half-open: one call at a time probes; its success closes the circuit, its failure
//! opens it again for another `open_for`. The state is exported as the gauge
//! `orderflow_circuit_state{dependency}` (0 closed, 1 half-open, 2 open) and shown by
//! `/health/ready`.
//!
//! Callers treat an open circuit as "the dependency is unavailable": the work waits and is
//! retried later (partition bridges retry such records without a limit), never dropped.

use std::future::Future;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::metrics as m;

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    Closed,
    HalfOpen,
    Open,
}

impl State {
    fn gauge(self) -> f64 {
        match self {
            State::Closed => 0.0,
            State::HalfOpen => 1.0,
            State::Open => 2.0,
        }
    }

    fn name(self) -> &'static str {
        match self {
            State::Closed => "closed",
            State::HalfOpen => "half_open",
            State::Open => "open",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CallError<E> {
    #[error("the {0} circuit is open")]
    Open(&'static str),
    #[error(transparent)]
    Failed(E),
}

struct Inner {
    failures: u32,
    /// Set while open: when the next probe may go.
    open_until: Option<Instant>,
    probing: bool,
}

pub struct CircuitBreaker {
    dependency: &'static str,
    failure_threshold: u32,
    open_for: Duration,
    inner: Mutex<Inner>,
}

impl CircuitBreaker {
    pub fn new(dependency: &'static str, failure_threshold: u32, open_for: Duration) -> Self {
        metrics::gauge!(m::CIRCUIT_STATE, "dependency" => dependency).set(State::Closed.gauge());
        CircuitBreaker {
            dependency,
            failure_threshold: failure_threshold.max(1),
            open_for,
            inner: Mutex::new(Inner {
                failures: 0,
                open_until: None,
                probing: false,
            }),
        }
    }

    pub fn dependency(&self) -> &'static str {
        self.dependency
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn state(&self) -> State {
        let inner = self.lock();
        Self::state_of(&inner)
    }

    fn state_of(inner: &Inner) -> State {
        match inner.open_until {
            None => State::Closed,
            Some(until) if Instant::now() < until && !inner.probing => State::Open,
            Some(_) => State::HalfOpen,
        }
    }

    /// Runs `call` unless the circuit is open (or a probe is already out), and records how it
    /// went.
    pub async fn call<T, E, F>(&self, call: F) -> Result<T, CallError<E>>
    where
        F: Future<Output = Result<T, E>>,
    {
        let probe = {
            let mut inner = self.lock();
            match inner.open_until {
                None => false,
                Some(until) if Instant::now() < until || inner.probing => {
                    return Err(CallError::Open(self.dependency));
                }
                Some(_) => {
                    inner.probing = true;
                    true
                }
            }
        };
        if probe {
            self.transition(State::HalfOpen);
        }
        let result = call.await;
        let mut inner = self.lock();
        if probe {
            inner.probing = false;
        }
        match &result {
            Ok(_) => {
                inner.failures = 0;
                if inner.open_until.take().is_some() {
                    drop(inner);
                    self.transition(State::Closed);
                    tracing::info!(
                        dependency = self.dependency,
                        "circuit closed: the dependency answers again"
                    );
                }
            }
            Err(_) => {
                inner.failures = inner.failures.saturating_add(1);
                if probe || inner.failures >= self.failure_threshold {
                    let was_closed = inner.open_until.is_none();
                    inner.open_until = Some(Instant::now() + self.open_for);
                    drop(inner);
                    self.transition(State::Open);
                    if was_closed {
                        tracing::warn!(dependency = self.dependency, open_for = ?self.open_for, "circuit opened: the dependency keeps failing");
                    }
                }
            }
        }
        result.map_err(CallError::Failed)
    }

    fn transition(&self, to: State) {
        metrics::gauge!(m::CIRCUIT_STATE, "dependency" => self.dependency).set(to.gauge());
        metrics::counter!(m::CIRCUIT_TRANSITIONS, "dependency" => self.dependency, "to" => to.name())
            .increment(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn fail(b: &CircuitBreaker) -> Result<(), CallError<&'static str>> {
        b.call(async { Err::<(), _>("down") }).await
    }

    async fn succeed(b: &CircuitBreaker) -> Result<(), CallError<&'static str>> {
        b.call(async { Ok::<(), &'static str>(()) }).await
    }

    #[tokio::test]
    async fn opens_after_the_threshold_then_probes_once_and_closes_on_success() {
        let b = CircuitBreaker::new("test", 3, Duration::from_millis(50));
        assert!(matches!(fail(&b).await, Err(CallError::Failed(_))));
        assert!(succeed(&b).await.is_ok(), "a success resets the count");
        for _ in 0..2 {
            assert!(matches!(fail(&b).await, Err(CallError::Failed(_))));
        }
        assert_eq!(b.state(), State::Closed);
        assert!(matches!(fail(&b).await, Err(CallError::Failed(_))));
        assert_eq!(b.state(), State::Open);
        // Open: calls fail at once without running.
        let ran = std::sync::atomic::AtomicBool::new(false);
        let r = b
            .call(async {
                ran.store(true, std::sync::atomic::Ordering::SeqCst);
                Ok::<(), &'static str>(())
            })
            .await;
        assert!(matches!(r, Err(CallError::Open("test"))));
        assert!(!ran.load(std::sync::atomic::Ordering::SeqCst));

        tokio::time::sleep(Duration::from_millis(60)).await;
        assert_eq!(b.state(), State::HalfOpen);
        assert!(succeed(&b).await.is_ok());
        assert_eq!(b.state(), State::Closed);
    }

    #[tokio::test]
    async fn a_failed_probe_opens_it_again_and_only_one_probe_runs_at_a_time() {
        let b = CircuitBreaker::new("test", 1, Duration::from_millis(30));
        assert!(fail(&b).await.is_err());
        assert_eq!(b.state(), State::Open);
        tokio::time::sleep(Duration::from_millis(40)).await;
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let slow_probe = b.call(async {
            let _ = rx.await;
            Err::<(), &'static str>("still down")
        });
        let second = async {
            tokio::time::sleep(Duration::from_millis(5)).await;
            let r = succeed(&b).await;
            let _ = tx.send(());
            r
        };
        let (probe, second) = tokio::join!(slow_probe, second);
        assert!(
            matches!(second, Err(CallError::Open(_))),
            "one probe at a time"
        );
        assert!(matches!(probe, Err(CallError::Failed(_))));
        assert_eq!(b.state(), State::Open);
    }
}
