use super::*;
use crate::store::memory::MemoryStore;

const BS: u64 = 1 << 20;

fn object(etag: &str) -> ObjectVersion {
    ObjectVersion {
        key: Arc::from("models/a.bin"),
        etag: Arc::from(etag),
        size: 3 * BS + 10,
    }
}

fn tier(store: &Arc<MemoryStore>, confirm_origin: Option<Arc<dyn ObjectStore>>) -> Arc<SharedTier> {
    SharedTier::new(TierConfig {
        store: store.clone(),
        prefix: "cache/s3vol-0123/".into(),
        origin: "http://origin/bucket".into(),
        timeout: Duration::from_millis(200),
        read_only: false,
        queue_bytes: 1 << 20,
        confirm_origin,
    })
}

/// Waits until the tier's background writes are done.
async fn settle(tier: &SharedTier) {
    while tier.queued_bytes.load(Ordering::Acquire) > 0 {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

#[tokio::test]
async fn a_block_written_by_one_mount_is_read_by_another_and_only_for_its_version() {
    let store = Arc::new(MemoryStore::new());
    let (first, second) = (tier(&store, None), tier(&store, None));
    let data = Bytes::from(vec![7u8; 10]);
    first.put_later(&object("v1"), BS, 3, data.clone());
    settle(&first).await;
    assert_eq!(second.get(&object("v1"), BS, 3, 10).await, Some(data));
    assert_eq!(second.stats.hits.load(Ordering::Relaxed), 1);
    assert!(store.keys()[0].starts_with("cache/s3vol-0123/"), "{:?}", store.keys());
    // Another version of the object, another index, another block size: other keys.
    assert_eq!(second.get(&object("v2"), BS, 3, 10).await, None);
    assert_eq!(second.get(&object("v1"), BS, 2, 10).await, None);
    assert_eq!(second.get(&object("v1"), 2 * BS, 1, 10).await, None);
    assert_eq!(second.stats.misses.load(Ordering::Relaxed), 3);
}

#[tokio::test]
async fn a_block_that_is_not_the_one_its_key_names_is_never_served() {
    let store = Arc::new(MemoryStore::new());
    let t = tier(&store, None);
    let data = Bytes::from(vec![1u8; 4096]);
    let key = t.key(&t.identity(&object("v1"), BS, 0));
    let good = encode(&t.identity(&object("v1"), BS, 0), &data);
    let mut flipped = good.to_vec();
    *flipped.last_mut().unwrap() ^= 1;
    let foreign = encode(&t.identity(&object("v1"), BS, 1), &data);
    let wrong_len = encode(&t.identity(&object("v1"), BS, 0), &data[..100]);
    for bad in [
        Bytes::from(flipped),
        foreign,
        wrong_len,
        Bytes::from_static(b"junk"),
        Bytes::new(),
    ] {
        store.put(&key, bad, &PutOptions::default()).await.unwrap();
        assert_eq!(t.get(&object("v1"), BS, 0, 4096).await, None);
    }
    assert_eq!(t.stats.rejected.load(Ordering::Relaxed), 5);
    store.put(&key, good, &PutOptions::default()).await.unwrap();
    assert_eq!(t.get(&object("v1"), BS, 0, 4096).await, Some(data));
}

#[tokio::test]
async fn a_slow_tier_is_skipped_then_left_alone_for_a_while() {
    let store = Arc::new(MemoryStore::new());
    let t = tier(&store, None);
    t.put_later(&object("v1"), BS, 0, Bytes::from(vec![1u8; 10]));
    settle(&t).await;
    let _held = store.hold_gets();
    let started = tokio::time::Instant::now();
    assert_eq!(t.get(&object("v1"), BS, 0, 10).await, None);
    assert!(started.elapsed() < Duration::from_secs(5), "the tier's own timeout");
    assert!(!t.usable());
    let gets = store.requests("get");
    assert_eq!(t.get(&object("v1"), BS, 0, 10).await, None);
    t.put_later(&object("v1"), BS, 1, Bytes::from(vec![1u8; 10]));
    assert_eq!(store.requests("get"), gets, "paused: not asked");
    assert_eq!(store.requests("put"), 1, "paused: not written");
    assert_eq!(t.stats.errors.load(Ordering::Relaxed), 1);
}

#[tokio::test]
async fn blocks_beyond_the_write_queue_are_not_shared() {
    let store = Arc::new(MemoryStore::new());
    let t = tier(&store, None);
    let _held = store.hold_gets();
    let block = Bytes::from(vec![3u8; 300 << 10]);
    for index in 0..5 {
        t.put_later(&object("v1"), BS, index, block.clone());
    }
    assert_eq!(
        t.stats.writes_dropped.load(Ordering::Relaxed),
        2,
        "3 x 300 KiB fit in 1 MiB"
    );
    settle(&t).await;
    assert_eq!(store.requests("put"), 3);
}

#[tokio::test]
async fn a_tier_that_refuses_writes_is_only_read_from_then_on() {
    let store = Arc::new(MemoryStore::new());
    let t = tier(&store, None);
    store.refuse_puts(Some(StoreError::AccessDenied("read-only key".into())));
    t.put_later(&object("v1"), BS, 0, Bytes::from(vec![1u8; 10]));
    settle(&t).await;
    store.refuse_puts(None);
    t.put_later(&object("v1"), BS, 1, Bytes::from(vec![1u8; 10]));
    settle(&t).await;
    assert_eq!(store.requests("put"), 1);
    assert!(t.usable(), "reads go on");
    let other = tier(&store, None);
    other.put_later(&object("v1"), BS, 1, Bytes::from(vec![2u8; 10]));
    settle(&other).await;
    assert_eq!(t.get(&object("v1"), BS, 1, 10).await, Some(Bytes::from(vec![2u8; 10])));
}

#[tokio::test]
async fn with_the_origin_check_only_objects_the_origin_shows_are_served() {
    let tier_store = Arc::new(MemoryStore::new());
    let origin = Arc::new(MemoryStore::new());
    let etag = origin
        .put("models/a.bin", Bytes::from(vec![0u8; 10]), &PutOptions::default())
        .await
        .unwrap();
    let writer = tier(&tier_store, None);
    let data = Bytes::from(vec![5u8; 10]);
    for version in [etag.as_str(), "gone"] {
        writer.put_later(&object(version), BS, 0, data.clone());
    }
    settle(&writer).await;
    let checked = tier(&tier_store, Some(origin.clone()));
    assert_eq!(checked.get(&object(&etag), BS, 0, 10).await, Some(data.clone()));
    assert_eq!(checked.get(&object(&etag), BS, 0, 10).await, Some(data));
    assert_eq!(origin.requests("head"), 1, "once per object version");
    assert_eq!(
        checked.get(&object("gone"), BS, 0, 10).await,
        None,
        "not the origin's version"
    );
    assert_eq!(tier_store.requests("get"), 2);

    // An origin that fails for a moment is asked again; its definite answers are kept.
    let later = tier(&tier_store, Some(origin.clone()));
    origin.fail_heads(Some(StoreError::Transient("503".into())));
    assert_eq!(later.get(&object(&etag), BS, 0, 10).await, None);
    origin.fail_heads(None);
    assert!(later.get(&object(&etag), BS, 0, 10).await.is_some());
    assert_eq!(origin.requests("head"), 4, "one per version, and the one asked again");
}
