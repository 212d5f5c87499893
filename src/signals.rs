//! What the daemon does when signalled: SIGTERM and SIGINT upload what is dirty, then
//! unmount; SIGHUP reopens the log file.

use crate::fs::{Fs, Settle};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::signal::unix::{Signal, SignalKind, signal};

/// How long a busy mount is retried before it is detached. A program that forked while it
/// had a file of the mount open holds that file until its exec, a few milliseconds.
const BUSY_RETRY: Duration = Duration::from_secs(2);

/// The signals the daemon handles, watched from before the mount appears: one that came
/// between the mount and a later registration met the default action and ended the
/// daemon on the spot (a SIGHUP from logrotate, a SIGTERM from systemd; found by
/// `cli::sighup_reopens_the_log_file` failing in CI).
pub struct Watched {
    term: Signal,
    int: Signal,
    hangup: Signal,
}

impl Watched {
    /// Registers the handlers (inside the runtime).
    pub fn start() -> std::io::Result<Watched> {
        Ok(Watched {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
            hangup: signal(SignalKind::hangup())?,
        })
    }

    /// Runs the handlers: SIGTERM and SIGINT unmount, SIGHUP reopens the log file.
    pub fn serve(
        self,
        runtime: &tokio::runtime::Runtime,
        fs: Arc<Fs>,
        unmounter: fuser::SessionUnmounter,
        mountpoint: PathBuf,
    ) {
        runtime.spawn(unmount_on_signal(self.term, self.int, fs, unmounter, mountpoint));
        runtime.spawn(reopen_log_on_hangup(self.hangup));
    }
}

async fn unmount_on_signal(
    mut term: Signal,
    mut int: Signal,
    fs: Arc<Fs>,
    unmounter: fuser::SessionUnmounter,
    mountpoint: PathBuf,
) {
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    tracing::info!(
        "signal received: uploading dirty data, then unmounting {}",
        mountpoint.display()
    );
    if fs.sync_all(Settle::OneAttempt).await.is_err() {
        tracing::error!(
            "some dirty data could not be uploaded; it stays journaled in the cache directory for the next mount"
        );
    }
    unmount(unmounter, &mountpoint).await;
}

/// Unmounts; a mount still busy after `BUSY_RETRY` is detached, so a signal always ends
/// the daemon: the mount leaves the tree at once, and the session ends (uploading what
/// was written meanwhile) when the last file open in it is closed.
async fn unmount(mut unmounter: fuser::SessionUnmounter, mountpoint: &Path) {
    // Unprivileged, fuser unmounts through `fusermount3 -u -z`, which never reports busy.
    match unmounter.unmount() {
        Ok(()) => return,
        Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {}
        Err(e) => {
            tracing::warn!("unmount of {}: {e}", mountpoint.display());
            return;
        }
    }
    let deadline = Instant::now() + BUSY_RETRY;
    while Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
        match nix::mount::umount(mountpoint) {
            Ok(()) => return,
            Err(nix::errno::Errno::EBUSY) => {}
            Err(e) => {
                tracing::warn!("unmount of {}: {e}", mountpoint.display());
                return;
            }
        }
    }
    match nix::mount::umount2(mountpoint, nix::mount::MntFlags::MNT_DETACH) {
        Ok(()) => tracing::warn!(
            "{} was busy (a program has a file or its working directory in it): detached it; \
             s3vol exits once the last of those files is closed",
            mountpoint.display()
        ),
        Err(e) => tracing::warn!("detaching busy mount {}: {e}", mountpoint.display()),
    }
}

async fn reopen_log_on_hangup(mut hangup: Signal) {
    while hangup.recv().await.is_some() {
        crate::logging::reopen();
        tracing::info!("SIGHUP: log file reopened");
    }
}
