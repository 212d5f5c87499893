use super::{StoreError, StoreResult};
use std::future::Future;
use std::time::Duration;

/// Retries transient failures (5xx, throttling, connection errors, timeouts) with
/// exponential backoff and full jitter, so many clients hitting one overloaded gateway
/// (Runpod's 502s) spread out instead of retrying in lockstep.
#[derive(Debug, Clone)]
pub struct RetryPolicy {
    /// Total attempts, the first included; Runpod advises 10.
    pub max_attempts: u32,
    pub base_delay: Duration,
    pub max_delay: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 10,
            base_delay: Duration::from_millis(100),
            max_delay: Duration::from_secs(10),
        }
    }
}

impl RetryPolicy {
    /// The pause before attempt `attempt + 1`.
    pub fn delay(&self, attempt: u32) -> Duration {
        let exp = self.base_delay.saturating_mul(1u32 << attempt.min(16));
        let cap = exp.min(self.max_delay);
        cap.mul_f64(fastrand::f64())
    }

    pub async fn run<T, F, Fut>(&self, what: &str, mut op: F) -> StoreResult<T>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = StoreResult<T>>,
    {
        let mut attempt = 1;
        loop {
            match op().await {
                Err(e) if e.is_transient() && attempt < self.max_attempts => {
                    let pause = self.delay(attempt);
                    tracing::debug!(%e, attempt, ?pause, "{what}: retrying");
                    tokio::time::sleep(pause).await;
                    attempt += 1;
                }
                Err(StoreError::Transient(m)) if attempt > 1 => {
                    return Err(StoreError::Transient(format!("{m} (after {attempt} attempts)")));
                }
                other => return other,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    fn quick(max_attempts: u32) -> RetryPolicy {
        RetryPolicy {
            max_attempts,
            base_delay: Duration::from_millis(1),
            max_delay: Duration::from_millis(2),
        }
    }

    #[tokio::test]
    async fn retries_transient_errors_until_success() {
        let calls = AtomicU32::new(0);
        let r = quick(5)
            .run("op", || async {
                match calls.fetch_add(1, Ordering::SeqCst) {
                    0..=2 => Err(StoreError::Transient("502".into())),
                    _ => Ok(7),
                }
            })
            .await;
        assert_eq!(r, Ok(7));
        assert_eq!(calls.load(Ordering::SeqCst), 4);
    }

    #[tokio::test]
    async fn gives_up_after_the_budget_and_never_retries_permanent_errors() {
        let calls = AtomicU32::new(0);
        let r: StoreResult<()> = quick(3)
            .run("op", || async {
                calls.fetch_add(1, Ordering::SeqCst);
                Err(StoreError::Transient("503".into()))
            })
            .await;
        assert!(matches!(r, Err(StoreError::Transient(m)) if m.contains("after 3 attempts")));
        assert_eq!(calls.load(Ordering::SeqCst), 3);
        calls.store(0, Ordering::SeqCst);
        let r: StoreResult<()> = quick(3)
            .run("op", || async {
                calls.fetch_add(1, Ordering::SeqCst);
                Err(StoreError::AccessDenied("403".into()))
            })
            .await;
        assert!(matches!(r, Err(StoreError::AccessDenied(_))));
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn delay_is_bounded() {
        let p = RetryPolicy::default();
        for attempt in 0..40 {
            assert!(p.delay(attempt) <= p.max_delay);
        }
    }
}
