//! The order saga as a pure state machine: `(state, event) -> (state, commands)`.
//!
//! At this stage the saga records that it saw the order; the stock, payment and compensation
//! steps extend `SagaStatus` and `apply` without changing the actor around it.

use serde::{Deserialize, Serialize};

/// The saga's persisted status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum SagaStatus {
    /// No event seen yet (not persisted).
    New,
    /// `OrderPlaced` was recorded.
    Placed,
}

impl SagaStatus {
    pub fn as_str(&self) -> &'static str {
        match self {
            SagaStatus::New => "NEW",
            SagaStatus::Placed => "PLACED",
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "NEW" => Some(SagaStatus::New),
            "PLACED" => Some(SagaStatus::Placed),
            _ => None,
        }
    }
}

/// What the saga reacts to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SagaEvent {
    OrderPlaced,
}

/// What the actor must do after a transition (publish, arm timers). Empty for now: the next
/// steps (reserve stock, authorize payment) add variants here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SagaCommand {}

/// The outcome of one event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transition {
    pub status: SagaStatus,
    pub commands: Vec<SagaCommand>,
    /// False when the event does not change anything (for example a second `OrderPlaced`
    /// with a new message id): the actor records nothing.
    pub changed: bool,
}

pub fn apply(status: SagaStatus, event: &SagaEvent) -> Transition {
    match (status, event) {
        (SagaStatus::New, SagaEvent::OrderPlaced) => Transition {
            status: SagaStatus::Placed,
            commands: Vec::new(),
            changed: true,
        },
        (s, SagaEvent::OrderPlaced) => Transition {
            status: s,
            commands: Vec::new(),
            changed: false,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn order_placed_moves_new_to_placed_once() {
        let t = apply(SagaStatus::New, &SagaEvent::OrderPlaced);
        assert_eq!(t.status, SagaStatus::Placed);
        assert!(t.changed);
        let again = apply(t.status, &SagaEvent::OrderPlaced);
        assert_eq!(again.status, SagaStatus::Placed);
        assert!(!again.changed);
    }

    #[test]
    fn status_names_round_trip() {
        for s in [SagaStatus::New, SagaStatus::Placed] {
            assert_eq!(SagaStatus::parse(s.as_str()), Some(s));
        }
    }
}
