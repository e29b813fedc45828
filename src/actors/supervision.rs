//! Restart policy shared by supervisors: capped exponential backoff and a restart budget per
//! time window. ractor has no built-in policy; supervisors consult this on `ActorFailed`.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crate::config::SupervisionConfig;

/// A child that ended, as a supervisor sees it.
pub struct Ended {
    pub cell: ractor::ActorCell,
    pub reason: String,
    /// Failed, or killed: not a stop the child or its supervisor asked for.
    pub abnormal: bool,
}

/// The child an `ActorFailed`/`ActorTerminated` event is about; `None` for other events.
pub fn ended(event: ractor::SupervisionEvent) -> Option<Ended> {
    match event {
        ractor::SupervisionEvent::ActorFailed(cell, e) => Some(Ended {
            cell,
            reason: e.to_string(),
            abnormal: true,
        }),
        ractor::SupervisionEvent::ActorTerminated(cell, _, reason) => {
            let reason = reason.unwrap_or_else(|| "stopped".into());
            Some(Ended {
                abnormal: reason == "killed",
                cell,
                reason,
            })
        }
        _ => None,
    }
}

#[derive(Debug, Clone)]
pub struct RestartPolicy {
    max_restarts: u32,
    window: Duration,
    initial: Duration,
    max: Duration,
    recent: VecDeque<Instant>,
}

/// What a supervisor should do about a failed child.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Restart after this delay.
    RestartAfter(Duration),
    /// The budget is spent: stop and let the parent decide.
    Escalate,
}

impl RestartPolicy {
    pub fn new(config: &SupervisionConfig) -> Self {
        Self {
            max_restarts: config.max_restarts,
            window: Duration::from_secs(config.restart_window_secs),
            initial: Duration::from_millis(config.backoff_initial_ms),
            max: Duration::from_millis(config.backoff_max_ms),
            recent: VecDeque::new(),
        }
    }

    /// Records a failure at `now` and decides.
    pub fn on_failure(&mut self, now: Instant) -> Decision {
        while let Some(first) = self.recent.front() {
            if now.duration_since(*first) > self.window {
                self.recent.pop_front();
            } else {
                break;
            }
        }
        if self.recent.len() >= self.max_restarts as usize {
            return Decision::Escalate;
        }
        let exponent = u32::try_from(self.recent.len()).unwrap_or(u32::MAX).min(16);
        self.recent.push_back(now);
        Decision::RestartAfter(backoff(self.initial, self.max, exponent))
    }
}

/// `initial * 2^attempt`, capped at `max`.
pub fn backoff(initial: Duration, max: Duration, attempt: u32) -> Duration {
    initial
        .checked_mul(1u32.checked_shl(attempt.min(20)).unwrap_or(u32::MAX))
        .unwrap_or(max)
        .min(max)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(max_restarts: u32) -> RestartPolicy {
        RestartPolicy::new(&SupervisionConfig {
            max_restarts,
            restart_window_secs: 10,
            backoff_initial_ms: 100,
            backoff_max_ms: 1_000,
        })
    }

    #[test]
    fn backoff_doubles_until_the_cap() {
        let mut p = policy(10);
        let t = Instant::now();
        let delays: Vec<_> = (0..6).map(|_| p.on_failure(t)).collect();
        assert_eq!(
            delays[0],
            Decision::RestartAfter(Duration::from_millis(100))
        );
        assert_eq!(
            delays[1],
            Decision::RestartAfter(Duration::from_millis(200))
        );
        assert_eq!(
            delays[3],
            Decision::RestartAfter(Duration::from_millis(800))
        );
        assert_eq!(
            delays[5],
            Decision::RestartAfter(Duration::from_millis(1_000))
        );
    }

    #[test]
    fn budget_escalates_then_recovers_after_the_window() {
        let mut p = policy(2);
        let t = Instant::now();
        assert!(matches!(p.on_failure(t), Decision::RestartAfter(_)));
        assert!(matches!(p.on_failure(t), Decision::RestartAfter(_)));
        assert_eq!(p.on_failure(t), Decision::Escalate);
        let later = t + Duration::from_secs(11);
        assert_eq!(
            p.on_failure(later),
            Decision::RestartAfter(Duration::from_millis(100))
        );
    }
}
