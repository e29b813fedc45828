//! The order saga as a pure state machine: `apply(state, event) -> transition`. The actor around
//! it (`actors/order/saga.rs`) persists the transition, writes its commands to the outbox and
//! arms its deadline; this module decides and performs no I/O.
//!
//! ```text
//! NEW --OrderPlaced--> RESERVING --StockReserved--> AUTHORIZING --PaymentAuthorized--> CONFIRMED
//!                          |                             |
//!                    StockRejected               PaymentDeclined / timeout / cancel
//!                          v                             v
//!                      CANCELLED <--StockReleased--- RELEASING
//! ```
//! A cancel or a timeout while RESERVING also goes to RELEASING: the release queues behind the
//! reservation on the order's partition, so whatever inventory decided is undone.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::envelope::{
    AuthorizePayment, CommitStock, Envelope, OrderCancelled, OrderConfirmed, PricedLine,
    RefundPayment, ReleaseStock, ReserveStock, topics,
};
use super::ids::{CustomerId, OrderId};
use super::money::Currency;
use super::order::{OrderLine, OrderStatus};

/// The saga's persisted status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum SagaStatus {
    /// No event seen yet (not persisted).
    New,
    /// `ReserveStock` sent; waiting for the inventory's answer.
    Reserving,
    /// `AuthorizePayment` sent; waiting for the payment's answer.
    Authorizing,
    /// Compensating: `ReleaseStock` sent (and `RefundPayment` where needed).
    Releasing,
    Confirmed,
    Cancelled,
}

impl SagaStatus {
    pub const ALL: &'static [SagaStatus] = &[
        SagaStatus::New,
        SagaStatus::Reserving,
        SagaStatus::Authorizing,
        SagaStatus::Releasing,
        SagaStatus::Confirmed,
        SagaStatus::Cancelled,
    ];

    pub fn as_str(&self) -> &'static str {
        match self {
            SagaStatus::New => "NEW",
            SagaStatus::Reserving => "RESERVING",
            SagaStatus::Authorizing => "AUTHORIZING",
            SagaStatus::Releasing => "RELEASING",
            SagaStatus::Confirmed => "CONFIRMED",
            SagaStatus::Cancelled => "CANCELLED",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.iter().copied().find(|v| v.as_str() == s)
    }

    pub fn is_terminal(&self) -> bool {
        matches!(self, SagaStatus::Confirmed | SagaStatus::Cancelled)
    }
}

/// What the saga keeps between events (persisted as JSON with its status).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SagaData {
    pub customer_id: Option<CustomerId>,
    pub currency: Option<Currency>,
    #[serde(default)]
    pub lines: Vec<OrderLine>,
    pub card_token: Option<String>,
    /// The amount to charge, known once stock is reserved.
    pub amount_minor: Option<i64>,
    /// The reserved lines with their names and prices (for the invoice).
    #[serde(default)]
    pub priced_lines: Vec<PricedLine>,
    /// Why the order is being cancelled (set when compensation starts).
    pub cancel_reason: Option<String>,
}

/// The saga's whole state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SagaState {
    pub status: SagaStatus,
    pub data: SagaData,
}

impl SagaState {
    pub fn new() -> Self {
        Self {
            status: SagaStatus::New,
            data: SagaData::default(),
        }
    }
}

impl Default for SagaState {
    fn default() -> Self {
        Self::new()
    }
}

/// What the saga reacts to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SagaEvent {
    OrderPlaced {
        customer_id: CustomerId,
        currency: Currency,
        lines: Vec<OrderLine>,
        card_token: String,
    },
    StockReserved {
        total_minor: i64,
        lines: Vec<PricedLine>,
    },
    StockRejected {
        reason: String,
    },
    StockReleased,
    PaymentAuthorized,
    PaymentDeclined {
        reason: String,
    },
    CancelRequested {
        reason: String,
    },
    /// The deadline of the step the saga was in when it was armed has passed.
    TimedOut {
        status: SagaStatus,
    },
}

/// The step a deadline guards; its length comes from configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Deadline {
    Stock,
    Payment,
    Release,
}

/// How an order ends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Confirmed {
        total_minor: i64,
        currency: Currency,
        customer_id: Option<CustomerId>,
        lines: Vec<PricedLine>,
    },
    Cancelled {
        reason: String,
    },
}

impl Outcome {
    pub fn order_status(&self) -> OrderStatus {
        match self {
            Outcome::Confirmed { .. } => OrderStatus::Confirmed,
            Outcome::Cancelled { .. } => OrderStatus::Cancelled,
        }
    }
}

/// What the actor must do after a transition, in the same transaction as the new state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SagaCommand {
    ReserveStock(ReserveStock),
    ReleaseStock {
        reason: String,
    },
    CommitStock,
    AuthorizePayment(AuthorizePayment),
    RefundPayment {
        reason: String,
    },
    /// Set the order's status and announce it on `order.events`.
    Complete(Outcome),
}

/// The outcome of one event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transition {
    pub state: SagaState,
    pub commands: Vec<SagaCommand>,
    /// The deadline to arm (`None` clears any deadline).
    pub deadline: Option<Deadline>,
    /// False when the event changes nothing (late, repeated or irrelevant): nothing is written.
    pub changed: bool,
}

impl Transition {
    /// The outbox messages of the transition's commands: `(topic, envelope)` each.
    pub fn command_envelopes(
        &self,
        order: OrderId,
        now: DateTime<Utc>,
    ) -> Vec<(&'static str, Envelope)> {
        self.commands
            .iter()
            .map(|c| match c {
                SagaCommand::ReserveStock(p) => (
                    topics::INVENTORY_COMMANDS,
                    Envelope::new(order, p as &ReserveStock, now),
                ),
                SagaCommand::ReleaseStock { reason } => (
                    topics::INVENTORY_COMMANDS,
                    Envelope::new(
                        order,
                        &ReleaseStock {
                            reason: reason.clone(),
                        },
                        now,
                    ),
                ),
                SagaCommand::CommitStock => (
                    topics::INVENTORY_COMMANDS,
                    Envelope::new(order, &CommitStock {}, now),
                ),
                SagaCommand::AuthorizePayment(p) => (
                    topics::PAYMENT_COMMANDS,
                    Envelope::new(order, p as &AuthorizePayment, now),
                ),
                SagaCommand::RefundPayment { reason } => (
                    topics::PAYMENT_COMMANDS,
                    Envelope::new(
                        order,
                        &RefundPayment {
                            reason: reason.clone(),
                        },
                        now,
                    ),
                ),
                SagaCommand::Complete(Outcome::Confirmed {
                    total_minor,
                    currency,
                    customer_id,
                    lines,
                }) => (
                    topics::ORDER_EVENTS,
                    Envelope::new(
                        order,
                        &OrderConfirmed {
                            total_minor: *total_minor,
                            currency: *currency,
                            customer_id: customer_id.clone(),
                            lines: lines.clone(),
                        },
                        now,
                    ),
                ),
                SagaCommand::Complete(Outcome::Cancelled { reason }) => (
                    topics::ORDER_EVENTS,
                    Envelope::new(
                        order,
                        &OrderCancelled {
                            reason: reason.clone(),
                        },
                        now,
                    ),
                ),
            })
            .collect()
    }
}

fn unchanged(state: &SagaState) -> Transition {
    Transition {
        state: state.clone(),
        commands: Vec::new(),
        deadline: None,
        changed: false,
    }
}

fn to(
    state: &SagaState,
    status: SagaStatus,
    data: SagaData,
    commands: Vec<SagaCommand>,
    deadline: Option<Deadline>,
) -> Transition {
    debug_assert!(status != state.status || !commands.is_empty());
    Transition {
        state: SagaState { status, data },
        commands,
        deadline,
        changed: true,
    }
}

/// Starts compensation: release the stock (and refund when a payment may exist).
fn compensate(state: &SagaState, reason: &str, refund: bool) -> Transition {
    let mut data = state.data.clone();
    data.cancel_reason = Some(reason.to_owned());
    let mut commands = Vec::new();
    if refund {
        commands.push(SagaCommand::RefundPayment {
            reason: reason.to_owned(),
        });
    }
    commands.push(SagaCommand::ReleaseStock {
        reason: reason.to_owned(),
    });
    to(
        state,
        SagaStatus::Releasing,
        data,
        commands,
        Some(Deadline::Release),
    )
}

fn cancelled(state: &SagaState, reason: String) -> Transition {
    let mut data = state.data.clone();
    data.cancel_reason = Some(reason.clone());
    to(
        state,
        SagaStatus::Cancelled,
        data,
        vec![SagaCommand::Complete(Outcome::Cancelled { reason })],
        None,
    )
}

pub fn apply(state: &SagaState, event: &SagaEvent) -> Transition {
    use SagaEvent as E;
    use SagaStatus as S;
    match (state.status, event) {
        (
            S::New,
            E::OrderPlaced {
                customer_id,
                currency,
                lines,
                card_token,
            },
        ) => {
            let data = SagaData {
                customer_id: Some(customer_id.clone()),
                currency: Some(*currency),
                lines: lines.clone(),
                card_token: Some(card_token.clone()),
                amount_minor: None,
                priced_lines: Vec::new(),
                cancel_reason: None,
            };
            let reserve = SagaCommand::ReserveStock(ReserveStock {
                currency: *currency,
                lines: lines.clone(),
            });
            to(
                state,
                S::Reserving,
                data,
                vec![reserve],
                Some(Deadline::Stock),
            )
        }
        // A cancel before anything happened: nothing to compensate.
        (S::New, E::CancelRequested { reason }) => cancelled(state, reason.clone()),

        (S::Reserving, E::StockReserved { total_minor, lines }) => {
            let (Some(currency), Some(card_token)) = (state.data.currency, &state.data.card_token)
            else {
                return compensate(state, "saga data incomplete", false);
            };
            let mut data = state.data.clone();
            data.amount_minor = Some(*total_minor);
            data.priced_lines = lines.clone();
            let authorize = SagaCommand::AuthorizePayment(AuthorizePayment {
                amount_minor: *total_minor,
                currency,
                card_token: card_token.clone(),
            });
            to(
                state,
                S::Authorizing,
                data,
                vec![authorize],
                Some(Deadline::Payment),
            )
        }
        (S::Reserving, E::StockRejected { reason }) => cancelled(state, reason.clone()),
        (S::Reserving, E::CancelRequested { reason }) => compensate(state, reason, false),
        (
            S::Reserving,
            E::TimedOut {
                status: S::Reserving,
            },
        ) => compensate(state, "stock_timeout", false),

        (S::Authorizing, E::PaymentAuthorized) => {
            let (Some(currency), Some(total_minor)) =
                (state.data.currency, state.data.amount_minor)
            else {
                return compensate(state, "saga data incomplete", true);
            };
            to(
                state,
                S::Confirmed,
                state.data.clone(),
                vec![
                    SagaCommand::CommitStock,
                    SagaCommand::Complete(Outcome::Confirmed {
                        total_minor,
                        currency,
                        customer_id: state.data.customer_id.clone(),
                        lines: state.data.priced_lines.clone(),
                    }),
                ],
                None,
            )
        }
        (S::Authorizing, E::PaymentDeclined { reason }) => {
            compensate(state, &format!("payment_declined: {reason}"), false)
        }
        (S::Authorizing, E::CancelRequested { reason }) => compensate(state, reason, true),
        (
            S::Authorizing,
            E::TimedOut {
                status: S::Authorizing,
            },
        ) => compensate(state, "payment_timeout", true),

        (S::Releasing, E::StockReleased) => {
            let reason = state
                .data
                .cancel_reason
                .clone()
                .unwrap_or_else(|| "cancelled".into());
            cancelled(state, reason)
        }
        // Inventory did not confirm the release in time: ask again (releasing is idempotent).
        (
            S::Releasing,
            E::TimedOut {
                status: S::Releasing,
            },
        ) => {
            let reason = state
                .data
                .cancel_reason
                .clone()
                .unwrap_or_else(|| "cancelled".into());
            to(
                state,
                S::Releasing,
                state.data.clone(),
                vec![SagaCommand::ReleaseStock { reason }],
                Some(Deadline::Release),
            )
        }
        // A payment authorized after the order was given up: give the money back.
        (S::Cancelled, E::PaymentAuthorized) => to(
            state,
            S::Cancelled,
            state.data.clone(),
            vec![SagaCommand::RefundPayment {
                reason: "authorized after cancellation".into(),
            }],
            None,
        ),
        _ => unchanged(state),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn placed() -> SagaEvent {
        SagaEvent::OrderPlaced {
            customer_id: CustomerId::parse("c1").unwrap_or_else(|| unreachable!()),
            currency: Currency::parse("EUR").unwrap_or_else(|| unreachable!()),
            lines: vec![OrderLine {
                sku: crate::domain::ids::Sku::parse("A").unwrap_or_else(|| unreachable!()),
                quantity: 2,
            }],
            card_token: "tok_visa".into(),
        }
    }

    /// Applies events in order and returns the final state with every command issued.
    fn run(events: &[SagaEvent]) -> (SagaState, Vec<SagaCommand>) {
        let mut state = SagaState::new();
        let mut commands = Vec::new();
        for e in events {
            let t = apply(&state, e);
            commands.extend(t.commands);
            state = t.state;
        }
        (state, commands)
    }

    fn kinds(commands: &[SagaCommand]) -> Vec<&'static str> {
        commands
            .iter()
            .map(|c| match c {
                SagaCommand::ReserveStock(_) => "reserve",
                SagaCommand::ReleaseStock { .. } => "release",
                SagaCommand::CommitStock => "commit",
                SagaCommand::AuthorizePayment(_) => "authorize",
                SagaCommand::RefundPayment { .. } => "refund",
                SagaCommand::Complete(Outcome::Confirmed { .. }) => "confirmed",
                SagaCommand::Complete(Outcome::Cancelled { .. }) => "cancelled",
            })
            .collect()
    }

    #[test]
    fn happy_path_confirms_and_commits_stock() {
        let (state, commands) = run(&[
            placed(),
            SagaEvent::StockReserved {
                total_minor: 500,
                lines: vec![],
            },
            SagaEvent::PaymentAuthorized,
        ]);
        assert_eq!(state.status, SagaStatus::Confirmed);
        assert_eq!(
            kinds(&commands),
            ["reserve", "authorize", "commit", "confirmed"]
        );
        let authorize = commands.iter().find_map(|c| match c {
            SagaCommand::AuthorizePayment(a) => Some(a.amount_minor),
            _ => None,
        });
        assert_eq!(authorize, Some(500));
    }

    #[test]
    fn out_of_stock_cancels_without_compensation() {
        let (state, commands) = run(&[
            placed(),
            SagaEvent::StockRejected {
                reason: "out_of_stock".into(),
            },
        ]);
        assert_eq!(state.status, SagaStatus::Cancelled);
        assert_eq!(kinds(&commands), ["reserve", "cancelled"]);
    }

    #[test]
    fn declined_payment_releases_stock_then_cancels() {
        let (state, commands) = run(&[
            placed(),
            SagaEvent::StockReserved {
                total_minor: 500,
                lines: vec![],
            },
            SagaEvent::PaymentDeclined {
                reason: "card_declined".into(),
            },
            SagaEvent::StockReleased,
        ]);
        assert_eq!(state.status, SagaStatus::Cancelled);
        assert_eq!(
            kinds(&commands),
            ["reserve", "authorize", "release", "cancelled"]
        );
        assert_eq!(
            state.data.cancel_reason.as_deref(),
            Some("payment_declined: card_declined")
        );
    }

    #[test]
    fn payment_timeout_refunds_and_releases() {
        let (state, commands) = run(&[
            placed(),
            SagaEvent::StockReserved {
                total_minor: 500,
                lines: vec![],
            },
            SagaEvent::TimedOut {
                status: SagaStatus::Authorizing,
            },
            SagaEvent::PaymentAuthorized, // late: ignored while releasing
            SagaEvent::StockReleased,
        ]);
        assert_eq!(state.status, SagaStatus::Cancelled);
        assert_eq!(
            kinds(&commands),
            ["reserve", "authorize", "refund", "release", "cancelled"]
        );
    }

    #[test]
    fn customer_cancel_compensates_what_was_done() {
        let (s, c) = run(&[
            placed(),
            SagaEvent::CancelRequested {
                reason: "customer".into(),
            },
            SagaEvent::StockReserved {
                total_minor: 1,
                lines: vec![],
            }, // queued before the release: ignored
            SagaEvent::StockReleased,
        ]);
        assert_eq!(s.status, SagaStatus::Cancelled);
        assert_eq!(kinds(&c), ["reserve", "release", "cancelled"]);

        let (s, c) = run(&[
            placed(),
            SagaEvent::StockReserved {
                total_minor: 1,
                lines: vec![],
            },
            SagaEvent::CancelRequested {
                reason: "customer".into(),
            },
            SagaEvent::StockReleased,
        ]);
        assert_eq!(s.status, SagaStatus::Cancelled);
        assert_eq!(
            kinds(&c),
            ["reserve", "authorize", "refund", "release", "cancelled"]
        );
    }

    #[test]
    fn terminal_states_ignore_everything_but_a_late_authorization() {
        let (confirmed, _) = run(&[
            placed(),
            SagaEvent::StockReserved {
                total_minor: 1,
                lines: vec![],
            },
            SagaEvent::PaymentAuthorized,
        ]);
        for e in [
            SagaEvent::CancelRequested { reason: "x".into() },
            SagaEvent::StockReleased,
            placed(),
            SagaEvent::TimedOut {
                status: SagaStatus::Authorizing,
            },
        ] {
            assert!(!apply(&confirmed, &e).changed, "{e:?}");
        }
        let (cancelled, _) = run(&[placed(), SagaEvent::StockRejected { reason: "x".into() }]);
        let late = apply(&cancelled, &SagaEvent::PaymentAuthorized);
        assert_eq!(kinds(&late.commands), ["refund"]);
    }

    #[test]
    fn stale_timeouts_change_nothing() {
        let (authorizing, _) = run(&[
            placed(),
            SagaEvent::StockReserved {
                total_minor: 1,
                lines: vec![],
            },
        ]);
        let stale = apply(
            &authorizing,
            &SagaEvent::TimedOut {
                status: SagaStatus::Reserving,
            },
        );
        assert!(!stale.changed);
    }

    #[test]
    fn every_non_terminal_state_has_a_deadline_and_terminal_ones_none() {
        let t = apply(&SagaState::new(), &placed());
        assert_eq!(t.deadline, Some(Deadline::Stock));
        let t = apply(
            &t.state,
            &SagaEvent::StockReserved {
                total_minor: 1,
                lines: vec![],
            },
        );
        assert_eq!(t.deadline, Some(Deadline::Payment));
        let t2 = apply(&t.state, &SagaEvent::PaymentDeclined { reason: "x".into() });
        assert_eq!(t2.deadline, Some(Deadline::Release));
        let t3 = apply(&t.state, &SagaEvent::PaymentAuthorized);
        assert_eq!(t3.deadline, None);
    }

    #[test]
    fn status_names_round_trip() {
        for s in SagaStatus::ALL {
            assert_eq!(SagaStatus::parse(s.as_str()), Some(*s));
        }
        assert_eq!(SagaStatus::parse("PLACED"), None);
    }
}
