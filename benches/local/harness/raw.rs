//! The raw baselines' requests: the same S3 client as s3vol's (`S3Store`) driven straight
//! at the server, with as many requests in flight as asked.

use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use s3vol::store::s3::S3Store;
use s3vol::store::{CompletedPart, ListRequest, ObjectStore, PutOptions, StoreResult};
use std::ops::Range;

/// GETs every range with `in_flight` requests at once; returns the bytes received.
/// Bodies are counted and dropped, not copied: the baseline is the transfer alone.
pub async fn get_ranges(store: &S3Store, key: &str, ranges: &[Range<u64>], in_flight: usize) -> u64 {
    futures::stream::iter(ranges.iter().cloned())
        .map(|range| get_and_count(store, key, range))
        .buffer_unordered(in_flight)
        .try_fold(0, |total, n| async move { Ok(total + n) })
        .await
        .expect("raw GET")
}

async fn get_and_count(store: &S3Store, key: &str, range: Range<u64>) -> StoreResult<u64> {
    let mut body = store.get_range(key, range, None).await?.body;
    let mut received = 0;
    while let Some(chunk) = body.next().await {
        received += chunk?.len() as u64;
    }
    Ok(received)
}

/// `0..size` in consecutive ranges of `step` bytes (the last one shorter).
pub fn split_ranges(size: u64, step: u64) -> Vec<Range<u64>> {
    (0..size)
        .step_by(step as usize)
        .map(|start| start..(start + step).min(size))
        .collect()
}

/// A multipart upload of `data` in parts of `part` bytes, `in_flight` at once.
pub async fn multipart_upload(store: &S3Store, key: &str, data: &Bytes, part: u64, in_flight: usize) {
    let upload_id = store
        .create_multipart(key, &PutOptions::default())
        .await
        .expect("create multipart");
    let parts = split_ranges(data.len() as u64, part)
        .into_iter()
        .enumerate()
        .map(|(i, range)| {
            let body = data.slice(range.start as usize..range.end as usize);
            store.upload_part(key, &upload_id, i as i32 + 1, body)
        });
    let mut completed: Vec<CompletedPart> = futures::stream::iter(parts)
        .buffer_unordered(in_flight)
        .try_collect()
        .await
        .expect("upload part");
    completed.sort_by_key(|p| p.number);
    store
        .complete_multipart(key, &upload_id, &completed, None)
        .await
        .expect("complete multipart");
}

/// PutObject of every (key, body), `in_flight` at once.
pub async fn put_objects(store: &S3Store, files: &[(String, Bytes)], in_flight: usize) {
    let options = PutOptions::default();
    futures::stream::iter(files)
        .map(|(key, body)| store.put(key, body.clone(), &options))
        .buffer_unordered(in_flight)
        .try_for_each(|_| async { Ok(()) })
        .await
        .expect("PutObject");
}

/// DeleteObject of every key, `in_flight` at once.
pub async fn delete_objects(store: &S3Store, keys: &[String], in_flight: usize) {
    futures::stream::iter(keys)
        .map(|key| store.delete(key))
        .buffer_unordered(in_flight)
        .try_for_each(|_| async { Ok(()) })
        .await
        .expect("DeleteObject");
}

/// Lists every key under `prefix`, page by page; returns how many there are.
pub async fn list_all(store: &S3Store, prefix: &str) -> usize {
    let mut request = ListRequest {
        prefix: prefix.to_owned(),
        delimiter: Some("/".to_owned()),
        ..Default::default()
    };
    let mut count = 0;
    loop {
        let page = store.list_page(&request).await.expect("LIST");
        count += page.objects.len();
        match page.next {
            Some(next) => request.continuation = Some(next),
            None => return count,
        }
    }
}
