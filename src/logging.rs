//! Where log lines go: stderr in the foreground, a file or syslog (journald picks it up)
//! in the background. `--debug` or `RUST_LOG` select the detail.

use std::ffi::CString;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

pub enum LogTarget<'a> {
    Stderr,
    File(&'a Path),
    Syslog,
}

fn filter(debug: bool) -> tracing_subscriber::EnvFilter {
    // The SDK's own warnings (e.g. an absent EC2 metadata service) say nothing the user can
    // act on; our errors carry what matters.
    let default = if debug {
        "s3vol=debug,info"
    } else {
        "s3vol=info,aws_config=error,warn"
    };
    match std::env::var("RUST_LOG") {
        Ok(v) if !debug && !v.is_empty() => tracing_subscriber::EnvFilter::new(v),
        _ => tracing_subscriber::EnvFilter::new(default),
    }
}

pub fn init(target: LogTarget<'_>, debug: bool) -> Result<(), String> {
    // A log line that cannot be written is dropped: the subscriber's own complaint about it
    // would go to stderr with eprintln!, which panics when stderr is gone (a `| tee` that
    // exited), killing whatever task was logging (the signal handler, say).
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter(debug))
        .log_internal_errors(false);
    let result = match target {
        LogTarget::Stderr => builder.with_writer(|| LossyStderr).try_init(),
        LogTarget::File(path) => {
            let file = open_log(path)?;
            *LOG_FILE.lock().unwrap_or_else(|e| e.into_inner()) = Some((path.to_path_buf(), file));
            builder.with_ansi(false).with_writer(|| LogFile).try_init()
        }
        LogTarget::Syslog => {
            // SAFETY: the identity string is static and openlog keeps the pointer.
            unsafe { libc::openlog(c"s3vol".as_ptr(), libc::LOG_PID, libc::LOG_DAEMON) };
            builder
                .with_ansi(false)
                .without_time()
                .with_writer(|| Syslog)
                .try_init()
        }
    };
    result.map_err(|e| format!("cannot start logging: {e}"))?;
    // A panic (a bug) in a request fails that request; say so where the log goes (a daemon's
    // stderr is /dev/null), on one line, instead of on stderr only.
    std::panic::set_hook(Box::new(|info| {
        let what = info
            .payload()
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| info.payload().downcast_ref::<String>().cloned())
            .unwrap_or_default();
        let at = info.location().map(|l| format!(" at {l}")).unwrap_or_default();
        tracing::error!("a bug: panicked{at}: {what}; the request failed, the mount goes on");
    }));
    Ok(())
}

fn open_log(path: &Path) -> Result<File, String> {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|e| format!("log file {}: {e}", path.display()))
}

/// The `--log-file` in use, swapped by [`reopen`].
static LOG_FILE: Mutex<Option<(PathBuf, File)>> = Mutex::new(None);

/// Reopens the log file (SIGHUP), so logrotate can move the old one away.
pub fn reopen() {
    let mut current = LOG_FILE.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((path, file)) = current.as_mut() {
        match open_log(path) {
            Ok(new) => *file = new,
            Err(e) => tracing::warn!("SIGHUP: {e}; still writing to the old file"),
        }
    }
}

struct LogFile;

impl Write for LogFile {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        // A line that cannot be written (a full disk) is dropped, never an error.
        if let Some((_, file)) = LOG_FILE.lock().unwrap_or_else(|e| e.into_inner()).as_mut() {
            let _ = file.write_all(buf);
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Each formatted line becomes one syslog message.
struct Syslog;

impl Write for Syslog {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let text = String::from_utf8_lossy(buf);
        let line = text.trim_end().replace('\0', " ");
        let priority = if line.contains("ERROR") {
            libc::LOG_ERR
        } else if line.contains("WARN") {
            libc::LOG_WARNING
        } else {
            libc::LOG_INFO
        };
        if let Ok(c) = CString::new(line) {
            // SAFETY: both strings are NUL-terminated and outlive the call.
            unsafe { libc::syslog(priority, c"%s".as_ptr(), c.as_ptr()) };
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// stderr, where a failed write (a closed pipe) drops the line instead of failing.
struct LossyStderr;

impl Write for LossyStderr {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let _ = std::io::stderr().write_all(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        let _ = std::io::stderr().flush();
        Ok(())
    }
}
