//! The journal's append-only log: records of closed files (their bytes inline when small),
//! and the notes that they reached the bucket.
//!
//! An append is a write(2): once it returns, the record is in the kernel's page cache, which
//! a killed daemon does not lose. Reaching the disk (what a power loss needs) is the flush's
//! job: it runs at most `FLUSH_DELAY` after an append (`flush_soon`) or when a caller needs
//! it (`commit`), and one flush covers every entry appended before it started, with the
//! staging files those records name (group commit). So close() costs a write, not a disk
//! flush, as on a local filesystem, and a burst of closes shares one flush.
//!
//! On disk: segments `log-SEQ` in the journal directory, each a run of entries
//! `[len u32][crc32 u32][kind u8][id u64][payload]`. A segment is removed once every record
//! in it is done (and it is no longer the one appended to); a torn entry at a segment's end
//! (a crash mid-append) ends its reading.

use parking_lot::Mutex;
use std::collections::HashMap;
use std::fs::File;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

const PUT: u8 = 1;
const DONE: u8 = 2;
/// Entry header: length, checksum.
const HEADER: usize = 8;
/// A new segment is started past this size.
const SEGMENT_MAX: u64 = 64 << 20;
/// No entry is larger (inline data is far smaller): a bigger length is damage.
const ENTRY_MAX: usize = 256 << 20;
const SEGMENT_PREFIX: &str = "log-";
/// The longest an appended entry waits for its flush (ext4 commits every 5 s by default).
pub const FLUSH_DELAY: Duration = Duration::from_secs(1);

/// One live record read back from the log: its id, the record (JSON) and inline data.
pub struct Logged {
    pub id: u64,
    pub header: Vec<u8>,
    pub inline: Vec<u8>,
}

struct Segment {
    seq: u64,
    file: Arc<File>,
    size: u64,
}

#[derive(Default)]
struct State {
    active: Option<Segment>,
    /// Entries appended so far (the group commit's clock).
    appended: u64,
    /// Which segment holds each live record, and how many live records each segment holds.
    place: HashMap<u64, u64>,
    live: HashMap<u64, usize>,
    /// The highest segment number on disk, once looked up.
    last_seq: Option<u64>,
    /// Staging files named by records appended since the last flush began: the flush
    /// syncs them before the log, so no record on disk names bytes that are not.
    unsynced: Vec<File>,
}

pub struct Log {
    dir: PathBuf,
    state: Mutex<State>,
    /// Entries known durable; waiters watch it.
    synced: tokio::sync::watch::Sender<u64>,
    /// A flush is running (its leader is the first waiter that found none).
    flushing: Mutex<bool>,
    /// A `flush_soon` task is waiting to run.
    flush_scheduled: AtomicBool,
}

impl Log {
    pub fn new(dir: &Path) -> Log {
        Log {
            dir: dir.to_path_buf(),
            state: Mutex::new(State::default()),
            synced: tokio::sync::watch::channel(0).0,
            flushing: Mutex::new(false),
            flush_scheduled: AtomicBool::new(false),
        }
    }

    fn segment_path(&self, seq: u64) -> PathBuf {
        self.dir.join(format!("{SEGMENT_PREFIX}{seq:016}"))
    }

    fn segments_on_disk(&self) -> Vec<u64> {
        let mut seqs: Vec<u64> = std::fs::read_dir(&self.dir)
            .map(|entries| {
                entries
                    .flatten()
                    .filter_map(|e| {
                        let name = e.file_name();
                        name.to_str()?.strip_prefix(SEGMENT_PREFIX)?.parse().ok()
                    })
                    .collect()
            })
            .unwrap_or_default();
        seqs.sort_unstable();
        seqs
    }

    /// Reads every segment left by earlier runs and returns the records not yet done (they
    /// stay live, their segments kept, until marked done here) and how many segments could
    /// not be read.
    pub fn read(&self) -> (Vec<Logged>, usize) {
        let mut records: HashMap<u64, (u64, Logged)> = HashMap::new();
        let mut unreadable = Vec::new();
        let seqs = self.segments_on_disk();
        for &seq in &seqs {
            let path = self.segment_path(seq);
            let bytes = match read_regular(&path) {
                Ok(bytes) => bytes,
                Err(e) => {
                    tracing::error!("journal segment {} is unreadable: {e}; left in place", path.display());
                    unreadable.push(seq);
                    continue;
                }
            };
            let (entries, torn) = parse(&bytes);
            if torn {
                tracing::warn!(
                    "journal segment {}: a torn entry at its end (a crash while appending) is ignored",
                    path.display()
                );
            }
            for (kind, id, payload) in entries {
                match kind {
                    PUT => {
                        if let Some(logged) = split_put(id, payload) {
                            records.insert(id, (seq, logged));
                        }
                    }
                    DONE => {
                        records.remove(&id);
                    }
                    _ => {}
                }
            }
        }
        let mut state = self.state.lock();
        state.last_seq = seqs.last().copied().max(state.last_seq);
        for (id, (seq, _)) in &records {
            state.place.insert(*id, *seq);
            *state.live.entry(*seq).or_default() += 1;
        }
        // Segments holding nothing live: done with.
        for seq in seqs {
            let kept = state.live.contains_key(&seq) || unreadable.contains(&seq);
            if !kept && state.active.as_ref().is_none_or(|a| a.seq != seq) {
                let _ = std::fs::remove_file(self.segment_path(seq));
            }
        }
        let mut out: Vec<Logged> = records.into_values().map(|(_, l)| l).collect();
        out.sort_by_key(|l| l.id);
        (out, unreadable.len())
    }

    /// Appends a record (replacing an earlier one of the same id) whose bytes are `inline`
    /// or in the `staging` file; returns the clock value to pass to `commit`.
    pub fn put(&self, id: u64, header: &[u8], inline: &[u8], staging: Option<File>) -> std::io::Result<u64> {
        let mut payload = Vec::with_capacity(4 + header.len() + inline.len());
        payload.extend_from_slice(&(header.len() as u32).to_le_bytes());
        payload.extend_from_slice(header);
        payload.extend_from_slice(inline);
        self.append(PUT, id, &payload, staging)
    }

    /// Records written and not yet done: what a crash now would leave for the next mount.
    pub fn live_records(&self) -> usize {
        self.state.lock().place.len()
    }

    /// Appends the note that a record is done (not waited for: a record redone after a
    /// crash is recognised as uploaded already). Its segment goes once nothing in it is live.
    pub fn done(&self, id: u64) -> std::io::Result<u64> {
        self.append(DONE, id, &[], None)
    }

    fn append(&self, kind: u8, id: u64, payload: &[u8], staging: Option<File>) -> std::io::Result<u64> {
        let mut body = Vec::with_capacity(9 + payload.len());
        body.push(kind);
        body.extend_from_slice(&id.to_le_bytes());
        body.extend_from_slice(payload);
        let mut entry = Vec::with_capacity(HEADER + body.len());
        entry.extend_from_slice(&(body.len() as u32).to_le_bytes());
        entry.extend_from_slice(&crc32fast::hash(&body).to_le_bytes());
        entry.extend_from_slice(&body);

        let mut state = self.state.lock();
        let state = &mut *state;
        // Listed before the entry is written: a flush that covers the entry syncs it.
        state.unsynced.extend(staging);
        if state.active.as_ref().is_none_or(|a| a.size >= SEGMENT_MAX) {
            self.start_segment(state)?;
        }
        let active = state.active.as_mut().expect("started above");
        if let Err(e) = (&*active.file).write_all(&entry) {
            // A part-written entry would end the segment's reading: cut it off.
            if active.file.set_len(active.size).is_err() {
                state.active = None;
            }
            return Err(e);
        }
        active.size += entry.len() as u64;
        let seq = active.seq;
        state.appended += 1;
        let previous = match kind {
            PUT => state.place.insert(id, seq),
            _ => state.place.remove(&id),
        };
        if kind == PUT {
            *state.live.entry(seq).or_default() += 1;
        }
        if let Some(old) = previous {
            self.release(state, old);
        }
        Ok(state.appended)
    }

    /// One live record fewer in segment `seq`; an emptied segment no longer appended to is removed.
    fn release(&self, state: &mut State, seq: u64) {
        let left = state.live.get_mut(&seq).map(|n| {
            *n -= 1;
            *n
        });
        if left == Some(0) {
            state.live.remove(&seq);
            if state.active.as_ref().is_none_or(|a| a.seq != seq) {
                let _ = std::fs::remove_file(self.segment_path(seq));
            }
        }
    }

    /// Starts a new segment; the one it replaces is flushed first (the group commit only
    /// flushes the active one) and removed if nothing in it is live.
    fn start_segment(&self, state: &mut State) -> std::io::Result<()> {
        crate::cache_dir::create_private_dirs(&self.dir)?;
        if let Some(old) = state.active.take() {
            sync_staging(&mut state.unsynced)?;
            old.file.sync_data()?;
            if !state.live.contains_key(&old.seq) {
                let _ = std::fs::remove_file(self.segment_path(old.seq));
            }
        }
        let last = match state.last_seq {
            Some(seq) => seq,
            None => self.segments_on_disk().last().copied().unwrap_or(0),
        };
        let seq = last + 1;
        let file = std::fs::OpenOptions::new()
            .append(true)
            .create_new(true)
            .mode(0o600)
            .open(self.segment_path(seq))?;
        // The new name must survive a crash too.
        if let Ok(dir) = File::open(&self.dir) {
            dir.sync_all()?;
        }
        state.last_seq = Some(seq);
        state.active = Some(Segment {
            seq,
            file: Arc::new(file),
            size: 0,
        });
        Ok(())
    }

    /// At a clean exit: the segment appended to goes if nothing in it is live (a clean
    /// unmount leaves an empty journal).
    pub fn close(&self) {
        let mut state = self.state.lock();
        let _ = sync_staging(&mut state.unsynced);
        if let Some(active) = state.active.take() {
            if state.live.contains_key(&active.seq) {
                let _ = active.file.sync_data();
            } else {
                let _ = std::fs::remove_file(self.segment_path(active.seq));
            }
        }
    }

    /// Returns once every entry up to `upto` (a value `put` returned) is on disk. The first
    /// caller to find no flush running runs one for everything appended so far; the others
    /// wait for it, and run the next one if theirs came too late for it.
    pub async fn commit(&self, upto: u64) -> std::io::Result<()> {
        let mut synced = self.synced.subscribe();
        loop {
            if *synced.borrow_and_update() >= upto {
                return Ok(());
            }
            let lead = {
                let mut flushing = self.flushing.lock();
                !std::mem::replace(&mut *flushing, true)
            };
            if !lead {
                // The running flush ends with a send (success or failure): look again then.
                let _ = synced.changed().await;
                continue;
            }
            let (target, file, mut staging) = {
                let mut state = self.state.lock();
                let staging = std::mem::take(&mut state.unsynced);
                (state.appended, state.active.as_ref().map(|a| a.file.clone()), staging)
            };
            let (flushed, staging) = tokio::task::spawn_blocking(move || {
                let flushed = sync_staging(&mut staging).and_then(|()| file.map_or(Ok(()), |f| f.sync_data()));
                (flushed, staging)
            })
            .await
            .unwrap_or_else(|e| (Err(std::io::Error::other(e)), Vec::new()));
            // Not synced: the next flush tries them again.
            self.state.lock().unsynced.extend(staging);
            *self.flushing.lock() = false;
            match flushed {
                Ok(()) => self.synced.send_modify(|s| *s = (*s).max(target)),
                Err(e) => {
                    // Wakes the others: one of them tries again.
                    self.synced.send_modify(|_| {});
                    return Err(e);
                }
            }
        }
    }

    /// Has what is appended reach the disk within `FLUSH_DELAY`, one flush for all of it.
    pub fn flush_soon(self: &Arc<Self>) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return; // Outside the daemon's runtime (a tool, a test): `close` flushes.
        };
        if self.flush_scheduled.swap(true, Ordering::AcqRel) {
            return;
        }
        let log = self.clone();
        runtime.spawn(async move {
            tokio::time::sleep(FLUSH_DELAY).await;
            // Cleared before the clock is read: an append after this schedules the next flush.
            log.flush_scheduled.store(false, Ordering::Release);
            let upto = log.state.lock().appended;
            if let Err(e) = log.commit(upto).await {
                tracing::warn!(
                    "journal under {}: flushing to disk: {e}; files closed in the last seconds and not yet uploaded would not survive a power loss (a killed daemon loses nothing)",
                    log.dir.display()
                );
            }
        });
    }
}

/// Syncs staging files, keeping those not yet synced when one fails.
fn sync_staging(files: &mut Vec<File>) -> std::io::Result<()> {
    while let Some(file) = files.last() {
        file.sync_data()?;
        files.pop();
    }
    Ok(())
}

/// A segment's bytes, read only from a regular file (never through a link).
fn read_regular(path: &Path) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)?;
    if !file.metadata()?.is_file() {
        return Err(std::io::Error::other("not a regular file"));
    }
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes)?;
    Ok(bytes)
}

/// One entry of a segment: kind, record id, payload.
type Entry<'a> = (u8, u64, &'a [u8]);

/// The entries of a segment, and whether it ends in a torn one.
fn parse(bytes: &[u8]) -> (Vec<Entry<'_>>, bool) {
    let mut out = Vec::new();
    let mut at = 0;
    while at < bytes.len() {
        let Some(head) = bytes.get(at..at + HEADER) else {
            return (out, true);
        };
        let len = u32::from_le_bytes(head[..4].try_into().expect("4 bytes")) as usize;
        let crc = u32::from_le_bytes(head[4..].try_into().expect("4 bytes"));
        let Some(body) = bytes.get(at + HEADER..at + HEADER + len) else {
            return (out, true);
        };
        if !(9..=ENTRY_MAX).contains(&len) || crc32fast::hash(body) != crc {
            return (out, true);
        }
        let id = u64::from_le_bytes(body[1..9].try_into().expect("8 bytes"));
        out.push((body[0], id, &body[9..]));
        at += HEADER + len;
    }
    (out, false)
}

fn split_put(id: u64, payload: &[u8]) -> Option<Logged> {
    let len = u32::from_le_bytes(payload.get(..4)?.try_into().ok()?) as usize;
    let header = payload.get(4..4 + len)?.to_vec();
    let inline = payload.get(4 + len..)?.to_vec();
    Some(Logged { id, header, inline })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn segments(dir: &Path) -> usize {
        std::fs::read_dir(dir).unwrap().count()
    }

    #[tokio::test]
    async fn records_not_done_survive_and_done_segments_go() {
        let dir = tempfile::tempdir().unwrap();
        let log = Log::new(dir.path());
        let a = log.put(1, b"{\"a\":1}", b"data of a", None).unwrap();
        let b = log.put(2, b"{}", b"", None).unwrap();
        log.commit(a.max(b)).await.unwrap();
        log.put(1, b"{\"a\":2}", b"newer", None).unwrap();
        log.done(2).unwrap();
        let c = log.put(3, b"{}", b"c", None).unwrap();
        log.commit(c).await.unwrap();
        drop(log);

        let again = Log::new(dir.path());
        let (live, _) = again.read();
        let ids: Vec<u64> = live.iter().map(|l| l.id).collect();
        assert_eq!(ids, [1, 3]);
        assert_eq!(
            (live[0].header.as_slice(), live[0].inline.as_slice()),
            (&b"{\"a\":2}"[..], &b"newer"[..])
        );
        // New entries go to a new segment; the old one goes once its records are done.
        again.done(1).unwrap();
        let d = again.done(3).unwrap();
        again.commit(d).await.unwrap();
        assert_eq!(segments(dir.path()), 1, "only the active segment is left");
        assert!(Log::new(dir.path()).read().0.is_empty());
    }

    #[test]
    fn a_torn_tail_ends_the_segment_and_damage_never_panics() {
        let dir = tempfile::tempdir().unwrap();
        let log = Log::new(dir.path());
        log.put(1, b"{}", b"one", None).unwrap();
        log.put(2, b"{}", b"two", None).unwrap();
        let path = log.segment_path(1);
        let full = std::fs::read(&path).unwrap();
        drop(log);
        std::fs::write(&path, &full[..full.len() - 2]).unwrap();
        let ids: Vec<u64> = Log::new(dir.path()).read().0.iter().map(|l| l.id).collect();
        assert_eq!(ids, [1]);
        for cut in 0..full.len() {
            let mut damaged = full.clone();
            damaged[cut] ^= 0x5a;
            std::fs::write(&path, &damaged).unwrap();
            let _ = Log::new(dir.path()).read();
        }
    }

    /// close() does not wait for the disk: its append is flushed, staging file first, by
    /// one background flush within `FLUSH_DELAY`, whatever the number of appends.
    #[tokio::test]
    async fn appends_reach_the_disk_within_the_flush_delay() {
        let dir = tempfile::tempdir().unwrap();
        let log = Arc::new(Log::new(dir.path()));
        let staging = File::create(dir.path().join("staged")).unwrap();
        for i in 0..50u64 {
            let file = (i == 7).then(|| staging.try_clone().unwrap());
            log.put(i, b"{}", b"", file).unwrap();
            log.flush_soon();
        }
        assert_eq!(*log.synced.borrow(), 0, "nothing waited for the disk");
        assert_eq!(log.state.lock().unsynced.len(), 1);
        let mut synced = log.synced.subscribe();
        tokio::time::timeout(FLUSH_DELAY * 3, synced.wait_for(|s| *s >= 50))
            .await
            .expect("flushed within the delay")
            .unwrap();
        assert!(log.state.lock().unsynced.is_empty(), "the staging file was synced");
        assert!(!log.flush_scheduled.load(Ordering::Acquire));
    }

    #[tokio::test]
    async fn concurrent_commits_share_flushes() {
        let dir = tempfile::tempdir().unwrap();
        let log = Arc::new(Log::new(dir.path()));
        let tasks: Vec<_> = (0..200u64)
            .map(|i| {
                let log = log.clone();
                tokio::spawn(async move {
                    let at = log.put(i, b"{}", &[i as u8; 100], None).unwrap();
                    log.commit(at).await.unwrap();
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
        assert_eq!(*log.synced.borrow(), 200);
        assert_eq!(Log::new(dir.path()).read().0.len(), 200);
    }
}
