//! Integration tests of `S3Store` (the aws-sdk-s3 object store) against the embedded S3
//! server, through real HTTP on loopback. One test per provider quirk the server emulates
//! (PROVIDERS.md, "Quirk emulation"): each asserts that the request went through the quirk
//! (and the server's request counters prove which path was taken) or failed with the
//! mapped `StoreError`. Flaky gateways and errors are in `failures`; what S3 itself
//! promises, on this server and on moto, in `super::contract`.

use super::{list_all, meta, pattern, read, with_meta};
use crate::common;
use std::fmt::Debug;
use std::time::Duration;

use bytes::Bytes;
use s3vol::credentials::StaticCredentials;
use s3vol::provider::{Overrides, Resolved};
use s3vol::server::{InjectedFailure, RequestFilter, RunningServer, ServerConfig, start};
use s3vol::source::Source;
use s3vol::store::s3::{S3Settings, S3Store};
use s3vol::store::{CompletedPart, Metadata, ObjectStore, PutOptions, RetryPolicy, StoreError, StoreResult};

mod failures;

/// The bucket every store below addresses.
const BUCKET: &str = "vol";
/// The Hugging Face namespace: with the endpoint `http://HOST/ns`, the store's requests
/// go to `/ns/vol/KEY`, which this server reads as bucket `ns`, key `vol/KEY`.
const NAMESPACE: &str = "ns";
/// The retry budget of every store here (attempts, the first included).
const ATTEMPTS: u32 = 4;

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// A fresh server with buckets `vol` and `ns`, accepting multipart parts of any size.
async fn server() -> RunningServer {
    let server = start(ServerConfig {
        min_part_size: 0,
        ..ServerConfig::default()
    })
    .await
    .expect("the embedded S3 server starts");
    server.backend().create_bucket(BUCKET);
    server.backend().create_bucket(NAMESPACE);
    server
}

/// Quick retries and short timeouts, so failure paths stay fast.
fn settings(server: &RunningServer) -> S3Settings {
    S3Settings {
        credentials: Some(StaticCredentials {
            access_key: server.access_key.clone(),
            secret_key: server.secret_key.clone(),
            session_token: None,
        }),
        retry: RetryPolicy {
            max_attempts: ATTEMPTS,
            base_delay: ms(5),
            max_delay: ms(20),
        },
        connect_timeout: Duration::from_secs(2),
        read_timeout: Duration::from_secs(5),
        operation_timeout: Duration::from_secs(10),
        complete_timeout: Duration::from_secs(10),
        ..S3Settings::default()
    }
}

async fn connect(source: &str, overrides: Overrides, settings: S3Settings) -> S3Store {
    let source = Source::parse(source).expect("a valid source");
    let resolved = Resolved::new(&source, &overrides);
    S3Store::connect(&resolved, settings).await.expect("the store connects")
}

fn at(endpoint: &str) -> Overrides {
    Overrides {
        endpoint_url: Some(endpoint.to_owned()),
        ..Overrides::default()
    }
}

/// `s3://vol`, path style: the AWS/generic profile (default checksums, user metadata,
/// If-Match on GET, DeleteObjects, UploadPartCopy).
fn generic() -> &'static str {
    "s3://vol"
}

fn generic_overrides(server: &RunningServer) -> Overrides {
    Overrides {
        force_path_style: true,
        region: Some("us-east-1".into()),
        ..at(&server.endpoint)
    }
}

async fn s3_store(server: &RunningServer) -> S3Store {
    connect(generic(), generic_overrides(server), settings(server)).await
}

/// `runpod://EU-RO-1/vol`: region EU-RO-1, path style, no DeleteObjects, no UploadPartCopy.
async fn runpod_store(server: &RunningServer) -> S3Store {
    runpod_store_with(server, runpod_overrides(server)).await
}

/// s3s refuses `EU-RO-1` in a SigV4 credential scope ("invalid region"), so the region
/// is overridden; everything else is Runpod's profile.
fn runpod_overrides(server: &RunningServer) -> Overrides {
    Overrides {
        region: Some("us-east-1".into()),
        ..at(&server.endpoint)
    }
}

async fn runpod_store_with(server: &RunningServer, overrides: Overrides) -> S3Store {
    connect("runpod://EU-RO-1/vol", overrides, settings(server)).await
}

/// `hf://ns/vol` with the server's root as endpoint, so the server sees bucket `vol` and
/// bucket-level requests (ListObjectsV2, DeleteObjects) reach it. The Hugging Face
/// profile: checksums only when required, no user metadata, GET redirects expected.
async fn hf_store(server: &RunningServer) -> S3Store {
    connect("hf://ns/vol", at(&server.endpoint), settings(server)).await
}

/// `hf://ns/vol` as on the real gateway: the namespace in the endpoint path, given without
/// its trailing slash (the profile must add it).
async fn hf_namespaced_store(server: &RunningServer) -> S3Store {
    let endpoint = format!("{}/{NAMESPACE}", server.endpoint);
    connect("hf://ns/vol", at(&endpoint), settings(server)).await
}

/// The body stored under `key` in bucket `vol`, read past HTTP.
fn stored(server: &RunningServer, key: &str) -> Option<Bytes> {
    server.backend().get_object(BUCKET, key).map(|o| o.body.to_bytes())
}

fn put_direct(server: &RunningServer, key: &str, body: &Bytes) -> String {
    server
        .backend()
        .put_object(BUCKET, key, body.clone(), &[])
        .expect("bucket vol exists")
}

fn count(server: &RunningServer, operation: &str) -> u64 {
    server.stats().count(operation)
}

/// The error of a call that must fail, with the server's counters in the message.
#[track_caller]
fn failure<T: Debug>(server: &RunningServer, result: StoreResult<T>, what: &str) -> StoreError {
    match result {
        Ok(v) => panic!(
            "{what}: expected an error, got Ok({v:?}); requests: {:?}",
            server.stats().snapshot()
        ),
        Err(e) => e,
    }
}

/// Create, upload `parts` in order, complete; returns the ETag.
async fn multipart(store: &S3Store, key: &str, parts: &[Bytes]) -> StoreResult<String> {
    let upload = store.create_multipart(key, &PutOptions::default()).await?;
    let mut done = Vec::new();
    for (i, body) in parts.iter().enumerate() {
        done.push(store.upload_part(key, &upload, i as i32 + 1, body.clone()).await?);
    }
    store.complete_multipart(key, &upload, &done, None).await
}

// ---------------------------------------------------------------- Hugging Face quirks

#[tokio::test]
async fn hf_profile_sends_checksums_only_when_required() {
    let _turn = common::shared();
    let server = server().await;
    server.quirks().set_reject_checksums(true);
    let store = hf_store(&server).await;

    let body = pattern(3000, 1);
    store
        .put("file", body.clone(), &PutOptions::default())
        .await
        .expect("PutObject without checksum headers is accepted");
    assert_eq!(stored(&server, "file"), Some(body.clone()));
    assert_eq!(read(&store, "file", 0..3000).await.unwrap(), body);

    let parts = [pattern(1000, 2), pattern(700, 3)];
    let etag = multipart(&store, "big", &parts)
        .await
        .expect("multipart without checksums is accepted");
    assert!(etag.ends_with("-2\""), "multipart ETag: {etag}");
    assert_eq!(
        stored(&server, "big"),
        Some(Bytes::from([&parts[0][..], &parts[1][..]].concat()))
    );
    assert_eq!(count(&server, "UploadPart"), 2);
}

#[tokio::test]
async fn generic_profile_default_checksums_are_refused_by_a_checksum_rejecting_gateway() {
    let _turn = common::shared();
    let server = server().await;
    server.quirks().set_reject_checksums(true);
    let store = s3_store(&server).await;

    let result = store.put("file", pattern(3000, 1), &PutOptions::default()).await;
    let e = failure(&server, result, "PutObject with default checksums");
    assert!(
        matches!(&e, StoreError::Other(m) if m.contains("checksums are not supported")),
        "expected the gateway's 400 as Other, got {e:?}"
    );
    assert_eq!(count(&server, "PutObject"), 1, "a 400 is not retried");
    assert_eq!(stored(&server, "file"), None);
}

#[tokio::test]
async fn hf_namespace_in_the_endpoint_path_addresses_namespace_bucket_and_key() {
    let _turn = common::shared();
    let server = server().await;
    let store = hf_namespaced_store(&server).await;
    assert_eq!(
        store.resolved().endpoint.as_deref(),
        Some(format!("{}/{NAMESPACE}/", server.endpoint).as_str()),
        "an endpoint with a path gets its trailing slash"
    );

    let body = pattern(500, 4);
    store
        .put("dir/file", body.clone(), &PutOptions::default())
        .await
        .expect("put through the namespaced endpoint");
    assert_eq!(
        server.backend().keys(NAMESPACE),
        vec!["vol/dir/file".to_owned()],
        "the request path is /ns/vol/dir/file, not /nsvol/dir/file"
    );
    assert!(server.backend().keys(BUCKET).is_empty());
    assert_eq!(store.head("dir/file").await.unwrap().size, 500);
    assert_eq!(read(&store, "dir/file", 100..200).await.unwrap(), body.slice(100..200));
}

#[tokio::test]
async fn get_redirect_is_followed_without_authorization() {
    let _turn = common::shared();
    let server = server().await;
    server.quirks().set_redirect_get(true);
    let store = hf_store(&server).await;
    let body = pattern(10_000, 5);
    put_direct(&server, "model.bin", &body);

    let got = read(&store, "model.bin", 1234..5678).await.expect("redirected GET");
    assert_eq!(got, body.slice(1234..5678), "the ranged bytes, exactly");
    // The CDN listener refuses requests carrying Authorization: one RedirectGet that
    // succeeded proves the store sent none.
    assert_eq!(count(&server, "GetObject"), 1);
    assert_eq!(count(&server, "RedirectGet"), 1);

    let tail = read(&store, "model.bin", 9_000..20_000).await.unwrap();
    assert_eq!(tail, body.slice(9_000..), "a range past the end is clamped");
}

#[tokio::test]
async fn get_redirect_failing_at_the_cdn_is_retried() {
    let _turn = common::shared();
    let server = server().await;
    server.quirks().set_redirect_get(true);
    let store = hf_store(&server).await;
    let body = pattern(4000, 6);
    put_direct(&server, "f", &body);
    server.quirks().inject_errors(
        1,
        InjectedFailure::BadGateway,
        RequestFilter::Operation("RedirectGet".into()),
    );

    assert_eq!(read(&store, "f", 0..4000).await.unwrap(), body);
    assert_eq!(count(&server, "RedirectGet"), 2, "one 502 from the CDN, one success");
    assert_eq!(
        count(&server, "GetObject"),
        2,
        "the retry starts over at the S3 endpoint"
    );
}

#[tokio::test]
async fn list_v1_rejection_does_not_matter_list_v2_is_used() {
    let _turn = common::shared();
    let server = server().await;
    server.quirks().set_reject_list_v1(true);
    let store = s3_store(&server).await;
    for key in ["a", "dir/x", "dir/y", "z"] {
        put_direct(&server, key, &pattern(10, 0));
    }

    let (keys, prefixes, _) = list_all(&store, "", Some("/"), 1000).await;
    assert_eq!(keys, ["a", "z"]);
    assert_eq!(prefixes, ["dir/"]);
    assert_eq!(count(&server, "ListObjectsV2"), 1);
    assert_eq!(count(&server, "ListObjects"), 0);
}

#[tokio::test]
async fn hf_profile_does_not_send_user_metadata_but_keeps_content_type() {
    let _turn = common::shared();
    let server = server().await; // no drop_user_metadata: the server would store it
    let store = hf_store(&server).await;
    let opts = PutOptions {
        content_type: Some("text/plain".into()),
        ..with_meta(&[("mode", "33188")])
    };

    store.put("f", pattern(10, 0), &opts).await.unwrap();
    let object = server.backend().get_object(BUCKET, "f").expect("stored");
    assert!(object.metadata.is_empty(), "metadata sent: {:?}", object.metadata);
    assert_eq!(object.content_type.as_deref(), Some("text/plain"));

    let upload = store.create_multipart("m", &opts).await.unwrap();
    let part = store.upload_part("m", &upload, 1, pattern(10, 1)).await.unwrap();
    store.complete_multipart("m", &upload, &[part], None).await.unwrap();
    let object = server.backend().get_object(BUCKET, "m").expect("stored");
    assert!(object.metadata.is_empty(), "metadata sent: {:?}", object.metadata);
}

#[tokio::test]
async fn dropped_user_metadata_reads_back_empty() {
    let _turn = common::shared();
    let server = server().await;
    server.quirks().set_drop_user_metadata(true);
    let store = s3_store(&server).await; // sends x-amz-meta-mode
    store
        .put("f", pattern(10, 0), &with_meta(&[("mode", "33188")]))
        .await
        .expect("metadata is dropped, not refused");
    assert_eq!(store.head("f").await.unwrap().metadata, Metadata::new());

    // Metadata stored some other way is not returned either.
    server
        .backend()
        .put_object(BUCKET, "g", pattern(10, 0), &[("mode", "33188")])
        .unwrap();
    assert_eq!(store.head("g").await.unwrap().metadata, Metadata::new());
}

#[tokio::test]
async fn trailing_slash_key_is_refused_before_sending_on_hf() {
    let _turn = common::shared();
    let server = server().await;
    server.quirks().set_reject_trailing_slash_keys(true);
    let store = hf_store(&server).await;
    put_direct(&server, "src", &pattern(10, 0));

    let e = failure(
        &server,
        store.put("dir/", Bytes::new(), &PutOptions::default()).await,
        "put dir/",
    );
    assert!(matches!(&e, StoreError::InvalidName(m) if m.contains("dir/")), "{e:?}");
    assert_eq!(e.errno(), libc::EINVAL);
    let e = failure(
        &server,
        store.create_multipart("dir/", &PutOptions::default()).await,
        "multipart dir/",
    );
    assert!(matches!(e, StoreError::InvalidName(_)), "{e:?}");
    let e = failure(&server, store.copy("src", "dir/", None).await, "copy to dir/");
    assert!(matches!(e, StoreError::InvalidName(_)), "{e:?}");
    for bad in ["/lead", "a//b", "a/../b", "./a", "a/..", "a\\b"] {
        let e = failure(&server, store.put(bad, Bytes::new(), &PutOptions::default()).await, bad);
        assert!(matches!(e, StoreError::InvalidName(_)), "{bad}: {e:?}");
    }
    assert_eq!(
        server.stats().total(),
        0,
        "nothing was sent: {:?}",
        server.stats().snapshot()
    );
}

#[tokio::test]
async fn trailing_slash_key_refused_by_the_server_fails_on_a_generic_profile() {
    let _turn = common::shared();
    let server = server().await;
    server.quirks().set_reject_trailing_slash_keys(true);
    let store = s3_store(&server).await;

    let e = failure(
        &server,
        store.put("dir/", Bytes::new(), &PutOptions::default()).await,
        "put dir/",
    );
    assert!(
        matches!(&e, StoreError::Other(m) if m.contains("must not end with '/'")),
        "{e:?}"
    );
    assert_eq!(count(&server, "PutObject"), 1);
    assert!(server.backend().keys(BUCKET).is_empty());
}

// ---------------------------------------------------------------- Runpod quirks

#[tokio::test]
async fn upload_part_copy_is_unsupported_on_runpod_without_a_request() {
    let _turn = common::shared();
    let server = server().await;
    let store = runpod_store(&server).await;
    put_direct(&server, "src", &pattern(100, 0));
    let upload = store.create_multipart("dst", &PutOptions::default()).await.unwrap();

    let result = store.upload_part_copy("dst", &upload, 1, "src", None, 0..100).await;
    let e = failure(&server, result, "UploadPartCopy on Runpod");
    assert!(matches!(e, StoreError::Unsupported(_)), "{e:?}");
    assert_eq!(e.errno(), libc::ENOTSUP);
    assert_eq!(count(&server, "UploadPartCopy"), 0);
    store.abort_multipart("dst", &upload).await.unwrap();
    assert!(server.backend().pending_uploads(BUCKET).is_empty());
}

#[tokio::test]
async fn upload_part_copy_refused_by_the_server_is_unsupported() {
    let _turn = common::shared();
    let server = server().await;
    server.quirks().set_reject_upload_part_copy(true);
    let store = s3_store(&server).await;
    put_direct(&server, "src", &pattern(100, 0));
    let upload = store.create_multipart("dst", &PutOptions::default()).await.unwrap();

    let result = store.upload_part_copy("dst", &upload, 1, "src", None, 0..100).await;
    let e = failure(&server, result, "UploadPartCopy against the 501 quirk");
    assert!(matches!(e, StoreError::Unsupported(_)), "{e:?}");
    assert_eq!(count(&server, "UploadPartCopy"), 1, "a 501 is not retried");
}

#[tokio::test]
async fn delete_many_on_runpod_deletes_one_by_one() {
    let _turn = common::shared();
    let server = server().await;
    server.quirks().set_reject_delete_objects(true);
    let store = runpod_store(&server).await;
    let keys: Vec<String> = (0..5).map(|i| format!("dir/f{i}")).collect();
    for key in &keys {
        put_direct(&server, key, &pattern(10, 0));
    }
    put_direct(&server, "keep", &pattern(10, 0));

    let mut doomed = keys.clone();
    doomed.push("never-existed".into());
    store.delete_many(&doomed).await.expect("one DeleteObject per key");
    assert_eq!(server.backend().keys(BUCKET), ["keep"]);
    assert_eq!(count(&server, "DeleteObject"), 6);
    assert_eq!(count(&server, "DeleteObjects"), 0);
}

#[tokio::test]
async fn delete_objects_refused_by_the_server_is_unsupported() {
    let _turn = common::shared();
    let server = server().await;
    server.quirks().set_reject_delete_objects(true);
    let store = s3_store(&server).await;
    put_direct(&server, "a", &pattern(10, 0));

    let e = failure(&server, store.delete_many(&["a".into()]).await, "DeleteObjects");
    assert!(matches!(e, StoreError::Unsupported(_)), "{e:?}");
    assert_eq!(count(&server, "DeleteObjects"), 1);
    assert_eq!(server.backend().keys(BUCKET), ["a"]);
}

#[tokio::test]
async fn put_over_the_profile_max_put_size_is_refused_client_side() {
    let _turn = common::shared();
    let server = server().await;
    let overrides = Overrides {
        max_put_size: Some(1000),
        ..runpod_overrides(&server)
    };
    let store = runpod_store_with(&server, overrides).await;

    store
        .put("at-limit", pattern(1000, 0), &PutOptions::default())
        .await
        .expect("exactly the limit is fine");
    let e = failure(
        &server,
        store.put("over", pattern(1001, 0), &PutOptions::default()).await,
        "put over",
    );
    assert!(
        matches!(&e, StoreError::Other(m) if m.contains("multipart") && m.contains("1000")),
        "the error names multipart and the limit: {e:?}"
    );
    assert_eq!(count(&server, "PutObject"), 1, "the oversized put was not sent");
    assert_eq!(stored(&server, "over"), None);
}

#[tokio::test]
async fn put_over_the_server_max_put_size_fails() {
    let _turn = common::shared();
    let server = server().await;
    server.quirks().set_max_put_size(Some(1000));
    let store = s3_store(&server).await; // profile limit 5 GiB: the server decides

    store.put("ok", pattern(1000, 0), &PutOptions::default()).await.unwrap();
    let e = failure(
        &server,
        store.put("over", pattern(1001, 0), &PutOptions::default()).await,
        "put over",
    );
    assert!(
        matches!(&e, StoreError::Other(m) if m.contains("EntityTooLarge")),
        "{e:?}"
    );
    assert_eq!(count(&server, "PutObject"), 2);
    // The same size goes through as a multipart upload (UploadPart is not limited).
    multipart(&store, "over", &[pattern(1001, 0)])
        .await
        .expect("multipart is the way around the limit");
    assert_eq!(stored(&server, "over").map(|b| b.len()), Some(1001));
}

#[tokio::test]
async fn volume_full_is_no_space() {
    let _turn = common::shared();
    let server = server().await;
    let store = runpod_store(&server).await;
    put_direct(&server, "src", &pattern(10, 0));
    server.quirks().set_volume_full(true);

    let upload = store.create_multipart("big", &PutOptions::default()).await.unwrap();
    let e = failure(
        &server,
        store.upload_part("big", &upload, 1, pattern(100, 0)).await,
        "UploadPart",
    );
    assert!(matches!(e, StoreError::NoSpace(_)), "{e:?}");
    assert_eq!(e.errno(), libc::ENOSPC);
    assert_eq!(count(&server, "UploadPart"), 1, "a full volume is not retried");
    store.abort_multipart("big", &upload).await.unwrap();

    let e = failure(
        &server,
        store.put("f", pattern(100, 0), &PutOptions::default()).await,
        "PutObject",
    );
    assert!(matches!(e, StoreError::NoSpace(_)), "{e:?}");
    let e = failure(&server, store.copy("src", "dst", None).await, "CopyObject");
    assert!(matches!(e, StoreError::NoSpace(_)), "{e:?}");
    assert_eq!(server.backend().keys(BUCKET), ["src"]);
}

#[tokio::test]
async fn repeated_continuation_token_is_retried_and_pagination_completes() {
    let _turn = common::shared();
    let server = server().await;
    server.quirks().set_repeat_continuation_token(true);
    let store = runpod_store(&server).await;
    let expected: Vec<String> = (0..25).map(|i| format!("k{i:02}")).collect();
    for key in &expected {
        put_direct(&server, key, &pattern(1, 0));
    }

    let (keys, _, _) = list_all(&store, "", None, 10).await;
    assert_eq!(keys, expected, "every key exactly once, in order");
    // Pages 2 and 3 each got the echoed token once, then the real page.
    assert_eq!(count(&server, "ListObjectsV2"), 5);
}

// ---------------------------------------------------------------- operations

#[tokio::test]
async fn multipart_create_upload_complete_and_abort() {
    let _turn = common::shared();
    let server = server().await;
    let store = s3_store(&server).await;
    let opts = PutOptions {
        content_type: Some("application/octet-stream".into()),
        ..with_meta(&[("mode", "33188")])
    };
    let parts = [pattern(1000, 1), pattern(1000, 2), pattern(500, 3)];

    let upload = store.create_multipart("big", &opts).await.unwrap();
    assert_eq!(server.backend().pending_uploads(BUCKET), ["big"]);
    let mut done: Vec<CompletedPart> = Vec::new();
    for (i, part) in parts.iter().enumerate() {
        done.push(
            store
                .upload_part("big", &upload, i as i32 + 1, part.clone())
                .await
                .unwrap(),
        );
    }
    let etag = store.complete_multipart("big", &upload, &done, None).await.unwrap();
    assert!(etag.ends_with("-3\""), "multipart ETag: {etag}");
    assert_eq!(stored(&server, "big"), Some(Bytes::from(parts.concat())));
    assert!(server.backend().pending_uploads(BUCKET).is_empty());
    let head = store.head("big").await.unwrap();
    assert_eq!((head.size, head.etag.as_deref()), (2500, Some(etag.as_str())));
    assert_eq!(head.metadata, meta(&[("mode", "33188")]));

    let upload = store.create_multipart("dropped", &opts).await.unwrap();
    store
        .upload_part("dropped", &upload, 1, parts[0].clone())
        .await
        .unwrap();
    store.abort_multipart("dropped", &upload).await.unwrap();
    assert!(server.backend().pending_uploads(BUCKET).is_empty());
    assert_eq!(stored(&server, "dropped"), None);
}

#[tokio::test]
async fn upload_part_copy_round_trip_on_a_generic_profile() {
    let _turn = common::shared();
    let server = server().await;
    let store = s3_store(&server).await;
    let source = pattern(3000, 4);
    put_direct(&server, "src dir/#1", &source); // percent-encoded in the copy source
    let tail = pattern(200, 5);

    let upload = store.create_multipart("dst", &PutOptions::default()).await.unwrap();
    let copied = store
        .upload_part_copy("dst", &upload, 1, "src dir/#1", None, 1000..2500)
        .await
        .expect("UploadPartCopy");
    let uploaded = store.upload_part("dst", &upload, 2, tail.clone()).await.unwrap();
    store
        .complete_multipart("dst", &upload, &[copied, uploaded], None)
        .await
        .unwrap();
    assert_eq!(
        stored(&server, "dst"),
        Some(Bytes::from([&source[1000..2500], &tail[..]].concat()))
    );
    assert_eq!(count(&server, "UploadPartCopy"), 1);
}

#[tokio::test]
async fn rename_without_rename_object_is_unsupported_without_a_request() {
    let _turn = common::shared();
    let server = server().await;
    put_direct(&server, "a", &pattern(10, 0));
    for store in [
        s3_store(&server).await,
        runpod_store(&server).await,
        hf_store(&server).await,
    ] {
        let e = failure(&server, store.rename("a", "b").await, "rename");
        assert!(matches!(e, StoreError::Unsupported(_)), "{e:?}");
    }
    assert_eq!(server.stats().total(), 0, "{:?}", server.stats().snapshot());
    assert_eq!(server.backend().keys(BUCKET), ["a"]);
}

// ---------------------------------------------------------------- whole presets

#[tokio::test]
async fn runpod_store_works_against_the_runpod_emulation() {
    let _turn = common::shared();
    let server = server().await;
    server.quirks().emulate_runpod();
    let store = runpod_store(&server).await;

    for i in 0..12 {
        let key = format!("dir/f{i:02}");
        store
            .put(&key, pattern(100, i), &with_meta(&[("mode", "33188")]))
            .await
            .unwrap();
    }
    multipart(&store, "dir/big", &[pattern(1000, 1), pattern(10, 2)])
        .await
        .unwrap();
    let (keys, prefixes, _) = list_all(&store, "", Some("/"), 1000).await;
    assert_eq!((keys.len(), prefixes), (0, vec!["dir/".to_owned()]));
    let (keys, _, _) = list_all(&store, "dir/", Some("/"), 5).await;
    assert_eq!(keys.len(), 13);
    assert_eq!(
        store.head("dir/f03").await.unwrap().metadata,
        meta(&[("mode", "33188")])
    );
    assert_eq!(
        read(&store, "dir/f03", 10..20).await.unwrap(),
        pattern(100, 3).slice(10..20)
    );

    store.delete_many(&keys).await.unwrap();
    assert!(server.backend().keys(BUCKET).is_empty());
    assert_eq!(count(&server, "DeleteObjects"), 0);
    assert_eq!(count(&server, "DeleteObject"), 13);
}

#[tokio::test]
async fn hf_store_works_against_the_hugging_face_emulation() {
    let _turn = common::shared();
    let server = server().await;
    server.quirks().emulate_hugging_face();
    let store = hf_store(&server).await;

    for i in 0..3 {
        let key = format!("dir/f{i}");
        store
            .put(&key, pattern(100, i), &with_meta(&[("mode", "33188")]))
            .await
            .unwrap();
    }
    multipart(&store, "dir/big", &[pattern(1000, 1), pattern(10, 2)])
        .await
        .unwrap();
    let (keys, prefixes, _) = list_all(&store, "", Some("/"), 1000).await;
    assert_eq!((keys.len(), prefixes), (0, vec!["dir/".to_owned()]));
    let (keys, _, _) = list_all(&store, "dir/", Some("/"), 1000).await;
    assert_eq!(keys, ["dir/big", "dir/f0", "dir/f1", "dir/f2"]);
    assert_eq!(store.head("dir/f1").await.unwrap().metadata, Metadata::new());
    assert_eq!(
        read(&store, "dir/f1", 10..20).await.unwrap(),
        pattern(100, 1).slice(10..20)
    );
    assert_eq!(count(&server, "RedirectGet"), 1);
    let e = failure(
        &server,
        store.put("dir/", Bytes::new(), &PutOptions::default()).await,
        "marker",
    );
    assert!(matches!(e, StoreError::InvalidName(_)), "{e:?}");

    store.delete_many(&keys).await.expect("DeleteObjects on HF");
    assert!(server.backend().keys(BUCKET).is_empty());
    assert_eq!(count(&server, "ListObjects"), 0);
}
