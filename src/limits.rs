//! Process limits the daemon sets for itself at start.

/// Raises the soft limit on open files to the hard limit and returns the new soft limit.
/// The usual soft limit (1024) is for programs that select(2); the daemon holds a
/// descriptor per S3 connection, cache file, staging file and control connection, and
/// running out fails requests with EMFILE long before the hard limit the administrator
/// allowed. The hard limit itself is left alone (raising it takes CAP_SYS_RESOURCE).
pub fn raise_open_files_limit() -> std::io::Result<u64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one rlimit through a valid pointer.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    if limit.rlim_cur < limit.rlim_max {
        limit.rlim_cur = limit.rlim_max;
        // SAFETY: setrlimit reads one rlimit through a valid pointer.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(limit.rlim_cur)
}
