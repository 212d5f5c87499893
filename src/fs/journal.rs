//! The crash journal: before a file's changes are uploaded (or a multipart upload is
//! started for them), its bytes are made durable in a staging file and a record says
//! what they are. The next mount with the same cache directory finishes what a killed
//! daemon left.

use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BaseRecord {
    pub key: String,
    pub etag: String,
    pub size: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Record {
    /// Records of another bucket (a cache directory reused for another mount) are left.
    pub bucket: String,
    pub key: String,
    pub size: u64,
    /// The remote object the unwritten bytes come from, as it was when written.
    pub base: Option<BaseRecord>,
    pub base_limit: u64,
    /// Byte ranges held in the staging file.
    pub local: Vec<(u64, u64)>,
    pub staging: PathBuf,
    /// A multipart upload that was in progress: aborted on recovery.
    pub upload_id: Option<String>,
    pub metadata: crate::store::Metadata,
}

impl Record {
    pub fn of(
        bucket: &str,
        f: &super::dirty::FileData,
        staging: PathBuf,
        metadata: &crate::store::Metadata,
        upload_id: Option<String>,
    ) -> Record {
        Record {
            bucket: bucket.to_string(),
            key: f.key.clone(),
            size: f.size,
            base: f.base.as_ref().map(|b| BaseRecord {
                key: b.key.to_string(),
                etag: b.etag.to_string(),
                size: b.size,
            }),
            base_limit: f.base_limit,
            local: f.local_ranges(),
            staging,
            upload_id,
            metadata: metadata.clone(),
        }
    }
}

pub struct Journal {
    dir: PathBuf,
    bucket: String,
}

impl Journal {
    pub fn new(cache_dir: &Path, bucket: &str) -> Journal {
        Journal {
            dir: cache_dir.join("journal"),
            bucket: bucket.to_string(),
        }
    }

    pub fn staging_dir(&self) -> PathBuf {
        self.dir.with_file_name("staging")
    }

    /// Writes `record` atomically (temp file, fsync, rename); returns its path.
    pub fn save(&self, existing: Option<&Path>, record: &Record) -> std::io::Result<PathBuf> {
        std::fs::create_dir_all(&self.dir)?;
        let path = match existing {
            Some(p) => p.to_path_buf(),
            None => self
                .dir
                .join(format!("{}-{:016x}.json", std::process::id(), fastrand::u64(..))),
        };
        let tmp = path.with_extension("tmp");
        let text = serde_json::to_vec(record).map_err(std::io::Error::other)?;
        let file = std::fs::File::create(&tmp)?;
        std::io::Write::write_all(&mut &file, &text)?;
        file.sync_all()?;
        std::fs::rename(&tmp, &path)?;
        if let Ok(dir) = std::fs::File::open(&self.dir) {
            let _ = dir.sync_all();
        }
        Ok(path)
    }

    /// Makes `f`'s bytes durable and (re)writes its record, naming `upload_id` if a
    /// multipart upload is in progress for it.
    pub fn record(
        &self,
        f: &mut super::dirty::FileData,
        metadata: &crate::store::Metadata,
        upload_id: Option<String>,
    ) -> std::io::Result<()> {
        let staging = f.persist(&self.staging_dir())?;
        let record = Record::of(&self.bucket, f, staging, metadata, upload_id);
        f.journal = Some(self.save(f.journal.as_deref(), &record)?);
        Ok(())
    }

    /// After the data reached the bucket.
    pub fn forget(&self, f: &mut super::dirty::FileData) {
        if let Some(path) = f.journal.take() {
            self.remove(&path);
        }
    }

    pub fn remove(&self, path: &Path) {
        if let Err(e) = std::fs::remove_file(path)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!("journal {}: {e}", path.display());
        }
    }

    /// Records left by earlier runs; unreadable ones are reported and skipped.
    pub fn pending(&self) -> Vec<(PathBuf, Record)> {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for entry in entries.flatten() {
            let path = entry.path();
            if path.extension().is_none_or(|e| e != "json") {
                continue;
            }
            match std::fs::read(&path)
                .map_err(|e| e.to_string())
                .and_then(|b| serde_json::from_slice::<Record>(&b).map_err(|e| e.to_string()))
            {
                Ok(r) if r.bucket == self.bucket => out.push((path, r)),
                Ok(r) => tracing::info!(
                    "journal {} belongs to bucket {:?}; left for its mount",
                    path.display(),
                    r.bucket
                ),
                Err(e) => tracing::error!("journal {} is unreadable ({e}); left in place", path.display()),
            }
        }
        out
    }
}

/// The ETag S3 gives a single-part upload of `data`: its MD5, quoted.
pub fn md5_etag(data: &[u8]) -> String {
    use md5::Digest;
    let digest = md5::Md5::digest(data);
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    format!("\"{hex}\"")
}
