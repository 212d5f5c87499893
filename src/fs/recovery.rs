//! Finishing what a killed daemon left: every journal record is uploaded before the mount
//! serves files. An object that changed remotely meanwhile is not overwritten: the
//! recovered data goes to `NAME.s3vol-conflict-TIMESTAMP` beside it.

use super::content::Content;
use super::dirty::FileData;
use super::journal::{Record, md5_etag};
use super::*;

/// What recovery did, for the log and for tests.
#[derive(Debug, Default, Clone)]
pub struct Recovered {
    pub uploaded: Vec<String>,
    pub conflicts: Vec<String>,
    pub failed: Vec<String>,
}

impl Fs {
    pub async fn recover(&self) -> Recovered {
        let mut out = Recovered::default();
        for (path, record) in self.journal.pending() {
            match self.recover_one(&path, &record).await {
                Ok(Some(target)) if target != record.key => {
                    tracing::warn!(
                        "recovered {:?} ({} bytes) as {target:?}: the object changed remotely after it was written",
                        record.key,
                        record.size
                    );
                    out.conflicts.push(target);
                    self.journal.remove(&path);
                }
                Ok(target) => {
                    tracing::info!(
                        "recovered {:?}: {} bytes uploaded after a crash",
                        record.key,
                        record.size
                    );
                    out.uploaded.extend(target);
                    self.journal.remove(&path);
                }
                Err(e) => {
                    tracing::error!(
                        "cannot recover {:?} from {}: {e}; its data stays in {} for the next mount",
                        record.key,
                        path.display(),
                        record.staging.display()
                    );
                    out.failed.push(record.key.clone());
                }
            }
        }
        out
    }

    /// Uploads one record's data; returns the key written (`None`: it was already there).
    async fn recover_one(&self, path: &std::path::Path, r: &Record) -> Result<Option<String>, String> {
        if let Some(id) = &r.upload_id
            && let Err(e) = self.store.abort_multipart(&r.key, id).await
        {
            tracing::warn!("aborting the stale multipart upload of {:?}: {e}", r.key);
        }
        let content = Content::reopen(&r.staging).map_err(|e| format!("staging file {}: {e}", r.staging.display()))?;
        let mut f = FileData::recovered(r, content, self.dirty_budget.clone());
        // Re-journaling during this upload rewrites the same record.
        f.journal = Some(path.to_path_buf());
        let current = match self.store.head(&r.key).await {
            Ok(m) => m.etag,
            Err(StoreError::NotFound) => None,
            Err(e) => return Err(e.to_string()),
        };
        let base = r.base.as_ref().map(|b| b.etag.clone());
        if current != base {
            if current.is_some() && self.already_uploaded(&f, current.as_deref()).await {
                f.uploaded(ObjectVersion {
                    key: Arc::from(""),
                    etag: Arc::from(""),
                    size: 0,
                })
                .map_err(|e| e.to_string())?;
                return Ok(None);
            }
            f.key = conflict_key(&r.key);
        }
        let version = self
            .uploader
            .upload(&mut f, &r.metadata)
            .await
            .map_err(|e| e.to_string())?;
        let key = f.key.clone();
        f.uploaded(version).map_err(|e| e.to_string())?;
        f.journal = None;
        Ok(Some(key))
    }

    /// Whether the remote object is this data already (the upload finished just before
    /// the crash): single-part uploads are recognized by their MD5 ETag.
    async fn already_uploaded(&self, f: &FileData, etag: Option<&str>) -> bool {
        if !f.independent_of_base() || f.size > 64 << 20 {
            return false;
        }
        match f.read(0..f.size, &self.blocks).await {
            Ok(bytes) => etag == Some(md5_etag(&bytes).as_str()),
            Err(_) => false,
        }
    }
}

/// Where this mount's version of `key` goes when the object changed remotely meanwhile.
pub(super) fn conflict_key(key: &str) -> String {
    let stamp = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    format!("{key}.s3vol-conflict-{stamp}")
}
