//! `S3Store`, the aws-sdk-s3 object store, through real HTTP on loopback.

mod contract;
mod quirks;
