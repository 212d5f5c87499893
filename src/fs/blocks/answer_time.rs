//! How long the server takes to answer a GET (from the request to its response's headers)
//! or the first page of a listing (the whole page: small next to a round trip): the least
//! answer of the 10 s up to the latest, as BBR keeps a path's least round trip. Listings
//! count because a mount lists before it reads: a walk's directories are listed before
//! any of their files is fetched. It tells a server next to the mount from one across a
//! long link; waiting behind other requests or for a busy CPU only adds to it.
//!
//! Neither an average of the answers nor the whole fetch's time does: next to the server,
//! on 2 cores, files of 1 MB fetched ahead took 10-130 ms each and their headers 4-38 ms,
//! most of it waiting for the CPU. The read-ahead then took the server for a distant one,
//! kept up to 1 GiB of files ahead in 128 GETs, and a cold epoch over them faulted in 650
//! MB of fresh memory and ran 10-20 % slower (BENCHMARKS.md item 145). Nor the least of a
//! few dozen answers: on a 5 ms link, with the workers, the server and the link's own
//! emulation on 2 cores, 64 answers in a row could all wait past 10 ms; the mount took the
//! server for a distant one, read far ahead, which slowed every answer more, and stayed
//! so: with one core busy, 3 epochs of 8 ran 1.5-3.5 times as long, some 2-7 times on a
//! busier machine (item 151). A quick answer now vouches for the distance for 10 s of
//! answers, and an idle mount keeps what it last knew.

use parking_lot::Mutex;
use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// How long a quick answer vouches for the distance (BBR's window for a path's least
/// round trip).
const WINDOW: Duration = Duration::from_secs(10);
/// Answers kept at most: the window's answers from its least on, each slower than the one
/// before (quicker ones replace them), so few unless the answers keep slowing down.
const KEPT_MAX: usize = 1024;
/// What is assumed before any request was answered: a long link.
const FIRST_GUESS: Duration = Duration::from_millis(50);
/// A server whose quickest recent answer came faster than this is next to the mount: a
/// reader's own request costs little more than a read of the cache (no WAN round trip is
/// under 10 ms; across a datacenter, or on the same machine, answers come in 0.1-5 ms).
const NEAR: Duration = Duration::from_millis(10);

#[derive(Default)]
pub(super) struct AnswerTime {
    /// Answers of the window, by when they came: each slower than the one before, so the
    /// first is the least (a sliding minimum).
    kept: Mutex<VecDeque<(Instant, Duration)>>,
}

impl AnswerTime {
    /// A request was answered `took` after it was sent.
    pub fn answered(&self, took: Duration) {
        self.answered_at(took, Instant::now());
    }

    fn answered_at(&self, took: Duration, now: Instant) {
        let mut kept = self.kept.lock();
        let was_near = kept.front().is_some_and(|(_, least)| *least < NEAR);
        while kept.back().is_some_and(|(_, d)| *d >= took) {
            kept.pop_back();
        }
        kept.push_back((now, took));
        while kept.len() > KEPT_MAX || kept.front().is_some_and(|(at, _)| now.duration_since(*at) > WINDOW) {
            kept.pop_front();
        }
        let least = kept.front().map_or(took, |(_, d)| *d);
        if was_near != (least < NEAR) {
            tracing::debug!(
                "the server's quickest answer lately: {least:?}: next to the mount: {}",
                least < NEAR
            );
        }
    }

    /// The least answer of the window.
    pub fn least(&self) -> Duration {
        self.kept.lock().front().map_or(FIRST_GUESS, |(_, d)| *d)
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
    fn starts_far_and_follows_the_least_answer_of_the_window() {
        let t = AnswerTime::default();
        assert_eq!(t.least(), FIRST_GUESS);
        assert!(!t.near(), "a mount that has heard nothing yet is taken as far");
        let start = Instant::now();
        let ms = Duration::from_millis;
        // Next to a busy server: most answers wait, some come at once.
        for i in 0..100u64 {
            t.answered_at(ms(if i % 10 == 0 { 2 } else { 30 }), start + ms(i));
        }
        assert_eq!(t.least(), ms(2));
        assert!(t.near());
        // A busy while: 9 s of slow answers only, the quick one still in the window.
        for i in 0..900u64 {
            t.answered_at(ms(30), start + ms(100 + 10 * i));
        }
        assert!(t.near(), "slow answers for 9 s made the server far");
        // An idle mount keeps what it knew.
        assert_eq!(t.least(), ms(2));
        // The link got long: once the quick answers are over 10 s old, so is the distance.
        for i in 0..200u64 {
            t.answered_at(ms(40), start + ms(9_100 + 10 * i));
        }
        assert_eq!(t.least(), ms(30));
        assert!(!t.near());
        assert!(t.kept.lock().len() <= 2, "answers kept: {}", t.kept.lock().len());
    }
}
