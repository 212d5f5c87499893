//! A connection of `h1_get.rs`: plain TCP for http:// endpoints, TLS (rustls) over it for
//! https:// ones. Over TLS the body's plaintext goes from rustls straight into the
//! caller's buffer, as the socket's bytes do over plain TCP: hyper copied it into a
//! buffer of its own first, and the block cache copied it again (6 % of the daemon's
//! samples on a cold read over https, BENCHMARKS.md item 179).

use rustls::pki_types::ServerName;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

pub enum Conn {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

/// Where a connection goes: `host:port`, and the TLS name to verify for https.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Endpoint {
    pub authority: String,
    pub tls_name: Option<String>,
}

impl Endpoint {
    pub fn of(uri: &http::Uri) -> io::Result<Endpoint> {
        let invalid = |what: &str| io::Error::new(io::ErrorKind::InvalidInput, format!("{uri}: {what}"));
        let host = uri.host().ok_or_else(|| invalid("no host"))?;
        let (default_port, tls) = match uri.scheme_str() {
            Some("http") => (80, false),
            Some("https") => (443, true),
            _ => return Err(invalid("not an http:// or https:// URL")),
        };
        Ok(Endpoint {
            authority: format!("{host}:{}", uri.port_u16().unwrap_or(default_port)),
            // An IPv6 literal's brackets belong to the URL, not to the name verified.
            tls_name: tls.then(|| host.trim_start_matches('[').trim_end_matches(']').to_string()),
        })
    }
}

/// The TLS set-up of our connections: rustls with aws-lc, as the SDK's, verifying against
/// `roots`, offering HTTP/1.1 only.
pub fn client_config(roots: rustls::RootCertStore) -> Result<Arc<rustls::ClientConfig>, String> {
    let mut config = rustls::ClientConfig::builder_with_provider(rustls::crypto::aws_lc_rs::default_provider().into())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS set-up: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Opens connections, each bounded by the connect timeout, TLS handshake included.
pub struct Connector {
    pub timeout: Duration,
    pub tls: Arc<rustls::ClientConfig>,
}

impl Connector {
    pub async fn connect(&self, to: &Endpoint) -> io::Result<Conn> {
        let authority = &to.authority;
        let timed_out = || io::Error::new(io::ErrorKind::TimedOut, format!("connect to {authority}: timed out"));
        tokio::time::timeout(self.timeout, async {
            let tcp = TcpStream::connect(authority).await?;
            // A GET is one small write; it must not wait for the last answer's ACK.
            tcp.set_nodelay(true)?;
            let Some(name) = &to.tls_name else {
                return Ok(Conn::Plain(tcp));
            };
            let name = ServerName::try_from(name.clone())
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, format!("TLS name {name}: {e}")))?;
            let tls = TlsConnector::from(self.tls.clone()).connect(name, tcp).await?;
            Ok(Conn::Tls(Box::new(tls)))
        })
        .await
        .map_err(|_| timed_out())?
    }
}

impl Conn {
    /// Whether an idle connection can carry a request: it has nothing to read. Something
    /// to read is the server's close (a FIN, TLS's close_notify) or bytes no request asked
    /// for; a TLS session ticket is taken in by rustls and leaves it quiet. No system call
    /// while the socket is quiet.
    pub fn is_quiet(&mut self) -> bool {
        let mut cx = Context::from_waker(Waker::noop());
        let mut byte = [0u8; 1];
        let mut buf = ReadBuf::new(&mut byte);
        Pin::new(self).poll_read(&mut cx, &mut buf).is_pending()
    }
}

impl AsyncRead for Conn {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Conn {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_write(cx, data),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, data),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_flush(cx),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}
