//! The command line: clap definitions and their translation into profile overrides and
//! store settings.

use crate::cache_dir::CacheSize;
use crate::credentials::CredentialsFile;
use crate::option_values::{parse_memory_limit, parse_nonzero_size, parse_positive, parse_ttl};
use crate::provider::{ChecksumPolicy, Markers, Overrides, Resolved};
use crate::source::Source;
use crate::store::s3::S3Settings;
use crate::store::{CaBundle, RetryPolicy};
use clap::{Args, Parser, Subcommand, ValueEnum};
use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, Parser)]
#[command(
    name = "s3vol",
    version,
    about = "Mount S3-compatible object storage (Runpod network volumes, Hugging Face Storage Buckets, CoreWeave AI Object Storage, AWS S3) as a local directory"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

// Parsed once per process: the size of the mount's variant costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Mount SOURCE on MOUNTPOINT; returns once the mount is live (-f stays in front).
    Mount(MountArgs),
    /// Flush dirty data, then unmount MOUNTPOINT.
    Unmount(UnmountArgs),
    /// Wait until everything written before it is in the bucket (every mount, or MOUNTPOINT's).
    Sync(SyncArgs),
    /// Drop the local changes of files whose upload the bucket refused (see `status`).
    Discard(DiscardArgs),
    /// Show the mounts of this user: source, cache use, requests.
    Status(StatusArgs),
    /// Start an embedded S3 server with sample data on 127.0.0.1 and mount it.
    Demo(DemoArgs),
    /// Connect to SOURCE, list one page and print the resolved profile and the first keys.
    Check(CheckArgs),
    /// mount(8)'s helper (installed as /sbin/mount.s3vol): SOURCE MOUNTPOINT [-sfnv] [-o OPTIONS].
    MountHelper(MountHelperArgs),
    /// Manage the persistent block cache.
    #[command(subcommand)]
    Cache(CacheCommand),
    /// Manage a shared cache tier (see --shared-cache).
    #[command(subcommand)]
    SharedCache(SharedCacheCommand),
}

#[derive(Debug, Subcommand)]
pub enum SharedCacheCommand {
    /// Delete the least recently written blocks under SOURCE (every source's blocks in the
    /// tier bucket and prefix) until at most --max-size remain.
    Prune(PruneArgs),
}

#[derive(Debug, Args)]
pub struct PruneArgs {
    /// The tier: s3://BUCKET[/PREFIX] as given to --shared-cache, with its endpoint options.
    #[command(flatten)]
    pub connect: ConnectArgs,
    /// Bytes of blocks to keep (e.g. 500GiB).
    #[arg(long, value_parser = crate::option_values::parse_size, value_name = "SIZE")]
    pub max_size: u64,
    /// Print what would be deleted, delete nothing.
    #[arg(long)]
    pub dry_run: bool,
}

#[derive(Debug, Subcommand)]
pub enum CacheCommand {
    /// Empty the block cache (safe while mounted: the mount using it empties it).
    Clear {
        /// The cache directory (default: the same default as `mount`).
        #[arg(long, value_name = "DIR")]
        cache_dir: Option<PathBuf>,
    },
}

#[derive(Debug, Clone, Args)]
pub struct MountArgs {
    #[command(flatten)]
    pub connect: ConnectArgs,
    /// An empty directory to mount on.
    pub mountpoint: PathBuf,
    #[command(flatten)]
    pub options: MountOptions,
}

/// How the mount behaves, apart from where the bucket is.
#[derive(Debug, Clone, Args)]
pub struct MountOptions {
    /// Stay in the foreground and log to stderr.
    #[arg(short, long)]
    pub foreground: bool,
    /// Mount read-only: writes fail with EROFS.
    #[arg(long)]
    pub read_only: bool,
    /// Memory for cached blocks and dirty data together (e.g. 1GiB, 512M).
    #[arg(long, value_parser = parse_memory_limit, default_value = "1GiB", value_name = "SIZE")]
    pub memory_limit: u64,
    /// Seconds that names and attributes are trusted before asking the bucket again; `inf`
    /// trusts them until the mount ends (only this machine changes the bucket).
    #[arg(long, value_parser = parse_ttl, default_value = "5", value_name = "SECS", allow_negative_numbers = true)]
    pub metadata_ttl: Duration,
    /// Owner of files and directories without persisted metadata (default: the mounting user).
    #[arg(long)]
    pub uid: Option<u32>,
    /// Group of files and directories without persisted metadata (default: the mounting user's).
    #[arg(long)]
    pub gid: Option<u32>,
    /// Permission bits of files without persisted metadata, octal.
    #[arg(long, value_parser = parse_mode, default_value = "644", value_name = "OCTAL")]
    pub file_mode: u16,
    /// Permission bits of directories without persisted metadata, octal.
    #[arg(long, value_parser = parse_mode, default_value = "755", value_name = "OCTAL")]
    pub dir_mode: u16,
    /// Let other users access the mount (needs user_allow_other in /etc/fuse.conf for non-root).
    #[arg(long)]
    pub allow_other: bool,
    /// Keep setuid, setgid and sticky bits read from the bucket's metadata (dropped by default:
    /// whoever writes the bucket could plant a setuid program).
    #[arg(long)]
    pub keep_special_modes: bool,
    /// Log every request (same as RUST_LOG=s3vol=debug).
    #[arg(long)]
    pub debug: bool,
    /// Write the log here instead of syslog when in the background.
    #[arg(long, value_name = "FILE")]
    pub log_file: Option<PathBuf>,
    /// Directory for staging files of dirty data (default: $XDG_CACHE_HOME/s3vol, /var/cache/s3vol for root).
    #[arg(long, value_name = "DIR")]
    pub cache_dir: Option<PathBuf>,
    /// Largest size of the persistent block cache under --cache-dir: bytes (e.g. 20GiB) or a share of its disk (e.g. 10%); 0 disables it.
    #[arg(long, value_parser = CacheSize::parse, default_value = "10%", value_name = "SIZE|PCT")]
    pub cache_size: CacheSize,
    /// Free space the block cache always leaves on its disk: bytes or a share of the disk.
    #[arg(long, value_parser = CacheSize::parse, default_value = "5%", value_name = "SIZE|PCT")]
    pub cache_min_free: CacheSize,
    /// When close() returns: `background` once the file is journaled on local disk (the upload follows; `s3vol sync` waits for it), `on-close` once it is in the bucket (close reports the upload's error).
    #[arg(long, value_enum, default_value = "background", value_name = "MODE")]
    pub upload_mode: UploadModeArg,
    /// Older spelling of --upload-mode: true is on-close, false is background.
    #[arg(long, hide = true, action = clap::ArgAction::Set, value_name = "BOOL")]
    pub upload_on_close: Option<bool>,
    /// Free space writes leave on the cache directory's disk: beyond it a write waits for uploads, then fails with ENOSPC. Bytes or a share of the disk (default: the smaller of 1GiB and 5%).
    #[arg(long, value_parser = CacheSize::parse, value_name = "SIZE|PCT")]
    pub staging_min_free: Option<CacheSize>,
    /// Reading a directory lists its subdirectories in the background (16 at once), so tree walks need no round trip per directory.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set, value_name = "BOOL")]
    pub list_prefetch: bool,
    /// Opening three small files (4 MiB or less) of one directory fetches its other small files ahead (a window of 32 files that grows as the opens find theirs fetched; up to 128 GETs at once over a long link), so a DataLoader's workers, `grep -r` or `tar` find them local.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set, value_name = "BOOL")]
    pub small_file_prefetch: bool,
    /// A read-only open of a large file (16 blocks or more) that the disk cache holds whole lets the kernel read the cached copy directly (FUSE passthrough, Linux 6.9 and later, as root): reads at the local disk's speed with no request to s3vol. While such a reader has the file open, opening it for writing or truncating it fails with ETXTBSY.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set, value_name = "BOOL")]
    pub passthrough: bool,
    /// FUSE worker threads.
    #[arg(long, value_parser = parse_positive::<usize>, default_value = "4", value_name = "N")]
    pub fuse_threads: usize,
    /// Serve Prometheus metrics at http://[HOST:]PORT/metrics (HOST defaults to 127.0.0.1; off by default).
    #[arg(long, value_parser = crate::metrics_endpoint::parse_addr, value_name = "[HOST:]PORT")]
    pub metrics_addr: Option<std::net::SocketAddr>,
    /// Kernel mount flag, repeatable; the last word on a flag wins (default: nodev, nosuid, noatime).
    #[arg(long, value_enum, value_name = "FLAG")]
    pub kernel_option: Vec<KernelOption>,
    #[command(flatten)]
    pub shared: SharedCacheArgs,
}

/// A shared cache tier: blocks in an S3-compatible bucket near the machines, read before
/// the origin and filled behind it by every mount of the same source.
#[derive(Debug, Clone, Default, Args)]
pub struct SharedCacheArgs {
    /// Bucket (and prefix) of the shared cache tier, s3://BUCKET[/PREFIX]; blocks of this
    /// source go under PREFIX/s3vol-ID/, ID derived from the source.
    #[arg(long, value_name = "s3://BUCKET[/PREFIX]")]
    pub shared_cache: Option<String>,
    /// Endpoint of the tier (a MinIO, Ceph or Garage on the LAN; path-style addressing).
    #[arg(long, value_name = "URL", requires = "shared_cache")]
    pub shared_cache_endpoint_url: Option<String>,
    /// Signing region of the tier.
    #[arg(long, requires = "shared_cache")]
    pub shared_cache_region: Option<String>,
    /// Credentials of the tier, as --credentials-file (default: the standard chain).
    #[arg(long, value_name = "FILE", requires = "shared_cache")]
    pub shared_cache_credentials_file: Option<PathBuf>,
    /// Only read the tier, never write to it.
    #[arg(long, requires = "shared_cache")]
    pub shared_cache_read_only: bool,
    /// Serve a shared block of an object only after a HEAD at the origin showed this mount
    /// may read that version of it (once per object version).
    #[arg(long, requires = "shared_cache")]
    pub shared_cache_confirm_origin: bool,
}

/// The mount flags the kernel enforces, as mount(8) spells them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum KernelOption {
    Nosuid,
    Suid,
    Nodev,
    Dev,
    Noexec,
    Exec,
    Noatime,
    Atime,
}

#[derive(Debug, Args)]
pub struct MountHelperArgs {
    /// Arguments as mount(8) passes them to /sbin/mount.TYPE.
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub args: Vec<String>,
}

#[derive(Debug, Args)]
pub struct UnmountArgs {
    pub mountpoint: PathBuf,
}

#[derive(Debug, Args)]
pub struct SyncArgs {
    /// Only this mount.
    pub mountpoint: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct DiscardArgs {
    /// Files inside a mount whose upload was refused.
    #[arg(required = true)]
    pub paths: Vec<PathBuf>,
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Only this mount.
    pub mountpoint: Option<PathBuf>,
    /// Machine-readable output.
    #[arg(long)]
    pub json: bool,
    /// Refresh every SECS (default 2): rates, hit rates, the largest pending uploads.
    #[arg(long, value_name = "SECS", num_args = 0..=1, default_missing_value = "2", value_parser = parse_watch_interval)]
    pub watch: Option<f64>,
}

fn parse_watch_interval(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(secs) if (0.1..=3600.0).contains(&secs) => Ok(secs),
        _ => Err(format!("{text}: seconds between 0.1 and 3600")),
    }
}

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Where to mount the demo bucket.
    #[arg(default_value = "./s3vol-demo")]
    pub mountpoint: PathBuf,
}

pub fn parse_mode(text: &str) -> Result<u16, String> {
    u16::from_str_radix(text.trim_start_matches("0o"), 8)
        .ok()
        .filter(|m| *m <= 0o7777)
        .ok_or_else(|| format!("invalid mode '{text}': expected octal permission bits such as 644"))
}

/// Expands `-o k=v,flag,...` (fstab style: the long options without dashes) into
/// `--k=v --flag`, so one clap definition serves both spellings.
pub fn expand_dash_o(args: Vec<String>) -> Result<Vec<String>, String> {
    // The mount helper follows mount(8)'s convention, where -o also holds ro/rw and
    // kernel flags: it parses its own -o.
    if args.get(1).is_some_and(|a| a == "mount-helper") {
        return Ok(args);
    }
    let mut out = Vec::with_capacity(args.len());
    let mut iter = args.into_iter();
    while let Some(arg) = iter.next() {
        let list = if arg == "-o" {
            iter.next().ok_or("-o needs a value")?
        } else if let Some(rest) = arg
            .strip_prefix("-o")
            .filter(|r| !r.is_empty() && !arg.starts_with("--"))
        {
            rest.to_string()
        } else {
            out.push(arg);
            continue;
        };
        for opt in split_options(&list) {
            if !opt.is_empty() {
                out.push(format!("--{opt}"));
            }
        }
    }
    Ok(out)
}

/// Splits on commas not escaped with a backslash; `\\` is a backslash.
pub fn split_options(list: &str) -> Vec<String> {
    let mut parts = vec![String::new()];
    let mut chars = list.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                if let Some(next) = chars.next() {
                    parts.last_mut().expect("never empty").push(next);
                }
            }
            ',' => parts.push(String::new()),
            c => parts.last_mut().expect("never empty").push(c),
        }
    }
    parts
}

#[derive(Debug, Args)]
pub struct CheckArgs {
    #[command(flatten)]
    pub connect: ConnectArgs,
    /// How many keys to print.
    #[arg(long, default_value_t = 10)]
    pub keys: usize,
}

/// Where and how to reach the bucket: the SOURCE and everything that overrides the
/// provider's profile.
#[derive(Debug, Clone, Args)]
pub struct ConnectArgs {
    /// s3://BUCKET[/PREFIX], runpod://DATACENTER/VOLUME_ID[/PREFIX], hf://NAMESPACE/BUCKET[/PREFIX] or cw://BUCKET[/PREFIX]
    pub source: String,
    /// S3 endpoint URL (default: the provider's).
    #[arg(long, value_name = "URL")]
    pub endpoint_url: Option<String>,
    /// Signing region (default: the provider's, or the AWS configuration's).
    #[arg(long)]
    pub region: Option<String>,
    /// Path-style addressing (http://host/bucket/key) instead of virtual-hosted style.
    #[arg(long)]
    pub force_path_style: bool,
    /// Named profile in ~/.aws/config and ~/.aws/credentials.
    #[arg(long)]
    pub profile: Option<String>,
    /// File with the access key and secret ('ACCESS:SECRET', or aws_access_key_id/aws_secret_access_key/aws_session_token lines); must not be world-readable; re-read when it changes.
    #[arg(long, value_name = "FILE")]
    pub credentials_file: Option<PathBuf>,
    /// PEM file of CA certificates trusted for an https endpoint beside the system's (a
    /// private CA's server).
    #[arg(long, env = "AWS_CA_BUNDLE", value_name = "FILE")]
    pub ca_bundle: Option<PathBuf>,
    /// Send request checksums always (when-supported) or only where the operation requires them.
    #[arg(long, value_enum)]
    pub checksums: Option<ChecksumArg>,
    /// Do not store x-amz-meta-* user metadata (for providers that drop it).
    #[arg(long)]
    pub no_user_metadata: bool,
    /// Largest single PutObject; larger files use multipart uploads (e.g. 500MB).
    #[arg(long, value_parser = parse_nonzero_size, value_name = "SIZE")]
    pub max_put_size: Option<u64>,
    /// Multipart part size (grown when an object would need more than --max-parts parts).
    #[arg(long, value_parser = parse_nonzero_size, value_name = "SIZE")]
    pub part_size: Option<u64>,
    #[arg(long, value_parser = parse_nonzero_size, value_name = "SIZE")]
    pub min_part_size: Option<u64>,
    #[arg(long, value_parser = parse_nonzero_size, value_name = "SIZE")]
    pub max_part_size: Option<u64>,
    #[arg(long, value_parser = parse_positive::<u32>, value_name = "N")]
    pub max_parts: Option<u32>,
    /// Send upload bodies unsigned (UNSIGNED-PAYLOAD, the CRC32 checksum still signed)
    /// instead of hashing them with SHA-256 for the signature; default: over HTTPS where
    /// checksums are sent.
    #[arg(long, value_name = "BOOL")]
    pub unsigned_payload: Option<bool>,
    /// Whether the provider offers DeleteObjects (batch delete).
    #[arg(long, value_name = "BOOL")]
    pub delete_objects: Option<bool>,
    /// Whether the provider offers UploadPartCopy.
    #[arg(long, value_name = "BOOL")]
    pub upload_part_copy: Option<bool>,
    /// Whether the provider offers RenameObject.
    #[arg(long, value_name = "BOOL")]
    pub rename_object: Option<bool>,
    /// Whether the provider honours If-Match on PutObject and CompleteMultipartUpload
    /// (else a HEAD before each upload of a changed file checks for a remote change).
    #[arg(long, value_name = "BOOL")]
    pub conditional_writes: Option<bool>,
    /// How the provider treats `dir/` marker objects.
    #[arg(long, value_enum)]
    pub markers: Option<MarkersArg>,
    /// Whether GetObject may answer with a redirect to follow without credentials.
    #[arg(long, value_name = "BOOL")]
    pub get_redirects: Option<bool>,
    /// Whether the provider offers ListObjects (V1).
    #[arg(long, value_name = "BOOL")]
    pub list_v1: Option<bool>,
    /// Attempts per request, the first included (5xx, throttling, connection errors).
    #[arg(long, value_parser = parse_positive::<u32>, default_value = "10", value_name = "N")]
    pub retries: u32,
    /// Seconds to wait for a connection.
    #[arg(long, value_parser = parse_positive::<u64>, default_value = "10", value_name = "SECS")]
    pub connect_timeout: u64,
    /// Seconds of silence from the server before a request is retried.
    #[arg(long, value_parser = parse_positive::<u64>, default_value = "60", value_name = "SECS")]
    pub read_timeout: u64,
    /// Requests in flight at once.
    #[arg(long, value_parser = parse_positive::<usize>, default_value = "256", value_name = "N")]
    pub max_requests: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum UploadModeArg {
    Background,
    OnClose,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum ChecksumArg {
    WhenSupported,
    WhenRequired,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum MarkersArg {
    Supported,
    Native,
    Forbidden,
}

impl MountOptions {
    /// `--upload-mode`, or the older `--upload-on-close` where given.
    pub fn upload_mode(&self) -> crate::fs::UploadMode {
        use crate::fs::UploadMode;
        match (self.upload_on_close, self.upload_mode) {
            (Some(true), _) | (None, UploadModeArg::OnClose) => UploadMode::OnClose,
            (Some(false), _) | (None, UploadModeArg::Background) => UploadMode::Background,
        }
    }
}

impl ConnectArgs {
    pub fn source(&self) -> Result<Source, String> {
        Source::parse(&self.source).map_err(|e| e.to_string())
    }

    pub fn overrides(&self) -> Overrides {
        Overrides {
            endpoint_url: self.endpoint_url.clone(),
            region: self.region.clone(),
            force_path_style: self.force_path_style,
            checksums: self.checksums.map(|c| match c {
                ChecksumArg::WhenSupported => ChecksumPolicy::WhenSupported,
                ChecksumArg::WhenRequired => ChecksumPolicy::WhenRequired,
            }),
            max_put_size: self.max_put_size,
            part_size: self.part_size,
            min_part_size: self.min_part_size,
            max_part_size: self.max_part_size,
            max_parts: self.max_parts,
            delete_objects: self.delete_objects,
            upload_part_copy: self.upload_part_copy,
            rename_object: self.rename_object,
            unsigned_payload: self.unsigned_payload,
            user_metadata: self.no_user_metadata.then_some(false),
            markers: self.markers.map(|m| match m {
                MarkersArg::Supported => Markers::Supported,
                MarkersArg::Native => Markers::Native,
                MarkersArg::Forbidden => Markers::Forbidden,
            }),
            get_redirects: self.get_redirects,
            list_v1: self.list_v1,
            conditional_writes: self.conditional_writes,
        }
    }

    /// The source with its profile and overrides; fails on a malformed source before any
    /// network call.
    pub fn resolve(&self) -> Result<Resolved, String> {
        Ok(Resolved::new(&self.source()?, &self.overrides()))
    }

    pub fn settings(&self) -> Result<S3Settings, String> {
        let credentials_file = match &self.credentials_file {
            Some(path) => Some(CredentialsFile::open(path)?),
            None => None,
        };
        Ok(S3Settings {
            retry: RetryPolicy {
                max_attempts: self.retries.max(1),
                ..RetryPolicy::default()
            },
            connect_timeout: Duration::from_secs(self.connect_timeout),
            read_timeout: Duration::from_secs(self.read_timeout),
            max_requests: self.max_requests,
            aws_profile: self.profile.clone(),
            credentials_file,
            ca_bundle: self.ca_bundle.as_deref().map(CaBundle::load).transpose()?,
            ..S3Settings::default()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dash_o_becomes_long_options() {
        let args = [
            "s3vol",
            "mount",
            "s3://b",
            "/mnt",
            "-o",
            "region=x,read-only,endpoint-url=http://a\\,b",
        ];
        let out = expand_dash_o(args.iter().map(|s| s.to_string()).collect()).unwrap();
        assert_eq!(out[4..], ["--region=x", "--read-only", "--endpoint-url=http://a,b"]);
        assert!(expand_dash_o(vec!["-o".into()]).is_err());
    }

    #[test]
    fn modes_are_octal() {
        assert_eq!(parse_mode("644"), Ok(0o644));
        assert_eq!(parse_mode("0o755"), Ok(0o755));
        assert!(parse_mode("999").is_err());
    }
}
