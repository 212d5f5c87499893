//! The memory that bodies in flight may take: GET ranges being received and upload bodies
//! being sent, across the whole mount. A transfer waits for room before it starts.

use std::sync::Arc;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Permits are counted in units of this many bytes.
const UNIT: u64 = 64 << 10;

pub struct TransferBudget {
    room: Arc<Semaphore>,
    units: u32,
}

impl TransferBudget {
    pub fn new(bytes: u64) -> Arc<TransferBudget> {
        let units = (bytes / UNIT).clamp(1, u64::from(u32::MAX >> 4)) as u32;
        Arc::new(TransferBudget {
            room: Arc::new(Semaphore::new(units as usize)),
            units,
        })
    }

    /// Waits until `bytes` fit (a transfer larger than the whole budget waits for all of
    /// it, so it still runs, alone).
    pub async fn take(&self, bytes: u64) -> OwnedSemaphorePermit {
        let units = bytes.div_ceil(UNIT).clamp(1, u64::from(self.units)) as u32;
        self.room
            .clone()
            .acquire_many_owned(units)
            .await
            .expect("the budget is never closed")
    }

    /// The whole budget, in bytes.
    pub fn bytes(&self) -> u64 {
        u64::from(self.units) * UNIT
    }

    /// Room for `bytes` if there is some now; never waits.
    pub fn try_take(&self, bytes: u64) -> Option<OwnedSemaphorePermit> {
        let units = bytes.div_ceil(UNIT).clamp(1, u64::from(self.units)) as u32;
        self.room.clone().try_acquire_many_owned(units).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn transfers_wait_for_room() {
        let budget = TransferBudget::new(4 * UNIT);
        let first = budget.take(3 * UNIT).await;
        assert!(
            tokio::time::timeout(std::time::Duration::from_millis(20), budget.take(2 * UNIT))
                .await
                .is_err()
        );
        drop(first);
        let _big = budget.take(100 * UNIT).await;
    }
}
