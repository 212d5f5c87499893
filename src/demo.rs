//! `s3vol demo`: the embedded S3 server on 127.0.0.1 with a small sample tree, mounted.

use s3vol::cli::{DemoArgs, MountOptions};
use s3vol::credentials::StaticCredentials;
use s3vol::logging::{self, LogTarget};
use s3vol::mount::{self, Ready};
use s3vol::provider::{Overrides, Resolved};
use s3vol::server::{self, ServerConfig};
use s3vol::source::Source;
use s3vol::store::s3::{S3Settings, S3Store};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

const BUCKET: &str = "demo";

pub fn run(args: &DemoArgs) -> ExitCode {
    match demo(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("s3vol demo: {e}");
            ExitCode::FAILURE
        }
    }
}

fn sample_tree() -> Vec<(String, Vec<u8>)> {
    let mut weights = vec![0u8; 4 << 20];
    let mut x: u32 = 0x2545_f491;
    for b in weights.iter_mut() {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        *b = x as u8;
    }
    let text = |s: &str| s.as_bytes().to_vec();
    vec![
        (
            "README.txt".into(),
            text("This bucket is served by s3vol's embedded S3 server and mounted through FUSE.\n"),
        ),
        (
            "models/tiny-llm/config.json".into(),
            text("{\"hidden_size\": 64, \"layers\": 2}\n"),
        ),
        ("models/tiny-llm/weights.bin".into(), weights),
        (
            "datasets/images/cat 01.txt".into(),
            text("a picture of a cat, described\n"),
        ),
        (
            "datasets/images/dog 02.txt".into(),
            text("a picture of a dog, described\n"),
        ),
        ("datasets/notes/résumé été.txt".into(), text("unicode names work\n")),
        ("datasets/notes/a+b #1 100%.txt".into(), text("so do +, # and %\n")),
        ("empty-dir/".into(), Vec::new()),
    ]
}

/// The commands the demo suggests, each runnable as printed by a POSIX shell from any
/// directory: absolute paths, quoted where needed, and this binary by its own path (after
/// `cargo run` there is no `s3vol` on PATH).
fn try_lines(mountpoint: &Path) -> Vec<String> {
    let exe = std::env::current_exe().unwrap_or_else(|_| PathBuf::from("s3vol"));
    let under = |rel: &str| shell_quote(&mountpoint.join(rel));
    vec![
        format!("ls -lR {}", shell_quote(mountpoint)),
        format!("cat {}", under("README.txt")),
        format!("sha256sum {}", under("models/tiny-llm/weights.bin")),
        format!("{} status {}", shell_quote(&exe), shell_quote(mountpoint)),
    ]
}

/// `path` as one POSIX shell word: as is when it holds only characters no shell treats
/// specially, otherwise in single quotes (a `'` inside becomes `'\''`).
fn shell_quote(path: &Path) -> String {
    let text = path.to_string_lossy();
    let plain = |c: char| c.is_ascii_alphanumeric() || "_-./,:@%+=".contains(c);
    if !text.is_empty() && text.chars().all(plain) {
        text.into_owned()
    } else {
        format!("'{}'", text.replace('\'', r"'\''"))
    }
}

fn demo(args: &DemoArgs) -> Result<(), String> {
    std::fs::create_dir_all(&args.mountpoint).map_err(|e| format!("{}: {e}", args.mountpoint.display()))?;
    let mountpoint = mount::check_mountpoint(&args.mountpoint)?;
    logging::init(LogTarget::Stderr, false)?;
    let runtime = mount::runtime()?;
    let config = ServerConfig::default();
    let (access_key, secret_key) = (config.access_key.clone(), config.secret_key.clone());
    let server = runtime
        .block_on(server::start(config))
        .map_err(|e| format!("embedded S3 server: {e}"))?;
    server.backend().create_bucket(BUCKET);
    for (key, body) in sample_tree() {
        server
            .backend()
            .put_object(BUCKET, &key, body, &[])
            .map_err(|e| format!("{key}: {e:?}"))?;
    }
    let source_text = format!("s3://{BUCKET}");
    let source = Source::parse(&source_text).map_err(|e| e.to_string())?;
    let overrides = Overrides {
        endpoint_url: Some(server.endpoint.clone()),
        force_path_style: true,
        region: Some("us-east-1".into()),
        ..Default::default()
    };
    let resolved = Resolved::new(&source, &overrides);
    let settings = S3Settings {
        credentials: Some(StaticCredentials {
            access_key,
            secret_key,
            session_token: None,
        }),
        ..S3Settings::default()
    };
    let metrics = settings.metrics.clone();
    let store = runtime.block_on(S3Store::connect(&resolved, settings))?;
    println!(
        "embedded S3 server: {} (bucket '{BUCKET}', path style)",
        server.endpoint
    );
    let mut announce = format!("mounted on {}; try:\n", mountpoint.display());
    for line in try_lines(&mountpoint) {
        announce += &format!("  {line}\n");
    }
    announce += "Ctrl-C unmounts.\n";
    let options = MountOptions {
        foreground: true,
        read_only: false,
        memory_limit: 256 << 20,
        metadata_ttl: std::time::Duration::from_secs(5),
        uid: None,
        gid: None,
        file_mode: 0o644,
        dir_mode: 0o755,
        allow_other: false,
        keep_special_modes: false,
        debug: false,
        log_file: None,
        cache_dir: None,
        cache_size: s3vol::cache_dir::CacheSize::Bytes(0),
        cache_min_free: s3vol::cache_dir::CacheSize::Percent(5.0),
        upload_mode: s3vol::cli::UploadModeArg::Background,
        upload_on_close: None,
        staging_min_free: None,
        list_prefetch: true,
        small_file_prefetch: true,
        passthrough: true,
        fuse_threads: 4,
        metrics_addr: None,
        kernel_option: Vec::new(),
        shared: Default::default(),
    };
    mount::serve(
        &runtime,
        Arc::new(store),
        metrics,
        resolved,
        &source_text,
        &mountpoint,
        &options,
        None,
        &mut Ready::announcing(announce),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shell_quote_leaves_plain_paths_alone_and_quotes_the_rest() {
        assert_eq!(shell_quote(Path::new("/tmp/s3vol-demo")), "/tmp/s3vol-demo");
        assert_eq!(shell_quote(Path::new("/tmp/my demo")), "'/tmp/my demo'");
        assert_eq!(shell_quote(Path::new("/tmp/it's $x")), r"'/tmp/it'\''s $x'");
        assert_eq!(shell_quote(Path::new("/tmp/été")), "'/tmp/été'");
    }
}
