//! The crash journal: before close() returns (or a file's upload starts), its changes are
//! durable on local disk and a record says what they are: small files' bytes inline in the
//! journal's log (`journal_log.rs`, group-committed), larger ones in a staging file the
//! record names. The next mount with the same cache directory finishes what a killed
//! daemon left. Records written by older versions (one JSON file each) are still read.

use super::content::{STAGING_PREFIX, UploadedStaging};
use super::journal_log::Log;
use serde::{Deserialize, Serialize};
use std::collections::HashSet;
use std::ffi::OsString;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

/// Files up to this size held in memory are journaled inline in the log.
const INLINE_MAX: usize = 1 << 20;

/// Where a record is: a JSON file of an older version, or an id in the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecordRef {
    Legacy(PathBuf),
    Log(u64),
}

impl std::fmt::Display for RecordRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RecordRef::Legacy(path) => write!(f, "journal {}", path.display()),
            RecordRef::Log(id) => write!(f, "journal record {id:016x}"),
        }
    }
}

/// A record read back at mount, with its inline bytes.
pub struct Journaled {
    pub at: RecordRef,
    pub record: Record,
    pub inline: Vec<u8>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BaseRecord {
    pub key: String,
    pub etag: String,
    pub size: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Record {
    /// Records of another bucket or endpoint (a cache directory reused for another mount)
    /// are left for a mount of theirs.
    pub bucket: String,
    /// The endpoint URL (`aws`: the SDK's default). `None`: written by an s3vol that did
    /// not record it; applied to a mount of the same bucket, as that version did.
    #[serde(default)]
    pub endpoint: Option<String>,
    pub key: String,
    pub size: u64,
    /// The remote object the unwritten bytes come from, as it was when written.
    pub base: Option<BaseRecord>,
    pub base_limit: u64,
    /// Byte ranges held in the staging file.
    pub local: Vec<(u64, u64)>,
    /// Trusted only inside this journal's staging directory (`Journal::staging_file`).
    pub staging: PathBuf,
    /// A multipart upload that was in progress: aborted on recovery.
    pub upload_id: Option<String>,
    pub metadata: crate::store::Metadata,
    /// The bytes are inline in the log entry, not in `staging`.
    #[serde(default)]
    pub inline: bool,
    /// Not data: the object `key` (of the ETag in `base`, if known) is being deleted.
    #[serde(default)]
    pub delete: bool,
}

impl Record {
    fn of(
        journal: &Journal,
        f: &super::dirty::FileData,
        staging: Option<PathBuf>,
        metadata: &crate::store::Metadata,
        upload_id: Option<String>,
    ) -> Record {
        Record {
            bucket: journal.bucket.clone(),
            endpoint: Some(journal.endpoint.clone()),
            key: f.key.clone(),
            size: f.size,
            base: f.base.as_ref().map(|b| BaseRecord {
                key: b.key.to_string(),
                etag: b.etag.to_string(),
                size: b.size,
            }),
            base_limit: f.base_limit,
            local: f.local_ranges(),
            inline: staging.is_none(),
            staging: staging.unwrap_or_default(),
            upload_id,
            metadata: metadata.clone(),
            delete: false,
        }
    }
}

/// Whose a record is.
#[derive(Debug, PartialEq, Eq)]
pub enum Owner {
    ThisMount,
    /// Written before records named their endpoint, for this bucket.
    ThisBucketOnAnyEndpoint,
    /// Another mount's: who it is, for the log.
    Other(String),
}

/// The journal's records as found at mount time.
pub struct Listing {
    pub records: Vec<Journaled>,
    /// Records that could not be read: what they name is unknown.
    pub unreadable: usize,
}

pub struct Journal {
    dir: PathBuf,
    bucket: String,
    endpoint: String,
    log: Arc<Log>,
}

/// How records name an endpoint: the URL without a trailing slash, or `aws`.
fn endpoint_name(endpoint: Option<&str>) -> String {
    endpoint.map_or_else(|| "aws".to_string(), |e| e.trim_end_matches('/').to_string())
}

impl Journal {
    pub fn new(cache_dir: &Path, bucket: &str, endpoint: Option<&str>) -> Journal {
        let dir = cache_dir.join(crate::cache_dir::JOURNAL);
        Journal {
            log: Arc::new(Log::new(&dir)),
            dir,
            bucket: bucket.to_string(),
            endpoint: endpoint_name(endpoint),
        }
    }

    /// Records not yet done (files and deletes not yet in the bucket, as a crash would find them).
    pub fn live_records(&self) -> u64 {
        self.log.live_records() as u64
    }

    pub fn staging_dir(&self) -> PathBuf {
        self.dir.with_file_name(crate::cache_dir::STAGING)
    }

    /// Writes `record` as an older version did (one JSON file): what tests of upgrades
    /// and of hostile records craft.
    #[cfg(test)]
    pub fn save(&self, record: &Record) -> std::io::Result<PathBuf> {
        crate::cache_dir::create_private_dirs(&self.dir)?;
        let path = self
            .dir
            .join(format!("{}-{:016x}.json", std::process::id(), fastrand::u64(..)));
        std::fs::write(&path, serde_json::to_vec(record).map_err(std::io::Error::other)?)?;
        Ok(path)
    }

    /// (Re)writes `f`'s record, naming `upload_id` if a multipart upload is in progress for
    /// it. Once this returns, a killed daemon loses nothing: the next mount with this cache
    /// directory uploads the changes. They reach the disk (for a power loss) within
    /// `FLUSH_DELAY`, in one flush with every record appended meanwhile.
    pub fn record(
        &self,
        f: &mut super::dirty::FileData,
        metadata: &crate::store::Metadata,
        upload_id: Option<String>,
    ) -> std::io::Result<()> {
        let inline = f
            .bytes_in_memory()
            .filter(|b| b.len() <= INLINE_MAX)
            .map(<[u8]>::to_vec);
        let (staging, staging_file) = match inline {
            Some(_) => (None, None),
            None => {
                let (path, file) = f.stage(&self.staging_dir())?;
                (Some(path), Some(file))
            }
        };
        let record = Record::of(self, f, staging, metadata, upload_id);
        let header = serde_json::to_vec(&record).map_err(std::io::Error::other)?;
        let id = match &f.journal {
            Some(RecordRef::Log(id)) => *id,
            _ => fastrand::u64(..),
        };
        self.log
            .put(id, &header, inline.as_deref().unwrap_or_default(), staging_file)?;
        self.log.flush_soon();
        // A recovered record of an older version is replaced by this one.
        f.journal_current = true;
        if let Some(RecordRef::Legacy(path)) = f.journal.replace(RecordRef::Log(id)) {
            self.remove_legacy(&path);
        }
        Ok(())
    }

    /// After the data a record names reached the bucket: the record is marked done first
    /// (durably when a staging file goes: no record may name a removed file), then the
    /// staging file is removed. Failures are logged, not returned (the data is in the
    /// bucket): a staging file left behind is removed at the next mount; a record that
    /// could not be marked done keeps its staging file and is returned, for the file's next
    /// record to replace.
    pub async fn uploaded(&self, record: Option<RecordRef>, staging: Option<UploadedStaging>) -> Option<RecordRef> {
        match record {
            Some(RecordRef::Legacy(path)) if !self.remove_legacy(&path) => return Some(RecordRef::Legacy(path)),
            Some(RecordRef::Log(id)) => {
                let done = self.log.done(id);
                let durable = match (done, &staging) {
                    (Ok(at), Some(_)) => self.log.commit(at).await,
                    (done, _) => done.map(|_| ()),
                };
                if let Err(e) = durable {
                    tracing::warn!(
                        "journal under {}: {e}; the record stays until the next mount",
                        self.dir.display()
                    );
                    return Some(RecordRef::Log(id));
                }
            }
            _ => {}
        }
        if let Some(staging) = staging {
            let shown = staging.path().display().to_string();
            if let Err(e) = staging.remove() {
                tracing::warn!("staging file {shown}: {e}; its data is in the bucket, and the next mount removes it");
            }
        }
        None
    }

    /// Notes that `key` (of `etag`, if known) is being deleted in the background, so that
    /// a daemon killed before the DELETE lands has the next mount send it. Flushed to disk
    /// within `FLUSH_DELAY`, as `record`.
    pub fn record_delete(&self, key: &str, etag: Option<&str>) -> std::io::Result<RecordRef> {
        let record = Record {
            bucket: self.bucket.clone(),
            endpoint: Some(self.endpoint.clone()),
            key: key.to_string(),
            size: 0,
            base: etag.map(|etag| BaseRecord {
                key: key.to_string(),
                etag: etag.to_string(),
                size: 0,
            }),
            base_limit: 0,
            local: Vec::new(),
            staging: PathBuf::new(),
            upload_id: None,
            metadata: Default::default(),
            inline: false,
            delete: true,
        };
        let header = serde_json::to_vec(&record).map_err(std::io::Error::other)?;
        let id = fastrand::u64(..);
        self.log.put(id, &header, &[], None)?;
        self.log.flush_soon();
        Ok(RecordRef::Log(id))
    }

    /// The delete `record_delete` noted has landed.
    pub fn deleted(&self, at: RecordRef) {
        match at {
            RecordRef::Log(id) => {
                let _ = self.log.done(id);
            }
            RecordRef::Legacy(path) => {
                self.remove_legacy(&path);
            }
        }
    }

    /// The file's data is not to be uploaded any more (its name is gone, or the user dropped
    /// it): its record goes. Flushed later, as `record_delete`: a killed daemon cannot
    /// lose the note. Its staging file, still in use while the file is open, no record names
    /// from now on: the next mount removes it if this one does not.
    pub fn forget(&self, f: &mut super::dirty::FileData) {
        match f.journal.take() {
            Some(RecordRef::Legacy(path)) => {
                self.remove_legacy(&path);
            }
            Some(RecordRef::Log(id)) => {
                if let Err(e) = self.log.done(id) {
                    tracing::warn!(
                        "journal under {}: {e}; {:?} may be uploaded again after a crash",
                        self.dir.display(),
                        f.key
                    );
                }
            }
            None => {}
        }
    }

    /// At a clean exit, once uploads are over.
    pub fn close(&self) {
        self.log.close();
    }

    /// Removes an older version's record; false (logged) if it is still there.
    fn remove_legacy(&self, path: &Path) -> bool {
        match std::fs::remove_file(path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                tracing::warn!("journal {}: {e}", path.display());
                false
            }
            _ => true,
        }
    }

    /// Every record left by earlier runs, whichever mount wrote it; unreadable ones are
    /// reported and counted. Read once, at mount: the log's records stay live until done.
    pub fn read(&self) -> Listing {
        let (logged, unreadable) = self.log.read();
        let mut listing = Listing {
            records: Vec::new(),
            unreadable,
        };
        for entry in logged {
            match serde_json::from_slice::<Record>(&entry.header) {
                Ok(record) => listing.records.push(Journaled {
                    at: RecordRef::Log(entry.id),
                    record,
                    inline: entry.inline,
                }),
                Err(e) => {
                    tracing::error!("journal record {:016x} is unreadable ({e}); left in place", entry.id);
                    listing.unreadable += 1;
                }
            }
        }
        let entries = std::fs::read_dir(&self.dir).into_iter().flatten();
        for entry in entries.flatten() {
            let path = entry.path();
            if path.extension().is_none_or(|e| e != "json") {
                continue;
            }
            match std::fs::read(&path)
                .map_err(|e| e.to_string())
                .and_then(|b| serde_json::from_slice::<Record>(&b).map_err(|e| e.to_string()))
            {
                Ok(record) => listing.records.push(Journaled {
                    at: RecordRef::Legacy(path),
                    record,
                    inline: Vec::new(),
                }),
                Err(e) => {
                    tracing::error!("journal {} is unreadable ({e}); left in place", path.display());
                    listing.unreadable += 1;
                }
            }
        }
        listing
    }

    /// Whether `r` is this mount's to recover: same bucket, same endpoint.
    pub fn owner(&self, r: &Record) -> Owner {
        match r.endpoint.as_deref() {
            _ if r.bucket != self.bucket => Owner::Other(format!("bucket {:?}", r.bucket)),
            None => Owner::ThisBucketOnAnyEndpoint,
            Some(e) if endpoint_name(Some(e)) == self.endpoint => Owner::ThisMount,
            Some(e) => Owner::Other(format!("bucket {:?} at {e}", r.bucket)),
        }
    }

    /// The staging file a record names, if it is one of this journal's: a plain
    /// `staging-*` name directly in its staging directory. Anything else (another
    /// directory, `..`, a name of another kind) is refused: a record is data read from
    /// disk, and must not make the daemon read, upload or remove another file.
    pub fn staging_file(&self, r: &Record) -> Result<PathBuf, String> {
        let refused = |why: &str| format!("staging file {} {why}", r.staging.display());
        let name = match r.staging.file_name() {
            Some(name) if name.to_string_lossy().starts_with(STAGING_PREFIX) => name,
            _ => return Err(refused("is not a staging file name")),
        };
        if r.staging
            .components()
            .any(|c| matches!(c, Component::ParentDir | Component::CurDir))
        {
            return Err(refused("is not a plain path"));
        }
        let ours = self.staging_dir();
        let parent = r.staging.parent().unwrap_or(Path::new(""));
        // The same directory under another spelling (a symlinked --cache-dir) is ours too.
        let same = parent == ours
            || matches!(
                (std::fs::canonicalize(parent), std::fs::canonicalize(&ours)),
                (Ok(a), Ok(b)) if a == b
            );
        if !same {
            return Err(refused(&format!(
                "is outside this journal's staging directory {}",
                ours.display()
            )));
        }
        Ok(ours.join(name))
    }

    /// Removes the staging files no record names: writes a crash cut off before their
    /// record existed, or whose removal after an upload failed. Only regular files directly
    /// in the staging directory; the caller holds the cache directory's lock, so no live
    /// mount is writing there. Nothing is removed while a record is unreadable (what it
    /// names is unknown).
    pub fn remove_unnamed_staging(&self, listing: &Listing) -> usize {
        if listing.unreadable > 0 {
            tracing::warn!(
                "{} unreadable journal records: staging files under {} are kept",
                listing.unreadable,
                self.staging_dir().display()
            );
            return 0;
        }
        let named: HashSet<OsString> = listing
            .records
            .iter()
            .filter(|j| !j.record.inline && !j.record.delete)
            .filter_map(|j| self.staging_file(&j.record).ok())
            .filter_map(|p| p.file_name().map(OsString::from))
            .collect();
        let Ok(entries) = std::fs::read_dir(self.staging_dir()) else {
            return 0;
        };
        let mut removed = 0;
        for entry in entries.flatten() {
            let regular = entry.file_type().is_ok_and(|t| t.is_file());
            if !regular || named.contains(&entry.file_name()) {
                continue;
            }
            match std::fs::remove_file(entry.path()) {
                Ok(()) => removed += 1,
                Err(e) => tracing::warn!("staging file {}: {e}", entry.path().display()),
            }
        }
        if removed > 0 {
            tracing::info!(
                "removed {removed} staging files under {} that no journal record names",
                self.staging_dir().display()
            );
        }
        removed
    }
}

/// The ETag S3 gives a single-part upload of `data`: its MD5, quoted.
pub fn md5_etag(data: &[u8]) -> String {
    use md5::Digest;
    let digest = md5::Md5::digest(data);
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    format!("\"{hex}\"")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(bucket: &str, endpoint: Option<&str>, staging: PathBuf) -> Record {
        Record {
            bucket: bucket.into(),
            endpoint: endpoint.map(String::from),
            key: "k".into(),
            size: 0,
            base: None,
            base_limit: 0,
            local: Vec::new(),
            staging,
            upload_id: None,
            metadata: Default::default(),
            inline: false,
            delete: false,
        }
    }

    #[test]
    fn a_record_belongs_to_its_bucket_and_endpoint() {
        let journal = Journal::new(Path::new("/c"), "b", Some("https://s3.example/"));
        let staging = PathBuf::from("/c/staging/staging-1-2");
        let owner = |bucket, endpoint| journal.owner(&record(bucket, endpoint, staging.clone()));
        assert_eq!(owner("b", Some("https://s3.example")), Owner::ThisMount);
        assert_eq!(owner("b", None), Owner::ThisBucketOnAnyEndpoint);
        assert!(matches!(owner("b", Some("https://other.example")), Owner::Other(_)));
        assert!(matches!(owner("c", Some("https://s3.example")), Owner::Other(_)));
        let aws = Journal::new(Path::new("/c"), "b", None);
        assert_eq!(aws.owner(&record("b", Some("aws"), staging.clone())), Owner::ThisMount);
        assert!(matches!(
            aws.owner(&record("b", Some("https://s3.example"), staging)),
            Owner::Other(_)
        ));
    }

    #[test]
    fn only_plain_names_in_the_own_staging_directory_are_trusted() {
        let cache = tempfile::tempdir().unwrap();
        let journal = Journal::new(cache.path(), "b", None);
        std::fs::create_dir(journal.staging_dir()).unwrap();
        let staging = |path: PathBuf| journal.staging_file(&record("b", None, path));
        let own = journal.staging_dir().join("staging-1-2");
        assert_eq!(staging(own.clone()), Ok(own.clone()));
        // The same directory through a symlinked cache directory.
        let link = cache.path().join("link");
        std::os::unix::fs::symlink(cache.path(), &link).unwrap();
        assert_eq!(staging(link.join("staging/staging-1-2")), Ok(own));
        for bad in [
            PathBuf::from("/etc/passwd"),
            PathBuf::from("/tmp/staging-1-2"),
            journal.staging_dir().join("../journal/staging-1-2"),
            journal.staging_dir().join("lock"),
            journal.staging_dir(),
            PathBuf::from("staging-1-2"),
        ] {
            assert!(staging(bad.clone()).is_err(), "{} accepted", bad.display());
        }
    }
}
