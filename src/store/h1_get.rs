//! GETs over HTTP/1.1 on connections of our own (`h1_conn.rs`: plain or TLS), whose
//! bodies are read straight into the caller's memory. hyper reads every body into a buffer
//! of its own, from which the block cache copied each block into the block's buffer: 9-12 %
//! of the daemon's CPU on a cold read of 1 MB files, and without that copy the epoch took
//! 13 % less time (BENCHMARKS.md item 162). Here the socket (or rustls, over TLS) reads
//! into the block's buffer itself.

use bytes::{Buf, Bytes, BytesMut};
use http::HeaderMap;
use http::header::{CONNECTION, CONTENT_LENGTH, HOST, HeaderName, HeaderValue, TRANSFER_ENCODING};
use parking_lot::Mutex;
use std::io;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::h1_conn::{Conn, Connector, Endpoint};

/// A response head larger than this is refused: S3's are under 2 KiB.
const HEAD_LIMIT: usize = 64 * 1024;
const MAX_HEADERS: usize = 128;
/// Read at once while the head is incomplete: body bytes read with it are copied out of
/// this buffer, so it stays small.
const HEAD_READ: usize = 4096;
/// An idle connection older than this is closed rather than reused: servers close theirs
/// after some quiet (S3 after about 20 s), and a middlebox may forget one without a word.
/// One the server has closed is seen at checkout, and a GET sent on one it closes just
/// then is sent again on a new connection.
const IDLE_FOR: Duration = Duration::from_secs(30);
/// The largest piece `next_chunk` reads at once.
const CHUNK: usize = 256 * 1024;

/// A pool of connections, each to one `host:port`.
pub struct H1Gets {
    pool: Arc<Pool>,
}

struct Pool {
    idle: Mutex<Vec<Idle>>,
    max_idle: usize,
    connector: Connector,
}

struct Idle {
    endpoint: Endpoint,
    stream: Conn,
    since: Instant,
}

pub struct H1Response {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: H1Body,
}

/// A response's body, read from its connection; the connection goes back to the pool once
/// the body is read to its end, and is closed if the body is dropped before.
pub struct H1Body {
    conn: Option<(Endpoint, Conn)>,
    /// Bytes read past the head, served before the socket.
    buffered: BytesMut,
    framing: Framing,
    keep_alive: bool,
    pool: Arc<Pool>,
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Framing {
    /// Content-Length: this many bytes left.
    Length(u64),
    /// Transfer-Encoding: chunked, at a chunk's size line.
    ChunkSize,
    /// In a chunk, this many bytes of it left (then its CRLF).
    ChunkData(u64),
    /// No length given: the body ends when the server closes the connection.
    UntilClose,
    Done,
}

/// Why an exchange failed: before any byte of the answer (a reused connection the server
/// had closed; the GET is sent again on a new one), or later.
enum Failure {
    BeforeAnswer(io::Error),
    During(io::Error),
}

impl H1Gets {
    /// `tls`: how https:// endpoints are verified.
    pub fn new(connect_timeout: Duration, max_idle: usize, tls: Arc<rustls::ClientConfig>) -> H1Gets {
        H1Gets {
            pool: Arc::new(Pool {
                idle: Mutex::new(Vec::new()),
                max_idle,
                connector: Connector {
                    timeout: connect_timeout,
                    tls,
                },
            }),
        }
    }

    /// Sends `request` (its method, path, query and headers; an http:// or https:// URI)
    /// and reads its answer's head. The caller bounds the wait.
    pub async fn send<B>(&self, request: &http::Request<B>) -> io::Result<H1Response> {
        let endpoint = Endpoint::of(request.uri())?;
        let head = request_head(request, &endpoint.authority);
        // An answer to a HEAD has the headers of a GET's and no body.
        let bodiless = request.method() == http::Method::HEAD;
        loop {
            let (stream, reused) = match self.pool.checkout(&endpoint) {
                Some(stream) => (stream, true),
                None => (self.pool.connector.connect(&endpoint).await?, false),
            };
            match exchange(stream, &head, bodiless).await {
                Ok((status, headers, buffered, stream, framing, keep_alive)) => {
                    let mut body = H1Body {
                        conn: Some((endpoint, stream)),
                        buffered,
                        framing,
                        keep_alive,
                        pool: self.pool.clone(),
                    };
                    body.finish_if_done();
                    return Ok(H1Response { status, headers, body });
                }
                Err(Failure::BeforeAnswer(_)) if reused => continue,
                Err(Failure::BeforeAnswer(e) | Failure::During(e)) => return Err(e),
            }
        }
    }
}

impl Pool {
    fn checkout(&self, endpoint: &Endpoint) -> Option<Conn> {
        let mut idle = self.idle.lock();
        idle.retain(|c| c.since.elapsed() < IDLE_FOR);
        loop {
            let at = idle.iter().rposition(|c| &c.endpoint == endpoint)?;
            let mut stream = idle.swap_remove(at).stream;
            if stream.is_quiet() {
                return Some(stream);
            }
        }
    }

    fn give_back(&self, endpoint: Endpoint, stream: Conn) {
        let mut idle = self.idle.lock();
        if idle.len() < self.max_idle {
            idle.push(Idle {
                endpoint,
                stream,
                since: Instant::now(),
            });
        }
    }
}

fn request_head<B>(request: &http::Request<B>, authority: &str) -> Vec<u8> {
    let target = request.uri().path_and_query().map_or("/", |p| p.as_str());
    let mut head = Vec::with_capacity(1024);
    head.extend_from_slice(request.method().as_str().as_bytes());
    head.push(b' ');
    head.extend_from_slice(target.as_bytes());
    head.extend_from_slice(b" HTTP/1.1\r\n");
    if !request.headers().contains_key(HOST) {
        // The port only where it is not the scheme's, as SigV4 signs it (`sigv4::host_of`).
        let default = if request.uri().scheme_str() == Some("https") {
            443
        } else {
            80
        };
        let host = match request.uri().port_u16() {
            Some(port) if port != default => authority,
            _ => request.uri().host().unwrap_or(authority),
        };
        head.extend_from_slice(b"host: ");
        head.extend_from_slice(host.as_bytes());
        head.extend_from_slice(b"\r\n");
    }
    for (name, value) in request.headers() {
        head.extend_from_slice(name.as_str().as_bytes());
        head.extend_from_slice(b": ");
        head.extend_from_slice(value.as_bytes());
        head.extend_from_slice(b"\r\n");
    }
    head.extend_from_slice(b"\r\n");
    head
}

type Exchanged = (u16, HeaderMap, BytesMut, Conn, Framing, bool);

/// Writes the request and reads the answer's head (skipping any 1xx).
async fn exchange(mut stream: Conn, head: &[u8], bodiless: bool) -> Result<Exchanged, Failure> {
    stream.write_all(head).await.map_err(Failure::BeforeAnswer)?;
    // rustls may hold the last record until flushed.
    stream.flush().await.map_err(Failure::BeforeAnswer)?;
    let mut buf = BytesMut::with_capacity(HEAD_READ);
    loop {
        let parsed = parse_head(&buf).map_err(Failure::During)?;
        if let Some((status, headers, keep_alive, len)) = parsed {
            buf.advance(len);
            if (100..200).contains(&status) {
                continue;
            }
            let framing = match bodiless {
                true => Framing::Done,
                false => framing(status, &headers).map_err(Failure::During)?,
            };
            let keep_alive = keep_alive && framing != Framing::UntilClose;
            return Ok((status, headers, buf, stream, framing, keep_alive));
        }
        if buf.len() >= HEAD_LIMIT {
            return Err(Failure::During(invalid_data("answer head over 64 KiB")));
        }
        buf.reserve(HEAD_READ);
        let first = buf.is_empty();
        match stream.read_buf(&mut buf).await {
            Ok(0) if first => return Err(Failure::BeforeAnswer(io::ErrorKind::UnexpectedEof.into())),
            Ok(0) => return Err(Failure::During(invalid_data("connection closed in the answer's head"))),
            Ok(_) => {}
            Err(e) if first => return Err(Failure::BeforeAnswer(e)),
            Err(e) => return Err(Failure::During(e)),
        }
    }
}

/// The head at the start of `buf` if it is all there: status, headers, whether the
/// connection may be kept, and the head's length.
fn parse_head(buf: &[u8]) -> io::Result<Option<(u16, HeaderMap, bool, usize)>> {
    let mut slots = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut response = httparse::Response::new(&mut slots);
    let len = match response.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => return Err(invalid_data(&format!("answer head: {e}"))),
    };
    let status = response.code.unwrap_or(0);
    let mut headers = HeaderMap::with_capacity(response.headers.len());
    for h in response.headers.iter() {
        let name = HeaderName::from_bytes(h.name.as_bytes()).map_err(|e| invalid_data(&format!("header name: {e}")))?;
        let value = HeaderValue::from_bytes(h.value).map_err(|e| invalid_data(&format!("header value: {e}")))?;
        headers.append(name, value);
    }
    let close = headers.get_all(CONNECTION).iter().any(|v| {
        v.to_str()
            .is_ok_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case("close")))
    });
    let keep_alive = response.version == Some(1) && !close;
    Ok(Some((status, headers, keep_alive, len)))
}

/// How the body's end is found (RFC 9112, section 6.3).
fn framing(status: u16, headers: &HeaderMap) -> io::Result<Framing> {
    if status == 204 || status == 304 {
        return Ok(Framing::Done);
    }
    if let Some(te) = headers.get(TRANSFER_ENCODING) {
        let chunked = te.to_str().is_ok_and(|t| {
            t.rsplit(',')
                .next()
                .is_some_and(|last| last.trim().eq_ignore_ascii_case("chunked"))
        });
        return Ok(if chunked {
            Framing::ChunkSize
        } else {
            Framing::UntilClose
        });
    }
    match headers.get(CONTENT_LENGTH) {
        Some(len) => len
            .to_str()
            .ok()
            .and_then(|l| l.trim().parse().ok())
            .map(Framing::Length)
            .ok_or_else(|| invalid_data("Content-Length is no number")),
        None => Ok(Framing::UntilClose),
    }
}

fn invalid_data(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.to_string())
}

impl H1Body {
    /// Reads body bytes into `dst`, from the socket straight into it as far as it can;
    /// `Ok(0)` at the body's end (or for an empty `dst`).
    pub async fn read_into(&mut self, dst: &mut [u8]) -> io::Result<usize> {
        if dst.is_empty() {
            return Ok(0);
        }
        loop {
            match self.framing {
                Framing::Done => return Ok(0),
                Framing::Length(left) => {
                    let n = self.read_raw(dst, left).await?;
                    if n == 0 {
                        return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "body ended early"));
                    }
                    self.framing = Framing::Length(left - n as u64);
                    self.finish_if_done();
                    return Ok(n);
                }
                Framing::ChunkData(0) => {
                    if !self.line().await?.is_empty() {
                        return Err(invalid_data("no line end after a chunk"));
                    }
                    self.framing = Framing::ChunkSize;
                }
                Framing::ChunkData(left) => {
                    let n = self.read_raw(dst, left).await?;
                    if n == 0 {
                        return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "body ended in a chunk"));
                    }
                    self.framing = Framing::ChunkData(left - n as u64);
                    return Ok(n);
                }
                Framing::ChunkSize => {
                    let line = self.line().await?;
                    let size = line.split(|&b| b == b';').next().unwrap_or_default();
                    let size = std::str::from_utf8(size)
                        .ok()
                        .and_then(|s| u64::from_str_radix(s.trim(), 16).ok())
                        .ok_or_else(|| invalid_data("bad chunk size"))?;
                    if size > 0 {
                        self.framing = Framing::ChunkData(size);
                        continue;
                    }
                    // The last chunk: trailers up to an empty line.
                    while !self.line().await?.is_empty() {}
                    self.framing = Framing::Done;
                    self.finish_if_done();
                    return Ok(0);
                }
                Framing::UntilClose => {
                    let n = self.read_raw(dst, u64::MAX).await?;
                    if n == 0 {
                        self.framing = Framing::Done;
                        self.conn = None;
                    }
                    return Ok(n);
                }
            }
        }
    }

    /// The next piece of the body in a buffer of its own; `None` at its end.
    pub async fn next_chunk(&mut self) -> Option<io::Result<Bytes>> {
        let size = match self.framing {
            Framing::Length(left) | Framing::ChunkData(left) => left.clamp(1, CHUNK as u64) as usize,
            Framing::Done => return None,
            _ => 16 * 1024,
        };
        let mut chunk = vec![0; size];
        match self.read_into(&mut chunk).await {
            Ok(0) => None,
            Ok(n) => {
                chunk.truncate(n);
                Some(Ok(Bytes::from(chunk)))
            }
            Err(e) => Some(Err(e)),
        }
    }

    /// Whether the body has been read to its end.
    pub fn is_done(&self) -> bool {
        self.framing == Framing::Done
    }

    /// Up to `limit` bytes into `dst`: those read with the head first, then the socket's.
    async fn read_raw(&mut self, dst: &mut [u8], limit: u64) -> io::Result<usize> {
        let room = (dst.len() as u64).min(limit) as usize;
        if !self.buffered.is_empty() {
            let n = room.min(self.buffered.len());
            dst[..n].copy_from_slice(&self.buffered[..n]);
            self.buffered.advance(n);
            return Ok(n);
        }
        let Some((_, stream)) = self.conn.as_mut() else {
            return Err(io::Error::new(io::ErrorKind::NotConnected, "connection already closed"));
        };
        stream.read(&mut dst[..room]).await
    }

    /// One CRLF-terminated line of the chunked framing, without its end.
    async fn line(&mut self) -> io::Result<Vec<u8>> {
        loop {
            if let Some(at) = self.buffered.windows(2).position(|w| w == b"\r\n") {
                let line = self.buffered.split_to(at + 2);
                return Ok(line[..at].to_vec());
            }
            if self.buffered.len() > HEAD_READ {
                return Err(invalid_data("chunk framing line too long"));
            }
            let Some((_, stream)) = self.conn.as_mut() else {
                return Err(io::Error::new(io::ErrorKind::NotConnected, "connection already closed"));
            };
            self.buffered.reserve(HEAD_READ);
            if stream.read_buf(&mut self.buffered).await? == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "body ended in its chunk framing",
                ));
            }
        }
    }

    /// At the body's end, the connection goes back to the pool if the server keeps it and
    /// sent nothing past the body.
    fn finish_if_done(&mut self) {
        if matches!(self.framing, Framing::Length(0)) {
            self.framing = Framing::Done;
        }
        if self.framing == Framing::Done
            && let Some((endpoint, stream)) = self.conn.take()
            && self.keep_alive
            && self.buffered.is_empty()
        {
            self.pool.give_back(endpoint, stream);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::CaBundle;
    use crate::store::ca_bundle::trusted_roots;
    use tokio::net::TcpListener;

    trait Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}
    impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> Io for T {}

    /// A pool that trusts the test CA (`tests/it/tls/`) beside the system's roots.
    fn gets() -> H1Gets {
        let ca = CaBundle::from_pem(include_bytes!("../../tests/it/tls/ca.pem")).unwrap();
        gets_trusting(trusted_roots(Some(&ca)))
    }

    fn gets_trusting(roots: rustls::RootCertStore) -> H1Gets {
        H1Gets::new(
            Duration::from_secs(5),
            4,
            super::super::h1_conn::client_config(roots).unwrap(),
        )
    }

    /// What the test server does with the next request.
    enum Say {
        Answer(Vec<u8>),
        AnswerAndClose(Vec<u8>),
        Close,
    }

    /// A server that answers each request on a connection with the next of `answers`,
    /// counting connections.
    async fn server(answers: Vec<Say>) -> (String, Arc<Mutex<Vec<String>>>) {
        serve(answers, false).await
    }

    /// As `server`, over TLS when `tls` (the test CA's certificate; TLS 1.3, whose server
    /// sends session tickets after the handshake).
    async fn serve(answers: Vec<Say>, tls: bool) -> (String, Arc<Mutex<Vec<String>>>) {
        let acceptor = tls.then(|| {
            crate::server::TlsIdentity {
                cert_chain_pem: include_bytes!("../../tests/it/tls/server.pem").to_vec(),
                key_pem: include_bytes!("../../tests/it/tls/server.key").to_vec(),
            }
            .acceptor()
            .unwrap()
        });
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = seen.clone();
        tokio::spawn(async move {
            let mut answers = answers.into_iter();
            let mut conn = 0;
            'accept: while let Ok((tcp, _)) = listener.accept().await {
                conn += 1;
                let mut s: Box<dyn Io> = match &acceptor {
                    Some(acceptor) => match acceptor.accept(tcp).await {
                        Ok(tls) => Box::new(tls),
                        Err(_) => continue,
                    },
                    None => Box::new(tcp),
                };
                loop {
                    let mut req = Vec::new();
                    let mut b = [0u8; 4096];
                    while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                        match s.read(&mut b).await {
                            Ok(0) | Err(_) => continue 'accept,
                            Ok(n) => req.extend_from_slice(&b[..n]),
                        }
                    }
                    log.lock()
                        .push(format!("conn {conn}: {}", String::from_utf8_lossy(&req)));
                    let (answer, close) = match answers.next() {
                        Some(Say::Answer(a)) => (a, false),
                        Some(Say::AnswerAndClose(a)) => (a, true),
                        Some(Say::Close) | None => continue 'accept,
                    };
                    for piece in answer.chunks(7) {
                        s.write_all(piece).await.unwrap();
                        s.flush().await.unwrap();
                    }
                    if close {
                        continue 'accept;
                    }
                }
            }
        });
        let scheme = if tls { "https" } else { "http" };
        (format!("{scheme}://{addr}"), seen)
    }

    fn get(url: &str) -> http::Request<()> {
        http::Request::get(url).header("range", "bytes=0-9").body(()).unwrap()
    }

    async fn read_all(body: &mut H1Body, step: usize) -> Vec<u8> {
        let mut out = Vec::new();
        let mut buf = vec![0; step];
        loop {
            let n = body.read_into(&mut buf).await.unwrap();
            if n == 0 {
                return out;
            }
            out.extend_from_slice(&buf[..n]);
        }
    }

    fn ok(body: &str) -> Say {
        Say::Answer(
            format!(
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nETag: \"e\"\r\n\r\n{body}",
                body.len()
            )
            .into_bytes(),
        )
    }

    #[tokio::test]
    async fn a_body_is_read_into_the_callers_buffer_and_its_connection_reused() {
        let (url, seen) = server(vec![ok("hello world, this is a body"), ok("second")]).await;
        let gets = gets();
        let mut a = gets.send(&get(&format!("{url}/b/k%20ey?x=1"))).await.unwrap();
        assert_eq!(a.status, 200);
        assert_eq!(a.headers["etag"], "\"e\"");
        assert_eq!(read_all(&mut a.body, 5).await, b"hello world, this is a body");
        assert!(a.body.is_done());
        let mut b = gets.send(&get(&format!("{url}/b/other"))).await.unwrap();
        assert_eq!(read_all(&mut b.body, 100).await, b"second");
        let seen = seen.lock();
        assert!(
            seen[0].starts_with("conn 1: GET /b/k%20ey?x=1 HTTP/1.1\r\nhost: 127.0.0.1:"),
            "{seen:?}"
        );
        assert!(seen[0].contains("range: bytes=0-9\r\n"), "{seen:?}");
        assert!(
            seen[1].starts_with("conn 1: GET /b/other "),
            "one connection for both: {seen:?}"
        );
    }

    #[tokio::test]
    async fn a_chunked_body_is_decoded() {
        let answer = b"HTTP/1.1 404 Not Found\r\nTransfer-Encoding: chunked\r\n\r\n5;x=y\r\n<Erro\r\n0c\r\nr>NoSuchKey<\r\n0\r\nTrailer: t\r\n\r\n";
        let (url, seen) = server(vec![Say::Answer(answer.to_vec()), ok("next")]).await;
        let gets = gets();
        let mut a = gets.send(&get(&format!("{url}/k"))).await.unwrap();
        assert_eq!(a.status, 404);
        assert_eq!(read_all(&mut a.body, 3).await, b"<Error>NoSuchKey<");
        let mut b = gets.send(&get(&format!("{url}/k"))).await.unwrap();
        assert_eq!(b.body.next_chunk().await.unwrap().unwrap(), "next");
        assert!(b.body.next_chunk().await.is_none());
        assert_eq!(seen.lock().iter().filter(|s| s.starts_with("conn 1")).count(), 2);
    }

    #[tokio::test]
    async fn a_connection_the_server_closed_is_replaced_and_the_get_sent_again() {
        // The first connection answers once and is closed instead of answering again.
        let (url, seen) = server(vec![ok("one"), Say::Close, ok("two")]).await;
        let gets = gets();
        let mut a = gets.send(&get(&format!("{url}/k"))).await.unwrap();
        assert_eq!(read_all(&mut a.body, 64).await, b"one");
        let mut b = gets.send(&get(&format!("{url}/k"))).await.unwrap();
        assert_eq!(read_all(&mut b.body, 64).await, b"two");
        let seen = seen.lock();
        assert_eq!(seen.len(), 3, "{seen:?}");
        assert!(seen[2].starts_with("conn 2: "), "{seen:?}");
    }

    #[tokio::test]
    async fn a_body_dropped_early_or_marked_close_does_not_go_back_to_the_pool() {
        let close = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok".to_vec();
        let (url, seen) = server(vec![ok("0123456789"), Say::Answer(close), ok("x")]).await;
        let gets = gets();
        let mut a = gets.send(&get(&format!("{url}/k"))).await.unwrap();
        let mut four = [0u8; 4];
        let n = a.body.read_into(&mut four).await.unwrap();
        assert!(n > 0 && n <= 4);
        drop(a);
        let mut b = gets.send(&get(&format!("{url}/k"))).await.unwrap();
        assert_eq!(read_all(&mut b.body, 64).await, b"ok");
        let mut c = gets.send(&get(&format!("{url}/k"))).await.unwrap();
        assert_eq!(read_all(&mut c.body, 64).await, b"x");
        let seen = seen.lock();
        let conns: Vec<_> = seen.iter().map(|s| &s[..6]).collect();
        assert_eq!(conns, ["conn 1", "conn 2", "conn 3"], "{seen:?}");
    }

    #[tokio::test]
    async fn a_short_body_or_a_bad_head_is_an_error() {
        let short = b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc".to_vec();
        let (url, _) = server(vec![Say::AnswerAndClose(short)]).await;
        let gets = gets();
        let mut a = gets.send(&get(&format!("{url}/k"))).await.unwrap();
        let mut buf = [0u8; 64];
        assert_eq!(a.body.read_into(&mut buf).await.unwrap(), 3);
        // The server closes the connection after its answer.
        let e = a.body.read_into(&mut buf).await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof);

        let (url, _) = server(vec![Say::Answer(b"SMTP ready\r\n\r\n".to_vec())]).await;
        let e = gets.send(&get(&format!("{url}/k"))).await.err().unwrap();
        assert_eq!(e.kind(), io::ErrorKind::InvalidData, "{e}");
        let e = gets.send(&get("ftp://127.0.0.1:1/k")).await.err().unwrap();
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput, "{e}");
    }

    #[tokio::test]
    async fn over_tls_a_body_is_read_and_its_connection_reused_past_the_session_tickets() {
        let (url, seen) = serve(vec![ok("hello over tls"), ok("again"), ok("third")], true).await;
        assert!(url.starts_with("https://127.0.0.1:"));
        let gets = gets();
        let mut a = gets.send(&get(&format!("{url}/b/k"))).await.unwrap();
        assert_eq!(read_all(&mut a.body, 5).await, b"hello over tls");
        // An idle moment: the tickets the server sent after the handshake are waiting.
        tokio::time::sleep(Duration::from_millis(50)).await;
        let mut b = gets.send(&get(&format!("{url}/b/k"))).await.unwrap();
        assert_eq!(read_all(&mut b.body, 100).await, b"again");
        let mut c = gets.send(&get(&format!("{url}/b/k"))).await.unwrap();
        assert_eq!(c.body.next_chunk().await.unwrap().unwrap(), "third");
        let seen = seen.lock();
        assert!(
            seen.iter().all(|s| s.starts_with("conn 1: ")),
            "one connection: {seen:?}"
        );
        // A port other than the scheme's own stays in Host, as SigV4 signs it.
        assert!(seen[0].contains("host: 127.0.0.1:"), "{seen:?}");
    }

    #[tokio::test]
    async fn over_tls_a_connection_the_server_closed_is_replaced() {
        let (url, seen) = serve(vec![ok("one"), Say::Close, ok("two")], true).await;
        let gets = gets();
        let mut a = gets.send(&get(&format!("{url}/k"))).await.unwrap();
        assert_eq!(read_all(&mut a.body, 64).await, b"one");
        tokio::time::sleep(Duration::from_millis(50)).await;
        let mut b = gets.send(&get(&format!("{url}/k"))).await.unwrap();
        assert_eq!(read_all(&mut b.body, 64).await, b"two");
        assert!(seen.lock().last().unwrap().starts_with("conn 2: "), "{:?}", seen.lock());
    }

    #[tokio::test]
    async fn a_certificate_no_trusted_root_signed_is_refused_by_name() {
        let (url, seen) = serve(vec![ok("secret")], true).await;
        let e = gets_trusting(rustls::RootCertStore::empty())
            .send(&get(&format!("{url}/k")))
            .await
            .err()
            .unwrap();
        assert!(e.to_string().contains("invalid peer certificate: UnknownIssuer"), "{e}");
        assert!(seen.lock().is_empty(), "no request sent");
    }
}
