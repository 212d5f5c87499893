//! `S3Store` against failures the embedded server injects (5xx answers, resets, stalls,
//! latency, an unreachable endpoint) and the errors it answers (access, missing bucket or
//! key, preconditions), each mapped to its `StoreError` (see the parent module).

use super::super::{list_all, pattern, read};
use super::{
    ATTEMPTS, at, connect, count, failure, generic, generic_overrides, hf_store, ms, put_direct, s3_store, server,
    settings, stored,
};
use crate::common;
use std::fmt::Debug;
use std::time::{Duration, Instant};

use http::Method;
use s3vol::provider::Overrides;
use s3vol::server::{InjectedFailure, RequestFilter, RunningServer};
use s3vol::store::s3::S3Settings;
use s3vol::store::{ListRequest, ObjectStore, PutOptions, StoreError, StoreResult};

// ---------------------------------------------------------------- flaky gateways

#[tokio::test]
async fn injected_5xx_are_retried_within_the_attempt_budget() {
    let _turn = common::shared();
    let server = server().await;
    let store = s3_store(&server).await;
    let body = pattern(2000, 7);
    put_direct(&server, "f", &body);
    let failures = [
        InjectedFailure::BadGateway,
        InjectedFailure::SlowDown,
        InjectedFailure::InternalError,
    ];
    for failure in failures {
        server.stats().reset();
        let get = RequestFilter::Operation("GetObject".into());
        server.quirks().inject_errors(ATTEMPTS - 1, failure, get);
        assert_eq!(read(&store, "f", 0..2000).await, Ok(body.clone()), "{failure:?}");
        assert_eq!(count(&server, "GetObject"), u64::from(ATTEMPTS), "{failure:?}");

        server
            .quirks()
            .inject_errors(ATTEMPTS - 1, failure, RequestFilter::Method(Method::PUT));
        store.put("p", body.clone(), &PutOptions::default()).await.unwrap();
        assert_eq!(count(&server, "PutObject"), u64::from(ATTEMPTS), "{failure:?}");

        server.quirks().inject_errors(ATTEMPTS - 1, failure, RequestFilter::Any);
        assert_eq!(store.head("f").await.unwrap().size, 2000, "{failure:?}");
        assert_eq!(count(&server, "HeadObject"), u64::from(ATTEMPTS), "{failure:?}");
    }
}

#[tokio::test]
async fn injected_5xx_beyond_the_attempt_budget_are_transient() {
    let _turn = common::shared();
    let server = server().await;
    let store = s3_store(&server).await;
    put_direct(&server, "f", &pattern(100, 0));
    let failures = [
        InjectedFailure::BadGateway,
        InjectedFailure::SlowDown,
        InjectedFailure::InternalError,
    ];
    for failure in failures {
        server.stats().reset();
        server.quirks().inject_errors(ATTEMPTS, failure, RequestFilter::Any);
        let e = failure_of(&server, read(&store, "f", 0..100).await, failure);
        assert!(
            matches!(&e, StoreError::Transient(m) if m.contains(&format!("after {ATTEMPTS} attempts"))),
            "{failure:?}: {e:?}"
        );
        assert_eq!(e.errno(), libc::EIO);
        assert_eq!(count(&server, "GetObject"), u64::from(ATTEMPTS), "{failure:?}");
        // The injection is used up: the next call succeeds at once.
        assert_eq!(read(&store, "f", 0..100).await.unwrap().len(), 100);
    }
}

#[track_caller]
fn failure_of<T: Debug>(server: &RunningServer, result: StoreResult<T>, kind: InjectedFailure) -> StoreError {
    failure(server, result, &format!("{kind:?} on every attempt"))
}

#[tokio::test]
async fn mid_body_reset_is_resumed_from_the_last_byte() {
    let _turn = common::shared();
    let server = server().await;
    let store = s3_store(&server).await;
    let body = pattern(200_000, 8);
    put_direct(&server, "f", &body);
    server.quirks().reset_mid_body(1, 50_000);

    let got = read(&store, "f", 1000..190_000).await.expect("resumed body");
    assert_eq!(got.len(), 189_000);
    assert!(got == body.slice(1000..190_000), "resumed bytes differ from the object");
    assert_eq!(count(&server, "GetObject"), 2, "one broken GET, one resuming GET");
}

#[tokio::test]
async fn mid_body_reset_after_a_redirect_is_resumed() {
    let _turn = common::shared();
    let server = server().await;
    server.quirks().set_redirect_get(true);
    let store = hf_store(&server).await;
    let body = pattern(200_000, 9);
    put_direct(&server, "f", &body);
    server.quirks().reset_mid_body(1, 50_000);

    let got = read(&store, "f", 0..200_000).await.expect("resumed body");
    assert!(got == body, "resumed bytes differ from the object");
    assert_eq!(count(&server, "RedirectGet"), 2);
    assert_eq!(count(&server, "GetObject"), 2);
}

#[tokio::test]
async fn stalled_body_is_resumed_after_the_read_timeout() {
    let _turn = common::shared();
    let server = server().await;
    let stall = Duration::from_secs(5);
    // Long enough that a busy machine answers ordinary requests in time.
    let read_timeout = ms(500);
    let store = connect(
        generic(),
        generic_overrides(&server),
        S3Settings {
            read_timeout,
            ..settings(&server)
        },
    )
    .await;
    let body = pattern(100_000, 10);
    put_direct(&server, "f", &body);
    server.quirks().stall_body(1, 20_000, stall);

    let started = Instant::now();
    let got = read(&store, "f", 0..100_000).await.expect("resumed body");
    let took = started.elapsed();
    assert!(got == body, "resumed bytes differ from the object");
    assert!(
        count(&server, "GetObject") >= 2,
        "the stalled GET was resumed by another: {:?}",
        server.stats().snapshot()
    );
    assert!(
        took >= read_timeout && took < stall - Duration::from_secs(1),
        "gave up on the stalled body after {took:?} (read timeout {read_timeout:?}, stall {stall:?})"
    );
}

#[tokio::test]
async fn added_latency_is_tolerated() {
    let _turn = common::shared();
    let server = server().await;
    let latency = ms(60);
    server.quirks().set_latency(latency);
    let store = s3_store(&server).await;

    let started = Instant::now();
    let body = pattern(1000, 11);
    store.put("f", body.clone(), &PutOptions::default()).await.unwrap();
    assert_eq!(read(&store, "f", 0..1000).await.unwrap(), body);
    let (keys, _, _) = list_all(&store, "", None, 1000).await;
    assert_eq!(keys, ["f"]);
    let took = started.elapsed();
    assert!(took >= latency * 3, "three requests took {took:?}: was latency added?");
}

#[tokio::test]
async fn unreachable_endpoint_is_transient_within_the_connect_timeout() {
    let _turn = common::shared();
    let server = server().await; // only for its credentials
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let endpoint = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    let overrides = Overrides {
        force_path_style: true,
        region: Some("us-east-1".into()),
        ..at(&endpoint)
    };
    let connect_timeout = settings(&server).connect_timeout;
    let store = connect(generic(), overrides, settings(&server)).await;

    let started = Instant::now();
    let result = store.list_page(&ListRequest::default()).await;
    let took = started.elapsed();
    let e = failure(&server, result, "list on a closed port");
    assert!(
        matches!(&e, StoreError::Transient(m) if m.contains(&format!("after {ATTEMPTS} attempts"))),
        "{e:?}"
    );
    assert!(took < connect_timeout, "took {took:?}");
}

// ---------------------------------------------------------------- errors

#[tokio::test]
async fn wrong_secret_is_access_denied() {
    let _turn = common::shared();
    let server = server().await;
    put_direct(&server, "f", &pattern(10, 0));
    let mut bad = settings(&server);
    bad.credentials.as_mut().expect("credentials set").secret_key = "not-the-secret".into();
    let store = connect(generic(), generic_overrides(&server), bad).await;

    let e = failure(&server, store.list_page(&ListRequest::default()).await, "list");
    assert!(matches!(e, StoreError::CredentialsRejected(_)), "{e:?}");
    assert_eq!(e.errno(), libc::EACCES);
    // The answer to a HEAD has no body, so no code: a plain refusal.
    let e = failure(&server, store.head("f").await, "head");
    assert!(matches!(e, StoreError::AccessDenied(_)), "{e:?}");
    let e = failure(
        &server,
        store.put("g", pattern(10, 0), &PutOptions::default()).await,
        "put",
    );
    assert!(matches!(e, StoreError::CredentialsRejected(_)), "{e:?}");
    assert_eq!(
        server.stats().total(),
        3,
        "access errors are not retried: {:?}",
        server.stats().snapshot()
    );
}

#[tokio::test]
async fn missing_bucket_is_an_error_naming_the_bucket() {
    let _turn = common::shared();
    let server = server().await;
    let store = connect("s3://no-such-bucket", generic_overrides(&server), settings(&server)).await;

    let e = failure(&server, store.list_page(&ListRequest::default()).await, "list");
    assert!(matches!(e, StoreError::Other(_)), "{e:?}");
    assert!(
        e.to_string().contains("no-such-bucket"),
        "the error names the bucket: {e}"
    );
    let e = failure(
        &server,
        store.put("f", pattern(10, 0), &PutOptions::default()).await,
        "put",
    );
    assert!(
        e.to_string().contains("no-such-bucket"),
        "the error names the bucket: {e}"
    );
}

#[tokio::test]
async fn missing_key_is_not_found() {
    let _turn = common::shared();
    let server = server().await;
    let store = s3_store(&server).await;

    assert_eq!(store.head("nope").await, Err(StoreError::NotFound));
    let e = failure(&server, read(&store, "nope", 0..10).await, "get");
    assert_eq!(e, StoreError::NotFound);
    assert_eq!(e.errno(), libc::ENOENT);
    assert_eq!(count(&server, "HeadObject"), 1, "404 is not retried");
    assert_eq!(count(&server, "GetObject"), 1, "404 is not retried");
    store.delete("nope").await.expect("deleting a missing key succeeds");
    store
        .abort_multipart("nope", "no-such-upload")
        .await
        .expect("aborting an unknown upload succeeds");
}

#[tokio::test]
async fn if_match_mismatch_is_precondition_failed_with_the_sdk_if_match() {
    let _turn = common::shared();
    let server = server().await;
    let store = s3_store(&server).await;
    let etag = store.put("f", pattern(100, 1), &PutOptions::default()).await.unwrap();
    assert_eq!(
        store
            .get_range("f", 0..10, Some(&etag))
            .await
            .unwrap()
            .collect()
            .await
            .unwrap(),
        pattern(100, 1).slice(0..10)
    );
    put_direct(&server, "f", &pattern(100, 2)); // changed underneath

    let result = store.get_range("f", 0..10, Some(&etag)).await;
    let e = failure(&server, result.map(|r| r.etag), "stale If-Match");
    assert_eq!(e, StoreError::PreconditionFailed);
    assert_eq!(e.errno(), libc::ESTALE);
    assert_eq!(count(&server, "GetObject"), 2);
}

#[tokio::test]
async fn if_match_mismatch_is_precondition_failed_after_a_redirect() {
    let _turn = common::shared();
    let server = server().await;
    server.quirks().set_redirect_get(true);
    let store = hf_store(&server).await; // does not send If-Match on GET: compares ETags
    let etag = store.put("f", pattern(100, 1), &PutOptions::default()).await.unwrap();
    let fresh = store.get_range("f", 0..10, Some(&etag)).await.unwrap();
    assert_eq!(fresh.etag.as_deref(), Some(etag.as_str()));
    assert_eq!(fresh.collect().await.unwrap(), pattern(100, 1).slice(0..10));
    put_direct(&server, "f", &pattern(100, 2));

    let result = store.get_range("f", 0..10, Some(&etag)).await;
    let e = failure(&server, result.map(|r| r.etag), "stale If-Match");
    assert_eq!(e, StoreError::PreconditionFailed);
    assert_eq!(count(&server, "GetObject"), 2);
    assert_eq!(
        count(&server, "RedirectGet"),
        2,
        "the ETag was compared at the CDN answer"
    );
}

#[tokio::test]
async fn put_if_none_match_refuses_an_existing_key() {
    let _turn = common::shared();
    let server = server().await;
    let store = s3_store(&server).await;
    let create = PutOptions {
        if_none_match: true,
        ..PutOptions::default()
    };
    store.put("f", pattern(10, 1), &create).await.expect("a new key");
    let e = failure(&server, store.put("f", pattern(10, 2), &create).await, "second create");
    assert_eq!(e, StoreError::PreconditionFailed);
    assert_eq!(stored(&server, "f"), Some(pattern(10, 1)));
}
