//! The embedded server's quirks, one test each: what each provider emulation refuses or
//! changes, and the failures it injects (see the parent module).

use super::{BUCKET, client, failure, get, md5_hex, plain_client, put, raw_get, server};
use crate::common;
use std::time::{Duration, Instant};

use aws_sdk_s3::presigning::PresigningConfig;
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{Delete, ObjectIdentifier};
use s3vol::server::{InjectedFailure, RequestFilter};

#[tokio::test]
async fn reject_checksums_refuses_the_sdk_default_but_not_plain_uploads() {
    let _turn = common::shared();
    let server = server().await;
    server.quirks().set_reject_checksums(true);
    let default_put = client(&server)
        .put_object()
        .bucket(BUCKET)
        .key("k")
        .body(ByteStream::from_static(b"data"));
    assert_eq!(failure(default_put.send().await), (400, "InvalidRequest".to_owned()));
    put(&plain_client(&server), "k", b"data").await;
    assert_eq!(
        server
            .backend()
            .get_object(BUCKET, "k")
            .map(|object| object.body.to_vec()),
        Some(b"data".to_vec())
    );
}

#[tokio::test]
async fn redirect_get_sends_authenticated_downloads_to_a_cdn_that_refuses_s3_auth() {
    let _turn = common::shared();
    let server = server().await;
    server
        .backend()
        .put_object(BUCKET, "dir/a b.txt", "0123456789", &[])
        .expect("put");
    server.quirks().set_redirect_get(true);
    let client = client(&server);

    let sdk_get = client.get_object().bucket(BUCKET).key("dir/a b.txt").send().await;
    assert_eq!(failure(sdk_get).0, 302);
    let unsigned = raw_get(server.addr, "/bucket/dir/a%20b.txt", &[]).await;
    assert_eq!(unsigned.status, 403, "the redirect is only given after authentication");

    let presigned = client
        .get_object()
        .bucket(BUCKET)
        .key("dir/a b.txt")
        .presigned(PresigningConfig::expires_in(Duration::from_secs(60)).expect("presigning config"))
        .await
        .expect("presign");
    let path = presigned.uri().strip_prefix(&server.endpoint).expect("presigned path");
    let redirect = raw_get(server.addr, path, &[]).await;
    assert_eq!(redirect.status, 302);
    let cdn = format!("http://{}", server.redirect_addr);
    let location = redirect.header("location").expect("Location");
    let cdn_path = location.strip_prefix(&cdn).expect("points at the redirect listener");
    assert!(cdn_path.starts_with("/bucket/dir/a%20b.txt?sig="), "{location}");

    let ranged = raw_get(server.redirect_addr, cdn_path, &[("Range", "bytes=2-5")]).await;
    assert_eq!((ranged.status, ranged.body.as_slice()), (206, &b"2345"[..]));
    assert_eq!(ranged.header("content-range"), Some("bytes 2-5/10"));
    assert_eq!(
        ranged.header("etag"),
        Some(format!("\"{}\"", md5_hex(b"0123456789")).as_str())
    );
    assert!(ranged.header("last-modified").is_some());
    let with_auth = raw_get(
        server.redirect_addr,
        cdn_path,
        &[("Authorization", "AWS4-HMAC-SHA256 Credential=x")],
    )
    .await;
    assert_eq!(with_auth.status, 400);
    let unsigned_cdn = raw_get(server.redirect_addr, "/bucket/dir/a%20b.txt", &[]).await;
    assert_eq!(unsigned_cdn.status, 403);

    assert_eq!(server.stats().count("GetObject"), 3);
    assert_eq!(server.stats().count("RedirectGet"), 3);
}

#[tokio::test]
async fn reject_list_v1_only_allows_list_objects_v2() {
    let _turn = common::shared();
    let server = server().await;
    server.quirks().set_reject_list_v1(true);
    let client = client(&server);
    let v1 = client.list_objects().bucket(BUCKET).send().await;
    assert_eq!(failure(v1), (400, "NotImplemented".to_owned()));
    client
        .list_objects_v2()
        .bucket(BUCKET)
        .send()
        .await
        .expect("V2 still works");
}

#[tokio::test]
async fn drop_user_metadata_neither_stores_nor_returns_it() {
    let _turn = common::shared();
    let server = server().await;
    server
        .backend()
        .put_object(BUCKET, "stored-before", "x", &[("mode", "600")])
        .expect("put");
    server.quirks().set_drop_user_metadata(true);
    let client = plain_client(&server);
    client
        .put_object()
        .bucket(BUCKET)
        .key("k")
        .metadata("mode", "644")
        .body(ByteStream::from_static(b"x"))
        .send()
        .await
        .expect("put with metadata");
    assert!(
        server
            .backend()
            .get_object(BUCKET, "k")
            .expect("stored")
            .metadata
            .is_empty()
    );
    let head = client
        .head_object()
        .bucket(BUCKET)
        .key("stored-before")
        .send()
        .await
        .expect("head");
    assert!(
        head.metadata().is_none_or(|metadata| metadata.is_empty()),
        "{:?}",
        head.metadata()
    );
}

#[tokio::test]
async fn reject_trailing_slash_keys_refuses_directory_markers() {
    let _turn = common::shared();
    let server = server().await;
    server.quirks().set_reject_trailing_slash_keys(true);
    let client = client(&server);
    let marker = client
        .put_object()
        .bucket(BUCKET)
        .key("dir/")
        .body(ByteStream::from_static(b""))
        .send()
        .await;
    assert_eq!(failure(marker), (400, "InvalidArgument".to_owned()));
    let multipart = client.create_multipart_upload().bucket(BUCKET).key("dir/").send().await;
    assert_eq!(failure(multipart), (400, "InvalidArgument".to_owned()));
    put(&client, "dir/file", b"x").await;
}

#[tokio::test]
async fn reject_upload_part_copy_answers_501() {
    let _turn = common::shared();
    let server = server().await;
    server.backend().put_object(BUCKET, "source", "x", &[]).expect("put");
    server.quirks().set_reject_upload_part_copy(true);
    let client = client(&server);
    let upload = client
        .create_multipart_upload()
        .bucket(BUCKET)
        .key("k")
        .send()
        .await
        .expect("create");
    let copy = client
        .upload_part_copy()
        .bucket(BUCKET)
        .key("k")
        .upload_id(upload.upload_id().expect("id"))
        .part_number(1)
        .copy_source(format!("{BUCKET}/source"))
        .send()
        .await;
    assert_eq!(failure(copy), (501, "NotImplemented".to_owned()));
}

#[tokio::test]
async fn reject_delete_objects_answers_501_but_single_deletes_work() {
    let _turn = common::shared();
    let server = server().await;
    server.backend().put_object(BUCKET, "k", "x", &[]).expect("put");
    server.quirks().set_reject_delete_objects(true);
    let client = client(&server);
    let identifier = ObjectIdentifier::builder().key("k").build().expect("identifier");
    let batch = client
        .delete_objects()
        .bucket(BUCKET)
        .delete(Delete::builder().objects(identifier).build().expect("delete"))
        .send()
        .await;
    assert_eq!(failure(batch), (501, "NotImplemented".to_owned()));
    client
        .delete_object()
        .bucket(BUCKET)
        .key("k")
        .send()
        .await
        .expect("single delete");
    assert!(server.backend().keys(BUCKET).is_empty());
}

#[tokio::test]
async fn max_put_size_limits_put_object_but_not_parts() {
    let _turn = common::shared();
    let server = server().await;
    server.quirks().set_max_put_size(Some(4));
    let client = plain_client(&server);
    let large = client
        .put_object()
        .bucket(BUCKET)
        .key("k")
        .body(ByteStream::from_static(b"12345"))
        .send()
        .await;
    assert_eq!(failure(large), (400, "EntityTooLarge".to_owned()));
    put(&client, "k", b"1234").await;
    let upload = client
        .create_multipart_upload()
        .bucket(BUCKET)
        .key("m")
        .send()
        .await
        .expect("create");
    client
        .upload_part()
        .bucket(BUCKET)
        .key("m")
        .upload_id(upload.upload_id().expect("id"))
        .part_number(1)
        .body(ByteStream::from_static(b"12345"))
        .send()
        .await
        .expect("parts are not limited");
}

#[tokio::test]
async fn inject_errors_fails_the_next_matching_requests() {
    let _turn = common::shared();
    let server = server().await;
    server.backend().put_object(BUCKET, "k", "x", &[]).expect("put");
    let client = client(&server);

    server.quirks().inject_errors(
        2,
        InjectedFailure::SlowDown,
        RequestFilter::Operation("GetObject".to_owned()),
    );
    client
        .head_object()
        .bucket(BUCKET)
        .key("k")
        .send()
        .await
        .expect("other operations pass");
    assert_eq!(
        failure(client.get_object().bucket(BUCKET).key("k").send().await),
        (503, "SlowDown".to_owned())
    );
    assert_eq!(
        failure(client.get_object().bucket(BUCKET).key("k").send().await),
        (503, "SlowDown".to_owned())
    );
    assert_eq!(get(&client, "k").await, b"x");

    server
        .quirks()
        .inject_errors(1, InjectedFailure::BadGateway, RequestFilter::Method(http::Method::PUT));
    let put_result = client
        .put_object()
        .bucket(BUCKET)
        .key("k")
        .body(ByteStream::from_static(b"y"))
        .send()
        .await;
    assert_eq!(failure(put_result).0, 502);
    server
        .quirks()
        .inject_errors(1, InjectedFailure::InternalError, RequestFilter::Any);
    let listed = client.list_objects_v2().bucket(BUCKET).send().await;
    assert_eq!(failure(listed), (500, "InternalError".to_owned()));
    client
        .list_objects_v2()
        .bucket(BUCKET)
        .send()
        .await
        .expect("injections are used up");
}

#[tokio::test]
async fn reset_mid_body_truncates_downloads_on_both_listeners() {
    let _turn = common::shared();
    let server = server().await;
    server
        .backend()
        .put_object(BUCKET, "k", "0123456789", &[])
        .expect("put");
    let client = client(&server);

    server.quirks().reset_mid_body(1, 3);
    let response = client
        .get_object()
        .bucket(BUCKET)
        .key("k")
        .send()
        .await
        .expect("headers arrive");
    assert!(response.body.collect().await.is_err(), "the body must end early");
    assert_eq!(get(&client, "k").await, b"0123456789", "only the next download is cut");

    server.quirks().set_redirect_get(true);
    server.quirks().reset_mid_body(1, 3);
    let presigned = client
        .get_object()
        .bucket(BUCKET)
        .key("k")
        .presigned(PresigningConfig::expires_in(Duration::from_secs(60)).expect("presigning config"))
        .await
        .expect("presign");
    let redirect = raw_get(
        server.addr,
        presigned.uri().strip_prefix(&server.endpoint).expect("path"),
        &[],
    )
    .await;
    let location = redirect.header("location").expect("Location");
    let cdn_path = location
        .strip_prefix(&format!("http://{}", server.redirect_addr))
        .expect("cdn path");
    let truncated = raw_get(server.redirect_addr, cdn_path, &[]).await;
    assert_eq!(
        (truncated.status, truncated.header("content-length")),
        (200, Some("10"))
    );
    assert_eq!(truncated.body, b"012");
}

#[tokio::test]
async fn stall_body_pauses_mid_download() {
    let _turn = common::shared();
    let server = server().await;
    server
        .backend()
        .put_object(BUCKET, "k", "0123456789", &[])
        .expect("put");
    let stall = Duration::from_millis(300);
    server.quirks().stall_body(1, 4, stall);
    let started = Instant::now();
    assert_eq!(get(&client(&server), "k").await, b"0123456789");
    assert!(started.elapsed() >= stall);
}

#[tokio::test]
async fn repeat_continuation_token_echoes_each_token_once() {
    let _turn = common::shared();
    let server = server().await;
    for key in ["k1", "k2", "k3"] {
        server.backend().put_object(BUCKET, key, "x", &[]).expect("put");
    }
    server.quirks().set_repeat_continuation_token(true);
    let client = client(&server);
    let list = |token: Option<String>| {
        client
            .list_objects_v2()
            .bucket(BUCKET)
            .max_keys(2)
            .set_continuation_token(token)
            .send()
    };

    let first = list(None).await.expect("first page");
    let token = first.next_continuation_token().expect("truncated").to_owned();
    let echoed = list(Some(token.clone())).await.expect("echo page");
    assert_eq!((echoed.key_count(), echoed.is_truncated()), (Some(0), Some(true)));
    assert_eq!(echoed.next_continuation_token(), Some(token.as_str()));
    let second = list(Some(token)).await.expect("second page");
    let keys: Vec<_> = second.contents().iter().filter_map(|object| object.key()).collect();
    assert_eq!((keys, second.is_truncated()), (vec!["k3"], Some(false)));
}

#[tokio::test]
async fn latency_delays_every_answer() {
    let _turn = common::shared();
    let server = server().await;
    let latency = Duration::from_millis(200);
    server.quirks().set_latency(latency);
    let started = Instant::now();
    client(&server)
        .head_bucket()
        .bucket(BUCKET)
        .send()
        .await
        .expect("head bucket");
    assert!(started.elapsed() >= latency);
}

#[tokio::test]
async fn volume_full_refuses_writes_with_507() {
    let _turn = common::shared();
    let server = server().await;
    server.backend().put_object(BUCKET, "k", "x", &[]).expect("put");
    server.quirks().set_volume_full(true);
    let client = client(&server);
    let put_result = client
        .put_object()
        .bucket(BUCKET)
        .key("new")
        .body(ByteStream::from_static(b"x"))
        .send()
        .await;
    assert_eq!(failure(put_result), (507, "InsufficientStorage".to_owned()));
    let copy = client
        .copy_object()
        .bucket(BUCKET)
        .key("copy")
        .copy_source(format!("{BUCKET}/k"))
        .send()
        .await;
    assert_eq!(failure(copy), (507, "InsufficientStorage".to_owned()));
    assert_eq!(get(&client, "k").await, b"x", "reads still work");
    server.quirks().clear();
    put(&client, "new", b"x").await;
}
