//! What an accept loop does when accept() fails. A full descriptor table (EMFILE, ENFILE)
//! or a lack of kernel memory fails every accept until something is closed, while the
//! pending connection stays queued and keeps the listener readable: retrying at once spins
//! a core (and floods the log), giving up leaves the socket dead for good. So those errors
//! wait, 10 ms doubling up to 1 s, and the loop carries on.

use std::io;
use std::time::Duration;

const FIRST_DELAY: Duration = Duration::from_millis(10);
const LONGEST_DELAY: Duration = Duration::from_secs(1);

/// The state of one accept loop: how long the next failure waits, and whether a warning
/// was already logged for the failures in a row it is in.
pub struct AcceptBackoff {
    what: &'static str,
    delay: Duration,
    failing: bool,
}

impl AcceptBackoff {
    /// `what` names the listener in log lines ("control socket").
    pub fn new(what: &'static str) -> AcceptBackoff {
        AcceptBackoff {
            what,
            delay: FIRST_DELAY,
            failing: false,
        }
    }

    /// The connection of a successful accept(); after a failure, `None` once the wait
    /// the error calls for is over (none for an error that belonged to one connection).
    pub async fn accepted<T>(&mut self, result: io::Result<T>) -> Option<T> {
        let error = match result {
            Ok(connection) => {
                if self.failing {
                    tracing::info!("{}: accepting connections again", self.what);
                }
                self.failing = false;
                self.delay = FIRST_DELAY;
                return Some(connection);
            }
            Err(error) => error,
        };
        if belongs_to_one_connection(&error) {
            tracing::debug!("{}: a connection failed before accept: {error}", self.what);
            return None;
        }
        if !self.failing {
            tracing::warn!(
                "{}: accept failed: {error}; retrying, waiting up to {} ms between attempts",
                self.what,
                LONGEST_DELAY.as_millis()
            );
        }
        self.failing = true;
        tokio::time::sleep(self.delay).await;
        self.delay = (self.delay * 2).min(LONGEST_DELAY);
        None
    }
}

/// Errors accept(2) reports for the connection it was about to return (Linux passes a
/// pending network error of the new socket on): the next one is unaffected, so they are
/// retried at once. Everything else (EMFILE, ENFILE, ENOBUFS, ENOMEM, and anything
/// unexpected) waits.
fn belongs_to_one_connection(error: &io::Error) -> bool {
    matches!(
        error.raw_os_error(),
        Some(
            libc::ECONNABORTED
                | libc::EINTR
                | libc::EAGAIN
                | libc::EPERM
                | libc::EPROTO
                | libc::ENETDOWN
                | libc::ENOPROTOOPT
                | libc::EHOSTDOWN
                | libc::ENONET
                | libc::EHOSTUNREACH
                | libc::EOPNOTSUPP
                | libc::ENETUNREACH
        )
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::time::Instant;

    fn os_error(code: i32) -> io::Result<()> {
        Err(io::Error::from_raw_os_error(code))
    }

    /// The clock is tokio's paused one: it only moves when the backoff sleeps.
    #[tokio::test(start_paused = true)]
    async fn running_out_of_descriptors_waits_longer_each_time_up_to_a_second() {
        let mut backoff = AcceptBackoff::new("test");
        let mut waits = Vec::new();
        for _ in 0..9 {
            let before = Instant::now();
            assert!(backoff.accepted(os_error(libc::EMFILE)).await.is_none());
            waits.push(before.elapsed().as_millis());
        }
        assert_eq!(waits, [10, 20, 40, 80, 160, 320, 640, 1000, 1000]);

        let before = Instant::now();
        assert!(backoff.accepted(os_error(libc::ENFILE)).await.is_none());
        assert_eq!(before.elapsed(), LONGEST_DELAY, "ENFILE waits like EMFILE");
    }

    #[tokio::test(start_paused = true)]
    async fn a_connection_starts_the_backoff_afresh() {
        let mut backoff = AcceptBackoff::new("test");
        for _ in 0..5 {
            backoff.accepted(os_error(libc::ENOBUFS)).await;
        }
        assert_eq!(backoff.accepted(Ok(7)).await, Some(7));
        let before = Instant::now();
        backoff.accepted(os_error(libc::EMFILE)).await;
        assert_eq!(before.elapsed(), FIRST_DELAY);
    }

    #[tokio::test(start_paused = true)]
    async fn an_error_of_one_connection_does_not_wait() {
        let mut backoff = AcceptBackoff::new("test");
        for code in [libc::ECONNABORTED, libc::EPROTO, libc::EINTR] {
            let before = Instant::now();
            assert!(backoff.accepted(os_error(code)).await.is_none());
            assert_eq!(before.elapsed(), Duration::ZERO, "errno {code}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn an_unexpected_error_waits_rather_than_spinning() {
        let mut backoff = AcceptBackoff::new("test");
        let before = Instant::now();
        backoff.accepted(os_error(libc::EBADF)).await;
        assert_eq!(before.elapsed(), FIRST_DELAY);
    }
}
