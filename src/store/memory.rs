//! An in-memory object store with S3's flat key space, for fast tests of the filesystem
//! core. Integration tests use a real S3 server instead.

use super::*;
use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

#[derive(Clone)]
struct Object {
    data: Bytes,
    etag: String,
    modified: SystemTime,
    metadata: Metadata,
}

#[derive(Default)]
struct Upload {
    key: String,
    metadata: Metadata,
    parts: HashMap<i32, Bytes>,
}

#[derive(Default)]
pub struct MemoryStore {
    objects: Mutex<BTreeMap<String, Object>>,
    uploads: Mutex<HashMap<String, Upload>>,
    next_id: AtomicU64,
    requests: Mutex<HashMap<&'static str, u64>>,
    /// Where each GET's range started, in the order they were sent.
    get_starts: Mutex<Vec<u64>>,
    /// Once set, each GET's body waits for a permit from it.
    get_gate: Mutex<Option<Arc<tokio::sync::Semaphore>>>,
    /// Once set, each GET's body sends its first bytes at once and the rest only after a
    /// permit from the gate.
    get_stall: Mutex<Option<(usize, Arc<tokio::sync::Semaphore>)>>,
    /// A delay before the body of the next GET whose range starts at the key.
    get_delays: Mutex<HashMap<u64, std::time::Duration>>,
    /// Once set, each LIST waits for a permit from it before it answers.
    list_gate: Mutex<Option<Arc<tokio::sync::Semaphore>>>,
    /// How long each LIST takes to answer (a server across a long link).
    list_delay: Mutex<Option<std::time::Duration>>,
    /// Once set, each PutObject waits for a permit from it before it stores.
    put_gate: Mutex<Option<Arc<tokio::sync::Semaphore>>>,
    /// Once set, every PutObject fails with this error.
    put_refusal: Mutex<Option<StoreError>>,
    /// Once set, every HeadObject fails with this error.
    head_failure: Mutex<Option<StoreError>>,
    /// Listings start from the first key whatever `StartAfter` says (as some S3 servers).
    ignores_start_after: AtomicBool,
    /// Listings with `StartAfter` fail (as a server that does not know the parameter).
    refuses_start_after: AtomicBool,
}

impl MemoryStore {
    /// A conditional write's `If-Match`: the current object must have that ETag (S3
    /// answers 404 for a missing object).
    fn check_if_match(&self, key: &str, if_match: Option<&str>) -> StoreResult<()> {
        let Some(want) = if_match else { return Ok(()) };
        match self.objects.lock().get(key) {
            None => Err(StoreError::NotFound),
            Some(o) if o.etag != want => Err(StoreError::PreconditionFailed),
            Some(_) => Ok(()),
        }
    }

    pub fn new() -> MemoryStore {
        MemoryStore::default()
    }

    /// How many requests of one kind (`"list"`, `"head"`, `"get"`, `"put"`...) were made.
    pub fn requests(&self, kind: &str) -> u64 {
        self.requests.lock().get(kind).copied().unwrap_or(0)
    }

    /// Where each GET's range started, in the order they were sent.
    pub fn get_starts(&self) -> Vec<u64> {
        self.get_starts.lock().clone()
    }

    /// Holds every GET from now on in flight until the returned gate has a permit for it
    /// (`add_permits`), so a test can see which GETs are under way at once.
    pub fn hold_gets(&self) -> Arc<tokio::sync::Semaphore> {
        let gate = Arc::new(tokio::sync::Semaphore::new(0));
        *self.get_gate.lock() = Some(gate.clone());
        gate
    }

    /// Sends the first `bytes` of each GET's body from now on at once, and the rest only
    /// once the returned gate has a permit for it: a body that stops halfway.
    pub fn stall_gets_after(&self, bytes: usize) -> Arc<tokio::sync::Semaphore> {
        let gate = Arc::new(tokio::sync::Semaphore::new(0));
        *self.get_stall.lock() = Some((bytes, gate.clone()));
        gate
    }

    /// Delays the body of the next GET whose range starts at `start` by `delay` (a slow
    /// connection, next to GETs that answer at once).
    pub fn delay_next_get_at(&self, start: u64, delay: std::time::Duration) {
        self.get_delays.lock().insert(start, delay);
    }

    /// Answers every LIST from now on after `delay`, as a server across a long link.
    pub fn delay_lists(&self, delay: std::time::Duration) {
        *self.list_delay.lock() = Some(delay);
    }

    /// Holds every LIST from now on between reading the keys and answering, until the
    /// returned gate has a permit for it (or is closed: then every LIST goes through). The
    /// answer is then older than the bucket, as a real LIST's is when changes land while
    /// it travels back.
    pub fn hold_lists(&self) -> Arc<tokio::sync::Semaphore> {
        let gate = Arc::new(tokio::sync::Semaphore::new(0));
        *self.list_gate.lock() = Some(gate.clone());
        gate
    }

    /// Makes listings ignore `StartAfter` from now on, as a server that does not know it.
    pub fn ignore_start_after(&self) {
        self.ignores_start_after.store(true, Ordering::Relaxed);
    }

    /// Makes listings with `StartAfter` fail from now on, as a server that refuses it.
    pub fn refuse_start_after(&self) {
        self.refuses_start_after.store(true, Ordering::Relaxed);
    }

    /// Holds every PutObject from now on in flight until the returned gate has a permit
    /// for it.
    pub fn hold_puts(&self) -> Arc<tokio::sync::Semaphore> {
        let gate = Arc::new(tokio::sync::Semaphore::new(0));
        *self.put_gate.lock() = Some(gate.clone());
        gate
    }

    /// Makes every PutObject from now on fail with `error` (`None`: succeed again).
    pub fn refuse_puts(&self, error: Option<StoreError>) {
        *self.put_refusal.lock() = error;
    }

    /// Makes every HeadObject from now on fail with `error` (`None`: answer again).
    pub fn fail_heads(&self, error: Option<StoreError>) {
        *self.head_failure.lock() = error;
    }

    /// Every key, in order.
    pub fn keys(&self) -> Vec<String> {
        self.objects.lock().keys().cloned().collect()
    }

    /// The body of `key`, read without counting as a request.
    pub fn contents(&self, key: &str) -> Option<Bytes> {
        self.objects.lock().get(key).map(|o| o.data.clone())
    }

    fn count(&self, kind: &'static str) {
        *self.requests.lock().entry(kind).or_default() += 1;
    }

    fn store(&self, key: &str, data: Bytes, metadata: Metadata) -> String {
        let etag = format!("\"m{}\"", self.next_id.fetch_add(1, Ordering::Relaxed));
        let object = Object {
            data,
            etag: etag.clone(),
            modified: SystemTime::now(),
            metadata,
        };
        self.objects.lock().insert(key.to_string(), object);
        etag
    }

    fn object(&self, key: &str) -> StoreResult<Object> {
        self.objects.lock().get(key).cloned().ok_or(StoreError::NotFound)
    }

    fn meta(key: &str, o: &Object, with_metadata: bool) -> ObjectMeta {
        ObjectMeta {
            key: key.to_string(),
            size: o.data.len() as u64,
            etag: Some(o.etag.clone()),
            last_modified: Some(o.modified),
            metadata: if with_metadata {
                o.metadata.clone()
            } else {
                Metadata::new()
            },
        }
    }

    /// One page of a listing of the keys as they are now.
    fn list_now(&self, req: &ListRequest) -> ListPage {
        let max = req.max_keys.unwrap_or(1000).clamp(1, 1000) as usize;
        let objects = self.objects.lock();
        let start_after = req
            .start_after
            .clone()
            .filter(|_| !self.ignores_start_after.load(Ordering::Relaxed));
        let after = req.continuation.clone().or(start_after);
        let mut page = ListPage::default();
        let mut last_entry: Option<String> = None;
        for (key, o) in objects.range(req.prefix.clone()..) {
            if !key.starts_with(&req.prefix) {
                break;
            }
            let rest = &key[req.prefix.len()..];
            let common = req
                .delimiter
                .as_deref()
                .and_then(|d| rest.find(d).map(|i| format!("{}{}", req.prefix, &rest[..i + d.len()])));
            let entry = common.clone().unwrap_or_else(|| key.clone());
            // The token is the last entry returned: everything up to it, and every key
            // grouped under it, was on an earlier page.
            if after.as_deref().is_some_and(|a| entry.as_str() <= a) || last_entry.as_ref() == Some(&entry) {
                continue;
            }
            if page.objects.len() + page.prefixes.len() == max {
                page.next = last_entry;
                break;
            }
            match common {
                Some(p) => page.prefixes.push(p),
                None => page.objects.push(Self::meta(key, o, false)),
            }
            last_entry = Some(entry);
        }
        page
    }

    fn slice(data: &Bytes, range: Range<u64>) -> Bytes {
        let len = data.len() as u64;
        data.slice(range.start.min(len) as usize..range.end.min(len) as usize)
    }
}

#[async_trait]
impl ObjectStore for MemoryStore {
    async fn head(&self, key: &str) -> StoreResult<ObjectMeta> {
        self.count("head");
        if let Some(e) = self.head_failure.lock().clone() {
            return Err(e);
        }
        Ok(Self::meta(key, &self.object(key)?, true))
    }

    async fn get_range(&self, key: &str, range: Range<u64>, if_match: Option<&str>) -> StoreResult<GetResponse> {
        self.count("get");
        let o = self.object(key)?;
        if if_match.is_some_and(|etag| etag != o.etag) {
            return Err(StoreError::PreconditionFailed);
        }
        self.get_starts.lock().push(range.start);
        let delay = self.get_delays.lock().remove(&range.start);
        let chunk = Self::slice(&o.data, range);
        let gate = self.get_gate.lock().clone();
        let (first, rest) = match self.get_stall.lock().clone() {
            Some((at, stall)) if at < chunk.len() => (chunk.slice(..at), Some((chunk.slice(at..), stall))),
            _ => (chunk, None),
        };
        let first = futures::stream::once(async move {
            if let Some(delay) = delay {
                tokio::time::sleep(delay).await;
            }
            if let Some(gate) = gate {
                gate.acquire().await.expect("the gate is never closed").forget();
            }
            Ok(first)
        });
        let rest = futures::StreamExt::then(futures::stream::iter(rest), |(rest, stall)| async move {
            stall.acquire().await.expect("the gate is never closed").forget();
            Ok(rest)
        });
        Ok(GetResponse {
            described: Some(Self::meta(key, &o, true)),
            etag: Some(o.etag),
            object_size: o.data.len() as u64,
            body: Body::chunks(Box::pin(futures::StreamExt::chain(first, rest))),
        })
    }

    async fn list_page(&self, req: &ListRequest) -> StoreResult<ListPage> {
        self.count("list");
        if req.start_after.is_some() && self.refuses_start_after.load(Ordering::Relaxed) {
            return Err(StoreError::Other("InvalidArgument: StartAfter".into()));
        }
        let page = self.list_now(req);
        // Entries handed out by LISTs, as `requests("listed_entries")`.
        *self.requests.lock().entry("listed_entries").or_default() += (page.objects.len() + page.prefixes.len()) as u64;
        let gate = self.list_gate.lock().clone();
        if let Some(gate) = gate
            && let Ok(permit) = gate.acquire().await
        {
            permit.forget();
        }
        let delay = *self.list_delay.lock();
        if let Some(delay) = delay {
            tokio::time::sleep(delay).await;
        }
        Ok(page)
    }

    async fn put(&self, key: &str, body: Bytes, opts: &PutOptions) -> StoreResult<String> {
        self.count("put");
        let gate = self.put_gate.lock().clone();
        if let Some(gate) = gate {
            gate.acquire().await.expect("the gate is never closed").forget();
        }
        if let Some(e) = self.put_refusal.lock().clone() {
            return Err(e);
        }
        if opts.if_none_match && self.objects.lock().contains_key(key) {
            return Err(StoreError::PreconditionFailed);
        }
        self.check_if_match(key, opts.if_match.as_deref())?;
        Ok(self.store(key, body, opts.metadata.clone()))
    }

    async fn create_multipart(&self, key: &str, opts: &PutOptions) -> StoreResult<String> {
        self.count("create_multipart");
        let id = format!("upload-{}", self.next_id.fetch_add(1, Ordering::Relaxed));
        let upload = Upload {
            key: key.to_string(),
            metadata: opts.metadata.clone(),
            ..Default::default()
        };
        self.uploads.lock().insert(id.clone(), upload);
        Ok(id)
    }

    async fn upload_part(&self, _key: &str, upload_id: &str, number: i32, body: Bytes) -> StoreResult<CompletedPart> {
        self.count("upload_part");
        let mut uploads = self.uploads.lock();
        let upload = uploads.get_mut(upload_id).ok_or(StoreError::NotFound)?;
        upload.parts.insert(number, body);
        Ok(CompletedPart {
            number,
            etag: format!("\"p{number}\""),
        })
    }

    async fn upload_part_copy(
        &self,
        key: &str,
        upload_id: &str,
        number: i32,
        source: &str,
        source_etag: Option<&str>,
        range: Range<u64>,
    ) -> StoreResult<CompletedPart> {
        let object = self.object(source)?;
        if source_etag.is_some_and(|e| e != object.etag) {
            return Err(StoreError::PreconditionFailed);
        }
        let data = Self::slice(&object.data, range);
        self.upload_part(key, upload_id, number, data).await
    }

    async fn complete_multipart(
        &self,
        key: &str,
        upload_id: &str,
        parts: &[CompletedPart],
        if_match: Option<&str>,
    ) -> StoreResult<String> {
        self.count("complete_multipart");
        self.check_if_match(key, if_match)?;
        let upload = self.uploads.lock().remove(upload_id).ok_or(StoreError::NotFound)?;
        if upload.key != key {
            return Err(StoreError::Other("upload belongs to another key".into()));
        }
        let mut data = Vec::new();
        for part in parts {
            let body = upload
                .parts
                .get(&part.number)
                .ok_or_else(|| StoreError::Other(format!("InvalidPart: part {} was not uploaded", part.number)))?;
            data.extend_from_slice(body);
        }
        Ok(self.store(key, Bytes::from(data), upload.metadata))
    }

    async fn abort_multipart(&self, _key: &str, upload_id: &str) -> StoreResult<()> {
        self.count("abort_multipart");
        self.uploads.lock().remove(upload_id);
        Ok(())
    }

    async fn copy(&self, source: &str, dest: &str, metadata: Option<&Metadata>) -> StoreResult<String> {
        self.count("copy");
        let o = self.object(source)?;
        Ok(self.store(dest, o.data, metadata.cloned().unwrap_or(o.metadata)))
    }

    async fn delete(&self, key: &str) -> StoreResult<()> {
        self.count("delete");
        self.objects.lock().remove(key);
        Ok(())
    }

    async fn delete_many(&self, keys: &[String]) -> StoreResult<()> {
        self.count("delete_many");
        let mut objects = self.objects.lock();
        for key in keys {
            objects.remove(key);
        }
        Ok(())
    }

    async fn rename(&self, source: &str, dest: &str) -> StoreResult<()> {
        self.count("rename");
        let mut objects = self.objects.lock();
        let o = objects.remove(source).ok_or(StoreError::NotFound)?;
        objects.insert(dest.to_string(), o);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn store_with(keys: &[&str]) -> MemoryStore {
        let s = MemoryStore::new();
        for k in keys {
            s.put(k, Bytes::from_static(b"x"), &PutOptions::default())
                .await
                .unwrap();
        }
        s
    }

    #[tokio::test]
    async fn lists_a_flat_key_space_with_delimiter_and_pages() {
        let s = store_with(&["a", "a/b", "a/c", "d/", "e", "f/g/h"]).await;
        let req = ListRequest {
            delimiter: Some("/".into()),
            ..Default::default()
        };
        let page = s.list_page(&req).await.unwrap();
        let keys: Vec<_> = page.objects.iter().map(|o| o.key.as_str()).collect();
        assert_eq!(keys, ["a", "e"]);
        assert_eq!(page.prefixes, ["a/", "d/", "f/"]);
        assert!(page.next.is_none());

        let mut req = ListRequest {
            delimiter: Some("/".into()),
            max_keys: Some(2),
            ..Default::default()
        };
        let mut seen = Vec::new();
        loop {
            let page = s.list_page(&req).await.unwrap();
            seen.extend(page.objects.into_iter().map(|o| o.key));
            seen.extend(page.prefixes);
            match page.next {
                Some(n) => req.continuation = Some(n),
                None => break,
            }
        }
        seen.sort();
        assert_eq!(seen, ["a", "a/", "d/", "e", "f/"]);
    }

    #[tokio::test]
    async fn multipart_and_conditional_get() {
        let s = MemoryStore::new();
        let id = s.create_multipart("big", &PutOptions::default()).await.unwrap();
        let p1 = s
            .upload_part("big", &id, 1, Bytes::from_static(b"hello "))
            .await
            .unwrap();
        let p2 = s
            .upload_part("big", &id, 2, Bytes::from_static(b"world"))
            .await
            .unwrap();
        let etag = s.complete_multipart("big", &id, &[p1, p2], None).await.unwrap();
        let body = s
            .get_range("big", 6..100, Some(&etag))
            .await
            .unwrap()
            .collect()
            .await
            .unwrap();
        assert_eq!(&body[..], b"world");
        let stale = s.get_range("big", 0..1, Some("\"other\"")).await;
        assert!(matches!(stale, Err(StoreError::PreconditionFailed)));
    }
}
