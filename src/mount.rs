//! `s3vol mount`: check everything that can fail before the mount is live, daemonize,
//! mount, serve until unmounted or signalled.

use crate::cache_dir::{CacheSize, lock_cache_dir};
use crate::cli::{KernelOption, MountArgs, MountOptions};
use crate::control::{self, DirtyFile, FlushReport, MountStatus, UploadFailure};
use crate::fs::{Defaults, Fs, FsConfig, Settle};
use crate::fuse::FuseAdapter;
use crate::logging::{self, LogTarget};
use crate::metrics::Metrics;
use crate::metrics_endpoint;
use crate::provider::Resolved;
use crate::signals;
use crate::store::s3::S3Store;
use crate::store::{CaBundle, ListRequest, ObjectStore, RetryPolicy};
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Tells the process that started the mount whether it went live.
pub struct Ready {
    pipe: Option<std::fs::File>,
    /// Printed on standard output once the mount is live and its control socket is up.
    announce: Option<String>,
}

impl Ready {
    pub fn foreground() -> Ready {
        Ready {
            pipe: None,
            announce: None,
        }
    }

    /// In the foreground, printing `text` once the mount is live.
    pub fn announcing(text: String) -> Ready {
        Ready {
            pipe: None,
            announce: Some(text),
        }
    }

    pub fn ok(&mut self) {
        if let Some(mut pipe) = self.pipe.take() {
            let _ = pipe.write_all(b"OK\n");
        }
        if let Some(text) = self.announce.take() {
            let mut out = std::io::stdout().lock();
            let _ = out.write_all(text.as_bytes());
            let _ = out.flush();
        }
    }

    pub fn fail(&mut self, message: &str) {
        match self.pipe.take() {
            Some(mut pipe) => {
                let _ = pipe.write_all(message.as_bytes());
            }
            None => eprintln!("s3vol: {message}"),
        }
    }
}

pub fn run(args: MountArgs) -> ExitCode {
    let mut ready = Ready::foreground();
    let result = (|| {
        let resolved = args.connect.resolve()?;
        let settings = args.connect.settings()?;
        let mountpoint = check_mountpoint(&args.mountpoint)?;
        if !args.options.foreground {
            ready = daemonize()?;
        }
        let target = match (&args.options.log_file, args.options.foreground) {
            (Some(path), _) => LogTarget::File(path),
            (None, true) => LogTarget::Stderr,
            (None, false) => LogTarget::Syslog,
        };
        logging::init(target, args.options.debug)?;
        let runtime = runtime()?;
        let metrics = settings.metrics.clone();
        let ca_bundle = settings.ca_bundle.clone();
        let store = runtime.block_on(async {
            let store = S3Store::connect(&resolved, settings).await?;
            verify_bucket(&store, &resolved).await?;
            tokio::spawn({
                let store = store.clone();
                async move { store.warm_up(WARM_CONNECTIONS).await }
            });
            Ok::<_, String>(store)
        })?;
        serve(
            &runtime,
            Arc::new(store),
            metrics,
            resolved,
            &args.connect.source,
            &mountpoint,
            &args.options,
            ca_bundle,
            &mut ready,
        )
    })();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            tracing::error!("{message}");
            ready.fail(&message);
            ExitCode::FAILURE
        }
    }
}

/// Longest wait at unmount for blocks queued for the shared cache tier.
const SHARED_CACHE_SETTLE: std::time::Duration = std::time::Duration::from_secs(5);
/// Longest wait at unmount for blocks queued for the disk cache.
const DISK_CACHE_SETTLE: std::time::Duration = std::time::Duration::from_secs(5);

/// Connections opened ahead of the first requests: a lookup's LIST and HEAD, then the GET.
const WARM_CONNECTIONS: usize = 4;

pub fn runtime() -> Result<tokio::runtime::Runtime, String> {
    // glibc gives every thread that allocates its own arena: with FUSE, runtime and
    // blocking-pool threads that is memory held far beyond --memory-limit. Two arenas
    // keep the daemon's footprint close to what it actually holds.
    // SAFETY: mallopt only tunes the allocator; called before any thread starts.
    unsafe { libc::mallopt(libc::M_ARENA_MAX, 2) };
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("s3vol-io")
        .build()
        .map_err(|e| format!("cannot start the async runtime: {e}"))
}

/// The mountpoint must be an existing, empty directory, and FUSE must be available.
pub fn check_mountpoint(path: &Path) -> Result<PathBuf, String> {
    let shown = path.display();
    let meta = std::fs::metadata(path).map_err(|e| format!("mountpoint {shown}: {e}"))?;
    if !meta.is_dir() {
        return Err(format!("mountpoint {shown} is not a directory"));
    }
    let mut entries = std::fs::read_dir(path).map_err(|e| format!("mountpoint {shown}: {e}"))?;
    if entries.next().is_some() {
        return Err(format!("mountpoint {shown} is not empty"));
    }
    if !Path::new("/dev/fuse").exists() {
        return Err("/dev/fuse is missing: load the fuse module (modprobe fuse) or install fuse3".into());
    }
    std::fs::canonicalize(path).map_err(|e| format!("mountpoint {shown}: {e}"))
}

/// One LIST of the mount root: wrong credentials, a missing bucket or an unreachable
/// endpoint show up here, before the mount, with a few quick retries only.
async fn verify_bucket(store: &S3Store, resolved: &Resolved) -> Result<(), String> {
    let req = ListRequest {
        prefix: resolved.prefix.clone(),
        max_keys: Some(1),
        ..Default::default()
    };
    let quick = RetryPolicy {
        max_attempts: 3,
        ..RetryPolicy::default()
    };
    quick
        .run("check", || store.list_page(&req))
        .await
        .map(|_| ())
        .map_err(|e| {
            let endpoint = resolved.endpoint.as_deref().unwrap_or("the AWS endpoint");
            format!("cannot list bucket '{}' at {endpoint}: {e}", resolved.bucket)
        })
}

/// Forks; the parent waits for the child to report the mount live (exit 0) or failed
/// (its message, exit 1). Returns in the child.
fn daemonize() -> Result<Ready, String> {
    let (read_end, write_end): (OwnedFd, OwnedFd) = nix::unistd::pipe().map_err(|e| format!("pipe: {e}"))?;
    // SAFETY: no other thread exists yet (the runtime starts after this).
    match unsafe { nix::unistd::fork() }.map_err(|e| format!("fork: {e}"))? {
        nix::unistd::ForkResult::Parent { .. } => {
            drop(write_end);
            let mut answer = String::new();
            let _ = std::fs::File::from(read_end).read_to_string(&mut answer);
            if answer == "OK\n" {
                std::process::exit(0);
            }
            let answer = if answer.is_empty() {
                "the mount daemon exited before the mount was live".into()
            } else {
                answer
            };
            eprintln!("s3vol: {}", answer.trim_end());
            std::process::exit(1);
        }
        nix::unistd::ForkResult::Child => {
            drop(read_end);
            let _ = nix::unistd::setsid();
            if let Ok(null) = std::fs::OpenOptions::new().read(true).write(true).open("/dev/null") {
                for fd in [0, 1, 2] {
                    // SAFETY: dup2 onto the standard descriptors of this process.
                    unsafe { libc::dup2(null.as_raw_fd(), fd) };
                }
            }
            Ok(Ready {
                pipe: Some(std::fs::File::from(write_end)),
                announce: None,
            })
        }
    }
}

pub fn fs_config(options: &MountOptions) -> FsConfig {
    FsConfig {
        defaults: Defaults {
            uid: options.uid.unwrap_or_else(|| nix::unistd::getuid().as_raw()),
            gid: options.gid.unwrap_or_else(|| nix::unistd::getgid().as_raw()),
            file_mode: options.file_mode,
            dir_mode: options.dir_mode,
            keep_special_modes: options.keep_special_modes,
        },
        metadata_ttl: options.metadata_ttl,
        read_only: options.read_only,
        memory_limit: options.memory_limit,
        // About 4 KiB of memory limit per cached name (a node takes a few hundred bytes).
        max_nodes: (options.memory_limit / 4096).max(4096) as usize,
        cache_dir: options.cache_dir.clone().unwrap_or_else(default_cache_dir),
        upload_mode: options.upload_mode(),
        list_prefetch: options.list_prefetch,
        small_file_prefetch: options.small_file_prefetch,
        passthrough: options.passthrough,
        ..FsConfig::default()
    }
}

/// `$XDG_CACHE_HOME/s3vol`, `~/.cache/s3vol`, or `/var/cache/s3vol` for root.
pub fn default_cache_dir() -> PathBuf {
    if nix::unistd::geteuid().is_root() {
        return PathBuf::from("/var/cache/s3vol");
    }
    if let Some(dir) = std::env::var_os("XDG_CACHE_HOME") {
        return PathBuf::from(dir).join("s3vol");
    }
    match std::env::var_os("HOME") {
        Some(home) => PathBuf::from(home).join(".cache/s3vol"),
        None => std::env::temp_dir().join(format!("s3vol-{}", nix::unistd::geteuid())),
    }
}

/// Mounts and serves until unmounted (`fusermount3 -u`, `s3vol unmount`) or signalled.
#[allow(clippy::too_many_arguments)]
pub fn serve(
    runtime: &tokio::runtime::Runtime,
    store: Arc<dyn ObjectStore>,
    metrics: Arc<Metrics>,
    resolved: Resolved,
    source: &str,
    mountpoint: &Path,
    options: &MountOptions,
    // Trusted by the shared cache tier's connections too.
    ca_bundle: Option<CaBundle>,
    ready: &mut Ready,
) -> Result<(), String> {
    match crate::limits::raise_open_files_limit() {
        Ok(limit) => tracing::debug!("open files limit: {limit}"),
        Err(e) => tracing::warn!("cannot raise the open files limit: {e}"),
    }
    let mut config = fs_config(options);
    // Checked before anything is mounted: `s3vol unmount` needs the socket.
    control::prepare_socket_dir()?;
    // One mount per cache directory: a second one gets its own subdirectory.
    let (cache_root, _cache_lock) = lock_cache_dir(&config.cache_dir)?;
    config.cache_dir = cache_root;
    if options.cache_size != CacheSize::Bytes(0) {
        let budget = options.cache_size.resolve(&config.cache_dir);
        config.disk_cache = Some((budget, options.cache_min_free.resolve(&config.cache_dir)));
    }
    config.staging_min_free = match options.staging_min_free {
        Some(floor) => floor.resolve(&config.cache_dir),
        // A small disk (a tmpfs) keeps a share of itself, a large one 1 GiB.
        None => CacheSize::Percent(5.0).resolve(&config.cache_dir).min(1 << 30),
    };
    config.shared_cache = runtime.block_on(crate::shared_cache::connect(
        &options.shared,
        &resolved,
        &store,
        options.memory_limit,
        ca_bundle,
    ))?;
    let cache_dir = config.cache_dir.clone();
    let fs = Fs::new(store, resolved, config);
    // What a killed daemon left in the journal goes out before any file is served.
    let recovered = runtime.block_on(fs.recover());
    if !recovered.failed.is_empty() {
        tracing::error!(
            "{} journaled files could not be recovered; see above",
            recovered.failed.len()
        );
    }
    if !recovered.retrying.is_empty() {
        tracing::warn!(
            "{} journaled files are uploaded in the background once the store answers; see above",
            recovered.retrying.len()
        );
    }
    let mut fuse_config = fuser::Config::default();
    fuse_config.mount_options = vec![
        fuser::MountOption::FSName(source.to_string()),
        fuser::MountOption::Subtype("s3vol".into()),
        fuser::MountOption::DefaultPermissions,
    ];
    let flags = kernel_flags(&options.kernel_option);
    if flags.contains(&fuser::MountOption::Suid) {
        tracing::warn!("{}", suid_warning(options.keep_special_modes));
    }
    fuse_config.mount_options.extend(flags);
    if options.read_only {
        fuse_config.mount_options.push(fuser::MountOption::RO);
    }
    if options.allow_other {
        fuse_config.acl = fuser::SessionACL::All;
    }
    fuse_config.n_threads = Some(options.fuse_threads);
    fuse_config.clone_fd = true;
    // Bound before the mount: a port in use fails it rather than leave it unwatched.
    let metrics_listener = options.metrics_addr.map(metrics_endpoint::bind).transpose()?;
    let adapter = FuseAdapter::new(fs.clone(), runtime.handle().clone(), metrics.clone());
    let signals = {
        let _runtime = runtime.enter();
        signals::Watched::start().map_err(|e| format!("cannot watch SIGTERM, SIGINT and SIGHUP: {e}"))?
    };
    let mut session = fuser::Session::new(adapter, mountpoint, &fuse_config)
        .map_err(|e| format!("cannot mount on {}: {e}", mountpoint.display()))?;
    let notifier = session.notifier();
    let entries = session.notifier();
    let pages = session.notifier();
    fs.on_pages_fetched(Arc::new(move |ino, offset, data| {
        pages
            .store(fuser::INodeNo(ino), offset, data)
            .map_err(|e| tracing::debug!("putting {} bytes of inode {ino} into the page cache: {e}", data.len()))
            .is_ok()
    }));
    fs.on_entry_gone(Arc::new(move |parent, name| {
        if let Err(e) = entries.inval_entry(fuser::INodeNo(parent), std::ffi::OsStr::new(&name)) {
            tracing::debug!("telling the kernel {name:?} under inode {parent} is gone: {e}");
        }
    }));
    fs.on_attrs_stale(Arc::new(move |ino| {
        // A negative offset: attributes only, the kernel's pages stay.
        if let Err(e) = notifier.inval_inode(fuser::INodeNo(ino), -1, 0) {
            tracing::debug!("telling the kernel inode {ino} changed: {e}");
        }
    }));
    let started = Instant::now();
    let unmounter = session.unmount_callable();
    signals.serve(runtime, fs.clone(), unmounter, mountpoint.to_path_buf());
    let mp = mountpoint.to_path_buf();
    runtime.spawn_blocking(move || raise_kernel_readahead(&mp));
    let socket = control::socket_path(mountpoint);
    let status = StatusSource {
        fs: fs.clone(),
        metrics: metrics.clone(),
        source: source.to_string(),
        mountpoint: mountpoint.to_path_buf(),
        cache_dir,
        started,
    };
    if let Some(listener) = metrics_listener {
        let (status, budget) = (status.clone(), options.memory_limit);
        let render: metrics_endpoint::Render =
            Arc::new(move || metrics.render(&status.status(), resident_bytes(), budget));
        let _runtime = runtime.enter();
        let addr = metrics_endpoint::serve(listener, render).map_err(|e| format!("--metrics-addr: {e}"))?;
        tracing::info!("metrics at http://{addr}/metrics");
    }
    if let Err(e) = runtime.block_on(serve_control(&socket, status)) {
        tracing::warn!(
            "control socket {}: {e}; s3vol status will not see this mount",
            socket.display()
        );
    }
    tracing::info!("mounted {source} on {}", mountpoint.display());
    ready.ok();
    let result = session.run().map_err(|e| format!("FUSE session: {e}"));
    fs.note_unmounted();
    // Uploads still pending when the kernel let go of the mount.
    if runtime.block_on(fs.sync_all(Settle::OneAttempt)).is_err() {
        tracing::error!("some dirty data could not be uploaded before exit; see the lines above");
    }
    runtime.block_on(fs.settle_shared_cache(SHARED_CACHE_SETTLE));
    runtime.block_on(fs.settle_disk_cache(DISK_CACHE_SETTLE));
    fs.close_journal();
    fs.save_remembered_metadata();
    let _ = std::fs::remove_file(&socket);
    tracing::info!("unmounted {}", mountpoint.display());
    result
}

/// What `suid` lets whoever writes the bucket do, said once at mount.
pub fn suid_warning(keep_special_modes: bool) -> String {
    let bits = if keep_special_modes {
        "and --keep-special-modes keeps the setuid bits that objects' metadata declare: \
         anyone who can write the bucket can plant a program that runs as its declared owner, \
         root included"
    } else {
        "setuid bits from the bucket's metadata are dropped, but a setuid program written \
         through this mount runs with its owner's privileges"
    };
    format!("mounted with suid: {bits}; use nosuid (the default) unless you need it")
}

/// nodev, nosuid and noatime unless `--kernel-option` (fstab: `dev`, `suid`, `atime`)
/// asks for the opposite; the last word on a flag wins, as in mount(8).
pub fn kernel_flags(chosen: &[KernelOption]) -> Vec<fuser::MountOption> {
    use fuser::MountOption::{Atime, Dev, Exec, NoAtime, NoDev, NoExec, NoSuid, Suid};
    let mut flags = vec![NoAtime, NoDev, NoSuid];
    for option in chosen {
        let (wanted, opposite) = match option {
            KernelOption::Nosuid => (NoSuid, Suid),
            KernelOption::Suid => (Suid, NoSuid),
            KernelOption::Nodev => (NoDev, Dev),
            KernelOption::Dev => (Dev, NoDev),
            KernelOption::Noexec => (NoExec, Exec),
            KernelOption::Exec => (Exec, NoExec),
            KernelOption::Noatime => (NoAtime, Atime),
            KernelOption::Atime => (Atime, NoAtime),
        };
        flags.retain(|flag| *flag != wanted && *flag != opposite);
        flags.push(wanted);
    }
    flags
}

/// FUSE caps the kernel's readahead at 128 KiB (the INIT reply can only lower it); root
/// can raise it through sysfs, so sequential reads arrive as 1 MiB requests. Runs once the
/// session serves requests (the stat below is answered by this mount).
fn raise_kernel_readahead(mountpoint: &Path) {
    use std::os::unix::fs::MetadataExt;
    if !nix::unistd::geteuid().is_root() {
        return;
    }
    let Ok(meta) = std::fs::metadata(mountpoint) else {
        return;
    };
    let dev = meta.dev();
    let path = format!("/sys/class/bdi/{}:{}/read_ahead_kb", libc::major(dev), libc::minor(dev));
    if let Err(e) = std::fs::write(&path, "4096") {
        tracing::debug!("{path}: {e}; kernel readahead stays at its default");
    }
}

/// The daemon's resident memory, from /proc/self/statm (pages).
fn resident_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    // SAFETY: sysconf only reads a system constant.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    Some(pages * u64::try_from(page).ok()?)
}

#[derive(Clone)]
struct StatusSource {
    fs: Arc<Fs>,
    metrics: Arc<Metrics>,
    source: String,
    mountpoint: PathBuf,
    cache_dir: PathBuf,
    started: Instant,
}

impl StatusSource {
    fn status(&self) -> MountStatus {
        let cache = self.fs.cache_report();
        let store = self.fs.store_stats();
        let stats = &self.fs.stats;
        let dirty = self.fs.dirty_report();
        let (received_bytes, sent_bytes) = self.metrics.bytes();
        MountStatus {
            source: self.source.clone(),
            mountpoint: self.mountpoint.display().to_string(),
            pid: std::process::id(),
            uptime_secs: self.started.elapsed().as_secs(),
            read_only: self.fs.config().read_only,
            cache_bytes: cache.block_bytes,
            cache_budget: cache.block_budget,
            cache_hits: cache.hits,
            cache_misses: cache.misses,
            fetched_bytes: cache.fetched_bytes,
            open_files: cache.open_files,
            requests: store.requests,
            request_errors: store.errors,
            requests_in_flight: store.in_flight,
            list_requests: stats.list_requests.load(std::sync::atomic::Ordering::Relaxed),
            head_requests: stats.head_requests.load(std::sync::atomic::Ordering::Relaxed),
            inodes: self.fs.inode_count() as u64,
            dirty_files: dirty.files,
            dirty_bytes: dirty.bytes,
            dirty_memory: dirty.memory,
            uploads_pending: dirty.pending_uploads,
            uploads_failed: dirty.failed_uploads,
            uploads_in_flight: dirty.uploads_in_flight,
            journal_records: dirty.journal_records,
            conflicts: dirty.conflicts,
            cache_dir: self.cache_dir.display().to_string(),
            disk_bytes: cache.disk_bytes,
            disk_budget: cache.disk_budget,
            disk_hits: cache.disk_hits,
            disk_misses: cache.disk_misses,
            disk_evictions: cache.disk_evictions,
            disk_corrupt: cache.disk_corrupt,
            passthrough_opens: cache.passthrough_opens,
            upload_failures: self.upload_failures(),
            largest_dirty: dirty
                .largest
                .into_iter()
                .map(|(path, bytes)| DirtyFile { path, bytes })
                .collect(),
            received_bytes,
            sent_bytes,
            shared_hits: cache.shared.hits,
            shared_misses: cache.shared.misses,
            shared_rejected: cache.shared.rejected,
            shared_errors: cache.shared.errors,
            shared_writes: cache.shared.writes,
            shared_writes_dropped: cache.shared.writes_dropped,
            shared_bytes: cache.shared.bytes_read,
            prefetched_files: cache.prefetched_files,
            prefetched_files_used: cache.prefetched_files_used,
            pushed_to_kernel_bytes: cache.pushed_to_kernel_bytes,
        }
    }

    fn upload_failures(&self) -> Vec<UploadFailure> {
        self.fs
            .upload_refusals()
            .into_iter()
            .map(|(path, reason)| UploadFailure { path, reason })
            .collect()
    }

    /// `flush` (unmount: one more try each) and `sync` (until uploaded or refused).
    async fn flush(&self, how: Settle) -> FlushReport {
        let before = self.fs.dirty_report();
        let error = self.fs.sync_all(how).await.err().map(|e| match e.0 {
            libc::EIO => "some files are not in the bucket; see the log".to_string(),
            errno => format!(
                "upload failed: {}; see the log",
                std::io::Error::from_raw_os_error(errno)
            ),
        });
        FlushReport {
            files: before.files,
            bytes: before.bytes,
            error,
            refused: self.upload_failures(),
        }
    }

    async fn discard(&self, path: &str) -> String {
        match self.fs.discard(path).await {
            Ok(()) => "{\"discarded\":true}".to_string(),
            Err(e) => serde_json::json!({
                "error": format!("{path}: {}", match e.0 {
                    libc::ENOENT => "no refused upload of this file".to_string(),
                    errno => std::io::Error::from_raw_os_error(errno).to_string(),
                })
            })
            .to_string(),
        }
    }
}

/// Answers `status` on the mount's control socket (owner-only permissions).
async fn serve_control(socket: &Path, source: StatusSource) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    // Its directory is private (`control::prepare_socket_dir`, at the start of `serve`).
    let _ = std::fs::remove_file(socket);
    let listener = tokio::net::UnixListener::bind(socket)?;
    std::fs::set_permissions(socket, std::fs::Permissions::from_mode(0o600))?;
    let source = Arc::new(source);
    tokio::spawn(async move {
        let mut backoff = crate::accept::AcceptBackoff::new("control socket");
        loop {
            let Some((stream, _)) = backoff.accepted(listener.accept().await).await else {
                continue;
            };
            let source = source.clone();
            tokio::spawn(async move {
                let (read, mut write) = stream.into_split();
                let mut line = String::new();
                let mut reader = BufReader::new(read);
                if tokio::time::timeout(Duration::from_secs(10), reader.read_line(&mut line))
                    .await
                    .is_err()
                {
                    return;
                }
                let line = line.trim_end_matches('\n');
                let reply = match line {
                    "status" => serde_json::to_string(&source.status()).unwrap_or_default(),
                    "flush" => serde_json::to_string(&source.flush(Settle::OneAttempt).await).unwrap_or_default(),
                    "sync" => serde_json::to_string(&source.flush(Settle::Uploaded).await).unwrap_or_default(),
                    other if other.starts_with("discard ") => source.discard(&other["discard ".len()..]).await,
                    "cache-clear" => format!("{{\"removed\":{}}}", source.fs.clear_disk_cache()),
                    other => format!("{{\"error\":\"unknown command {other:?}\"}}"),
                };
                let _ = write.write_all(format!("{reply}\n").as_bytes()).await;
            });
        }
    });
    Ok(())
}
