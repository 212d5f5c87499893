//! The S3 server of the WAN benchmark (`bench/run`): s3vol's embedded S3-compatible
//! server (in memory) on a given address, with one bucket, and a plain-HTTP side door
//! that reports how many requests of each S3 operation it received, so the benchmark can
//! count what every client (s3vol and the peers alike) sent for a workload.
//!
//! ```sh
//! cargo run --release --example bench_server -- 10.77.0.2:9000 bench 10.77.0.2:9001
//! curl http://10.77.0.2:9001/stats   # {"GetObject":12,"ListObjectsV2":3,...}
//! curl http://10.77.0.2:9001/reset   # the same, then every counter back to zero
//! ```
//!
//! With a certificate and its key (PEM) after those three, the S3 endpoint is https
//! (`bench/run --tls`: the test CA's server certificate, `tests/it/tls/`).
//!
//! Credentials are the server's defaults ("s3vol-demo" / "s3vol-demo-secret"). Objects
//! live in memory: the benchmark deletes what it wrote between workloads. Runs until
//! killed.

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;

use s3vol::server::{RequestStats, ServerConfig, TlsIdentity, start_blocking};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (addr, bucket, stats_addr, tls) = match args.as_slice() {
        [addr, bucket, stats] => (parse_addr(addr), bucket.clone(), parse_addr(stats), None),
        [addr, bucket, stats, cert, key] => (
            parse_addr(addr),
            bucket.clone(),
            parse_addr(stats),
            Some(TlsIdentity {
                cert_chain_pem: read(cert),
                key_pem: read(key),
            }),
        ),
        _ => {
            eprintln!("usage: bench_server ADDR:PORT BUCKET STATS_ADDR:PORT [CERT.pem KEY.pem]");
            std::process::exit(2);
        }
    };
    // min_part_size 0: accept any part size, as the peers' defaults differ from S3's
    // 5 MiB floor only in their last part, and s3vol honours 5 MiB anyway.
    let server = start_blocking(ServerConfig {
        addr,
        min_part_size: 0,
        tls,
        ..ServerConfig::default()
    });
    server.backend().create_bucket(&bucket);
    let stats_listener = TcpListener::bind(stats_addr).unwrap_or_else(|e| {
        eprintln!("bench_server: cannot bind the stats address {stats_addr}: {e}");
        std::process::exit(1);
    });
    println!(
        "endpoint {} bucket {bucket} access_key {} secret_key {} stats http://{stats_addr}/stats",
        server.endpoint, server.access_key, server.secret_key
    );
    // The benchmark waits for this line before it mounts anything.
    std::io::stdout().flush().ok();

    let stats = Arc::clone(server.stats());
    for stream in stats_listener.incoming().flatten() {
        // One request per connection, answered inline: the benchmark asks rarely.
        if let Err(e) = answer_stats(stream, &stats) {
            eprintln!("bench_server: stats request: {e}");
        }
    }
    drop(server);
}

fn read(path: &str) -> Vec<u8> {
    std::fs::read(path).unwrap_or_else(|e| {
        eprintln!("bench_server: {path}: {e}");
        std::process::exit(2);
    })
}

fn parse_addr(text: &str) -> SocketAddr {
    text.parse().unwrap_or_else(|e| {
        eprintln!("bench_server: bad address {text:?}: {e}");
        std::process::exit(2);
    })
}

/// `GET /stats` answers the counters as JSON; `GET /reset` answers them and zeroes them.
fn answer_stats(stream: TcpStream, stats: &RequestStats) -> std::io::Result<()> {
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut request_line = String::new();
    reader.read_line(&mut request_line)?;
    // Drain the headers so the client does not see a reset connection.
    let mut header = String::new();
    while reader.read_line(&mut header)? > 2 {
        header.clear();
    }
    let path = request_line.split_whitespace().nth(1).unwrap_or("/");
    let (status, body) = match path {
        "/stats" => ("200 OK", counters_json(stats)),
        "/reset" => {
            let body = counters_json(stats);
            stats.reset();
            ("200 OK", body)
        }
        _ => ("404 Not Found", "{}".to_owned()),
    };
    let mut stream = stream;
    write!(
        stream,
        "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    )?;
    stream.flush()
}

fn counters_json(stats: &RequestStats) -> String {
    serde_json::to_string(&stats.snapshot()).unwrap_or_else(|_| "{}".to_owned())
}
