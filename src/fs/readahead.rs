//! Sequential-read detection per open file: the prefetch window starts small, so `head`,
//! `file` and random reads fetch little, and doubles while reads stay sequential.

#[derive(Debug, Clone)]
pub struct ReadAhead {
    /// Where the next sequential read would start.
    next: u64,
    window: u64,
    /// How far prefetching has been asked for.
    frontier: u64,
    initial: u64,
    max: u64,
}

impl ReadAhead {
    pub fn new(initial: u64, max: u64) -> ReadAhead {
        ReadAhead {
            next: 0,
            window: 0,
            frontier: 0,
            initial,
            max: max.max(initial),
        }
    }

    /// Records a read of `len` bytes at `offset`; returns how far ahead to prefetch
    /// (an absolute offset).
    pub fn on_read(&mut self, offset: u64, len: u64) -> u64 {
        // The kernel issues readahead requests concurrently, so a sequential stream
        // arrives slightly out of order: anything near the expected offset counts.
        let slack = self.window.max(self.initial);
        let sequential = offset.abs_diff(self.next) <= slack;
        let end = offset + len;
        if !sequential {
            self.window = 0;
            self.next = end;
            self.frontier = end;
            return end;
        }
        self.next = self.next.max(end);
        if self.window == 0 {
            self.window = self.initial;
            self.frontier = end + self.window;
        } else if self.frontier < end + self.window / 2 {
            // Less than half a window left ahead: grow the window and refill it in one
            // go, so one claim covers many blocks, fetched as a few large GETs.
            self.window = (self.window * 2).min(self.max);
            self.frontier = end + self.window;
        }
        self.frontier
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    const MIB: u64 = 1 << 20;

    #[test]
    fn window_refills_in_whole_windows_grows_and_resets_on_a_jump() {
        let mut r = ReadAhead::new(MIB, 8 * MIB);
        assert_eq!(r.on_read(0, 4096), 4096 + MIB);
        // Plenty left ahead: no new prefetch.
        assert_eq!(r.on_read(4096, 4096), 4096 + MIB);
        let mut at = 8192;
        let mut frontiers = Vec::new();
        for _ in 0..200 {
            frontiers.push(r.on_read(at, 131072));
            at += 131072;
        }
        frontiers.dedup();
        // Refills are whole windows, doubling up to 8 MiB.
        let steps: Vec<u64> = frontiers.windows(2).map(|w| w[1] - w[0]).collect();
        assert!(steps.iter().all(|s| *s >= MIB / 2), "{steps:?}");
        assert!(r.on_read(at, 4096) - (at + 4096) <= 8 * MIB);
        assert_eq!(r.on_read(500 * MIB, 4096), 500 * MIB + 4096);
    }
}
