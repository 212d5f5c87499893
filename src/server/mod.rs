//! An embedded S3-compatible server for `s3vol demo` and the integration tests.
//!
//! Requests go through three layers: a quirk layer emulating provider restrictions
//! (see [`Quirks`]), s3s (HTTP parsing and real SigV4 verification against one access
//! key), and [`MemoryBackend`], an in-memory store with S3's flat key space. A second
//! listener plays the CDN that Hugging Face redirects downloads to.
//!
//! ```no_run
//! # async fn demo() -> std::io::Result<()> {
//! let server = s3vol::server::start(s3vol::server::ServerConfig::default()).await?;
//! server.backend().create_bucket("bucket");
//! server.quirks().emulate_hugging_face();
//! println!("{} (key {}, secret {})", server.endpoint, server.access_key, server.secret_key);
//! # Ok(())
//! # }
//! ```

mod backend;
mod body;
mod buckets;
mod conditions;
mod front;
mod keys;
mod listing;
mod multipart;
mod objects;
mod operation;
mod percent;
mod quirks;
mod redirect;
mod rope;
mod s3_api;
mod stats;
mod tls;

use std::future::Future;
use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use crate::accept::AcceptBackoff;
use http::{Request, Response};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use s3s::StdError;
use s3s::service::S3ServiceBuilder;
use s3s::validation::NameValidation;
use tokio::net::TcpListener;
use tokio::task::{AbortHandle, JoinSet};
use tokio_rustls::TlsAcceptor;

pub use backend::{BackendError, MemoryBackend, StoredObject};
pub use keys::{AcceptedKeys, KeyPair};
pub use quirks::{InjectedFailure, Quirks, RequestFilter};
pub use rope::Rope;
pub use stats::RequestStats;
pub use tls::TlsIdentity;

use body::ResponseBody;
use front::Front;
use keys::CurrentKeyAuth;
use redirect::{Cdn, RedirectTarget};
use s3_api::S3Api;

/// The largest object or part the server accepts (and so buffers), as on S3.
const MAX_OBJECT_SIZE: u64 = 5 * 1024 * 1024 * 1024;

/// S3 rejects multipart parts below 5 MiB, except the last one.
const S3_MIN_PART_SIZE: u64 = 5 * 1024 * 1024;

#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Where the S3 endpoint listens; port 0 picks a free port. The redirect listener
    /// binds the same IP on a free port.
    pub addr: SocketAddr,
    pub access_key: String,
    pub secret_key: String,
    /// Smallest accepted size of every multipart part but the last (S3: 5 MiB).
    pub min_part_size: u64,
    /// Serve the S3 endpoint, and the CDN listener, over https with this identity.
    pub tls: Option<TlsIdentity>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            addr: SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
            access_key: "s3vol-demo".to_owned(),
            secret_key: "s3vol-demo-secret".to_owned(),
            min_part_size: S3_MIN_PART_SIZE,
            tls: None,
        }
    }
}

/// A server that runs until dropped or [`shutdown`](Self::shutdown).
pub struct RunningServer {
    /// `http://127.0.0.1:PORT` (`https://` with `ServerConfig::tls`), for path-style clients.
    pub endpoint: String,
    pub addr: SocketAddr,
    /// The CDN-like listener that `redirect_get` redirects downloads to.
    pub redirect_addr: SocketAddr,
    /// The key pair the server started with; [`keys`](Self::keys) rotates it.
    pub access_key: String,
    pub secret_key: String,
    keys: Arc<AcceptedKeys>,
    backend: Arc<MemoryBackend>,
    quirks: Arc<Quirks>,
    stats: Arc<RequestStats>,
    listeners: Vec<AbortHandle>,
    /// The runtime [`start_blocking`] created, shut down with the server.
    runtime: Option<tokio::runtime::Runtime>,
}

impl RunningServer {
    /// Direct access to the stored data, bypassing HTTP.
    pub fn backend(&self) -> &Arc<MemoryBackend> {
        &self.backend
    }

    /// The credentials the server accepts, replaceable while it runs.
    pub fn keys(&self) -> &Arc<AcceptedKeys> {
        &self.keys
    }

    pub fn quirks(&self) -> &Arc<Quirks> {
        &self.quirks
    }

    pub fn stats(&self) -> &Arc<RequestStats> {
        &self.stats
    }

    /// Stops both listeners and closes open connections (dropping does the same).
    pub fn shutdown(self) {}
}

impl Drop for RunningServer {
    fn drop(&mut self) {
        for listener in &self.listeners {
            listener.abort();
        }
        // Not `drop(runtime)`: that blocks, and panics if the server is dropped inside
        // another runtime.
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

/// Starts the server on the current tokio runtime.
pub async fn start(config: ServerConfig) -> io::Result<RunningServer> {
    let main_listener = TcpListener::bind(config.addr).await?;
    let redirect_listener = TcpListener::bind((config.addr.ip(), 0)).await?;
    let addr = main_listener.local_addr()?;
    let redirect_addr = redirect_listener.local_addr()?;
    let tls = config.tls.as_ref().map(TlsIdentity::acceptor).transpose()?;
    let scheme = if tls.is_some() { "https" } else { "http" };

    let backend = Arc::new(MemoryBackend::new(config.min_part_size));
    let quirks = Arc::new(Quirks::default());
    let stats = Arc::new(RequestStats::default());
    let redirect = Arc::new(RedirectTarget::new(scheme, redirect_addr));

    let mut s3 = S3ServiceBuilder::new(S3Api::new(Arc::clone(&backend)));
    s3.set_validation(AnyBucketName);
    let keys = Arc::new(AcceptedKeys::new(KeyPair {
        access_key: config.access_key.clone(),
        secret_key: config.secret_key.clone(),
        session_token: None,
    }));
    s3.set_auth(CurrentKeyAuth(Arc::clone(&keys)));
    let front = Front {
        s3: s3.build(),
        keys: Arc::clone(&keys),
        quirks: Arc::clone(&quirks),
        stats: Arc::clone(&stats),
        redirect: Arc::clone(&redirect),
    };
    let cdn = Cdn {
        backend: Arc::clone(&backend),
        quirks: Arc::clone(&quirks),
        stats: Arc::clone(&stats),
        target: redirect,
    };

    let listeners = vec![
        serve(main_listener, tls.clone(), move |req| front.clone().handle(req)),
        serve(redirect_listener, tls, move |req| cdn.clone().handle(req)),
    ];
    Ok(RunningServer {
        endpoint: format!("{scheme}://{addr}"),
        addr,
        redirect_addr,
        access_key: config.access_key,
        secret_key: config.secret_key,
        keys,
        backend,
        quirks,
        stats,
        listeners,
        runtime: None,
    })
}

/// Starts the server on a runtime of its own, for synchronous callers (FUSE mount
/// tests). Must not be called from within an async context.
///
/// # Panics
/// If the runtime cannot be created or the listeners cannot be bound.
pub fn start_blocking(config: ServerConfig) -> RunningServer {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("s3vol-test-server")
        .enable_all()
        .build()
        .expect("cannot create the S3 server runtime");
    let mut server = runtime.block_on(start(config)).expect("cannot start the S3 server");
    server.runtime = Some(runtime);
    server
}

/// Accepts HTTP/1.1 (keep-alive) connections, through TLS when `tls` is given, until
/// aborted. Connections live in a `JoinSet` owned by the accept task, so aborting it also
/// drops every connection.
fn serve<H, F, E>(listener: TcpListener, tls: Option<TlsAcceptor>, handler: H) -> AbortHandle
where
    H: Fn(Request<Incoming>) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Result<Response<ResponseBody>, E>> + Send + 'static,
    E: Into<StdError>,
{
    tokio::spawn(async move {
        let mut connections = JoinSet::new();
        let mut backoff = AcceptBackoff::new("S3 test server");
        loop {
            tokio::select! {
                accepted = listener.accept() => {
                    if let Some((stream, _)) = backoff.accepted(accepted).await {
                        let service = service_fn(handler.clone());
                        let tls = tls.clone();
                        connections.spawn(async move {
                            // A client hanging up mid-request, or refusing our certificate,
                            // is its business, not an error here.
                            let http = http1::Builder::new();
                            let _ = match tls {
                                Some(tls) => match tls.accept(stream).await {
                                    Ok(stream) => http.serve_connection(TokioIo::new(stream), service).await,
                                    Err(_) => return,
                                },
                                None => http.serve_connection(TokioIo::new(stream), service).await,
                            };
                        });
                    }
                }
                Some(_) = connections.join_next() => {}
            }
        }
    })
    .abort_handle()
}

/// Accepts every bucket name, like the direct API does: providers differ in their
/// naming rules (Runpod uses volume ids), and the tests should not trip over AWS's.
struct AnyBucketName;

impl NameValidation for AnyBucketName {
    fn validate_bucket_name(&self, _name: &str) -> bool {
        true
    }
}

/// Locks a mutex, ignoring poisoning: every critical section leaves the data
/// consistent, and a panicking test thread must not break the server for others.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}
