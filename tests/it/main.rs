//! The integration tests, one test binary: each module was a test crate of its own, linked
//! on its own. They start an S3 server in-process (`common`) or moto server
//! (`common::moto`) and mount it with the `s3vol` binary under test.
//!
//! The test threads run tests of different modules at the same time, so every test starts
//! by taking its turn: `let _turn = common::shared();`, or `common::alone()` for the tests
//! no other may overlap (see [`common::alone`]). `Mount`, `server()` and moto refuse to
//! start in a test that holds no turn.

mod common;

mod bad_input;
mod cli;
mod core_model;
mod crash;
mod disk_cache;
mod faults;
mod https;
mod limits;
mod load;
mod metadata_by_get;
mod mount_helper;
mod mount_memory;
mod mount_model;
mod mount_providers;
mod mount_read;
mod mount_write;
mod packaging;
mod passthrough;
mod real_programs;
mod server_smoke;
mod shared_cache;
mod small_file_prefetch;
mod store;
mod writeback;
