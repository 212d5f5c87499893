//! `--metrics-addr [HOST:]PORT`: Prometheus scrapes `GET /metrics` over plain HTTP/1.1,
//! one request per connection. The address is bound before the mount, so a port in use
//! fails the mount with a clear message instead of a mount nobody can watch.

use std::net::{SocketAddr, TcpListener, ToSocketAddrs};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// What renders the page, on each scrape.
pub type Render = Arc<dyn Fn() -> String + Send + Sync>;

/// Longest request head read; a scraper's is a few hundred bytes.
const MAX_HEAD: usize = 8 * 1024;
/// A client that sends nothing for this long is dropped.
const READ_TIMEOUT: Duration = Duration::from_secs(10);

/// `PORT`, `HOST:PORT` or `[V6]:PORT`; the host defaults to 127.0.0.1 (metrics say what a
/// mount reads and writes: only this machine sees them unless asked otherwise).
pub fn parse_addr(text: &str) -> Result<SocketAddr, String> {
    let text = text.trim();
    let with_host = if text.parse::<u16>().is_ok() {
        format!("127.0.0.1:{text}")
    } else {
        text.to_string()
    };
    with_host
        .to_socket_addrs()
        .map_err(|e| format!("--metrics-addr {text}: {e} (use PORT, HOST:PORT or [IPV6]:PORT)"))?
        .next()
        .ok_or_else(|| format!("--metrics-addr {text}: the host has no address"))
}

/// Binds `addr` now (so the mount fails if it cannot); `serve` answers on it.
pub fn bind(addr: SocketAddr) -> Result<TcpListener, String> {
    let listener = TcpListener::bind(addr).map_err(|e| format!("--metrics-addr {addr}: {e}"))?;
    listener
        .set_nonblocking(true)
        .map_err(|e| format!("--metrics-addr {addr}: {e}"))?;
    Ok(listener)
}

/// Answers scrapes until the runtime ends. Must run inside a tokio runtime.
pub fn serve(listener: TcpListener, render: Render) -> std::io::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::from_std(listener)?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        let mut backoff = crate::accept::AcceptBackoff::new("metrics endpoint");
        loop {
            let Some((stream, _)) = backoff.accepted(listener.accept().await).await else {
                continue;
            };
            let render = render.clone();
            tokio::spawn(async move { answer(stream, render).await });
        }
    });
    Ok(addr)
}

async fn answer(mut stream: tokio::net::TcpStream, render: Render) {
    let mut head = Vec::with_capacity(512);
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < MAX_HEAD {
        match tokio::time::timeout(READ_TIMEOUT, stream.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => head.extend_from_slice(&buf[..n]),
            _ => return,
        }
    }
    let request_line = String::from_utf8_lossy(&head);
    let mut words = request_line.split_whitespace();
    let (method, path) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
    let path = path.split('?').next().unwrap_or("");
    let (status, content_type, body) = match (method, path) {
        ("GET" | "HEAD", "/metrics") => ("200 OK", "text/plain; version=0.0.4; charset=utf-8", render()),
        ("GET" | "HEAD", "/") => (
            "200 OK",
            "text/plain; charset=utf-8",
            "s3vol: the metrics are at /metrics\n".to_string(),
        ),
        ("GET" | "HEAD", _) => ("404 Not Found", "text/plain; charset=utf-8", "not found\n".to_string()),
        _ => (
            "405 Method Not Allowed",
            "text/plain; charset=utf-8",
            "GET only\n".to_string(),
        ),
    };
    let mut response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    if method != "HEAD" {
        response.extend_from_slice(body.as_bytes());
    }
    let _ = stream.write_all(&response).await;
    let _ = stream.shutdown().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_default_to_the_loopback() {
        assert_eq!(parse_addr("9100").unwrap(), "127.0.0.1:9100".parse().unwrap());
        assert_eq!(parse_addr("0.0.0.0:9100").unwrap(), "0.0.0.0:9100".parse().unwrap());
        assert_eq!(parse_addr("[::1]:9100").unwrap(), "[::1]:9100".parse().unwrap());
        assert!(parse_addr("localhost").is_err());
        assert!(parse_addr("99999").is_err());
    }

    #[tokio::test]
    async fn serves_the_page_and_refuses_the_rest() {
        let listener = bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = serve(listener, Arc::new(|| "s3vol_up 1\n".to_string())).unwrap();
        let ask = |request: &'static str| async move {
            let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
            stream.write_all(request.as_bytes()).await.unwrap();
            let mut answer = String::new();
            stream.read_to_string(&mut answer).await.unwrap();
            answer
        };
        let page = ask("GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").await;
        assert!(page.starts_with("HTTP/1.1 200 OK\r\n"), "{page}");
        assert!(page.contains("version=0.0.4"), "{page}");
        assert!(page.ends_with("\r\n\r\ns3vol_up 1\n"), "{page}");
        assert!(ask("GET /nope HTTP/1.1\r\n\r\n").await.starts_with("HTTP/1.1 404"));
        assert!(ask("POST /metrics HTTP/1.1\r\n\r\n").await.starts_with("HTTP/1.1 405"));
    }
}
