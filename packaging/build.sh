#!/usr/bin/env bash
# Builds the .deb (target/debian/) and the .rpm (target/generate-rpm/) from one release
# build. Installs cargo-deb and cargo-generate-rpm first when they are missing.
set -euo pipefail
cd "$(dirname "$0")/.."

cargo deb --version >/dev/null 2>&1 || cargo install --locked cargo-deb
cargo generate-rpm --version >/dev/null 2>&1 || cargo install --locked cargo-generate-rpm

cargo build --release --locked
# Both tools package target/release/s3vol as built above.
cargo deb --no-build --locked
cargo generate-rpm
ls -l target/debian/*.deb target/generate-rpm/*.rpm
