//! Smoke tests of the embedded S3 server through real HTTP on loopback: the AWS SDK
//! for S3 semantics and auth, raw HTTP/1.1 where the SDK would hide what happens
//! (redirects, truncated bodies). One test per quirk (in `quirks`).

use crate::common;
use std::fmt::Debug;

mod quirks;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use aws_sdk_s3::Client;
use aws_sdk_s3::config::http::HttpResponse;
use aws_sdk_s3::config::retry::RetryConfig;
use aws_sdk_s3::config::{
    BehaviorVersion, Credentials, Region, RequestChecksumCalculation, ResponseChecksumValidation,
};
use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart, Delete, MetadataDirective, ObjectIdentifier};
use s3s::crypto::{Checksum, Md5};
use s3vol::server::{RunningServer, ServerConfig, start, start_blocking};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const BUCKET: &str = "bucket";

async fn server() -> RunningServer {
    let server = start(ServerConfig::default()).await.expect("server starts");
    server.backend().create_bucket(BUCKET);
    server
}

fn client_with(server: &RunningServer, secret: &str, checksums: RequestChecksumCalculation) -> Client {
    let validation = match checksums {
        RequestChecksumCalculation::WhenRequired => ResponseChecksumValidation::WhenRequired,
        _ => ResponseChecksumValidation::WhenSupported,
    };
    let config = aws_sdk_s3::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .endpoint_url(&server.endpoint)
        .region(Region::new("us-east-1"))
        .credentials_provider(Credentials::new(&server.access_key, secret, None, None, "smoke-test"))
        .force_path_style(true)
        .request_checksum_calculation(checksums)
        .response_checksum_validation(validation)
        // Failures must surface as they happen, not be retried away.
        .retry_config(RetryConfig::disabled())
        .build();
    Client::from_conf(config)
}

/// The SDK with its default (checksumming) behaviour.
fn client(server: &RunningServer) -> Client {
    client_with(server, &server.secret_key, RequestChecksumCalculation::WhenSupported)
}

/// The SDK without optional checksums, as needed for Hugging Face.
fn plain_client(server: &RunningServer) -> Client {
    client_with(server, &server.secret_key, RequestChecksumCalculation::WhenRequired)
}

/// HTTP status and S3 error code of a failed SDK call.
fn failure<T: Debug, E: ProvideErrorMetadata + Debug>(result: Result<T, SdkError<E, HttpResponse>>) -> (u16, String) {
    let error = result.expect_err("the request should fail");
    let status = error.raw_response().map_or(0, |response| response.status().as_u16());
    (status, error.code().unwrap_or_default().to_owned())
}

async fn put(client: &Client, key: &str, body: &'static [u8]) {
    client
        .put_object()
        .bucket(BUCKET)
        .key(key)
        .body(ByteStream::from_static(body))
        .send()
        .await
        .unwrap_or_else(|error| panic!("put {key}: {error:?}"));
}

async fn get(client: &Client, key: &str) -> Vec<u8> {
    let response = client.get_object().bucket(BUCKET).key(key).send().await.expect("get");
    response.body.collect().await.expect("get body").to_vec()
}

fn md5_hex(data: &[u8]) -> String {
    Md5::checksum(data).iter().map(|byte| format!("{byte:02x}")).collect()
}

struct RawResponse {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl RawResponse {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(key, _)| key.eq_ignore_ascii_case(name))
            .map(|(_, value)| value.as_str())
    }
}

/// A bare HTTP/1.1 GET, reading until the server closes the connection (cleanly or
/// not), so redirects and truncated bodies are seen exactly as sent.
async fn raw_get(addr: SocketAddr, path_and_query: &str, headers: &[(&str, &str)]) -> RawResponse {
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let mut request = format!("GET {path_and_query} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes()).await.expect("send request");
    let mut received = Vec::new();
    let mut chunk = [0_u8; 8192];
    while let Ok(read) = stream.read(&mut chunk).await {
        if read == 0 {
            break;
        }
        received.extend_from_slice(&chunk[..read]);
    }
    let split = received
        .windows(4)
        .position(|window| window == b"\r\n\r\n")
        .expect("response head");
    let head = String::from_utf8(received[..split].to_vec()).expect("ascii head");
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|line| line.split(' ').nth(1))
        .and_then(|code| code.parse().ok())
        .expect("status");
    let headers = lines
        .filter_map(|line| line.split_once(": "))
        .map(|(name, value)| (name.to_owned(), value.to_owned()))
        .collect();
    RawResponse {
        status,
        headers,
        body: received[split + 4..].to_vec(),
    }
}

#[tokio::test]
async fn flat_keyspace_lets_a_file_a_directory_and_a_marker_coexist() {
    let _turn = common::shared();
    let server = server().await;
    let client = client(&server);
    put(&client, "a", b"file a").await;
    put(&client, "a/b", b"file under a").await;
    put(&client, "d/", b"").await;
    put(&client, "d/e/f", b"deep").await;

    let listing = client
        .list_objects_v2()
        .bucket(BUCKET)
        .delimiter("/")
        .send()
        .await
        .expect("list root");
    let keys: Vec<_> = listing.contents().iter().filter_map(|object| object.key()).collect();
    let prefixes: Vec<_> = listing
        .common_prefixes()
        .iter()
        .filter_map(|prefix| prefix.prefix())
        .collect();
    assert_eq!(keys, ["a"]);
    assert_eq!(prefixes, ["a/", "d/"]);
    assert_eq!(listing.key_count(), Some(3));
    assert_eq!(listing.is_truncated(), Some(false));

    let listing = client
        .list_objects_v2()
        .bucket(BUCKET)
        .prefix("d/")
        .delimiter("/")
        .send()
        .await
        .expect("list d/");
    let keys: Vec<_> = listing.contents().iter().filter_map(|object| object.key()).collect();
    let prefixes: Vec<_> = listing
        .common_prefixes()
        .iter()
        .filter_map(|prefix| prefix.prefix())
        .collect();
    assert_eq!(keys, ["d/"], "the empty marker object is listed as a key");
    assert_eq!(prefixes, ["d/e/"]);

    assert_eq!(get(&client, "a").await, b"file a");
    assert_eq!(get(&client, "a/b").await, b"file under a");
    let head = client.head_object().bucket(BUCKET).key("a").send().await.expect("head");
    assert_eq!(head.e_tag(), Some(format!("\"{}\"", md5_hex(b"file a")).as_str()));
    assert_eq!(head.content_length(), Some(6));
    assert!(head.last_modified().is_some());
    assert_eq!(server.backend().keys(BUCKET), ["a", "a/b", "d/", "d/e/f"]);

    let stats = server.stats();
    assert_eq!(stats.count("PutObject"), 4, "{:?}", stats.snapshot());
    assert_eq!(stats.count("ListObjectsV2"), 2);
    assert_eq!(stats.count("GetObject"), 2);
    assert_eq!(stats.count("HeadObject"), 1);
    assert_eq!(stats.total(), 9);
}

#[tokio::test]
async fn listings_page_with_continuation_tokens_and_markers() {
    let _turn = common::shared();
    let server = server().await;
    for key in ["k1", "k2", "k3", "k4", "k5"] {
        server.backend().put_object(BUCKET, key, "x", &[]).expect("put");
    }
    let client = client(&server);
    let mut keys = Vec::new();
    let mut token = None;
    loop {
        let page = client
            .list_objects_v2()
            .bucket(BUCKET)
            .max_keys(2)
            .set_continuation_token(token)
            .send()
            .await
            .expect("page");
        keys.extend(
            page.contents()
                .iter()
                .filter_map(|object| object.key().map(str::to_owned)),
        );
        token = page.next_continuation_token().map(str::to_owned);
        assert_eq!(page.is_truncated(), Some(token.is_some()));
        if token.is_none() {
            break;
        }
    }
    assert_eq!(keys, ["k1", "k2", "k3", "k4", "k5"]);
    assert_eq!(server.stats().count("ListObjectsV2"), 3);

    let after = client
        .list_objects_v2()
        .bucket(BUCKET)
        .start_after("k3")
        .send()
        .await
        .expect("start-after");
    assert_eq!(after.key_count(), Some(2));
    let v1 = client
        .list_objects()
        .bucket(BUCKET)
        .marker("k1")
        .max_keys(2)
        .send()
        .await
        .expect("list v1");
    let v1_keys: Vec<_> = v1.contents().iter().filter_map(|object| object.key()).collect();
    assert_eq!(v1_keys, ["k2", "k3"]);
    assert_eq!((v1.is_truncated(), v1.next_marker()), (Some(true), Some("k3")));
}

#[tokio::test]
async fn wrong_credentials_are_refused_with_403() {
    let _turn = common::shared();
    let server = server().await;
    let wrong_secret = client_with(&server, "not-the-secret", RequestChecksumCalculation::WhenSupported);
    let result = wrong_secret.list_objects_v2().bucket(BUCKET).send().await;
    assert_eq!(failure(result), (403, "SignatureDoesNotMatch".to_owned()));

    let wrong_key = Client::from_conf(
        client(&server)
            .config()
            .to_builder()
            .credentials_provider(Credentials::new("unknown", "secret", None, None, "smoke-test"))
            .build(),
    );
    let result = wrong_key.head_bucket().bucket(BUCKET).send().await;
    assert_eq!(failure(result).0, 403);
    let result = wrong_key.list_objects_v2().bucket(BUCKET).send().await;
    assert_eq!(failure(result), (403, "InvalidAccessKeyId".to_owned()));
}

#[tokio::test]
async fn conditions_ranges_copies_and_deletes_follow_s3() {
    let _turn = common::shared();
    let server = server().await;
    let client = client(&server);
    put(&client, "obj", b"0123456789").await;

    let conditional = client
        .put_object()
        .bucket(BUCKET)
        .key("obj")
        .if_none_match("*")
        .body(ByteStream::from_static(b"x"));
    assert_eq!(
        failure(conditional.send().await),
        (412, "PreconditionFailed".to_owned())
    );
    let stale = client
        .get_object()
        .bucket(BUCKET)
        .key("obj")
        .if_match("\"0123\"")
        .send()
        .await;
    assert_eq!(failure(stale), (412, "PreconditionFailed".to_owned()));
    let missing = client.get_object().bucket(BUCKET).key("nope").send().await;
    assert_eq!(failure(missing), (404, "NoSuchKey".to_owned()));
    let no_bucket = client.list_objects_v2().bucket("nobucket").send().await;
    assert_eq!(failure(no_bucket), (404, "NoSuchBucket".to_owned()));

    let ranged = client
        .get_object()
        .bucket(BUCKET)
        .key("obj")
        .range("bytes=2-5")
        .send()
        .await
        .expect("range");
    assert_eq!(ranged.content_range(), Some("bytes 2-5/10"));
    assert_eq!(ranged.body.collect().await.expect("body").to_vec(), b"2345");

    client
        .copy_object()
        .bucket(BUCKET)
        .key("obj")
        .copy_source(format!("{BUCKET}/obj"))
        .metadata_directive(MetadataDirective::Replace)
        .content_type("text/plain")
        .metadata("mode", "644")
        .send()
        .await
        .expect("copy onto itself with REPLACE");
    let head = client
        .head_object()
        .bucket(BUCKET)
        .key("obj")
        .send()
        .await
        .expect("head");
    assert_eq!(head.content_type(), Some("text/plain"));
    assert_eq!(
        head.metadata()
            .and_then(|metadata| metadata.get("mode"))
            .map(String::as_str),
        Some("644")
    );
    let without_replace = client
        .copy_object()
        .bucket(BUCKET)
        .key("obj")
        .copy_source(format!("{BUCKET}/obj"))
        .send()
        .await;
    assert_eq!(failure(without_replace), (400, "InvalidRequest".to_owned()));

    let deleted = client
        .delete_objects()
        .bucket(BUCKET)
        .delete(
            Delete::builder()
                .objects(ObjectIdentifier::builder().key("obj").build().expect("identifier"))
                .build()
                .expect("delete"),
        )
        .send()
        .await
        .expect("delete objects");
    assert_eq!(deleted.deleted().len(), 1);
    assert!(server.backend().keys(BUCKET).is_empty());
}

#[tokio::test]
async fn multipart_uploads_assemble_parts_and_copy_ranges() {
    let _turn = common::shared();
    let server = start(ServerConfig {
        min_part_size: 4,
        ..ServerConfig::default()
    })
    .await
    .expect("server");
    server.backend().create_bucket(BUCKET);
    server
        .backend()
        .put_object(BUCKET, "source", "0123456789", &[])
        .expect("source");
    let client = client(&server);

    let upload = client
        .create_multipart_upload()
        .bucket(BUCKET)
        .key("big")
        .send()
        .await
        .expect("create");
    let upload_id = upload.upload_id().expect("upload id");
    assert_eq!(server.backend().pending_uploads(BUCKET), ["big"]);
    let first = client
        .upload_part()
        .bucket(BUCKET)
        .key("big")
        .upload_id(upload_id)
        .part_number(1)
        .body(ByteStream::from_static(b"abcd"))
        .send()
        .await
        .expect("part 1");
    let second = client
        .upload_part_copy()
        .bucket(BUCKET)
        .key("big")
        .upload_id(upload_id)
        .part_number(2)
        .copy_source(format!("{BUCKET}/source"))
        .copy_source_range("bytes=8-9")
        .send()
        .await
        .expect("part 2 by copy");
    let second_etag = second
        .copy_part_result()
        .and_then(|result| result.e_tag())
        .expect("copied part etag");
    let parts = [(1, first.e_tag().expect("part etag")), (2, second_etag)]
        .into_iter()
        .map(|(number, etag)| CompletedPart::builder().part_number(number).e_tag(etag).build())
        .collect();
    let listed_parts = client
        .list_parts()
        .bucket(BUCKET)
        .key("big")
        .upload_id(upload_id)
        .send()
        .await
        .expect("list parts");
    let sizes: Vec<_> = listed_parts.parts().iter().map(|part| part.size()).collect();
    assert_eq!(sizes, [Some(4), Some(2)]);
    let uploads = client
        .list_multipart_uploads()
        .bucket(BUCKET)
        .send()
        .await
        .expect("list uploads");
    assert_eq!(uploads.uploads().len(), 1);

    let completed = client
        .complete_multipart_upload()
        .bucket(BUCKET)
        .key("big")
        .upload_id(upload_id)
        .multipart_upload(CompletedMultipartUpload::builder().set_parts(Some(parts)).build())
        .send()
        .await
        .expect("complete");

    let part_md5s = [Md5::checksum(b"abcd"), Md5::checksum(b"89")].concat();
    assert_eq!(
        completed.e_tag(),
        Some(format!("\"{}-2\"", md5_hex(&part_md5s)).as_str())
    );
    assert_eq!(get(&client, "big").await, b"abcd89");
    assert!(server.backend().pending_uploads(BUCKET).is_empty());

    // The completed object keeps its parts apart: ranges and copies cross the seam.
    let across = client
        .get_object()
        .bucket(BUCKET)
        .key("big")
        .range("bytes=2-4")
        .send()
        .await
        .expect("range across parts");
    assert_eq!(across.content_length(), Some(3));
    assert_eq!(across.body.collect().await.expect("body").to_vec(), b"cd8");
    let copied = client
        .copy_object()
        .bucket(BUCKET)
        .key("copy")
        .copy_source(format!("{BUCKET}/big"))
        .send()
        .await
        .expect("copy of a multipart object");
    let copy_etag = copied.copy_object_result().and_then(|result| result.e_tag());
    assert_eq!(copy_etag, Some(format!("\"{}\"", md5_hex(b"abcd89")).as_str()));
    assert_eq!(get(&client, "copy").await, b"abcd89");

    let abandoned = client
        .create_multipart_upload()
        .bucket(BUCKET)
        .key("abandoned")
        .send()
        .await
        .expect("create");
    client
        .abort_multipart_upload()
        .bucket(BUCKET)
        .key("abandoned")
        .upload_id(abandoned.upload_id().expect("upload id"))
        .send()
        .await
        .expect("abort");
    assert!(server.backend().pending_uploads(BUCKET).is_empty());
}

#[test]
fn start_blocking_serves_synchronous_callers_until_dropped() {
    let _turn = common::shared();
    let server = start_blocking(ServerConfig::default());
    server.backend().create_bucket(BUCKET);
    server.backend().put_object(BUCKET, "k", "sync", &[]).expect("put");
    let client_runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let body = client_runtime.block_on(get(&client(&server), "k"));
    assert_eq!(body, b"sync");

    let addr = server.addr;
    server.shutdown();
    let deadline = Instant::now() + Duration::from_secs(2);
    while std::net::TcpStream::connect(addr).is_ok() {
        assert!(Instant::now() < deadline, "the listener must close after shutdown");
        std::thread::sleep(Duration::from_millis(10));
    }
}
