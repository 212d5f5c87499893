#!/usr/bin/env bash
# Builds the .deb (target/debian/) and the .rpm (target/generate-rpm/) from one release
# build. Installs cargo-deb and cargo-generate-rpm first when they are missing.
set -euo pipefail
cd "$(dirname "$0")/.."

cargo deb --version >/dev/null 2>&1 || cargo install --locked cargo-deb
cargo generate-rpm --version >/dev/null 2>&1 || cargo install --locked cargo-generate-rpm

cargo build --release --locked
# The release profile keeps line tables for backtraces; the packages ship stripped binaries.
cargo deb --no-build --strip
# cargo-generate-rpm packages target/release/s3vol as it is: give it a stripped copy.
rpm_target=target/rpm-staging
mkdir -p "$rpm_target/release"
strip -o "$rpm_target/release/s3vol" target/release/s3vol
mkdir -p target/generate-rpm
cargo generate-rpm --target-dir "$rpm_target" --output target/generate-rpm/
ls -l target/debian/*.deb target/generate-rpm/*.rpm
