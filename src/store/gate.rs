//! The one place where a provider's capabilities and limits are enforced, around any
//! object store (S3 or the in-memory one): names the provider forbids, the PutObject
//! limit, user metadata where it is not kept, If-Match where it is not honoured (GET: the
//! answer's ETag is compared; PutObject and CompleteMultipartUpload: a HEAD just before), and
//! the operations it does not offer (UploadPartCopy, RenameObject: `Unsupported`, which
//! the core answers with its fallback; DeleteObjects: one DELETE per key instead).
//! Refusals here cost no request.

use super::{
    CompletedPart, GetResponse, ListPage, ListRequest, Metadata, ObjectMeta, ObjectStore, PutOptions, StoreError,
    StoreResult, StoreStats,
};
use crate::provider::Resolved;
use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;
use std::borrow::Cow;
use std::ops::Range;

/// Single DELETEs in flight for a `delete_many` where the provider has no DeleteObjects.
const SINGLE_DELETES_IN_FLIGHT: usize = 16;

/// `inner`, as the provider `resolved` names lets it be used.
#[derive(Clone)]
pub struct Gated<S> {
    inner: S,
    resolved: Resolved,
}

impl<S: ObjectStore> Gated<S> {
    pub fn new(inner: S, resolved: Resolved) -> Gated<S> {
        Gated { inner, resolved }
    }

    pub fn resolved(&self) -> &Resolved {
        &self.resolved
    }

    /// The store behind the gate (tests look into it, as another client would).
    pub fn inner(&self) -> &S {
        &self.inner
    }

    fn check_name(&self, key: &str) -> StoreResult<()> {
        match self.resolved.forbidden_key(key) {
            Some(why) => Err(StoreError::InvalidName(format!("'{key}' {why}"))),
            None => Ok(()),
        }
    }

    /// The options as sent: without user metadata where the provider drops it (some
    /// gateways refuse `x-amz-meta-*` headers outright).
    fn sendable<'a>(&self, opts: &'a PutOptions) -> Cow<'a, PutOptions> {
        if self.resolved.profile.user_metadata || opts.metadata.is_empty() {
            return Cow::Borrowed(opts);
        }
        Cow::Owned(PutOptions {
            metadata: Metadata::new(),
            ..opts.clone()
        })
    }

    /// The If-Match to send on the request that makes `key`'s new version. Where the
    /// provider ignores If-Match there (`honoured` false), a HEAD just before asks whether
    /// the object is still the version named, and the request goes without: a narrower
    /// window than the server's check, but the other client's newer version is not
    /// silently overwritten unless it lands in between.
    async fn if_match_to_send<'a>(
        &self,
        key: &str,
        if_match: Option<&'a str>,
        honoured: bool,
    ) -> StoreResult<Option<&'a str>> {
        let Some(expected) = if_match.filter(|_| !honoured) else {
            return Ok(if_match);
        };
        match self.inner.head(key).await {
            Ok(head) if head.etag.as_deref() == Some(expected) => Ok(None),
            Ok(_) | Err(StoreError::NotFound) => Err(StoreError::PreconditionFailed),
            Err(e) => Err(e),
        }
    }
}

#[async_trait]
impl<S: ObjectStore> ObjectStore for Gated<S> {
    async fn head(&self, key: &str) -> StoreResult<ObjectMeta> {
        self.inner.head(key).await
    }

    async fn get_range(&self, key: &str, range: Range<u64>, if_match: Option<&str>) -> StoreResult<GetResponse> {
        if self.resolved.profile.get_if_match {
            return self.inner.get_range(key, range, if_match).await;
        }
        // Not sent, so not checked by the server: the answer's ETag is.
        let response = self.inner.get_range(key, range, None).await?;
        match (if_match, response.etag.as_deref()) {
            (Some(want), Some(got)) if want != got => Err(StoreError::PreconditionFailed),
            _ => Ok(response),
        }
    }

    async fn list_page(&self, req: &ListRequest) -> StoreResult<ListPage> {
        self.inner.list_page(req).await
    }

    async fn put(&self, key: &str, body: Bytes, opts: &PutOptions) -> StoreResult<String> {
        self.check_name(key)?;
        let limit = self.resolved.profile.max_put_size;
        if body.len() as u64 > limit {
            return Err(StoreError::Other(format!(
                "PutObject of {} bytes is over the provider's limit of {limit}; use a multipart upload",
                body.len()
            )));
        }
        let if_match = self
            .if_match_to_send(key, opts.if_match.as_deref(), self.resolved.profile.put_if_match)
            .await?;
        let mut opts = self.sendable(opts);
        if if_match.is_none() && opts.if_match.is_some() {
            opts.to_mut().if_match = None;
        }
        self.inner.put(key, body, &opts).await
    }

    async fn create_multipart(&self, key: &str, opts: &PutOptions) -> StoreResult<String> {
        self.check_name(key)?;
        self.inner.create_multipart(key, &self.sendable(opts)).await
    }

    async fn upload_part(&self, key: &str, upload_id: &str, number: i32, body: Bytes) -> StoreResult<CompletedPart> {
        self.inner.upload_part(key, upload_id, number, body).await
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
        if !self.resolved.profile.upload_part_copy {
            return Err(StoreError::Unsupported("UploadPartCopy".into()));
        }
        self.inner
            .upload_part_copy(key, upload_id, number, source, source_etag, range)
            .await
    }

    async fn complete_multipart(
        &self,
        key: &str,
        upload_id: &str,
        parts: &[CompletedPart],
        if_match: Option<&str>,
    ) -> StoreResult<String> {
        let honoured = self.resolved.profile.complete_if_match;
        let if_match = self.if_match_to_send(key, if_match, honoured).await?;
        self.inner.complete_multipart(key, upload_id, parts, if_match).await
    }

    async fn abort_multipart(&self, key: &str, upload_id: &str) -> StoreResult<()> {
        self.inner.abort_multipart(key, upload_id).await
    }

    async fn copy(&self, source: &str, dest: &str, metadata: Option<&Metadata>) -> StoreResult<String> {
        self.check_name(dest)?;
        // Where metadata is not kept, a copy that replaces it replaces it with none.
        let none = Metadata::new();
        let metadata = metadata.map(|m| if self.resolved.profile.user_metadata { m } else { &none });
        self.inner.copy(source, dest, metadata).await
    }

    async fn delete(&self, key: &str) -> StoreResult<()> {
        self.inner.delete(key).await
    }

    async fn delete_many(&self, keys: &[String]) -> StoreResult<()> {
        if self.resolved.profile.delete_objects {
            return self.inner.delete_many(keys).await;
        }
        let results: Vec<StoreResult<()>> = futures::stream::iter(keys.iter().cloned())
            .map(|k| async move { self.inner.delete(&k).await })
            .buffer_unordered(SINGLE_DELETES_IN_FLIGHT)
            .collect()
            .await;
        results.into_iter().collect()
    }

    async fn rename(&self, source: &str, dest: &str) -> StoreResult<()> {
        if !self.resolved.profile.rename_object {
            return Err(StoreError::Unsupported("RenameObject".into()));
        }
        self.check_name(dest)?;
        self.inner.rename(source, dest).await
    }

    fn stats(&self) -> StoreStats {
        self.inner.stats()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::provider::Overrides;
    use crate::source::Source;
    use crate::store::memory::MemoryStore;

    fn gated(source: &str) -> Gated<MemoryStore> {
        let source = Source::parse(source).expect("source");
        Gated::new(MemoryStore::new(), Resolved::new(&source, &Overrides::default()))
    }

    fn with_metadata() -> PutOptions {
        PutOptions {
            metadata: Metadata::from([("mode".to_string(), "0644".to_string())]),
            ..PutOptions::default()
        }
    }

    #[tokio::test]
    async fn hugging_face_rules_hold_for_any_store_behind_the_gate() {
        let hf = gated("hf://ns/bucket");
        let e = hf.put("a//b", Bytes::from_static(b"x"), &PutOptions::default()).await;
        assert!(matches!(e, Err(StoreError::InvalidName(_))), "{e:?}");
        assert!(hf.inner.keys().is_empty(), "nothing reached the store");
        hf.put("a", Bytes::from_static(b"x"), &with_metadata()).await.unwrap();
        assert!(hf.head("a").await.unwrap().metadata.is_empty(), "metadata not kept");
        let e = hf.rename("a", "b").await;
        assert!(matches!(e, Err(StoreError::Unsupported(_))), "{e:?}");
        let id = hf.create_multipart("m", &PutOptions::default()).await.unwrap();
        let e = hf.upload_part_copy("m", &id, 1, "a", None, 0..1).await;
        assert!(matches!(e, Err(StoreError::Unsupported(_))), "{e:?}");
        // No If-Match on GET: the answer's ETag is compared instead.
        let e = hf.get_range("a", 0..1, Some("\"other\"")).await;
        assert!(matches!(e, Err(StoreError::PreconditionFailed)), "{:?}", e.err());
    }

    #[tokio::test]
    async fn the_put_limit_and_single_deletes_follow_the_profile() {
        let runpod = gated("runpod://EU-RO-1/vol");
        let limit = runpod.resolved().profile.max_put_size as usize;
        let e = runpod
            .put("big", Bytes::from(vec![0u8; limit + 1]), &PutOptions::default())
            .await;
        assert!(matches!(e, Err(StoreError::Other(m)) if m.contains("limit")));
        for k in ["x", "y"] {
            runpod.put(k, Bytes::from_static(b"1"), &with_metadata()).await.unwrap();
        }
        assert_eq!(
            runpod.head("x").await.unwrap().metadata.len(),
            1,
            "Runpod keeps metadata"
        );
        runpod.delete_many(&["x".into(), "y".into()]).await.unwrap();
        assert!(runpod.inner.keys().is_empty());
        let cw = gated("cw://bucket");
        cw.put("a", Bytes::from_static(b"1"), &PutOptions::default())
            .await
            .unwrap();
        cw.rename("a", "b").await.expect("CoreWeave renames");
        assert_eq!(cw.inner.keys(), vec!["b".to_string()]);
    }

    #[tokio::test]
    async fn if_match_on_writes_is_checked_by_a_head_where_the_provider_ignores_it() {
        for source in ["s3://b", "cw://b", "runpod://EU-RO-1/b", "hf://ns/b"] {
            let store = gated(source);
            let profile = store.resolved().profile.clone();
            let old = store
                .put("k", Bytes::from_static(b"1"), &PutOptions::default())
                .await
                .unwrap();
            let new = store
                .put("k", Bytes::from_static(b"2"), &PutOptions::default())
                .await
                .unwrap();
            let heads = || store.inner.requests("head");
            let naming = |etag: &str| PutOptions {
                if_match: Some(etag.to_string()),
                ..PutOptions::default()
            };
            let before = heads();
            let e = store.put("k", Bytes::from_static(b"3"), &naming(&old)).await;
            assert!(matches!(e, Err(StoreError::PreconditionFailed)), "{source}: {e:?}");
            let current = store.put("k", Bytes::from_static(b"3"), &naming(&new)).await.unwrap();
            let checked = u64::from(!profile.put_if_match);
            assert_eq!(heads() - before, 2 * checked, "{source}: PutObject's If-Match");

            let id = store.create_multipart("k", &PutOptions::default()).await.unwrap();
            let part = store.upload_part("k", &id, 1, Bytes::from_static(b"4")).await.unwrap();
            let before = heads();
            let e = store
                .complete_multipart("k", &id, std::slice::from_ref(&part), Some(&old))
                .await;
            assert!(matches!(e, Err(StoreError::PreconditionFailed)), "{source}: {e:?}");
            store
                .complete_multipart("k", &id, &[part], Some(&current))
                .await
                .unwrap();
            let checked = u64::from(!profile.complete_if_match);
            assert_eq!(
                heads() - before,
                2 * checked,
                "{source}: CompleteMultipartUpload's If-Match"
            );
        }
    }
}
