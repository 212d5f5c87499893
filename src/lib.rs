//! s3vol: mount S3-compatible object storage as a local directory through FUSE.

pub mod accept;
pub mod cache_dir;
pub mod cli;
pub mod control;
pub mod credentials;
pub mod fs;
pub mod fuse;
pub mod fuse_passthrough;
pub mod limits;
pub mod logging;
pub mod metrics;
pub mod metrics_endpoint;
pub mod mount;
pub mod mount_helper;
pub mod option_values;
pub mod private_dir;
pub mod provider;
pub mod server;
pub mod shared_cache;
pub mod signals;
pub mod source;
pub mod store;
