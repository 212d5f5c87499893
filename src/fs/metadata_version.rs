//! Which version of an object a file's persisted metadata (mode, owner, mtime, symlink
//! type) belongs to. A chmod on another machine copies the object onto itself with new
//! metadata: a single-part object keeps its ETag, only its LastModified moves. So a
//! listing vouches for the metadata a node holds only while it shows the same ETag *and*
//! the same LastModified, compared in whole seconds (a HEAD reports whole seconds, a
//! listing milliseconds; two changes within one second look alike).
//!
//! No write's answer carries the LastModified: for a file this mount wrote, the first
//! listing that shows its version gives it (a chmod made elsewhere before that listing
//! goes unseen by listings; lookups still HEAD such a file after the TTL, as they HEAD
//! every file whose version no HEAD has read).

use std::time::{SystemTime, UNIX_EPOCH};

/// Seconds since the epoch, rounded down (negative before it).
pub fn whole_seconds(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => d.as_secs() as i64,
        Err(e) => -(e.duration().as_secs_f64().ceil() as i64),
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetadataVersion {
    etag: String,
    modified: i64,
    /// A HEAD of this version read the metadata (else a listing gave the version of an
    /// object the mount wrote).
    by_head: bool,
}

impl MetadataVersion {
    /// The version a HEAD (`by_head`) or a listing reports; none without an ETag or a
    /// LastModified (a listing gives a missing LastModified as the epoch).
    pub fn of(etag: Option<&str>, modified: Option<SystemTime>, by_head: bool) -> Option<MetadataVersion> {
        let modified = modified.filter(|m| *m != UNIX_EPOCH)?;
        Some(MetadataVersion {
            etag: etag?.to_string(),
            modified: whole_seconds(modified),
            by_head,
        })
    }

    /// A listing's entry (or a HEAD) shows this very version.
    pub fn is(&self, etag: Option<&str>, modified: Option<SystemTime>) -> bool {
        etag == Some(self.etag.as_str())
            && modified.is_some_and(|m| m != UNIX_EPOCH && whole_seconds(m) == self.modified)
    }

    /// A listing shows the object with this ETag but another LastModified: rewritten in
    /// place (a chmod elsewhere), its metadata may have changed.
    pub fn rewritten_as(&self, etag: Option<&str>, modified: SystemTime) -> bool {
        etag == Some(self.etag.as_str()) && modified != UNIX_EPOCH && whole_seconds(modified) != self.modified
    }

    pub fn etag(&self) -> &str {
        &self.etag
    }

    pub fn by_head(&self) -> bool {
        self.by_head
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn at(millis: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_millis(millis)
    }

    #[test]
    fn a_listing_with_milliseconds_is_the_version_a_head_saw_in_whole_seconds() {
        let head = MetadataVersion::of(Some("\"e\""), Some(at(1_700_000_000_000)), true).unwrap();
        assert!(head.is(Some("\"e\""), Some(at(1_700_000_000_731))));
    }

    #[test]
    fn the_same_etag_a_second_later_is_a_rewrite() {
        let head = MetadataVersion::of(Some("\"e\""), Some(at(1_700_000_000_000)), true).unwrap();
        assert!(!head.is(Some("\"e\""), Some(at(1_700_000_001_000))));
        assert!(head.rewritten_as(Some("\"e\""), at(1_700_000_001_000)));
        assert!(!head.rewritten_as(Some("\"e\""), at(1_700_000_000_999)));
        // Another ETag is another object, not a rewrite of this one.
        assert!(!head.is(Some("\"f\""), Some(at(1_700_000_000_000))));
        assert!(!head.rewritten_as(Some("\"f\""), at(1_700_000_001_000)));
        // An unknown time accuses nothing.
        assert!(!head.rewritten_as(Some("\"e\""), UNIX_EPOCH));
    }

    #[test]
    fn an_unknown_time_or_etag_vouches_for_nothing() {
        assert!(MetadataVersion::of(None, Some(at(1_000)), true).is_none());
        assert!(MetadataVersion::of(Some("\"e\""), None, true).is_none());
        assert!(MetadataVersion::of(Some("\"e\""), Some(UNIX_EPOCH), true).is_none());
        let head = MetadataVersion::of(Some("\"e\""), Some(at(5_000)), true).unwrap();
        assert!(!head.is(Some("\"e\""), Some(UNIX_EPOCH)));
        assert!(!head.is(Some("\"e\""), None));
        assert!(!head.is(None, Some(at(5_000))));
    }

    #[test]
    fn whole_seconds_round_down_on_both_sides_of_the_epoch() {
        assert_eq!(whole_seconds(at(1_999)), 1);
        assert_eq!(whole_seconds(UNIX_EPOCH - Duration::from_millis(1)), -1);
    }
}
