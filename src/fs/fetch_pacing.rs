//! How many fetches no reader waits for yet run at once, from how long they take.
//!
//! Little's law: to read ahead `RATE` files a second, `RATE` x the time a fetch takes must
//! be in flight. Over 40 ms a 100 KiB file takes about 100 ms (TCP slow start after an
//! idle connection), so filling 1 Gbit/s takes the 128 at most; next to the server a fetch
//! takes a millisecond or two, and 64 fetches at once there only cost CPU (measured on 2
//! cores: 16 % more daemon CPU for a data-loading epoch, none at 8).

use parking_lot::Mutex;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Files a second the read-ahead aims at.
const RATE: f64 = 1500.0;
/// Fetches in flight, at least and at most.
const MIN: usize = 4;
const MAX: usize = 128;
/// Weight of the newest fetch's time in the running average.
const WEIGHT: f64 = 0.1;
/// The average before any fetch was timed: a long link (reading ahead from the start),
/// forgotten after a few dozen fetches next to the server.
const FIRST_GUESS: f64 = 0.05;

pub(super) struct FetchPacing {
    slots: Arc<Semaphore>,
    state: Mutex<State>,
}

struct State {
    /// Slots that exist (taken or free).
    total: usize,
    /// Running average of a fetch's time, seconds.
    average: f64,
}

impl Default for FetchPacing {
    fn default() -> Self {
        FetchPacing {
            slots: Arc::new(Semaphore::new(MIN)),
            state: Mutex::new(State {
                total: MIN,
                average: FIRST_GUESS,
            }),
        }
    }
}

impl FetchPacing {
    /// Waits for a slot.
    pub async fn slot(&self) -> Option<OwnedSemaphorePermit> {
        self.slots.clone().acquire_owned().await.ok()
    }

    /// Gives back a slot whose fetch took `took`, and sets how many there are.
    pub fn done(&self, slot: OwnedSemaphorePermit, took: Duration) {
        let mut s = self.state.lock();
        s.average += WEIGHT * (took.as_secs_f64() - s.average);
        let wanted = ((s.average * RATE).ceil() as usize).clamp(MIN, MAX);
        if s.total > wanted {
            slot.forget();
            s.total -= 1;
        } else {
            drop(slot);
            if s.total < wanted {
                self.slots.add_permits(wanted - s.total);
                s.total = wanted;
            }
        }
    }

    /// Slots that exist now.
    #[cfg(test)]
    fn total(&self) -> usize {
        self.state.lock().total
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn slow_fetches_open_slots_and_fast_ones_close_them() {
        let pacing = FetchPacing::default();
        assert_eq!(pacing.total(), MIN);
        for _ in 0..100 {
            let slot = pacing.slot().await.unwrap();
            pacing.done(slot, Duration::from_millis(160));
        }
        assert_eq!(pacing.total(), MAX);
        for _ in 0..200 {
            let slot = pacing.slot().await.unwrap();
            pacing.done(slot, Duration::from_millis(1));
        }
        assert_eq!(pacing.total(), MIN);
        // Every slot that exists is free again.
        assert_eq!(pacing.slots.available_permits(), MIN);
    }
}
