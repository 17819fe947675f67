//! The state of one quota: a token bucket for invocations per second and
//! a sliding window for invocation time per minute.

use super::Quota;
use std::time::{Duration, Instant};

/// The state of one quota: a token bucket for the per-second figure and a
/// sliding window for the per-minute one, each started when first needed.
#[derive(Debug, Default)]
pub(super) struct Meter {
    /// Token bucket of the per-second quota: tokens and when last filled.
    pub(super) tokens: Option<(f64, Instant)>,
    /// The current minute's start and time charged in it, and the time of
    /// the minute before (a sliding-window estimate).
    pub(super) minute: Option<(Instant, f64, f64)>,
}

const MINUTE: Duration = Duration::from_secs(60);

/// Why an invocation is over a quota, and when to retry.
pub(super) type Over = (String, Duration);

impl Meter {
    /// Milliseconds charged in the last minute (sliding-window estimate).
    pub(super) fn last_minute(&mut self, now: Instant) -> f64 {
        let (start, current, previous) = self.minute.get_or_insert((now, 0.0, 0.0));
        let mut elapsed = now.saturating_duration_since(*start);
        if elapsed >= MINUTE {
            let minutes = elapsed.as_secs() / 60;
            *previous = if minutes == 1 { *current } else { 0.0 };
            *current = 0.0;
            *start += MINUTE * u32::try_from(minutes).unwrap_or(u32::MAX);
            elapsed = now.saturating_duration_since(*start);
        }
        let weight = 1.0 - elapsed.as_secs_f64() / MINUTE.as_secs_f64();
        *current + *previous * weight
    }

    /// Whether one more invocation is over `quota` now; takes nothing (see
    /// [`Meter::take`]), so that two meters can both be asked first.
    pub(super) fn check(&mut self, quota: Quota, now: Instant) -> Option<Over> {
        if let Some(budget) = quota.cpu_ms_per_minute {
            let used = self.last_minute(now);
            if used >= budget as f64 {
                let (start, _, _) = self.minute.unwrap_or((now, 0.0, 0.0));
                let retry = (start + MINUTE).saturating_duration_since(now);
                return Some((
                    format!(
                        "{used:.0} ms of invocation time in the last minute; the quota is {budget} ms per minute"
                    ),
                    retry.max(Duration::from_secs(1)),
                ));
            }
        }
        if let Some(rate) = quota.invocations_per_second {
            let rate = rate as f64;
            let (tokens, last) = self.tokens.get_or_insert((rate, now));
            let refill = now.saturating_duration_since(*last).as_secs_f64() * rate;
            *tokens = (*tokens + refill).min(rate);
            *last = now;
            if *tokens < 1.0 {
                let retry = Duration::from_secs_f64((1.0 - *tokens) / rate);
                return Some((
                    format!("more than {rate} invocations per second"),
                    retry.max(Duration::from_millis(1)),
                ));
            }
        }
        None
    }

    /// Takes the token of one admitted invocation.
    pub(super) fn take(&mut self) {
        if let Some((tokens, _)) = self.tokens.as_mut() {
            *tokens -= 1.0;
        }
    }

    /// Charges `ms` of invocation time to the current minute.
    pub(super) fn spend(&mut self, ms: f64, now: Instant) {
        self.last_minute(now);
        if let Some((_, current, _)) = self.minute.as_mut() {
            *current += ms;
        }
    }

    /// How long after its last use this meter is back in a fresh one's
    /// state: a second refills any bucket (it holds one second's tokens);
    /// two minutes empty the sliding window.
    pub(super) fn window(&self) -> Duration {
        if self.minute.is_some() {
            2 * MINUTE
        } else {
            Duration::from_secs(1)
        }
    }
}
