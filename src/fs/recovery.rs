//! Finishing what a killed daemon left: every journal record is uploaded before the mount
//! serves files. An object that changed remotely meanwhile is not overwritten: the
//! recovered data goes to `NAME.s3vol-conflict-TIMESTAMP` beside it.

use super::Fs;
use super::blocks::ObjectVersion;
use super::content::{Content, UploadedStaging};
use super::dirty::FileData;
use super::journal::{Journaled, Owner, Record, RecordRef, md5_etag};
use crate::store::StoreError;
use futures::StreamExt;
use std::sync::Arc;
use std::time::SystemTime;

/// What recovery did, for the log and for tests.
#[derive(Debug, Default, Clone)]
pub struct Recovered {
    pub uploaded: Vec<String>,
    pub conflicts: Vec<String>,
    pub failed: Vec<String>,
    /// Deletes a killed daemon had not sent, sent now.
    pub deleted: Vec<String>,
    /// Not uploaded at mount (the store failed): queued, retried in the background.
    pub retrying: Vec<String>,
    /// Records naming a file outside the staging directory: not applied, left in place.
    pub refused: Vec<String>,
    /// This mount's records left for a later read-write mount (this one is read-only).
    pub deferred: Vec<String>,
    /// Records of another bucket or endpoint, left for a mount of theirs.
    pub others: usize,
}

impl Fs {
    pub async fn recover(self: &Arc<Self>) -> Recovered {
        let mut out = Recovered::default();
        let listing = self.uploader.journal().read();
        // The cache directory's lock is held: no live mount writes these staging files.
        self.uploader.journal().remove_unnamed_staging(&listing);
        let mut mine = Vec::new();
        let mut deletes = Vec::new();
        for Journaled { at, record, inline } in listing.records {
            match self.uploader.journal().owner(&record) {
                Owner::Other(whose) => {
                    tracing::info!("{at} belongs to {whose}; left for its mount");
                    out.others += 1;
                    continue;
                }
                Owner::ThisBucketOnAnyEndpoint => tracing::info!(
                    "{at} names no endpoint (written by an older s3vol): recovered into this mount of bucket {:?}",
                    record.bucket
                ),
                Owner::ThisMount => {}
            }
            if record.delete {
                deletes.push((at, record));
                continue;
            }
            let data = match record.inline {
                true => Ok(Data::Inline(inline)),
                false => self.uploader.journal().staging_file(&record).map(Data::Staged),
            };
            match data {
                Ok(data) => mine.push((at, record, data)),
                Err(why) => {
                    tracing::error!("{at} refused: {why}; not applied, left in place");
                    out.refused.push(record.key);
                }
            }
        }
        if self.config.read_only && !mine.is_empty() {
            tracing::warn!(
                "{} journaled files ({}) are not recovered: this mount is read-only; a read-write mount with this cache directory uploads them",
                mine.len(),
                mine.iter()
                    .map(|(_, r, _)| format!("{:?}", r.key))
                    .collect::<Vec<_>>()
                    .join(", ")
            );
            out.deferred = mine.into_iter().map(|(_, r, _)| r.key).collect();
            return out;
        }
        for (at, record) in deletes {
            self.recover_delete(at, &record, &mut out).await;
        }
        // Concurrently: after a crash in the middle of a copy, thousands of small files may
        // wait, a round trip each.
        let attempts: Vec<_> = futures::stream::iter(mine)
            .map(|(at, record, data)| async move {
                let result = self.recover_one(&at, &record, data).await;
                (at, record, result)
            })
            .buffer_unordered(RECOVERY_CONCURRENCY)
            .collect()
            .await;
        for (at, record, result) in attempts {
            match result {
                Ok((target, left)) => {
                    match &target {
                        Some(target) if *target != record.key => {
                            tracing::warn!(
                                "recovered {:?} ({} bytes) as {target:?}: the object changed remotely after it was written",
                                record.key,
                                record.size
                            );
                            out.conflicts.push(target.clone());
                        }
                        _ => {
                            tracing::info!(
                                "recovered {:?}: {} bytes uploaded after a crash",
                                record.key,
                                record.size
                            );
                            out.uploaded.extend(target);
                        }
                    }
                    self.uploader.journal().uploaded(Some(at), left).await;
                }
                Err((e, Some(f))) => {
                    tracing::warn!(
                        "cannot recover {:?} from {at} yet: {e}; retrying in the background (s3vol status shows it)",
                        record.key,
                    );
                    out.retrying.push(record.key.clone());
                    self.adopt(f);
                }
                Err((e, None)) => {
                    tracing::error!(
                        "cannot recover {:?} from {at}: {e}; its data stays in the cache directory for the next mount",
                        record.key,
                    );
                    out.failed.push(record.key.clone());
                }
            }
        }
        out
    }

    /// Uploads one record's data; returns the key written (`None`: it was already there)
    /// and the staging file to remove once the record is gone. A failed upload hands the
    /// data back, for the upload queue to retry.
    async fn recover_one(
        &self,
        at: &RecordRef,
        r: &Record,
        data: Data,
    ) -> Result<(Option<String>, Option<UploadedStaging>), (String, Option<FileData>)> {
        if let Some(id) = &r.upload_id
            && let Err(e) = self.store.abort_multipart(&r.key, id).await
        {
            tracing::warn!("aborting the stale multipart upload of {:?}: {e}", r.key);
        }
        let content = match data {
            Data::Inline(bytes) => Content::from_bytes(bytes, self.handles.dirty_budget().clone()),
            Data::Staged(staging) => {
                Content::reopen(&staging).map_err(|e| (format!("staging file {}: {e}", staging.display()), None))?
            }
        };
        let mut f = FileData::recovered(r, content, self.handles.dirty_budget().clone());
        // Re-journaling during this upload rewrites the same record.
        f.journal = Some(at.clone());
        let current = match self.store.head(&r.key).await {
            Ok(m) => m.etag,
            Err(StoreError::NotFound) => None,
            Err(e) => return Err((e.to_string(), Some(f))),
        };
        let base = r.base.as_ref().map(|b| b.etag.clone());
        if current != base {
            if current.is_some() && self.already_uploaded(&f, current.as_deref()).await {
                let left = f.uploaded(ObjectVersion {
                    key: Arc::from(""),
                    etag: Arc::from(""),
                    size: 0,
                });
                return Ok((None, left));
            }
            f.key = conflict_key(&r.key);
        }
        let version = match self.uploader.upload(&mut f, &r.metadata).await {
            Ok(version) => version,
            Err(e) => return Err((e.to_string(), Some(f))),
        };
        let key = f.key.clone();
        let left = f.uploaded(version);
        f.journal = None;
        Ok((Some(key), left))
    }

    /// Sends a delete a killed daemon had not sent, unless the object was replaced since (a
    /// newer object under the name is not the one deleted). A failure leaves the record for
    /// the next mount.
    async fn recover_delete(&self, at: RecordRef, r: &Record, out: &mut Recovered) {
        let deleted = r.base.as_ref().map(|b| b.etag.as_str());
        let result = match self.store.head(&r.key).await {
            Err(StoreError::NotFound) => Ok(false),
            Ok(m) if deleted.is_none() || m.etag.as_deref() == deleted => {
                self.store.delete(&r.key).await.map(|()| true)
            }
            Ok(_) => {
                tracing::info!(
                    "{:?} was replaced since it was deleted here: the new object stays",
                    r.key
                );
                Ok(false)
            }
            Err(e) => Err(e),
        };
        match result {
            Ok(sent) => {
                if sent {
                    tracing::info!("recovered the delete of {:?}", r.key);
                    out.deleted.push(r.key.clone());
                }
                self.uploader.journal().deleted(at);
            }
            Err(e) => tracing::warn!(
                "cannot send the delete of {:?} from {at}: {e}; the next mount tries again",
                r.key
            ),
        }
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

/// Records uploaded at once at mount.
const RECOVERY_CONCURRENCY: usize = 16;

/// Where a record's bytes are: inline in the journal, or in a staging file checked to be
/// the journal's own.
enum Data {
    Inline(Vec<u8>),
    Staged(std::path::PathBuf),
}

/// Where this mount's version of `key` goes when the object changed remotely meanwhile.
pub(super) fn conflict_key(key: &str) -> String {
    let stamp = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    format!("{key}.s3vol-conflict-{stamp}")
}

#[cfg(test)]
mod tests {
    use super::super::content::MemoryBudget;
    use super::super::journal::Journal;
    use super::super::tree::ROOT_INO;
    use super::super::{Caller, FsConfig, OpenMode, UploadMode};
    use super::*;
    use crate::provider::{Overrides, Resolved};
    use crate::source::Source;
    use crate::store::ObjectStore;
    use crate::store::memory::MemoryStore;
    use bytes::Bytes;
    use std::path::Path;
    use std::path::PathBuf;

    const ENDPOINT: &str = "http://127.0.0.1:9";

    fn fs(store: &Arc<MemoryStore>, cache: &Path, endpoint: &str, read_only: bool) -> Arc<Fs> {
        let overrides = Overrides {
            endpoint_url: Some(endpoint.to_string()),
            ..Overrides::default()
        };
        let resolved = Resolved::new(&Source::parse("s3://b").unwrap(), &overrides);
        let config = FsConfig {
            cache_dir: cache.to_path_buf(),
            read_only,
            // A quarter of it, 1 KiB, is the most dirty data a file keeps in memory:
            // larger writes are staged on disk.
            memory_limit: 4096,
            // close() uploads: the tests look at the bucket right after it.
            upload_mode: UploadMode::OnClose,
            ..FsConfig::default()
        };
        Fs::new(store.clone(), resolved, config)
    }

    /// A record as a crashed mount of `endpoint` leaves it: `data` for `key` in a staging
    /// file (at `staging`, or a fresh one in the staging directory).
    fn crashed_write(cache: &Path, endpoint: Option<&str>, key: &str, data: &[u8], staging: Option<&Path>) -> PathBuf {
        let journal = Journal::new(cache, "b", Some(ENDPOINT));
        let path = match staging {
            Some(path) => path.to_path_buf(),
            None => {
                std::fs::create_dir_all(journal.staging_dir()).unwrap();
                let path = journal
                    .staging_dir()
                    .join(format!("staging-1-{:016x}", fastrand::u64(..)));
                std::fs::write(&path, data).unwrap();
                path
            }
        };
        let record = Record {
            bucket: "b".into(),
            endpoint: endpoint.map(String::from),
            key: key.into(),
            size: data.len() as u64,
            base: None,
            base_limit: 0,
            local: vec![(0, data.len() as u64)],
            staging: path.clone(),
            upload_id: None,
            metadata: Default::default(),
            inline: false,
            delete: false,
        };
        journal.save(&record).unwrap();
        path
    }

    fn records(cache: &Path) -> usize {
        std::fs::read_dir(cache.join("journal")).map_or(0, |d| {
            d.flatten()
                .filter(|e| e.path().extension().is_some_and(|x| x == "json"))
                .count()
        })
    }

    #[tokio::test]
    async fn an_unlink_failure_after_an_upload_never_uploads_zeros_later() {
        let cache = tempfile::tempdir().unwrap();
        let store = Arc::new(MemoryStore::new());
        let fs = fs(&store, cache.path(), ENDPOINT, false);
        let caller = Caller { uid: 0, gid: 0 };
        let open = OpenMode {
            write: true,
            ..OpenMode::default()
        };
        let (_, opened) = fs.create(ROOT_INO, "f", 0o644, open, caller).await.unwrap();
        fs.write(opened.fh, 0, &[7; 10_000]).await.unwrap();
        // The staging file's name is taken by a directory: unlinking it fails (EISDIR,
        // also for root), while the open file still holds the data.
        let staging: Vec<_> = std::fs::read_dir(cache.path().join("staging"))
            .unwrap()
            .flatten()
            .collect();
        assert_eq!(staging.len(), 1, "the write was staged on disk");
        let name = staging[0].path();
        std::fs::remove_file(&name).unwrap();
        std::fs::create_dir(&name).unwrap();
        fs.flush(opened.fh)
            .await
            .expect("the upload succeeded; the unlink is only logged");
        assert_eq!(store.contents("f").as_deref(), Some(&[7u8; 10_000][..]));
        assert_eq!(records(cache.path()), 0, "no record is left naming the staging file");
        fs.write(opened.fh, 0, &[1]).await.unwrap();
        fs.flush(opened.fh).await.unwrap();
        let mut expected = vec![7u8; 10_000];
        expected[0] = 1;
        assert!(
            store.contents("f").as_deref() == Some(&expected[..]),
            "the second upload has the first one's bytes, not zeros"
        );
        fs.release(opened.fh).await;
    }

    /// What close() journals in the background mode, read back by the next mount: small
    /// files inline in the log (no staging file), a larger one staged, an unlinked one
    /// and a deleted object as notes; a clean exit leaves an empty journal.
    #[tokio::test]
    async fn the_log_brings_back_inline_staged_and_deleted_files() {
        let cache = tempfile::tempdir().unwrap();
        let store = Arc::new(MemoryStore::new());
        store
            .put("old", Bytes::from_static(b"to delete"), &Default::default())
            .await
            .unwrap();
        let journal = Journal::new(cache.path(), "b", Some(ENDPOINT));
        let budget = MemoryBudget::new(1 << 20, 1 << 20);
        let write = |key: &str, data: &[u8]| {
            let mut f = FileData::new(key.to_string(), None, budget.clone());
            f.write(0, data, &journal.staging_dir()).unwrap();
            f
        };
        let mut small = write("small", b"inline bytes");
        let mut large = write("large", &vec![7; 2 << 20]);
        let mut gone = write("gone", b"unlinked before its upload");
        for f in [&mut small, &mut large, &mut gone] {
            journal.record(f, &Default::default(), None).unwrap();
        }
        journal.forget(&mut gone);
        journal.record_delete("old", None).unwrap();
        let staged = std::fs::read_dir(journal.staging_dir()).unwrap().count();
        assert_eq!(staged, 1, "only the large file has a staging file");
        // The daemon dies here: nothing else runs. The next mount finishes the job.
        let done = fs(&store, cache.path(), ENDPOINT, false).recover().await;
        let mut uploaded = done.uploaded.clone();
        uploaded.sort();
        assert_eq!(
            (uploaded, done.deleted),
            (vec!["large".to_string(), "small".into()], vec!["old".to_string()])
        );
        assert_eq!(store.contents("small").as_deref(), Some(&b"inline bytes"[..]));
        assert!(store.contents("large").is_some_and(|b| b.len() == 2 << 20));
        assert!(store.keys().iter().all(|k| k != "gone" && k != "old"));
        let fs = fs(&store, cache.path(), ENDPOINT, false);
        assert!(fs.recover().await.uploaded.is_empty(), "nothing is recovered twice");
        fs.close_journal();
        assert_eq!(std::fs::read_dir(cache.path().join("journal")).unwrap().count(), 0);
        assert_eq!(std::fs::read_dir(cache.path().join("staging")).unwrap().count(), 0);
    }

    #[tokio::test]
    async fn a_read_only_mount_leaves_the_journal_for_a_read_write_one() {
        let cache = tempfile::tempdir().unwrap();
        let store = Arc::new(MemoryStore::new());
        let staging = crashed_write(cache.path(), Some(ENDPOINT), "k", b"journaled", None);
        let done = fs(&store, cache.path(), ENDPOINT, true).recover().await;
        assert_eq!(done.deferred, ["k"]);
        assert!(store.keys().is_empty() && staging.exists() && records(cache.path()) == 1);
        let done = fs(&store, cache.path(), ENDPOINT, false).recover().await;
        assert_eq!(done.uploaded, ["k"]);
        assert_eq!(store.contents("k").as_deref(), Some(&b"journaled"[..]));
        assert!(!staging.exists() && records(cache.path()) == 0);
    }

    #[tokio::test]
    async fn records_of_another_endpoint_are_left_and_older_ones_are_recovered() {
        let cache = tempfile::tempdir().unwrap();
        let store = Arc::new(MemoryStore::new());
        let theirs = crashed_write(cache.path(), Some("http://127.0.0.1:10/"), "theirs", b"t", None);
        let older = crashed_write(cache.path(), None, "older", b"o", None);
        let done = fs(&store, cache.path(), ENDPOINT, false).recover().await;
        assert_eq!((done.others, &done.uploaded[..]), (1, &["older".to_string()][..]));
        assert_eq!(store.keys(), ["older"]);
        assert!(theirs.exists() && !older.exists() && records(cache.path()) == 1);
        // Their own mount (the same URL up to a trailing slash) takes it.
        let done = fs(&store, cache.path(), "http://127.0.0.1:10", false).recover().await;
        assert_eq!(done.uploaded, ["theirs"]);
    }

    #[tokio::test]
    async fn a_record_naming_a_file_outside_the_staging_directory_is_refused() {
        let cache = tempfile::tempdir().unwrap();
        let elsewhere = tempfile::tempdir().unwrap();
        // Named like a staging file: only where it is gives it away.
        let secret = elsewhere.path().join("staging-1-passwd");
        std::fs::write(&secret, "root:x:0:0").unwrap();
        let store = Arc::new(MemoryStore::new());
        crashed_write(cache.path(), Some(ENDPOINT), "direct", b"", Some(&secret));
        let dotdot = cache
            .path()
            .join("staging/../..")
            .join(elsewhere.path().strip_prefix(cache.path().parent().unwrap()).unwrap())
            .join("staging-1-passwd");
        crashed_write(cache.path(), Some(ENDPOINT), "dotdot", b"", Some(&dotdot));
        // A name in the staging directory that links out is not followed either.
        let link = cache.path().join("staging/staging-1-link");
        std::fs::create_dir_all(link.parent().unwrap()).unwrap();
        std::os::unix::fs::symlink(&secret, &link).unwrap();
        crashed_write(cache.path(), Some(ENDPOINT), "link", b"", Some(&link));
        let done = fs(&store, cache.path(), ENDPOINT, false).recover().await;
        let mut refused = done.refused.clone();
        refused.sort();
        assert_eq!(refused, ["direct", "dotdot"]);
        assert_eq!(done.failed, ["link"]);
        assert!(store.keys().is_empty(), "nothing uploaded");
        assert_eq!(std::fs::read_to_string(&secret).unwrap(), "root:x:0:0");
        assert!(link.is_symlink(), "only regular files are removed");
        assert_eq!(records(cache.path()), 3, "refused records stay in place");
    }

    #[tokio::test]
    async fn staging_files_no_record_names_are_removed_at_mount() {
        let cache = tempfile::tempdir().unwrap();
        let store = Arc::new(MemoryStore::new());
        let theirs = crashed_write(cache.path(), Some("http://127.0.0.1:10"), "theirs", b"t", None);
        let orphan = cache.path().join("staging/staging-1-0000000000000001");
        std::fs::write(&orphan, "cut off before its record").unwrap();
        let subdir = cache.path().join("staging/staging-dir");
        std::fs::create_dir(&subdir).unwrap();
        fs(&store, cache.path(), ENDPOINT, true).recover().await;
        assert!(!orphan.exists(), "removed");
        assert!(theirs.exists(), "another mount's record names it");
        assert!(subdir.exists(), "not a regular file");
        // An unreadable record could name any file: then nothing is removed.
        std::fs::write(&orphan, "again").unwrap();
        std::fs::write(cache.path().join("journal/broken.json"), "{").unwrap();
        fs(&store, cache.path(), ENDPOINT, true).recover().await;
        assert!(orphan.exists());
    }
}
