//! A set of byte ranges, kept merged and sorted: which parts of a file are held locally.

use std::collections::BTreeMap;
use std::ops::Range;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RangeSet {
    /// start -> end, disjoint and not touching.
    spans: BTreeMap<u64, u64>,
}

impl RangeSet {
    pub fn insert(&mut self, r: Range<u64>) {
        if r.is_empty() {
            return;
        }
        let (mut start, mut end) = (r.start, r.end);
        // Merge with every span that overlaps or touches.
        let touching: Vec<(u64, u64)> = self
            .spans
            .range(..=end)
            .rev()
            .take_while(|&(_, &e)| e >= start)
            .map(|(&s, &e)| (s, e))
            .collect();
        for (s, e) in touching {
            self.spans.remove(&s);
            start = start.min(s);
            end = end.max(e);
        }
        self.spans.insert(start, end);
    }

    /// Removes everything at or after `at`.
    pub fn truncate(&mut self, at: u64) {
        let cut: Vec<(u64, u64)> = self
            .spans
            .range(..)
            .filter(|&(_, &e)| e > at)
            .map(|(&s, &e)| (s, e))
            .collect();
        for (s, _) in cut {
            self.spans.remove(&s);
            if s < at {
                self.spans.insert(s, at);
            }
        }
    }

    /// Splits `r` into pieces, each wholly inside the set (`true`) or wholly outside.
    pub fn split(&self, r: Range<u64>) -> Vec<(Range<u64>, bool)> {
        let mut out = Vec::new();
        let mut at = r.start;
        let first = self.spans.range(..=r.start).next_back().map(|(&s, &e)| (s, e));
        let rest = self
            .spans
            .range(r.start + 1..r.end.max(r.start + 1))
            .map(|(&s, &e)| (s, e));
        for (s, e) in first.into_iter().chain(rest) {
            if e <= at {
                continue;
            }
            if s > at {
                out.push((at..s.min(r.end), false));
            }
            let (from, to) = (s.max(at), e.min(r.end));
            if from < to {
                out.push((from..to, true));
            }
            at = to.max(at);
            if at >= r.end {
                break;
            }
        }
        if at < r.end {
            out.push((at..r.end, false));
        }
        out
    }

    pub fn spans(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        self.spans.iter().map(|(&s, &e)| (s, e))
    }

    pub fn intersects(&self, r: Range<u64>) -> bool {
        !r.is_empty() && self.split(r).iter().any(|(_, inside)| *inside)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merges_and_splits() {
        let mut s = RangeSet::default();
        s.insert(10..20);
        s.insert(30..40);
        s.insert(20..25);
        assert_eq!(
            s.split(0..50),
            vec![
                (0..10, false),
                (10..25, true),
                (25..30, false),
                (30..40, true),
                (40..50, false)
            ]
        );
        s.insert(5..35);
        assert_eq!(s.split(0..50), vec![(0..5, false), (5..40, true), (40..50, false)]);
        assert_eq!(s.split(6..39), vec![(6..39, true)]);
        s.truncate(12);
        assert_eq!(s.split(0..20), vec![(0..5, false), (5..12, true), (12..20, false)]);
        assert!(!s.intersects(12..100) && s.intersects(0..6));
        assert_eq!(s.split(7..9), vec![(7..9, true)]);
    }
}
