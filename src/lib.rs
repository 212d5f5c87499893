//! s3vol: mount S3-compatible object storage as a local directory through FUSE.

pub mod cli;
pub mod credentials;
pub mod provider;
pub mod source;
pub mod store;
