//! `S3Store`, the aws-sdk-s3 object store, through real HTTP on loopback: the S3 contract
//! against the embedded server and moto (`contract`), and the embedded server's emulation
//! of each provider quirk and failure (`quirks`).

mod contract;
mod quirks;

use bytes::Bytes;
use s3vol::store::s3::S3Store;
use s3vol::store::{ListRequest, Metadata, ObjectStore, PutOptions, StoreResult};
use std::ops::Range;

/// Deterministic bytes that differ at every offset of a small window.
fn pattern(len: usize, seed: u8) -> Bytes {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) ^ (i >> 8) as u8)
        .collect()
}

fn meta(pairs: &[(&str, &str)]) -> Metadata {
    pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
}

fn with_meta(pairs: &[(&str, &str)]) -> PutOptions {
    PutOptions {
        metadata: meta(pairs),
        ..PutOptions::default()
    }
}

async fn read(store: &S3Store, key: &str, range: Range<u64>) -> StoreResult<Bytes> {
    store.get_range(key, range, None).await?.collect().await
}

/// Pages through `prefix` with `max_keys` per page: every key and prefix seen, in order,
/// and the number of pages.
async fn list_all(
    store: &S3Store,
    prefix: &str,
    delimiter: Option<&str>,
    max_keys: i32,
) -> (Vec<String>, Vec<String>, usize) {
    let (mut keys, mut prefixes) = (Vec::new(), Vec::new());
    let mut continuation = None;
    for pages in 1..=100 {
        let page = store
            .list_page(&ListRequest {
                prefix: prefix.to_owned(),
                delimiter: delimiter.map(str::to_owned),
                continuation: continuation.take(),
                max_keys: Some(max_keys),
                ..ListRequest::default()
            })
            .await
            .unwrap_or_else(|e| panic!("list '{prefix}': {e:?}"));
        keys.extend(page.objects.into_iter().map(|o| o.key));
        prefixes.extend(page.prefixes);
        match page.next {
            Some(next) => continuation = Some(next),
            None => return (keys, prefixes, pages),
        }
    }
    panic!("pagination of '{prefix}' did not end after 100 pages");
}
