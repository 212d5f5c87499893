//! How long the server takes to answer a GET (from the request to its response's headers)
//! or the first page of a listing (the whole page: small next to a round trip), the least
//! of the last answers, as TCP estimates a path's round trip from its least recent one.
//! Listings count because a mount lists before it reads: a walk's directories are listed
//! before any of their files is fetched. It tells a server next to the mount from one across a long link; waiting
//! behind other requests or for a busy CPU only adds to it. Neither an average of the
//! answers nor the whole fetch's time does: next to the server, on 2 cores, files of 1 MB
//! fetched ahead took 10-130 ms each and their headers 4-38 ms, with most of them spent
//! waiting for the CPU. The read-ahead then took the server for a distant one, kept up to
//! 1 GiB of files ahead in 128 GETs, and a cold epoch over them faulted in 650 MB of fresh
//! memory and ran 10-20 % slower (BENCHMARKS.md item 145).

use parking_lot::Mutex;
use std::collections::VecDeque;
use std::time::Duration;

/// Answers remembered: enough that some came while the server and the CPU were idle.
const REMEMBERED: usize = 64;
/// What is assumed before any request was answered: a long link.
const FIRST_GUESS: Duration = Duration::from_millis(50);
/// A server whose quickest recent answer came faster than this is next to the mount: a
/// reader's own request costs little more than a read of the cache (no WAN round trip is
/// under 10 ms; across a datacenter, or on the same machine, answers come in 0.1-5 ms).
const NEAR: Duration = Duration::from_millis(10);

#[derive(Default)]
pub(super) struct AnswerTime {
    recent: Mutex<VecDeque<Duration>>,
}

impl AnswerTime {
    /// A GET answered (its headers in) `took` after it was sent.
    pub fn answered(&self, took: Duration) {
        let mut recent = self.recent.lock();
        if recent.len() == REMEMBERED {
            recent.pop_front();
        }
        recent.push_back(took);
    }

    /// The least of the recent answers.
    pub fn least(&self) -> Duration {
        self.recent.lock().iter().min().copied().unwrap_or(FIRST_GUESS)
    }

    /// Whether the server is next to the mount (see [`NEAR`]).
    pub fn near(&self) -> bool {
        self.least() < NEAR
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn starts_far_and_follows_the_least_recent_answer() {
        let t = AnswerTime::default();
        assert_eq!(t.least(), FIRST_GUESS);
        assert!(!t.near(), "a mount that has heard nothing yet is taken as far");
        // Next to a busy server: most answers wait, some come at once.
        for i in 0..REMEMBERED {
            t.answered(Duration::from_millis(if i % 10 == 0 { 2 } else { 30 }));
        }
        assert_eq!(t.least(), Duration::from_millis(2));
        assert!(t.near());
        // The link got long: once the short answers are forgotten, so is the short distance.
        for _ in 0..REMEMBERED {
            t.answered(Duration::from_millis(40));
        }
        assert_eq!(t.least(), Duration::from_millis(40));
        assert!(!t.near());
    }
}
