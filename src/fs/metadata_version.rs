//! Which version of an object a file's persisted metadata (mode, owner, mtime, symlink
//! type) was read from. A chmod on another machine copies the object onto itself with
//! new metadata: a single-part object keeps its ETag, only its LastModified moves. So a
//! listing vouches for the metadata a node holds only if it shows the version a HEAD read
//! it from: the same ETag *and* the same LastModified, compared in whole seconds (a HEAD
//! reports whole seconds, a listing milliseconds; two writes within one second look
//! alike). A file this mount wrote is HEADed once when next listed or looked up: no
//! write's answer carries the LastModified, and a chmod elsewhere may have come first.

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
}

impl MetadataVersion {
    /// The version a HEAD or a listing reports; none without an ETag or a LastModified (a
    /// listing gives a missing LastModified as the epoch).
    pub fn of(etag: Option<&str>, modified: Option<SystemTime>) -> Option<MetadataVersion> {
        let modified = modified.filter(|m| *m != UNIX_EPOCH)?;
        Some(MetadataVersion {
            etag: etag?.to_string(),
            modified: whole_seconds(modified),
        })
    }

    /// A listing's entry (or a HEAD) shows this very version.
    pub fn is(&self, etag: Option<&str>, modified: Option<SystemTime>) -> bool {
        MetadataVersion::of(etag, modified).is_some_and(|v| v == *self)
    }

    pub fn etag(&self) -> &str {
        &self.etag
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
        let head = MetadataVersion::of(Some("\"e\""), Some(at(1_700_000_000_000))).unwrap();
        assert!(head.is(Some("\"e\""), Some(at(1_700_000_000_731))));
    }

    #[test]
    fn the_same_etag_a_second_later_is_another_version() {
        let head = MetadataVersion::of(Some("\"e\""), Some(at(1_700_000_000_000))).unwrap();
        assert!(!head.is(Some("\"e\""), Some(at(1_700_000_001_000))));
        assert!(!head.is(Some("\"f\""), Some(at(1_700_000_000_000))));
    }

    #[test]
    fn an_unknown_time_or_etag_vouches_for_nothing() {
        assert!(MetadataVersion::of(None, Some(at(1_000))).is_none());
        assert!(MetadataVersion::of(Some("\"e\""), None).is_none());
        assert!(MetadataVersion::of(Some("\"e\""), Some(UNIX_EPOCH)).is_none());
        let head = MetadataVersion::of(Some("\"e\""), Some(at(5_000))).unwrap();
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
