//! File attributes, and the s3fs-compatible `x-amz-meta-*` fields that persist them.

use crate::store::Metadata;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The longest symlink target (PATH_MAX less its NUL): an object over this size is never
/// taken as a symlink, whatever its metadata says, so its listing alone tells its type.
pub const SYMLINK_MAX: u64 = 4095;

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
    /// Set through `set_mtime`, which keeps `ctime` in step.
    mtime: SystemTime,
    /// A file's is its mtime. A directory's never goes back: what the mount learns of a
    /// directory (a listing's newest entry, its marker) replaces the mount time's guess,
    /// and a program that saw the guess and compares ctime before and after reading the
    /// directory (tar's "file changed as we read it") must not see the directory change.
    ctime: SystemTime,
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
    /// Keep setuid, setgid and sticky bits read from the bucket (`--keep-special-modes`).
    /// Off by default: whoever can write the bucket could otherwise plant a setuid-root
    /// program for a mount with `suid`.
    pub keep_special_modes: bool,
}

/// setuid, setgid and sticky.
const SPECIAL_MODE_BITS: u32 = 0o7000;
/// The largest st_mode: type and permission bits, nothing above.
const MAX_MODE: u32 = 0o177777;

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
            ctime: mtime,
            perm,
            uid: d.uid,
            gid: d.gid,
        }
    }

    pub fn mtime(&self) -> SystemTime {
        self.mtime
    }

    pub fn ctime(&self) -> SystemTime {
        self.ctime
    }

    pub fn set_mtime(&mut self, mtime: SystemTime) {
        self.mtime = mtime;
        self.ctime = match self.kind {
            Kind::Dir => self.ctime.max(mtime),
            _ => mtime,
        };
    }

    /// Applies s3fs-style metadata of the object `key` (`mode` is the decimal st_mode with
    /// its type bits, `mtime` decimal seconds). What comes from the bucket is not trusted:
    /// setuid, setgid and sticky bits are dropped unless `keep_special_modes`; a type that
    /// contradicts the key (a directory's marker declaring a file, a plain key declaring a
    /// directory) is ignored; a value that does not parse or is out of range is ignored
    /// with one log line. Nothing here panics, whatever the values.
    pub fn apply_metadata(&mut self, key: &str, m: &Metadata, keep_special_modes: bool) {
        let mut ignored = Vec::new();
        if let Some(v) = m.get(META_MODE) {
            // A symlink's object holds its target: one over PATH_MAX is no symlink.
            let impossible_link =
                |mode: &u32| mode & S_IFMT == S_IFLNK && self.kind != Kind::Dir && self.size > SYMLINK_MAX;
            match v
                .trim()
                .parse::<u32>()
                .ok()
                .filter(|mode| *mode <= MAX_MODE && !impossible_link(mode))
            {
                Some(mode) => {
                    let kept = if keep_special_modes {
                        0o7777
                    } else {
                        0o7777 & !SPECIAL_MODE_BITS
                    };
                    self.perm = (mode & kept) as u16;
                    self.kind = match (self.kind, mode & S_IFMT) {
                        (Kind::Dir, _) => Kind::Dir,
                        (_, S_IFLNK) => Kind::Symlink,
                        (_, S_IFREG) => Kind::File,
                        (kind, _) => kind,
                    };
                }
                None => ignored.push((META_MODE, v)),
            }
        }
        for (name, field) in [(META_UID, &mut self.uid), (META_GID, &mut self.gid)] {
            if let Some(v) = m.get(name) {
                // u32::MAX is (uid_t)-1, "no owner" to chown(2): not an owner a file can have.
                match v.trim().parse::<u32>().ok().filter(|id| *id != u32::MAX) {
                    Some(id) => *field = id,
                    None => ignored.push((name, v)),
                }
            }
        }
        if let Some(v) = m.get(META_MTIME) {
            match parse_mtime(v) {
                Some(mtime) => self.set_mtime(mtime),
                None => ignored.push((META_MTIME, v)),
            }
        }
        if !ignored.is_empty() {
            let shown: Vec<String> = ignored
                .iter()
                .map(|(name, v)| format!("{name}={:?}", v.chars().take(40).collect::<String>()))
                .collect();
            tracing::warn!(
                "{key:?}: ignoring metadata that is not a valid value: {}",
                shown.join(", ")
            );
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

/// The end of year 9999: later mtimes are nonsense (and some tools cannot print them).
const MAX_MTIME_SECS: f64 = 253_402_300_799.0;

/// Decimal seconds since the epoch, as s3fs writes them; `None` for anything that is not
/// a time a file can have.
fn parse_mtime(v: &str) -> Option<SystemTime> {
    let secs = v
        .trim()
        .parse::<f64>()
        .ok()
        .filter(|s| s.is_finite() && (0.0..=MAX_MTIME_SECS).contains(s))?;
    UNIX_EPOCH.checked_add(Duration::try_from_secs_f64(secs).ok()?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const DEFAULTS: Defaults = Defaults {
        uid: 1,
        gid: 2,
        file_mode: 0o644,
        dir_mode: 0o755,
        keep_special_modes: false,
    };

    #[test]
    fn s3fs_metadata_round_trip() {
        let d = DEFAULTS;
        let mut a = Attr::new(5, Kind::File, 3, UNIX_EPOCH, &d);
        a.perm = 0o600;
        a.kind = Kind::Symlink;
        a.uid = 1000;
        a.set_mtime(UNIX_EPOCH + Duration::from_secs(1_700_000_000));
        let m = a.to_metadata();
        assert_eq!(m["mode"], (0o120600).to_string());
        let mut b = Attr::new(5, Kind::File, 3, UNIX_EPOCH, &d);
        b.apply_metadata("k", &m, false);
        assert_eq!(a, b);
    }

    #[test]
    fn a_directory_ctime_never_goes_back_a_file_ctime_is_its_mtime() {
        let at = |secs| UNIX_EPOCH + Duration::from_secs(secs);
        let mut dir = Attr::new(6, Kind::Dir, 0, at(100), &DEFAULTS);
        dir.set_mtime(at(50));
        assert_eq!((dir.mtime(), dir.ctime()), (at(50), at(100)));
        dir.set_mtime(at(150));
        assert_eq!((dir.mtime(), dir.ctime()), (at(150), at(150)));
        let mut file = Attr::new(7, Kind::File, 0, at(100), &DEFAULTS);
        file.set_mtime(at(50));
        assert_eq!((file.mtime(), file.ctime()), (at(50), at(50)));
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
        a.apply_metadata("k", &m, false);
        assert_eq!((a.kind, a.perm, a.uid, a.mtime), (Kind::File, 0o700, 1, UNIX_EPOCH));
        let mut dir = Attr::new(6, Kind::Dir, 0, UNIX_EPOCH, &d);
        let symlink_mode = Metadata::from([(META_MODE.to_string(), (S_IFLNK | 0o777).to_string())]);
        dir.apply_metadata("d/", &symlink_mode, false);
        assert_eq!(dir.kind, Kind::Dir);
        // A "symlink" whose target would be longer than any path is a file, mode untouched.
        let mut big = Attr::new(8, Kind::File, SYMLINK_MAX + 1, UNIX_EPOCH, &d);
        big.apply_metadata("big", &symlink_mode, false);
        assert_eq!((big.kind, big.perm), (Kind::File, 0o644));
        let mut link = Attr::new(9, Kind::File, SYMLINK_MAX, UNIX_EPOCH, &d);
        link.apply_metadata("link", &symlink_mode, false);
        assert_eq!(link.kind, Kind::Symlink);
        let mut b = Attr::new(7, Kind::File, 0, UNIX_EPOCH, &d);
        let out_of_range = Metadata::from([
            (META_MODE.to_string(), (MAX_MODE + 1).to_string()),
            (META_GID.to_string(), u32::MAX.to_string()),
            (META_MTIME.to_string(), "-5".to_string()),
        ]);
        b.apply_metadata("k", &out_of_range, false);
        assert_eq!(b, Attr::new(7, Kind::File, 0, UNIX_EPOCH, &d));
    }

    #[test]
    fn setuid_setgid_and_sticky_from_the_bucket_are_dropped_unless_kept() {
        let setuid_root = Metadata::from([
            (META_MODE.to_string(), (S_IFREG | 0o4755).to_string()),
            (META_UID.to_string(), "0".to_string()),
        ]);
        let mut a = Attr::new(5, Kind::File, 3, UNIX_EPOCH, &DEFAULTS);
        a.apply_metadata("k", &setuid_root, false);
        assert_eq!((a.perm, a.uid), (0o755, 0));
        a.apply_metadata("k", &setuid_root, true);
        assert_eq!(a.perm, 0o4755);
        let mut dir = Attr::new(6, Kind::Dir, 0, UNIX_EPOCH, &DEFAULTS);
        let sticky_setgid = Metadata::from([(META_MODE.to_string(), (S_IFDIR | 0o3777).to_string())]);
        dir.apply_metadata("d/", &sticky_setgid, false);
        assert_eq!(dir.perm, 0o777);
    }

    proptest! {
        /// Whatever the bucket says: no panic, no bit above the permissions (or above the
        /// plain ones unless kept), and a directory stays a directory.
        #[test]
        fn any_metadata_is_applied_without_panic(
            mode in proptest::option::of(proptest::prop_oneof![
                proptest::num::u32::ANY.prop_map(|m| m.to_string()),
                "\\PC{0,12}",
            ]),
            uid in proptest::option::of("\\PC{0,12}"),
            mtime in proptest::option::of(proptest::prop_oneof![
                proptest::num::f64::ANY.prop_map(|t| t.to_string()),
                "\\PC{0,24}",
            ]),
            is_dir in proptest::bool::ANY,
            keep in proptest::bool::ANY,
        ) {
            let mut m = Metadata::new();
            for (name, v) in [(META_MODE, mode), (META_UID, uid), (META_MTIME, mtime)] {
                if let Some(v) = v {
                    m.insert(name.to_string(), v);
                }
            }
            let kind = if is_dir { Kind::Dir } else { Kind::File };
            let mut a = Attr::new(1, kind, 0, UNIX_EPOCH, &DEFAULTS);
            a.apply_metadata("k", &m, keep);
            let allowed: u16 = if keep { 0o7777 } else { 0o777 };
            prop_assert_eq!(a.perm & !allowed, 0);
            prop_assert!(kind != Kind::Dir || a.kind == Kind::Dir);
            prop_assert_ne!(a.uid, u32::MAX);
            prop_assert!(a.mtime.duration_since(UNIX_EPOCH).is_ok());
        }
    }
}
