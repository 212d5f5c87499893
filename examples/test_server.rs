//! The embedded S3 server as a process of its own, for tools that run outside the test
//! harness (conformance/run): starts on 127.0.0.1 (a free port, or the one given), creates
//! the bucket, prints how to reach it, and serves until killed.
//!
//! ```sh
//! cargo run --release --example test_server -- [BUCKET] [PORT]
//! ```
//!
//! Prints one line per setting, `endpoint=http://127.0.0.1:PORT`, `bucket=...`,
//! `access_key=...`, `secret_key=...`, then `ready`.

use s3vol::server::{ServerConfig, start_blocking};
use std::net::{Ipv4Addr, SocketAddr};

fn main() {
    let mut args = std::env::args().skip(1);
    let bucket = args.next().unwrap_or_else(|| "test".to_owned());
    let port = match args.next().map(|p| p.parse::<u16>()) {
        None => 0,
        Some(Ok(port)) => port,
        Some(Err(e)) => {
            eprintln!("test_server: invalid port: {e}");
            std::process::exit(2);
        }
    };
    let server = start_blocking(ServerConfig {
        addr: SocketAddr::from((Ipv4Addr::LOCALHOST, port)),
        // Parts of any size, so that clients may use small part sizes.
        min_part_size: 0,
        ..ServerConfig::default()
    });
    server.backend().create_bucket(&bucket);
    println!("endpoint={}", server.endpoint);
    println!("bucket={bucket}");
    println!("access_key={}", server.access_key);
    println!("secret_key={}", server.secret_key);
    println!("ready");
    loop {
        std::thread::park();
    }
}
