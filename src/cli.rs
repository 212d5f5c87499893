//! The command line: clap definitions and their translation into profile overrides and
//! store settings.

use crate::credentials::read_credentials_file;
use crate::provider::{ChecksumPolicy, Markers, Overrides, Resolved, parse_size};
use crate::source::Source;
use crate::store::RetryPolicy;
use crate::store::s3::S3Settings;
use clap::{Args, Parser, Subcommand, ValueEnum};
use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, Parser)]
#[command(name = "s3vol", version, about = "Mount S3-compatible object storage (Runpod network volumes, Hugging Face Storage Buckets, CoreWeave AI Object Storage, AWS S3) as a local directory")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Connect to SOURCE, list one page and print the resolved profile and the first keys.
    Check(CheckArgs),
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
    /// File with the access key and secret ('ACCESS:SECRET' or aws_access_key_id/aws_secret_access_key lines); must not be world-readable.
    #[arg(long, value_name = "FILE")]
    pub credentials_file: Option<PathBuf>,
    /// Send request checksums always (when-supported) or only where the operation requires them.
    #[arg(long, value_enum)]
    pub checksums: Option<ChecksumArg>,
    /// Do not store x-amz-meta-* user metadata (for providers that drop it).
    #[arg(long)]
    pub no_user_metadata: bool,
    /// Largest single PutObject; larger files use multipart uploads (e.g. 500MB).
    #[arg(long, value_parser = parse_size, value_name = "SIZE")]
    pub max_put_size: Option<u64>,
    /// Multipart part size (grown when an object would need more than --max-parts parts).
    #[arg(long, value_parser = parse_size, value_name = "SIZE")]
    pub part_size: Option<u64>,
    #[arg(long, value_parser = parse_size, value_name = "SIZE")]
    pub min_part_size: Option<u64>,
    #[arg(long, value_parser = parse_size, value_name = "SIZE")]
    pub max_part_size: Option<u64>,
    #[arg(long, value_name = "N")]
    pub max_parts: Option<u32>,
    /// Whether the provider offers DeleteObjects (batch delete).
    #[arg(long, value_name = "BOOL")]
    pub delete_objects: Option<bool>,
    /// Whether the provider offers UploadPartCopy.
    #[arg(long, value_name = "BOOL")]
    pub upload_part_copy: Option<bool>,
    /// Whether the provider offers RenameObject.
    #[arg(long, value_name = "BOOL")]
    pub rename_object: Option<bool>,
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
    #[arg(long, default_value_t = 10, value_name = "N")]
    pub retries: u32,
    /// Seconds to wait for a connection.
    #[arg(long, default_value_t = 10, value_name = "SECS")]
    pub connect_timeout: u64,
    /// Seconds of silence from the server before a request is retried.
    #[arg(long, default_value_t = 60, value_name = "SECS")]
    pub read_timeout: u64,
    /// Requests in flight at once.
    #[arg(long, default_value_t = 64, value_name = "N")]
    pub max_requests: usize,
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
            user_metadata: self.no_user_metadata.then_some(false),
            markers: self.markers.map(|m| match m {
                MarkersArg::Supported => Markers::Supported,
                MarkersArg::Native => Markers::Native,
                MarkersArg::Forbidden => Markers::Forbidden,
            }),
            get_redirects: self.get_redirects,
            list_v1: self.list_v1,
        }
    }

    /// The source with its profile and overrides; fails on a malformed source before any
    /// network call.
    pub fn resolve(&self) -> Result<Resolved, String> {
        Ok(Resolved::new(&self.source()?, &self.overrides()))
    }

    pub fn settings(&self) -> Result<S3Settings, String> {
        let credentials = match &self.credentials_file {
            Some(path) => Some(read_credentials_file(path)?),
            None => None,
        };
        Ok(S3Settings {
            retry: RetryPolicy { max_attempts: self.retries.max(1), ..RetryPolicy::default() },
            connect_timeout: Duration::from_secs(self.connect_timeout),
            read_timeout: Duration::from_secs(self.read_timeout),
            max_requests: self.max_requests,
            aws_profile: self.profile.clone(),
            credentials,
            ..S3Settings::default()
        })
    }
}
