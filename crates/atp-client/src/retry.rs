//! Which failures are sent again, how often, and how long to wait between.
//!
//! The backoff (exponential, with jitter) and the budget (retries as a share
//! of recent calls, plus a floor per second) are tower's
//! [`tower::retry::backoff`] and [`tower::retry::budget::TpsBudget`]; this
//! module only decides when to use them: a retry needs a retryable error
//! ([`Error::is_retryable`]), an attempt left and a token from the budget.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tower::retry::backoff::{Backoff, ExponentialBackoff, ExponentialBackoffMaker, MakeBackoff};
use tower::retry::budget::{Budget, TpsBudget};
use tower::util::rng::HasherRng;

use crate::Error;

/// Most attempts a policy may allow per call.
pub const MAX_ATTEMPTS_LIMIT: u32 = 100;

/// How a [`crate::Client`] retries. Every field has a default; see
/// [`RetryPolicy::default`].
#[derive(Clone, Debug, PartialEq)]
pub struct RetryPolicy {
    /// Attempts per call, the first included (1..=100; 1 = never retry).
    pub max_attempts: u32,
    /// Wait before the first retry; each further retry doubles it.
    pub backoff_min: Duration,
    /// Longest wait between two attempts.
    pub backoff_max: Duration,
    /// Random extra wait, as a share of the base wait (0.0..=1.0), so that
    /// callers that failed together do not retry together.
    pub jitter: f64,
    /// How long a call counts toward the budget (1..=60 s).
    pub budget_window: Duration,
    /// Retries allowed per second whatever the traffic (a quiet client
    /// still gets some).
    pub budget_min_retries_per_second: u32,
    /// Retries allowed per call made in the window, on top of the floor
    /// (0.0..=1000.0; 0.2 = one retry per five calls).
    pub budget_retry_ratio: f32,
}

impl Default for RetryPolicy {
    /// 4 attempts, 25 ms doubling to 1 s with up to 100% jitter, and a budget
    /// of 20% of the calls of the last 10 s plus 10 retries per second.
    fn default() -> Self {
        Self {
            max_attempts: 4,
            backoff_min: Duration::from_millis(25),
            backoff_max: Duration::from_secs(1),
            jitter: 1.0,
            budget_window: Duration::from_secs(10),
            budget_min_retries_per_second: 10,
            budget_retry_ratio: 0.2,
        }
    }
}

impl RetryPolicy {
    /// A policy that makes one attempt per call (with routing, an attempt
    /// the owner refuses as behind the shard map, or that cannot reach it,
    /// is sent once more, to a configured endpoint).
    pub fn never() -> Self {
        Self { max_attempts: 1, ..Self::default() }
    }

    /// The reasons this policy cannot be used, all of them (empty: fine).
    fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if !(1..=MAX_ATTEMPTS_LIMIT).contains(&self.max_attempts) {
            problems.push(format!("retry.max_attempts is {}; must be 1..=100", self.max_attempts));
        }
        if self.backoff_max.is_zero() || self.backoff_min > self.backoff_max {
            problems.push("retry.backoff_max must be positive and at least backoff_min".into());
        }
        if !(0.0..=1.0).contains(&self.jitter) {
            problems.push(format!("retry.jitter is {}; must be 0.0..=1.0", self.jitter));
        }
        if !(Duration::from_secs(1)..=Duration::from_secs(60)).contains(&self.budget_window) {
            problems.push("retry.budget_window must be 1..=60 s".into());
        }
        if self.budget_min_retries_per_second >= i32::MAX as u32 {
            problems.push("retry.budget_min_retries_per_second is too large".into());
        }
        if !(0.0..=1000.0).contains(&self.budget_retry_ratio) {
            problems.push("retry.budget_retry_ratio must be 0.0..=1000.0".into());
        }
        problems
    }
}

/// A checked [`RetryPolicy`] and the budget its calls share.
#[derive(Clone)]
pub(crate) struct Retrier {
    policy: RetryPolicy,
    budget: Arc<TpsBudget>,
}

impl std::fmt::Debug for Retrier {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.debug_struct("Retrier").field("policy", &self.policy).finish_non_exhaustive()
    }
}

impl Retrier {
    pub(crate) fn new(policy: RetryPolicy) -> Result<Self, Error> {
        let problems = policy.problems();
        if !problems.is_empty() {
            return Err(Error::Config(problems.join("; ")));
        }
        let budget = TpsBudget::new(
            policy.budget_window,
            policy.budget_min_retries_per_second,
            policy.budget_retry_ratio,
        );
        Ok(Self { policy, budget: Arc::new(budget) })
    }

    /// A fresh backoff for one call, with its own random jitter.
    pub(crate) fn backoff(&self) -> ExponentialBackoff {
        let policy = &self.policy;
        let mut maker = ExponentialBackoffMaker::new(
            policy.backoff_min,
            policy.backoff_max,
            policy.jitter,
            HasherRng::default(),
        )
        .expect("retry policy checked when the client was built");
        maker.make_backoff()
    }

    /// Counts a call toward the budget.
    pub(crate) fn deposit(&self) {
        self.budget.deposit();
    }

    /// Whether attempt number `attempts + 1` may be sent after `error`; takes
    /// a token from the budget when it may.
    pub(crate) fn may_retry(&self, error: &Error, attempts: u32) -> bool {
        error.is_retryable() && attempts < self.policy.max_attempts && self.budget.withdraw()
    }

    /// Waits before the next attempt: the backoff, or longer if the server
    /// asked for it.
    pub(crate) async fn pause(backoff: &mut ExponentialBackoff, error: &Error) {
        let wait = backoff.next_backoff();
        match error.retry_after() {
            Some(asked) => {
                tokio::join!(wait, tokio::time::sleep(asked));
            }
            None => wait.await,
        }
    }

    /// Runs `attempt` until it succeeds, fails for good, runs out of
    /// attempts, or the budget refuses a retry.
    pub(crate) async fn run<T, F, Fut>(&self, mut attempt: F) -> Result<T, Error>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, Error>>,
    {
        if self.policy.max_attempts == 1 {
            // Nothing to budget or back off: the hot path of a client that
            // never retries (a load generator) stays one call.
            return attempt().await;
        }
        self.deposit();
        let mut backoff = None;
        let mut attempts = 1;
        loop {
            let error = match attempt().await {
                Ok(value) => return Ok(value),
                Err(error) => error,
            };
            if !self.may_retry(&error, attempts) {
                return Err(error);
            }
            attempts += 1;
            let backoff = backoff.get_or_insert_with(|| self.backoff());
            Self::pause(backoff, &error).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;

    fn fast(max_attempts: u32) -> RetryPolicy {
        RetryPolicy {
            max_attempts,
            backoff_min: Duration::from_millis(1),
            backoff_max: Duration::from_millis(2),
            ..RetryPolicy::default()
        }
    }

    async fn attempts_until_done(retrier: &Retrier, error: fn() -> Error) -> u32 {
        let attempts = AtomicU32::new(0);
        let result: Result<(), Error> = retrier
            .run(|| {
                attempts.fetch_add(1, Ordering::Relaxed);
                std::future::ready(Err(error()))
            })
            .await;
        assert!(result.is_err());
        attempts.load(Ordering::Relaxed)
    }

    #[tokio::test]
    async fn retryable_errors_use_every_attempt_and_refusals_one() {
        let retrier = Retrier::new(fast(3)).expect("valid");
        let unavailable = || Error::Unavailable { message: "gone".into(), status: None };
        assert_eq!(attempts_until_done(&retrier, unavailable).await, 3);
        let refused = || Error::from_status(&atp_proto::Reason::NotFound.plain("r-1"));
        assert_eq!(attempts_until_done(&retrier, refused).await, 1);
    }

    #[tokio::test]
    async fn an_empty_budget_stops_retries() {
        let policy =
            RetryPolicy { budget_min_retries_per_second: 0, budget_retry_ratio: 0.0, ..fast(5) };
        let retrier = Retrier::new(policy).expect("valid");
        let unavailable = || Error::Unavailable { message: "gone".into(), status: None };
        assert_eq!(attempts_until_done(&retrier, unavailable).await, 1);
    }

    #[test]
    fn every_bad_setting_is_reported_at_once() {
        let policy = RetryPolicy {
            max_attempts: 0,
            jitter: 2.0,
            budget_window: Duration::ZERO,
            ..RetryPolicy::default()
        };
        let Err(Error::Config(message)) = Retrier::new(policy) else { panic!("refused") };
        for field in ["max_attempts", "jitter", "budget_window"] {
            assert!(message.contains(field), "{field} missing in {message}");
        }
    }
}
