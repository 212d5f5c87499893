//! File attributes, and the s3fs-compatible `x-amz-meta-*` fields that persist them.

use crate::store::Metadata;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    File,
    Dir,
    Symlink,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Attr {
    pub ino: u64,
    pub kind: Kind,
    pub size: u64,
    pub mtime: SystemTime,
    /// Permission bits only (no file type).
    pub perm: u16,
    pub uid: u32,
    pub gid: u32,
}

/// Owner and modes given on the command line, for objects that carry none.
#[derive(Debug, Clone, Copy)]
pub struct Defaults {
    pub uid: u32,
    pub gid: u32,
    pub file_mode: u16,
    pub dir_mode: u16,
}

const S_IFMT: u32 = 0o170000;
const S_IFLNK: u32 = 0o120000;
const S_IFDIR: u32 = 0o040000;
const S_IFREG: u32 = 0o100000;

pub const META_MODE: &str = "mode";
pub const META_UID: &str = "uid";
pub const META_GID: &str = "gid";
pub const META_MTIME: &str = "mtime";

impl Attr {
    pub fn new(ino: u64, kind: Kind, size: u64, mtime: SystemTime, d: &Defaults) -> Attr {
        let perm = match kind {
            Kind::Dir => d.dir_mode,
            Kind::File => d.file_mode,
            Kind::Symlink => 0o777,
        };
        Attr {
            ino,
            kind,
            size,
            mtime,
            perm,
            uid: d.uid,
            gid: d.gid,
        }
    }

    /// Applies s3fs-style metadata (`mode` is the decimal st_mode with its type bits,
    /// `mtime` decimal seconds). A type that contradicts the key (a directory's marker
    /// declaring a file, a plain key declaring a directory) is ignored, and so is a value
    /// that does not parse or is out of range: what comes from the bucket never panics.
    pub fn apply_metadata(&mut self, m: &Metadata) {
        if let Some(mode) = m.get(META_MODE).and_then(|v| v.trim().parse::<u32>().ok()) {
            self.perm = (mode & 0o7777) as u16;
            self.kind = match (self.kind, mode & S_IFMT) {
                (Kind::Dir, _) => Kind::Dir,
                (_, S_IFLNK) => Kind::Symlink,
                (_, S_IFREG) => Kind::File,
                (kind, _) => kind,
            };
        }
        if let Some(uid) = m.get(META_UID).and_then(|v| v.trim().parse().ok()) {
            self.uid = uid;
        }
        if let Some(gid) = m.get(META_GID).and_then(|v| v.trim().parse().ok()) {
            self.gid = gid;
        }
        if let Some(mtime) = m.get(META_MTIME).and_then(|v| parse_mtime(v)) {
            self.mtime = mtime;
        }
    }

    /// The metadata that persists this attribute set (s3fs-compatible).
    pub fn to_metadata(&self) -> Metadata {
        let type_bits = match self.kind {
            Kind::File => S_IFREG,
            Kind::Dir => S_IFDIR,
            Kind::Symlink => S_IFLNK,
        };
        let mtime = self.mtime.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
        Metadata::from([
            (META_MODE.to_string(), (type_bits | u32::from(self.perm)).to_string()),
            (META_UID.to_string(), self.uid.to_string()),
            (META_GID.to_string(), self.gid.to_string()),
            (META_MTIME.to_string(), mtime.to_string()),
        ])
    }
}

/// Decimal seconds since the epoch, as s3fs writes them; `None` for anything that is not
/// a time a file can have.
fn parse_mtime(v: &str) -> Option<SystemTime> {
    let secs = v.trim().parse::<f64>().ok().filter(|s| s.is_finite() && *s >= 0.0)?;
    UNIX_EPOCH.checked_add(Duration::try_from_secs_f64(secs).ok()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEFAULTS: Defaults = Defaults {
        uid: 1,
        gid: 2,
        file_mode: 0o644,
        dir_mode: 0o755,
    };

    #[test]
    fn s3fs_metadata_round_trip() {
        let d = DEFAULTS;
        let mut a = Attr::new(5, Kind::File, 3, UNIX_EPOCH, &d);
        a.perm = 0o600;
        a.kind = Kind::Symlink;
        a.uid = 1000;
        a.mtime = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let m = a.to_metadata();
        assert_eq!(m["mode"], (0o120600).to_string());
        let mut b = Attr::new(5, Kind::File, 3, UNIX_EPOCH, &d);
        b.apply_metadata(&m);
        assert_eq!(a, b);
    }

    #[test]
    fn nonsense_metadata_is_ignored() {
        let d = DEFAULTS;
        let mut a = Attr::new(5, Kind::File, 3, UNIX_EPOCH, &d);
        let m = Metadata::from([
            (META_MTIME.to_string(), "1e20".to_string()),
            (META_MODE.to_string(), (S_IFDIR | 0o700).to_string()),
            (META_UID.to_string(), "-1".to_string()),
        ]);
        a.apply_metadata(&m);
        assert_eq!((a.kind, a.perm, a.uid, a.mtime), (Kind::File, 0o700, 1, UNIX_EPOCH));
        let mut dir = Attr::new(6, Kind::Dir, 0, UNIX_EPOCH, &d);
        dir.apply_metadata(&Metadata::from([(
            META_MODE.to_string(),
            (S_IFLNK | 0o777).to_string(),
        )]));
        assert_eq!(dir.kind, Kind::Dir);
    }
}
