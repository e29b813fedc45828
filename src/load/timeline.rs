//! A load run second by second: how many orders were posted and accepted in each second of the
//! send window and their latencies, so that a slow tail can be lined up with what the servers
//! logged at that time (a checkpoint, a collection, a rebalance).

use std::time::{Duration, Instant};

use serde::Serialize;

/// Latencies in microseconds, per second of the send window.
pub struct Timeline {
    start: Instant,
    post: Vec<Vec<u32>>,
    e2e: Vec<Vec<u32>>,
}

/// One second of the send window.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Second {
    /// Seconds since the first request was due.
    pub second: usize,
    /// Requests due in this second.
    pub posted: usize,
    pub post_p99_ms: f64,
    pub post_max_ms: f64,
    /// Orders accepted in this second that reached a terminal state.
    pub finished: usize,
    /// Accepted → terminal, of the orders accepted in this second.
    pub e2e_p99_ms: f64,
    pub e2e_max_ms: f64,
}

impl Timeline {
    pub fn new(start: Instant) -> Self {
        Timeline {
            start,
            post: Vec::new(),
            e2e: Vec::new(),
        }
    }

    /// A request that was due at `due` and answered after `latency`.
    pub fn post(&mut self, due: Instant, latency: Duration) {
        let i = self.second_of(due);
        slot(&mut self.post, i).push(micros(latency));
    }

    /// An order accepted at `accepted` that reached its terminal state after `latency`.
    pub fn finished(&mut self, accepted: Instant, latency: Duration) {
        let i = self.second_of(accepted);
        slot(&mut self.e2e, i).push(micros(latency));
    }

    /// Every second that saw a request or an accepted order, in order.
    pub fn seconds(&self) -> Vec<Second> {
        let n = self.post.len().max(self.e2e.len());
        (0..n)
            .map(|i| {
                let post = self.post.get(i).map(Vec::as_slice).unwrap_or_default();
                let e2e = self.e2e.get(i).map(Vec::as_slice).unwrap_or_default();
                Second {
                    second: i,
                    posted: post.len(),
                    post_p99_ms: quantile_ms(post, 0.99),
                    post_max_ms: quantile_ms(post, 1.0),
                    finished: e2e.len(),
                    e2e_p99_ms: quantile_ms(e2e, 0.99),
                    e2e_max_ms: quantile_ms(e2e, 1.0),
                }
            })
            .collect()
    }

    fn second_of(&self, at: Instant) -> usize {
        at.saturating_duration_since(self.start).as_secs() as usize
    }
}

fn slot(v: &mut Vec<Vec<u32>>, i: usize) -> &mut Vec<u32> {
    if v.len() <= i {
        v.resize_with(i + 1, Vec::new);
    }
    &mut v[i]
}

fn micros(d: Duration) -> u32 {
    u32::try_from(d.as_micros()).unwrap_or(u32::MAX)
}

/// The `q` quantile (nearest rank) of `values` in milliseconds, one decimal; 0 when empty.
fn quantile_ms(values: &[u32], q: f64) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    let mut sorted = values.to_vec();
    sorted.sort_unstable();
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    (f64::from(sorted[rank - 1]) / 100.0).round() / 10.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latencies_land_in_the_second_they_were_due_or_accepted() {
        let start = Instant::now();
        let mut t = Timeline::new(start);
        for ms in 1..=100u64 {
            t.post(start + Duration::from_millis(10), Duration::from_millis(ms));
        }
        t.post(
            start + Duration::from_millis(2_500),
            Duration::from_millis(7),
        );
        t.finished(
            start + Duration::from_millis(2_100),
            Duration::from_millis(300),
        );
        let s = t.seconds();
        assert_eq!(s.len(), 3);
        assert_eq!(
            (s[0].posted, s[0].post_p99_ms, s[0].post_max_ms),
            (100, 99.0, 100.0)
        );
        assert_eq!((s[1].posted, s[1].finished, s[1].post_max_ms), (0, 0, 0.0));
        assert_eq!((s[2].posted, s[2].post_p99_ms), (1, 7.0));
        assert_eq!(
            (s[2].finished, s[2].e2e_p99_ms, s[2].e2e_max_ms),
            (1, 300.0, 300.0)
        );
    }

    #[test]
    fn a_second_before_the_start_counts_as_the_first() {
        let start = Instant::now() + Duration::from_secs(1);
        let mut t = Timeline::new(start);
        t.finished(Instant::now(), Duration::from_micros(1_250));
        assert_eq!(t.seconds()[0].e2e_max_ms, 1.3);
    }
}
